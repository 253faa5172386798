package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/broker"
)

func newSecretCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Manage the lab's secrets bucket, from which workers with secrets_kv resolve test_data.secrets",
	}
	var replicas int
	set := &cobra.Command{
		Use:   "set PATH [VALUE]",
		Short: "Set a secret (the value from standard input when VALUE is left out, so that it stays out of shell history)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			value := ""
			if len(args) == 2 {
				value = args[1]
			} else {
				data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
				if err != nil {
					return fmt.Errorf("read the value: %w", err)
				}
				value = strings.TrimSuffix(string(data), "\n")
			}
			if value == "" {
				return errors.New("secret set: the value is empty")
			}
			c, err := g.connect(cmd.Context(), "flinger-secret")
			if err != nil {
				return err
			}
			defer c.Close()
			kv, err := c.SecretBucket(cmd.Context(), true, replicas)
			if err != nil {
				return err
			}
			if _, err := kv.PutString(cmd.Context(), broker.SecretKey(args[0]), value); err != nil {
				return fmt.Errorf("secret set %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "secret %s set\n", args[0])
			return nil
		},
	}
	set.Flags().IntVar(&replicas, "replicas", 1, "replicas of the bucket when this creates it (3 on a cluster)")
	rm := &cobra.Command{
		Use:   "rm PATH",
		Short: "Remove a secret",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.connect(cmd.Context(), "flinger-secret")
			if err != nil {
				return err
			}
			defer c.Close()
			kv, err := c.SecretBucket(cmd.Context(), false, 0)
			if err != nil {
				return err
			}
			key := broker.SecretKey(args[0])
			if _, err := kv.Get(cmd.Context(), key); errors.Is(err, jetstream.ErrKeyNotFound) {
				return fmt.Errorf("secret rm: no secret %s", args[0])
			}
			if err := kv.Purge(cmd.Context(), key); err != nil {
				return fmt.Errorf("secret rm %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "secret %s removed\n", args[0])
			return nil
		},
	}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the secret paths (never their values)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.connect(cmd.Context(), "flinger-secret")
			if err != nil {
				return err
			}
			defer c.Close()
			kv, err := c.SecretBucket(cmd.Context(), false, 0)
			if err != nil {
				return err
			}
			keys, err := kv.ListKeys(cmd.Context())
			if err != nil {
				return fmt.Errorf("secret ls: %w", err)
			}
			var paths []string
			for k := range keys.Keys() {
				paths = append(paths, broker.SecretPath(k))
			}
			slices.Sort(paths)
			for _, p := range paths {
				fmt.Fprintln(cmd.OutOrStdout(), p)
			}
			return nil
		},
	}
	cmd.AddCommand(set, rm, ls)
	return cmd
}

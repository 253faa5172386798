package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/sim"
)

func newSimCmd() *cobra.Command {
	var (
		name, dir, keyFile string
		sets               []string
	)
	cmd := &cobra.Command{
		Use:   "sim TYPE",
		Short: "Run one simulated device of a connector type and print its device configuration",
		Long: `Run one simulated device (the hardware of a connector type: the device
under test and its control host, sidecar, imager or switch), print the
device configuration keys that reach it, as YAML to paste into a host file
or a Testflinger default.yaml, and keep it running until interrupted.

--set KEY=VALUE passes a simulator setting (boot_time, a fault to inject,
...); each type's settings are listed in its simulator's documentation.
The simulated hosts accept the public key of --key (default: the ssh key
of this user, ~/.ssh/id_ed25519) and the password ubuntu for ubuntu.

Types: ` + strings.Join(sim.LabTypes(), ", "),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ, ok := drivers.Canonical(args[0])
			if !ok {
				typ = args[0]
			}
			settings := map[string]any{}
			for _, kv := range sets {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--set %q: use KEY=VALUE", kv)
				}
				settings[k] = settingValue(v)
			}
			if name == "" {
				name = "sim-" + typ
			}
			if dir == "" {
				d, err := os.MkdirTemp("", "flinger-sim-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				dir = d
			}
			var keys []ssh.PublicKey
			if keyFile == "" {
				if home, err := os.UserHomeDir(); err == nil {
					if p := filepath.Join(home, ".ssh", "id_ed25519"); fileExists(p) {
						keyFile = p
					}
				}
			}
			if keyFile != "" {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return fmt.Errorf("--key: %w", err)
				}
				signer, err := ssh.ParsePrivateKey(b)
				if err != nil {
					return fmt.Errorf("--key %s: %w", keyFile, err)
				}
				keys = append(keys, signer.PublicKey())
			}
			ctx := cmd.Context()
			dev, err := sim.StartLab(ctx, typ, sim.LabOptions{Name: name, Dir: dir, AuthorizedKeys: keys, Settings: settings, Log: slog.Default()})
			if err != nil {
				return err
			}
			defer dev.Close()
			out := map[string]any{"agent_name": name, "provision_type": typ}
			for k, v := range dev.Config() {
				out[k] = v
			}
			y, err := yaml.Marshal(out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# simulated %s device; Ctrl-C stops it\n%s", typ, y)
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the device's agent_name (default sim-TYPE)")
	f.StringVar(&dir, "dir", "", "directory for the simulator's files (default: a temporary one, removed on exit)")
	f.StringVar(&keyFile, "key", "", "private key whose public key the simulated hosts accept")
	f.StringArrayVar(&sets, "set", nil, "simulator setting KEY=VALUE (repeatable)")
	return cmd
}

// settingValue reads a --set value as YAML does a scalar: a number, a
// boolean or a string.
func settingValue(v string) any {
	if b, err := strconv.ParseBool(v); err == nil {
		return b
	}
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	return v
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

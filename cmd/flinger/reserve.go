package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

func newReserveCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reserve",
		Short: "Act on reservations",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "extend JOB_ID DURATION",
		Short: "Extend a running reservation (DURATION: seconds, 90m, 2h30m)",
		Long: `Extend a running reservation by DURATION, counted from its current end.

The orchestrator caps a reservation's whole length (--max-reservation,
6 h by default); a request beyond it is refused and says the latest end.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.connect(cmd.Context(), "flinger-reserve")
			if err != nil {
				return err
			}
			defer c.Close()
			reply, err := client.Control(cmd.Context(), c, "reserve-extend", &events.CtlRequest{JobID: args[0], Duration: args[1]})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "reservation of %s now ends at %s (%s from now)\n", args[0],
				reply.ReserveUntil.Local().Format(time.DateTime), time.Until(reply.ReserveUntil).Round(time.Second))
			return nil
		},
	})
	return cmd
}

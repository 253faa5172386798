package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
)

func newDeviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Act on devices",
	}
	var comment string
	var asJSON bool
	set := &cobra.Command{
		Use:   "set NAME online|offline|maintenance",
		Short: "Put a device in or out of service",
		Long: `Put a device in service (online) or take it out (offline, maintenance).

A busy device finishes its job first, then goes offline or into
maintenance; setting it online before then cancels that. A device set
online whose health is not good becomes idle with its health unknown: when
a health check is configured for it, the check runs before any user job.
The state survives worker and orchestrator restarts.`,
		Args:      cobra.ExactArgs(2),
		ValidArgs: []string{orchestrator.DeviceOnline, orchestrator.DeviceOffline, orchestrator.DeviceMaintenance},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.connect(cmd.Context(), "flinger-device-set")
			if err != nil {
				return err
			}
			defer c.Close()
			reply, err := client.Control(cmd.Context(), c, "device-set",
				&events.CtlRequest{Device: args[0], State: args[1], Comment: comment})
			if err != nil {
				return err
			}
			if reply.Device == nil {
				return fmt.Errorf("device set %s: the orchestrator sent no status back", args[0])
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(reply.Device)
			}
			printDeviceSet(cmd.OutOrStdout(), reply.Device)
			return nil
		},
	}
	set.Flags().StringVar(&comment, "comment", "", "why, kept in the device's record")
	set.Flags().BoolVar(&asJSON, "json", false, "print the device's record as JSON")
	cmd.AddCommand(set)
	return cmd
}

// printDeviceSet tells what `device set` left the device as.
func printDeviceSet(w io.Writer, d *events.DeviceStatus) {
	switch {
	case d.Pending != "":
		fmt.Fprintf(w, "%s: busy with job %s; it goes %s when that job ends (health %s)\n", d.Name, d.JobID, d.Pending, d.Health)
	case d.State == events.StateBusy:
		fmt.Fprintf(w, "%s: busy with job %s, and stays in service after it (health %s)\n", d.Name, d.JobID, d.Health)
	case d.State == events.StateIdle && d.Health != events.HealthGood:
		fmt.Fprintf(w, "%s: idle, health %s (its health check runs before user jobs, when one is configured)\n", d.Name, d.Health)
	default:
		fmt.Fprintf(w, "%s: %s, health %s\n", d.Name, d.State, d.Health)
	}
	if d.Comment != "" {
		fmt.Fprintf(w, "comment: %s\n", d.Comment)
	}
}

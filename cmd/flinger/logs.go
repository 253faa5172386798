package main

import (
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

func newLogsCmd(g *globals) *cobra.Command {
	var (
		phase  string
		follow bool
		serial bool
		from   uint64
	)
	cmd := &cobra.Command{
		Use:   "logs JOB_ID",
		Short: "Print a job's output, phase by phase, from the log stream",
		Long: `Print a job's output as its worker streamed it, in numbered chunks per
phase. --phase keeps one phase; --from N starts at chunk N of each phase
(Testflinger's start_fragment); --follow keeps printing until the job ends.
--serial prints the device's serial console instead, as captured during
each phase (serial_host and serial_port of the device's configuration).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := events.Phase(phase)
			if phase != "" && !slices.Contains(events.Phases, p) {
				return fmt.Errorf("--phase %q: not a phase (%v)", phase, events.Phases)
			}
			c, err := g.connect(cmd.Context(), "flinger-logs")
			if err != nil {
				return err
			}
			defer c.Close()
			id := args[0]
			if _, _, err := c.GetJob(cmd.Context(), id); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			show := func(chunk *events.LogChunk) {
				if (p == "" || chunk.Phase == p) && chunk.Seq >= from {
					_, _ = w.Write(chunk.Data)
				}
			}
			stream := client.StreamOutput
			if serial {
				stream = client.StreamSerial
			}
			if follow {
				_, err := client.FollowStream(cmd.Context(), c, id, stream, nil, show)
				return err
			}
			chunks, err := client.StreamSoFar(cmd.Context(), c, id, p, stream)
			for _, chunk := range chunks {
				show(chunk)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&phase, "phase", "", "only this phase's output (setup, provision, firmware_update, test, allocate, reserve, cleanup)")
	f.BoolVar(&follow, "follow", false, "keep printing until the job ends")
	f.BoolVar(&serial, "serial", false, "print the device's serial console instead of the phases' output")
	f.Uint64Var(&from, "from", 0, "start at this chunk number of each phase")
	return cmd
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

func newWatchCmd(g *globals) *cobra.Command {
	var o client.WatchOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print events live: every job step and device state change",
		Long: `Print events as they happen. With --job, replay that job's events from its
start, then go on live. With --all, replay every stored event first.
--json prints one JSON object per line (Testflinger's event_name, timestamp
and detail, plus Flinger's fields).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.connect(cmd.Context(), "flinger-watch")
			if err != nil {
				return err
			}
			defer c.Close()
			seq, err := client.Watch(cmd.Context(), c, o)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			enc := json.NewEncoder(w)
			for ev, err := range seq {
				if err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "flinger watch:", err)
					continue
				}
				if asJSON {
					if err := enc.Encode(ev); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintln(w, formatEvent(ev))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.JobID, "job", "", "only this job's events, from its start")
	cmd.Flags().StringVar(&o.Device, "device", "", "only events naming this device")
	cmd.Flags().BoolVar(&o.FromStart, "all", false, "replay every stored event first")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per event")
	return cmd
}

func newDevicesCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List devices with their state, health, job and phase",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.connect(cmd.Context(), "flinger-devices")
			if err != nil {
				return err
			}
			defer c.Close()
			devs, bad, err := c.ListDevices(cmd.Context())
			if err != nil {
				return err
			}
			for _, e := range bad {
				fmt.Fprintln(os.Stderr, "flinger devices:", e)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(devs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tHOST\tTYPE\tSTATE\tHEALTH\tJOB\tPHASE\tQUEUES\tHEARTBEAT\tCOMMENT")
			for _, d := range devs {
				job := "-"
				if d.JobID != "" {
					job = short(d.JobID)
				}
				phase := string(d.Phase)
				if phase == "" {
					phase = "-"
				}
				state := string(d.State)
				if d.Pending != "" {
					state += "→" + string(d.Pending) // offline or maintenance once its job ends
				}
				heartbeat := time.Since(d.Heartbeat).Round(time.Second).String() + " ago"
				if d.Lost {
					heartbeat += " (lost)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Name, d.Host, d.Connector, state, d.Health,
					job, phase, joinQueues(d), heartbeat, d.Comment)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the device records as JSON")
	return cmd
}

func joinQueues(d *events.DeviceStatus) string {
	s := ""
	for i, q := range d.Queues {
		if i > 0 {
			s += ","
		}
		s += q
	}
	return s
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

func newEventsCmd(g *globals) *cobra.Command {
	var asJSON, follow bool
	cmd := &cobra.Command{
		Use:   "events JOB_ID",
		Short: "Print a job's full history from the event stream",
		Long: `Print every stored event of a job, oldest first, one per line: time,
event, device, phase, attempt, exit status (when set) and detail. With
--follow, keep printing new events until the job ends. --json prints one
JSON object per event (Testflinger's event_name, timestamp and detail, plus
Flinger's fields).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.connect(ctx, "flinger-events")
			if err != nil {
				return err
			}
			defer c.Close()
			var seq iter.Seq2[*events.Event, error]
			if follow {
				if seq, err = client.FollowHistory(ctx, c, args[0]); err != nil {
					return err
				}
			} else {
				evs, err := client.History(ctx, c, args[0])
				if err != nil {
					return err
				}
				seq = func(yield func(*events.Event, error) bool) {
					for _, ev := range evs {
						if !yield(ev, nil) {
							return
						}
					}
				}
			}
			return printHistory(cmd.OutOrStdout(), cmd.ErrOrStderr(), seq, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per event")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until the job ends")
	return cmd
}

// printHistory writes each event of seq on its own line; an event that
// cannot be read is reported on errw and skipped.
func printHistory(w, errw io.Writer, seq iter.Seq2[*events.Event, error], asJSON bool) error {
	enc := json.NewEncoder(w)
	for ev, err := range seq {
		if err != nil {
			fmt.Fprintln(errw, "flinger events:", err)
			continue
		}
		if asJSON {
			if err := enc.Encode(ev); err != nil {
				return fmt.Errorf("write event: %w", err)
			}
			continue
		}
		if _, err := fmt.Fprintln(w, historyLine(ev)); err != nil {
			return fmt.Errorf("write event: %w", err)
		}
	}
	return nil
}

// historyLine renders an event for `flinger events`: time, name, device,
// phase, attempt, exit status and detail, in aligned columns.
func historyLine(ev *events.Event) string {
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	attempt := "-"
	if ev.Attempt > 0 {
		attempt = "#" + strconv.Itoa(ev.Attempt)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-23s %-16s %-15s %-3s", ev.Time.Local().Format("2006-01-02 15:04:05.000"),
		ev.Name, dash(ev.Device), dash(string(ev.Phase)), attempt)
	if ev.ExitCode != nil {
		fmt.Fprintf(&b, "  exit %d", *ev.ExitCode)
	}
	detail := ev.Detail
	switch ev.Name {
	case events.EventJobEnd:
		if outcome, _ := ev.Data["outcome"].(string); outcome != "" {
			detail = strings.TrimSpace(detail + " (" + outcome + ")")
		}
	case events.EventProvisionProgress:
		if detail == "" && ev.Data != nil {
			detail = fmt.Sprintf("%v of %v bytes fetched, %v written", ev.Data["bytes_in"], ev.Data["total"], ev.Data["bytes_written"])
		}
	}
	if detail != "" {
		b.WriteString("  ")
		b.WriteString(detail)
	}
	return strings.TrimRight(b.String(), " ")
}

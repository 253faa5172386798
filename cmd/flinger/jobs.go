package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

func readJobFile(path string) ([]byte, events.Format, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, "", fmt.Errorf("read job: %w", err)
	}
	return data, events.DetectFormat(path, data), nil
}

func printFieldErrors(w io.Writer, source string, err error) {
	var verr *events.ValidationError
	var rej *client.RejectedError
	var fields []events.FieldError
	switch {
	case errors.As(err, &verr):
		fields = verr.Fields
	case errors.As(err, &rej):
		fields = rej.Reply.Fields
	}
	if len(fields) == 0 {
		fmt.Fprintf(w, "%s: %v\n", source, err)
		return
	}
	fmt.Fprintf(w, "%s: invalid job:\n", source)
	for _, f := range fields {
		fmt.Fprintf(w, "  %s: %s\n", f.Field, f.Message)
	}
}

func newValidateCmd() *cobra.Command {
	var maxBytes int
	cmd := &cobra.Command{
		Use:   "validate JOB.yaml...",
		Short: "Check job files against Testflinger's job schema",
		Long:  "Check job files (YAML or JSON, - for standard input) as intake would; exits 0 when all are valid, else lists each bad field and exits 1.",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bad := 0
			for _, path := range args {
				data, format, err := readJobFile(path)
				if err == nil {
					_, err = events.ParseJob(data, format, maxBytes)
				}
				if err != nil {
					printFieldErrors(cmd.ErrOrStderr(), path, err)
					bad++
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid\n", path)
			}
			if bad > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d job files invalid", bad, len(args))}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&maxBytes, "max-bytes", events.DefaultMaxJobBytes, "largest job accepted, in bytes")
	return cmd
}

func newSubmitCmd(g *globals) *cobra.Command {
	var follow, quiet bool
	cmd := &cobra.Command{
		Use:   "submit JOB.yaml",
		Short: "Submit a job and print its id",
		Long: `Submit a Testflinger job (YAML or JSON; - for standard input) and print its id.
Files named by the local key of provision_data, firmware_update_data and
test_data attachments (relative to the job file's directory) are packed
into one archive and stored with the job, which waits for them before it
is queued; as with Testflinger's CLI, a job whose attachments cannot be
sent is cancelled.
With --follow, stream its events and output until it ends and exit with its
result: the test phase's exit status, 46 if the device could not be
recovered, 1 if another phase failed or the job was cancelled, 0 if it passed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, format, err := readJobFile(args[0])
			if err != nil {
				return err
			}
			base := "."
			if args[0] != "-" {
				base = filepath.Dir(args[0])
			}
			job, err := client.PrepareJob(data, format, base)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			c, err := g.connect(cmd.Context(), "flinger-submit")
			if err != nil {
				return err
			}
			defer c.Close()
			reply, err := client.SubmitJob(cmd.Context(), c, job, nil)
			if err != nil {
				var rej *client.RejectedError
				if errors.As(err, &rej) {
					printFieldErrors(cmd.ErrOrStderr(), args[0], err)
					return &exitError{code: 1}
				}
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), reply.JobID)
			if !follow {
				return nil
			}
			out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
			rec, err := client.Follow(cmd.Context(), c, reply.JobID,
				func(ev *events.Event) {
					if !quiet {
						fmt.Fprintln(errw, formatEvent(ev))
					}
				},
				func(chunk *events.LogChunk) { _, _ = out.Write(chunk.Data) })
			if err != nil {
				return err
			}
			code := client.ExitStatus(rec)
			fmt.Fprintf(errw, "job %s ended: %s (%s), exit status %d\n", rec.Job.JobID, rec.Outcome, rec.EndReason, code)
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream the job's events and output until it ends; exit with its result")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "with --follow, print output only, not events")
	return cmd
}

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status JOB_ID",
		Short: "Show a job's state, device, phases and outcome",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.connect(cmd.Context(), "flinger-status")
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := client.Status(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"record": st.Record, "explain": st.Explain()})
			}
			rec := st.Record
			fmt.Fprintf(w, "job:       %s\n", rec.Job.JobID)
			if rec.Job.Name != "" {
				fmt.Fprintf(w, "name:      %s\n", rec.Job.Name)
			}
			fmt.Fprintf(w, "queue:     %s\n", rec.Job.JobQueue)
			fmt.Fprintf(w, "state:     %s\n", rec.State)
			fmt.Fprintf(w, "status:    %s\n", st.Explain())
			if rec.Device != "" {
				fmt.Fprintf(w, "device:    %s (host %s, attempt %d)\n", rec.Device, rec.Host, rec.Attempt)
			}
			if reach := client.Reach(rec); reach != "" && !rec.State.Terminal() {
				fmt.Fprintf(w, "reach it:  %s\n", reach)
			}
			if !rec.ReserveUntil.IsZero() && rec.State == events.JobState(events.PhaseReserve) {
				fmt.Fprintf(w, "reserved:  until %s, %s left (flinger reserve extend %s DURATION)\n",
					rec.ReserveUntil.Local().Format(time.DateTime), max(time.Until(rec.ReserveUntil), 0).Round(time.Second), rec.Job.JobID)
			}
			for _, a := range rec.Attempts {
				fmt.Fprintf(w, "attempt %d: %s on %s during %s: %s\n", a.N, a.Result, a.Device, a.Phase, a.Detail)
			}
			fmt.Fprintf(w, "submitted: %s\n", rec.SubmittedAt.Local().Format(time.DateTime))
			if !rec.EndedAt.IsZero() {
				fmt.Fprintf(w, "ended:     %s\n", rec.EndedAt.Local().Format(time.DateTime))
			}
			for _, p := range events.Phases {
				if rc, ok := rec.Status[p]; ok {
					fmt.Fprintf(w, "  %-16s exit %d\n", p, rc)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the job record as JSON")
	return cmd
}

func newCancelCmd(g *globals) *cobra.Command {
	var comment string
	cmd := &cobra.Command{
		Use:   "cancel JOB_ID",
		Short: "Cancel a job, waiting or running, in any phase",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.connect(cmd.Context(), "flinger-cancel")
			if err != nil {
				return err
			}
			defer c.Close()
			state, err := client.Cancel(cmd.Context(), c, args[0], comment)
			if err != nil {
				return err
			}
			if state == events.JobCancelled {
				fmt.Fprintf(cmd.OutOrStdout(), "job %s cancelled\n", args[0])
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "job %s: cancel sent to its device (it was in %s)\n", args[0], state)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&comment, "comment", "", "why, recorded in the cancelled event")
	return cmd
}

// formatEvent renders an event on one line for people.
func formatEvent(ev *events.Event) string {
	var b strings.Builder
	b.WriteString(ev.Time.Local().Format("15:04:05.000"))
	if ev.JobID != "" {
		fmt.Fprintf(&b, " job %s", short(ev.JobID))
	}
	if ev.Device != "" {
		fmt.Fprintf(&b, " [%s]", ev.Device)
	}
	fmt.Fprintf(&b, " %s", ev.Name)
	if ev.Name == events.EventDeviceState && ev.Data != nil {
		fmt.Fprintf(&b, " %v/%v", ev.Data["state"], ev.Data["health"])
	}
	if ev.ExitCode != nil && *ev.ExitCode != 0 {
		fmt.Fprintf(&b, " (exit %d)", *ev.ExitCode)
	}
	if ev.Detail != "" {
		fmt.Fprintf(&b, ": %s", ev.Detail)
	}
	return b.String()
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

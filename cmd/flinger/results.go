package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

func newResultsCmd(g *globals) *cobra.Command {
	var (
		asJSON   bool
		dir      string
		maxBytes int64
	)
	cmd := &cobra.Command{
		Use:   "results JOB_ID",
		Short: "Show a job's results: each phase's exit status, its device, its artifacts",
		Long: `Show a job's results as Testflinger's results do: the job's state and
outcome, each phase's exit status and the device's information, and the
artifact archive the job left (the test's artifacts/ directory and the
serial console's log). With --artifacts DIR the archive is downloaded,
checked against its recorded size and SHA-256, and unpacked into DIR.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.connect(cmd.Context(), "flinger-results")
			if err != nil {
				return err
			}
			defer c.Close()
			rec, _, err := c.GetJob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(resultsJSON(rec)); err != nil {
					return err
				}
			} else {
				printResults(w, rec)
			}
			if dir == "" {
				return nil
			}
			start := time.Now()
			st, _, err := client.DownloadArtifacts(cmd.Context(), c, rec.Job.JobID, dir, maxBytes)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "artifacts: %d files, %d bytes unpacked into %s in %s (archive %d bytes, sha256 checked)\n",
				st.Files, st.Bytes, dir, time.Since(start).Round(time.Millisecond), rec.Artifacts.Size)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print the results as JSON (Testflinger's <phase>_status names)")
	f.StringVar(&dir, "artifacts", "", "download the job's artifact archive and unpack it into this directory")
	f.Int64Var(&maxBytes, "max-bytes", 64<<30, "refuse an artifact archive that unpacks to more than this many bytes")
	return cmd
}

// resultsJSON is a job's results with Testflinger's names.
func resultsJSON(rec *events.JobRecord) map[string]any {
	out := map[string]any{
		"job_id":    rec.Job.JobID,
		"job_state": rec.State,
		"outcome":   rec.Outcome,
	}
	if rec.EndReason != "" {
		out["end_reason"] = rec.EndReason
	}
	for p, rc := range rec.Status {
		out[string(p)+"_status"] = rc
	}
	if len(rec.DeviceInfo) > 0 {
		out["device_info"] = rec.DeviceInfo
	} else if rec.Device != "" {
		out["device_info"] = map[string]any{"agent_name": rec.Device}
	}
	if rec.Artifacts != nil {
		out["artifacts"] = rec.Artifacts
	}
	if rec.Attachments != nil {
		out["attachments"] = rec.Attachments
	}
	if rec.AttachmentsStatus != "" {
		out["attachments_status"] = rec.AttachmentsStatus
	}
	if len(rec.Attempts) > 0 {
		out["attempts"] = rec.Attempts
	}
	return out
}

func printResults(w io.Writer, rec *events.JobRecord) {
	fmt.Fprintf(w, "job:       %s\n", rec.Job.JobID)
	fmt.Fprintf(w, "state:     %s\n", rec.State)
	if rec.Outcome != "" {
		fmt.Fprintf(w, "outcome:   %s (%s)\n", rec.Outcome, rec.EndReason)
	}
	if rec.Device != "" {
		fmt.Fprintf(w, "device:    %s (host %s)\n", rec.Device, rec.Host)
	}
	keys := make([]string, 0, len(rec.DeviceInfo))
	for k := range rec.DeviceInfo {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-16s %v\n", k, rec.DeviceInfo[k])
	}
	for _, p := range events.Phases {
		if rc, ok := rec.Status[p]; ok {
			fmt.Fprintf(w, "%-26s %d\n", string(p)+"_status:", rc)
		}
	}
	if a := rec.Attachments; a != nil {
		fmt.Fprintf(w, "attachments: %d files, %d bytes (sha256 %s)\n", a.Files, a.Size, a.SHA256)
	}
	if a := rec.Artifacts; a != nil {
		fmt.Fprintf(w, "artifacts: %d files, %d bytes (sha256 %s): flinger results %s --artifacts DIR\n", a.Files, a.Size, a.SHA256, rec.Job.JobID)
	} else if rec.State.Terminal() {
		fmt.Fprintln(w, "artifacts: none")
	}
}

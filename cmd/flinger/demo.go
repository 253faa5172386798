package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
)

// demoTimeout bounds the whole demo.
const demoTimeout = 2 * time.Minute

// outcomeRejected is the expected outcome of an example that intake must refuse.
const outcomeRejected = "rejected"

// demoJob is one example job and what became of it.
type demoJob struct {
	file     string
	expected string
	id       string
	err      string
	rec      *events.JobRecord
	took     time.Duration
}

// loadExamples reads the example jobs of dir and their expected outcomes
// from dir/expected.yaml (file name: outcome).
func loadExamples(dir string) ([]*demoJob, error) {
	manifest := filepath.Join(dir, "expected.yaml")
	data, err := os.ReadFile(manifest)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	var expected map[string]string
	if err := yaml.Unmarshal(data, &expected); err != nil {
		return nil, fmt.Errorf("demo: %s: %w", manifest, err)
	}
	valid := []string{string(events.OutcomePass), string(events.OutcomeTestFail), string(events.OutcomeFail),
		string(events.OutcomeRecoveryFail), string(events.OutcomeCancelled), string(events.OutcomeTimeout), outcomeRejected}
	var jobs []*demoJob
	for file, outcome := range expected {
		if !slices.Contains(valid, outcome) {
			return nil, fmt.Errorf("demo: %s: %s: unknown outcome %q (use one of %s)", manifest, file, outcome, strings.Join(valid, ", "))
		}
		if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
			return nil, fmt.Errorf("demo: %s names %s: %w", manifest, file, err)
		}
		jobs = append(jobs, &demoJob{file: file, expected: outcome})
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		ext := filepath.Ext(name)
		if name == "expected.yaml" || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		if _, ok := expected[name]; !ok {
			return nil, fmt.Errorf("demo: %s has no expected outcome in %s", name, manifest)
		}
	}
	slices.SortFunc(jobs, func(a, b *demoJob) int { return strings.Compare(a.file, b.file) })
	return jobs, nil
}

// runDemo submits the examples to the lab, shows their events live, prints
// a table of outcomes and fails unless each example ended as expected.
func runDemo(ctx context.Context, w io.Writer, l *lab.Lab, dir string) error {
	jobs, err := loadExamples(dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	c := l.Client
	start := time.Now()

	var mu sync.Mutex
	byID := map[string]*demoJob{}
	ended := make(chan string, len(jobs)*4)
	seq, err := client.Watch(ctx, c, client.WatchOptions{})
	if err != nil {
		return err
	}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for ev, err := range seq {
			if err != nil {
				fmt.Fprintln(w, "  watch:", err)
				continue
			}
			fmt.Fprintln(w, "  "+formatEvent(ev))
			if ev.Name == events.EventJobEnd {
				ended <- ev.JobID
			}
		}
	}()

	fmt.Fprintf(w, "Submitting %d example jobs from %s\n", len(jobs), dir)
	pending := map[string]bool{}
	for _, j := range jobs {
		data, format, err := readJobFile(filepath.Join(dir, j.file))
		if err != nil {
			return err
		}
		job, err := client.PrepareJob(data, format, dir)
		if err != nil {
			return fmt.Errorf("%s: %w", j.file, err)
		}
		reply, err := client.SubmitJob(ctx, c, job, nil)
		if err != nil {
			var rej *client.RejectedError
			if !errors.As(err, &rej) {
				return fmt.Errorf("demo: submit %s: %w", j.file, err)
			}
			j.err = err.Error()
			fmt.Fprintf(w, "  %s rejected: %s\n", j.file, j.err)
			continue
		}
		mu.Lock()
		j.id = reply.JobID
		byID[j.id] = j
		pending[j.id] = true
		mu.Unlock()
		fmt.Fprintf(w, "  %s -> job %s on queue %s\n", j.file, j.id, reply.Queue)
	}

	for len(pending) > 0 {
		select {
		case id := <-ended:
			delete(pending, id)
		case <-ctx.Done():
			fmt.Fprintf(w, "demo: %d jobs still running after %s\n", len(pending), demoTimeout)
			pending = nil
		}
	}
	cancel()
	<-watchDone

	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	for _, j := range jobs {
		if j.id == "" {
			continue
		}
		if rec, _, err := c.GetJob(rctx, j.id); err == nil {
			j.rec = rec
			if !rec.EndedAt.IsZero() {
				j.took = rec.EndedAt.Sub(rec.SubmittedAt)
			}
		}
	}

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "EXAMPLE\tJOB\tQUEUE\tDEVICE\tOUTCOME\tEXPECTED\tTIME\t")
	bad := 0
	for _, j := range jobs {
		outcome, queue, device, id := outcomeRejected, "-", "-", "-"
		if j.id != "" {
			id = short(j.id)
			outcome = "unfinished"
			if j.rec != nil {
				queue, device = j.rec.Job.JobQueue, j.rec.Device
				if j.rec.State.Terminal() {
					outcome = string(j.rec.Outcome)
				}
				if device == "" {
					device = "-"
				}
				// A requeued job shows every device that tried it.
				if len(j.rec.Attempts) > 0 {
					tried := make([]string, 0, len(j.rec.Attempts)+1)
					for _, a := range j.rec.Attempts {
						tried = append(tried, a.Device+" ("+a.Result+")")
					}
					if j.rec.Device != "" && j.rec.Device != j.rec.Attempts[len(j.rec.Attempts)-1].Device {
						tried = append(tried, j.rec.Device)
					}
					device = strings.Join(tried, " → ")
				}
			}
		}
		mark := "ok"
		if outcome != j.expected {
			mark = "MISMATCH"
			bad++
		}
		took := "-"
		if j.took > 0 {
			took = j.took.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.file, id, queue, device, outcome, j.expected, took, mark)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n%d of %d examples ended as expected in %s\n", len(jobs)-bad, len(jobs), time.Since(start).Round(time.Millisecond))
	if bad > 0 {
		return &exitError{code: 1, err: fmt.Errorf("demo: %d examples did not end as expected", bad)}
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/workers"
)

// startTestLab starts an in-memory lab with one fake device on queue q.
func startTestLab(t *testing.T) *lab.Lab {
	t.Helper()
	host, err := drivers.ParseHost([]byte("host: ev-host\ndevices:\n  - agent_name: ev-1\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [q]\n"), "ev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{
		Server: broker.ServerOptions{Memory: true, Listen: "127.0.0.1:0"},
		Store:  events.StoreOptions{Memory: true},
		Host:   host,
		Worker: workers.Config{RunDir: t.TempDir()},
		Log:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(l.Stop)
	return l
}

func submitJob(t *testing.T, l *lab.Lab, job string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	reply, err := client.Submit(ctx, l.Client, []byte(job), events.FormatYAML)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return reply.JobID
}

// lineNames returns the event name of each line `flinger events` printed.
func lineNames(out string) []string {
	var names []string
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) >= 3 {
			names = append(names, f[2])
		}
	}
	return names
}

func TestEventsCommand(t *testing.T) {
	l := startTestLab(t)
	failed := submitJob(t, l, "job_queue: q\nprovision_data: {url: http://example.com/i}\ntest_data: {test_cmds: 'exit 3'}\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.Follow(ctx, l.Client, failed, nil, nil); err != nil {
		t.Fatal(err)
	}
	stored, err := client.History(ctx, l.Client, failed)
	if err != nil {
		t.Fatal(err)
	}
	var storedNames []string
	for _, ev := range stored {
		storedNames = append(storedNames, ev.Name)
	}
	if len(stored) < 10 || storedNames[0] != events.EventJobSubmitted || storedNames[len(storedNames)-1] != events.EventJobEnd {
		t.Fatalf("history = %v", storedNames)
	}

	tests := []struct {
		name  string
		args  []string
		code  int
		check func(t *testing.T, out string)
	}{
		{
			name: "history",
			args: []string{"events", failed},
			check: func(t *testing.T, out string) {
				if got := lineNames(out); strings.Join(got, " ") != strings.Join(storedNames, " ") {
					t.Errorf("events printed %v\nwant %v", got, storedNames)
				}
				for _, want := range []string{"test_fail", "ev-1", "#1", "exit 3", "normal_exit (test_fail)"} {
					if !strings.Contains(out, want) {
						t.Errorf("output lacks %q:\n%s", want, out)
					}
				}
			},
		},
		{
			name: "json lines",
			args: []string{"events", failed, "--json"},
			check: func(t *testing.T, out string) {
				var names []string
				for line := range strings.Lines(out) {
					var ev map[string]any
					if err := json.Unmarshal([]byte(line), &ev); err != nil {
						t.Fatalf("line %q: %v", line, err)
					}
					if ev["job_id"] != failed || ev["timestamp"] == nil {
						t.Errorf("line %q", line)
					}
					names = append(names, ev["event_name"].(string))
				}
				if strings.Join(names, " ") != strings.Join(storedNames, " ") {
					t.Errorf("events printed %v\nwant %v", names, storedNames)
				}
			},
		},
		{
			name: "follow an ended job returns at once",
			args: []string{"events", failed, "--follow"},
			check: func(t *testing.T, out string) {
				if got := lineNames(out); len(got) != len(storedNames) || got[len(got)-1] != events.EventJobEnd {
					t.Errorf("events printed %v", got)
				}
			},
		},
		{
			name: "unknown job",
			args: []string{"events", "00000000-0000-0000-0000-000000000000"},
			code: 1,
			check: func(t *testing.T, out string) {
				if !strings.Contains(out, "no such job") {
					t.Errorf("output: %s", out)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runFlinger(t, append(tt.args, "--nats", l.URL)...)
			if code != tt.code {
				t.Fatalf("exit status %d, want %d; output:\n%s", code, tt.code, out)
			}
			tt.check(t, out)
		})
	}
}

func TestEventsFollowRunningJob(t *testing.T) {
	l := startTestLab(t)
	id := submitJob(t, l, "job_queue: q\nprovision_data: {delay: 2}\ntest_data: {test_cmds: 'echo ok'}\n")
	// The job provisions for 2 s: the command starts while it runs.
	code, out := runFlinger(t, "events", id, "--follow", "--nats", l.URL)
	if code != 0 {
		t.Fatalf("exit status %d; output:\n%s", code, out)
	}
	names := lineNames(out)
	if len(names) == 0 || names[len(names)-1] != events.EventJobEnd || !strings.Contains(strings.Join(names, " "), "provision_success") {
		t.Errorf("followed events: %v", names)
	}
}

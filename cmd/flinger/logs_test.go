package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/client"
)

func TestLogsCommand(t *testing.T) {
	l := startTestLab(t)
	// 5000 lines make several chunks of provision output.
	id := submitJob(t, l, "job_queue: q\nprovision_data: {output_lines: 5000}\ntest_data: {test_cmds: 'echo hello from the test'}\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.Follow(ctx, l.Client, id, nil, nil); err != nil {
		t.Fatal(err)
	}
	chunks, err := client.LogsSoFar(ctx, l.Client, id, "provision")
	if err != nil || len(chunks) < 2 {
		t.Fatalf("provision output in %d chunks (%v); want several", len(chunks), err)
	}
	tests := []struct {
		name    string
		args    []string
		code    int
		want    []string
		notWant []string
	}{
		{"every phase", []string{"logs", id}, 0,
			[]string{"Starting testflinger setup phase", "fake provision output line 5000 of 5000", "hello from the test", "Starting testflinger cleanup phase"}, nil},
		{"one phase", []string{"logs", id, "--phase", "test"}, 0,
			[]string{"hello from the test"}, []string{"fake provision output line", "setup phase"}},
		{"from a chunk", []string{"logs", id, "--phase", "provision", "--from", "2"}, 0,
			[]string{"fake provision output line 5000 of 5000"}, []string{"Starting testflinger provision phase", "fake provision output line 1 of 5000\n"}},
		{"follow an ended job", []string{"logs", id, "--follow", "--phase", "test"}, 0,
			[]string{"hello from the test"}, []string{"fake provision output line"}},
		{"bad phase", []string{"logs", id, "--phase", "tset"}, 1, []string{`--phase "tset": not a phase`}, nil},
		{"unknown job", []string{"logs", "00000000-0000-0000-0000-000000000000"}, 1, []string{"no such job"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runFlinger(t, append(tt.args, "--nats", l.URL)...)
			if code != tt.code {
				t.Fatalf("exit status %d, want %d; output:\n%s", code, tt.code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q", w)
				}
			}
		})
	}
}

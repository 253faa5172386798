package client

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/archive"
	"github.com/flingerlab/flinger/events"
)

func TestPrepareJob(t *testing.T) {
	base := t.TempDir()
	outside := t.TempDir()
	for _, p := range []string{filepath.Join(base, "img.zst"), filepath.Join(base, "sub", "run.sh"), filepath.Join(outside, "far.bin")} {
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		job     string
		sources []archive.Source
		agents  map[string]string // "<phase>[i]" → agent after rewriting
		err     string
	}{
		{
			name: "no attachments: unchanged",
			job:  "job_queue: q\ntest_data: {test_cmds: echo}\n",
		},
		{
			name: "agent only: unchanged",
			job:  "job_queue: q\ntest_data:\n  attachments: [{agent: a.sh}]\n",
		},
		{
			name: "agent derived from local",
			job: "job_queue: q\nprovision_data:\n  use_attachment: img.zst\n  attachments: [{local: img.zst}]\n" +
				"test_data:\n  attachments:\n    - local: sub/run.sh\n    - local: " + filepath.Join(outside, "far.bin") + "\n    - local: sub/run.sh\n      agent: /bin/run.sh\n      device: /home/ubuntu/run.sh\n",
			sources: []archive.Source{
				{Path: filepath.Join(base, "img.zst"), Name: "provision/img.zst"},
				{Path: filepath.Join(base, "sub", "run.sh"), Name: "test/sub/run.sh"},
				{Path: filepath.Join(outside, "far.bin"), Name: "test/far.bin"},
				{Path: filepath.Join(base, "sub", "run.sh"), Name: "test/bin/run.sh"},
			},
			agents: map[string]string{"provision[0]": "img.zst", "test[0]": "sub/run.sh", "test[1]": "far.bin", "test[2]": "bin/run.sh"},
		},
		{
			name: "missing local file",
			job:  "job_queue: q\ntest_data:\n  attachments: [{local: img.zst}, {local: gone.bin}]\n",
			err:  "test_data.attachments[1]: local: gone.bin: no such file or directory",
		},
		{
			name: "agent escaping",
			job:  "job_queue: q\nfirmware_update_data:\n  attachments: [{local: img.zst, agent: ../../etc/x}]\n",
			err:  "firmware_update_data.attachments[0]: agent",
		},
		{
			name: "agent not a string",
			job:  "job_queue: q\ntest_data:\n  attachments: [{local: img.zst, agent: 7}]\n",
			err:  "test_data.attachments[0]: agent: must be a string",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job, err := PrepareJob([]byte(tt.job), events.FormatYAML, base)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(tt.sources) == 0 {
				if string(job.Data) != tt.job || job.Format != events.FormatYAML || len(job.Sources) != 0 {
					t.Errorf("job changed: %s (%s), sources %v", job.Data, job.Format, job.Sources)
				}
				return
			}
			if len(job.Sources) != len(tt.sources) {
				t.Fatalf("sources %v, want %v", job.Sources, tt.sources)
			}
			for i := range tt.sources {
				if job.Sources[i] != tt.sources[i] {
					t.Errorf("source %d: %+v, want %+v", i, job.Sources[i], tt.sources[i])
				}
			}
			if job.Format != events.FormatJSON {
				t.Errorf("format %s, want json", job.Format)
			}
			var doc map[string]any
			if err := json.Unmarshal(job.Data, &doc); err != nil {
				t.Fatal(err)
			}
			parsed, err := events.ParseJob(job.Data, events.FormatJSON, 0)
			if err != nil {
				t.Fatalf("rewritten job does not validate: %v", err)
			}
			for _, p := range events.AttachmentPhases {
				for i, a := range parsed.AttachmentsOf(p) {
					key := string(p) + "[" + string(rune('0'+i)) + "]"
					if a.Local != "" {
						t.Errorf("%s still names local %q", key, a.Local)
					}
					if want := tt.agents[key]; a.Agent != want {
						t.Errorf("%s agent %q, want %q", key, a.Agent, want)
					}
				}
			}
			if got := parsed.TestData.Attachments[2].Device; got != "/home/ubuntu/run.sh" {
				t.Errorf("device path %q lost", got)
			}
		})
	}
}

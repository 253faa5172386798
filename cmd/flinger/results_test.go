package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

// TestResultsCommand submits a job with a test attachment through
// `flinger submit`, whose test copies it into artifacts/, and reads it
// back with `flinger results --artifacts`: byte for byte, and refused
// when the stored archive does not match its checksum.
func TestResultsCommand(t *testing.T) {
	l := startTestLab(t)
	dir := t.TempDir()
	data := make([]byte, 200<<10)
	_, _ = rand.Read(data)
	if err := os.WriteFile(filepath.Join(dir, "blob.bin"), data, 0o640); err != nil {
		t.Fatal(err)
	}
	job := filepath.Join(dir, "job.yaml")
	if err := os.WriteFile(job, []byte(`job_queue: q
test_data:
  attachments:
    - local: blob.bin
      agent: in/blob.bin
  test_cmds: |
    mkdir -p artifacts/out
    cp attachments/test/in/blob.bin artifacts/out/copy.bin
    echo done > artifacts/note.txt
    exit 4
`), 0o640); err != nil {
		t.Fatal(err)
	}
	code, out := runFlinger(t, "submit", job, "--nats", l.URL)
	if code != 0 {
		t.Fatalf("submit: exit %d\n%s", code, out)
	}
	id := strings.TrimSpace(out)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.Follow(ctx, l.Client, id, nil, nil); err != nil {
		t.Fatal(err)
	}

	dest := filepath.Join(t.TempDir(), "got")
	code, out = runFlinger(t, "results", id, "--artifacts", dest, "--nats", l.URL)
	if code != 0 {
		t.Fatalf("results: exit %d\n%s", code, out)
	}
	for _, want := range []string{"test_status:", " 4\n", "artifacts: 2 files", "sha256", "unpacked into " + dest} {
		if !strings.Contains(out, want) {
			t.Errorf("results output lacks %q:\n%s", want, out)
		}
	}
	got, err := os.ReadFile(filepath.Join(dest, "out", "copy.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("artifact: %d bytes (%v), want the %d bytes attached", len(got), err, len(data))
	}

	code, out = runFlinger(t, "results", id, "--json", "--nats", l.URL)
	if code != 0 || !strings.Contains(out, `"test_status": 4`) || !strings.Contains(out, `"attachments_status": "complete"`) {
		t.Errorf("results --json: exit %d\n%s", code, out)
	}

	// A stored archive that no longer matches its record is refused.
	store, err := l.Client.Artifacts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, _, err := l.Client.GetJob(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	tampered := make([]byte, rec.Artifacts.Size)
	if _, err := store.Put(ctx, jetstream.ObjectMeta{Name: id}, bytes.NewReader(tampered)); err != nil {
		t.Fatal(err)
	}
	code, out = runFlinger(t, "results", id, "--artifacts", filepath.Join(t.TempDir(), "bad"), "--nats", l.URL)
	if code == 0 || !strings.Contains(out, "checksum mismatch") {
		t.Errorf("tampered artifacts: exit %d, want a checksum mismatch:\n%s", code, out)
	}

	// A job without artifacts, and one that does not exist.
	plain := submitJob(t, l, "job_queue: q\ntest_data: {test_cmds: 'true'}\n")
	if _, err := client.Follow(ctx, l.Client, plain, nil, nil); err != nil {
		t.Fatal(err)
	}
	code, out = runFlinger(t, "results", plain, "--artifacts", t.TempDir(), "--nats", l.URL)
	if code == 0 || !strings.Contains(out, "left nothing in artifacts/") {
		t.Errorf("no artifacts: exit %d\n%s", code, out)
	}
	if rec, _, _ := l.Client.GetJob(ctx, plain); rec.Artifacts != nil || rec.State != events.JobCompleted {
		t.Errorf("plain job: %+v", rec)
	}
	code, out = runFlinger(t, "results", "00000000-0000-0000-0000-000000000000", "--nats", l.URL)
	if code == 0 || !strings.Contains(out, "no such job") {
		t.Errorf("unknown job: exit %d\n%s", code, out)
	}
}

// TestArtifactsOfCancelledJob: a job cancelled in its test phase still
// stores what it left in artifacts/.
func TestArtifactsOfCancelledJob(t *testing.T) {
	l := startTestLab(t)
	id := submitJob(t, l, "job_queue: q\ntest_data:\n  test_cmds: |\n    mkdir -p artifacts\n    echo partial > artifacts/partial.txt\n    echo ready\n    sleep 600\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		chunks, _ := client.LogsSoFar(ctx, l.Client, id, events.PhaseTest)
		var out strings.Builder
		for _, ch := range chunks {
			out.Write(ch.Data)
		}
		if strings.Contains(out.String(), "ready") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the test never got ready")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := client.Cancel(ctx, l.Client, id, "enough"); err != nil {
		t.Fatal(err)
	}
	rec, err := client.Follow(ctx, l.Client, id, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Outcome != events.OutcomeCancelled {
		t.Fatalf("outcome %s, want cancelled", rec.Outcome)
	}
	dest := t.TempDir()
	code, out := runFlinger(t, "results", id, "--artifacts", dest, "--nats", l.URL)
	if code != 0 {
		t.Fatalf("results: exit %d\n%s", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "partial.txt")); err != nil || string(b) != "partial\n" {
		t.Errorf("partial.txt of the cancelled job: %q (%v)", b, err)
	}
}

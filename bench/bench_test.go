package bench

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs every figure in short mode: not a measurement, a proof
// that the benchmark code still works. It needs the flinger binary, which
// it builds.
func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "flinger")
	build := exec.Command("go", "build", "-o", bin, "./cmd/flinger")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build flinger: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	env := &Env{Short: true, Trials: 1, Flinger: bin, Dir: dir, Log: slog.New(slog.DiscardHandler)}
	rep := RunAll(ctx, env, nil)
	if len(rep.Errors) > 0 {
		t.Fatalf("figures failed: %v", rep.Errors)
	}
	if len(rep.Results) != len(Figures()) {
		t.Fatalf("%d results for %d figures", len(rep.Results), len(Figures()))
	}
	for _, res := range rep.Results {
		if len(res.Rows) == 0 {
			t.Errorf("%s: no rows", res.Figure)
		}
		for _, r := range res.Rows {
			// The per-device memory is a difference of two RSS readings
			// 8 devices apart in a smoke run: noise, which may be negative.
			negativeOK := strings.HasPrefix(r.Name, "per idle device")
			if (r.Value.Value < 0 && !negativeOK) || len(r.Trials) == 0 {
				t.Errorf("%s: row %q has value %v from %d trials", res.Figure, r.Name, r.Value.Value, len(r.Trials))
			}
		}
	}
	// Correctness that holds even in a smoke run: the observer saw every
	// event, no client was cut off, every job cost some messages.
	for _, res := range rep.Results {
		for _, r := range res.Rows {
			switch {
			case strings.HasPrefix(r.Name, "observer"), strings.HasPrefix(r.Name, "slow-consumer"):
				if r.Met == nil || !*r.Met {
					t.Errorf("%s: %s = %v", res.Figure, r.Name, r.Value.Value)
				}
			case r.Name == "NATS messages per job" && r.Value.Value < 5:
				t.Errorf("%s: %v messages per job is implausible", res.Figure, r.Value.Value)
			}
		}
	}
	out := filepath.Join(dir, "out")
	if err := rep.Write(out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.json", "report.md"} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
}

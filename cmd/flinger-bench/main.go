// Command flinger-bench runs Flinger's benchmark suite (package bench) and
// writes bench/results.json and bench/report.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/flingerlab/flinger/bench"
)

func main() {
	var (
		out     = flag.String("out", "bench", "directory for results.json and report.md")
		flinger = flag.String("flinger", "", "flinger binary (default: build ./cmd/flinger)")
		only    = flag.String("only", "", "comma-separated figures to run (default: all)")
		merge   = flag.Bool("merge", false, "with -only: keep the other figures of the report already in -out")
		short   = flag.Bool("short", false, "a tiny smoke run")
		trials  = flag.Int("trials", 3, "trials per figure")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "flinger-bench-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)
	bin := *flinger
	if bin == "" {
		bin = filepath.Join(dir, "flinger")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/flinger")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fail(fmt.Errorf("build flinger: %w", err))
		}
	}
	if abs, err := filepath.Abs(bin); err == nil {
		bin = abs
	}
	var names []string
	if *only != "" {
		names = strings.Split(*only, ",")
	}
	env := &bench.Env{Short: *short, Trials: *trials, Flinger: bin, Dir: dir, Profiles: filepath.Join(*out, "profiles"), Log: log}
	if env.Short {
		env.Trials = 1
	}
	rep := bench.RunAll(ctx, env, names)
	if *merge && len(names) > 0 {
		data, err := os.ReadFile(filepath.Join(*out, "results.json"))
		if err != nil {
			fail(fmt.Errorf("-merge: %w", err))
		}
		var earlier bench.Report
		if err := json.Unmarshal(data, &earlier); err != nil {
			fail(fmt.Errorf("-merge: %s: %w", filepath.Join(*out, "results.json"), err))
		}
		rep.Merge(&earlier)
	}
	_ = os.RemoveAll(filepath.Join("/dev/shm", "flinger-bench-runs-"+filepath.Base(dir)))
	if err := rep.Write(*out); err != nil {
		fail(err)
	}
	fmt.Print(rep.Markdown())
	if len(rep.Errors) > 0 {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "flinger-bench:", err)
	os.Exit(1)
}

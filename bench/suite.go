// Package bench is Flinger's benchmark suite: each figure is measured
// beside a baseline taken in the same run on the same machine (raw
// JetStream, a bare process, Testflinger's way of writing an image with
// OpenSSH), so that the ratio holds on a noisy machine.
// `make bench` runs every figure and writes bench/results.json and
// bench/report.md. A figure is one small file that calls Register.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Figure is one measurement of the suite.
type Figure struct {
	// Name identifies the figure in results and on the command line.
	Name string
	// Title heads its table in the report.
	Title string
	// Order places it in the report.
	Order int
	// Run measures it.
	Run func(ctx context.Context, env *Env) (*Result, error)
}

var figures []Figure

// Register adds a figure to the suite; figures call it from init.
func Register(f Figure) {
	figures = append(figures, f)
	slices.SortFunc(figures, func(a, b Figure) int { return a.Order - b.Order })
}

// Figures lists the registered figures in report order.
func Figures() []Figure { return slices.Clone(figures) }

// Env is what every figure gets.
type Env struct {
	// Short makes every figure tiny: a smoke run that proves the code works.
	Short bool
	// Trials is how many times each figure repeats its measurement.
	Trials int
	// Flinger is the flinger binary, for figures that start processes.
	Flinger string
	// Dir is a scratch directory.
	Dir string
	// Profiles is where CPU profiles are kept ("" : under Dir).
	Profiles string
	// Log receives progress.
	Log *slog.Logger
}

// scale picks n in a full run and short in a short one.
func (e *Env) scale(n, short int) int {
	if e.Short {
		return short
	}
	return n
}

// Value is one number with its unit.
type Value struct {
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Row is one line of a figure's table: a measured value, the baseline it
// is compared with, their ratio, and the target it is held to.
type Row struct {
	// Name says what is measured.
	Name string `json:"name"`
	// Value is the median over the trials.
	Value Value `json:"value"`
	// Trials are the per-trial values, in order.
	Trials []float64 `json:"trials,omitempty"`
	// Baseline is what it is compared with, if anything.
	Baseline *Value `json:"baseline,omitempty"`
	// BaselineName says what the baseline is.
	BaselineName string `json:"baseline_name,omitempty"`
	// Ratio is Value ÷ Baseline.
	Ratio *float64 `json:"ratio,omitempty"`
	// Target is the goal, in words ("≤ 5 ms").
	Target string `json:"target,omitempty"`
	// Met says whether the target was reached (nil: no target).
	Met *bool `json:"met,omitempty"`
}

// Result is a figure's outcome.
type Result struct {
	Figure  string   `json:"figure"`
	Title   string   `json:"title"`
	Rows    []Row    `json:"rows"`
	Notes   []string `json:"notes,omitempty"`
	Command string   `json:"command"`
	Seconds float64  `json:"seconds"`
}

// Report is a whole run.
type Report struct {
	Started time.Time `json:"started"`
	Machine string    `json:"machine"`
	Short   bool      `json:"short"`
	Results []*Result `json:"results"`
	Errors  []string  `json:"errors,omitempty"`
}

// RunAll runs the figures named in only (all when empty).
func RunAll(ctx context.Context, env *Env, only []string) *Report {
	rep := &Report{Started: time.Now().UTC(), Short: env.Short,
		Machine: fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())}
	for _, f := range figures {
		if len(only) > 0 && !slices.Contains(only, f.Name) {
			continue
		}
		env.Log.Info("figure", "name", f.Name)
		start := time.Now()
		res, err := f.Run(ctx, env)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v", f.Name, err))
			env.Log.Error("figure failed", "name", f.Name, "err", err)
			continue
		}
		res.Figure, res.Title, res.Seconds = f.Name, f.Title, time.Since(start).Seconds()
		if res.Command == "" {
			res.Command = "go run ./cmd/flinger-bench -only " + f.Name
		}
		rep.Results = append(rep.Results, res)
	}
	return rep
}

// Merge puts into r the results of an earlier report of the figures r did
// not run, so that re-running some figures keeps the others; the earlier
// report's errors of figures r ran are dropped.
func (r *Report) Merge(earlier *Report) {
	ran := map[string]bool{}
	for _, res := range r.Results {
		ran[res.Figure] = true
	}
	for _, e := range r.Errors {
		ran[strings.SplitN(e, ":", 2)[0]] = true
	}
	for _, res := range earlier.Results {
		if !ran[res.Figure] {
			r.Results = append(r.Results, res)
		}
	}
	order := map[string]int{}
	for _, f := range figures {
		order[f.Name] = f.Order
	}
	slices.SortStableFunc(r.Results, func(a, b *Result) int { return order[a.Figure] - order[b.Figure] })
	for _, e := range earlier.Errors {
		if !ran[strings.SplitN(e, ":", 2)[0]] {
			r.Errors = append(r.Errors, e)
		}
	}
}

// Write stores the report as results.json and report.md in dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(r.Markdown()), 0o644)
}

// Markdown renders the report for people.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Flinger benchmarks\n\nRun %s on %s", r.Started.Format(time.RFC3339), r.Machine)
	if r.Short {
		b.WriteString(" (short smoke run: figures are not meaningful)")
	}
	b.WriteString(".\nEach value is the median over its trials; every baseline was measured in the same run on the same machine.\n")
	for _, res := range r.Results {
		fmt.Fprintf(&b, "\n## %s\n\n", res.Title)
		b.WriteString("| measure | value | trials | baseline | ratio | target | met |\n|---|---|---|---|---|---|---|\n")
		for _, row := range res.Rows {
			base, ratio, target, met := "", "", row.Target, ""
			if row.Baseline != nil {
				base = fmt.Sprintf("%s: %s", row.BaselineName, fmtValue(*row.Baseline))
			}
			if row.Ratio != nil {
				ratio = fmtNum(*row.Ratio)
			}
			if row.Met != nil {
				met = "yes"
				if !*row.Met {
					met = "**no**"
				}
			}
			trials := make([]string, len(row.Trials))
			for i, t := range row.Trials {
				trials[i] = fmtNum(t)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", row.Name, fmtValue(row.Value), strings.Join(trials, ", "), base, ratio, target, met)
		}
		for _, n := range res.Notes {
			fmt.Fprintf(&b, "\n%s\n", n)
		}
		fmt.Fprintf(&b, "\nReproduce: `%s` (%.0f s)\n", res.Command, res.Seconds)
	}
	if len(r.Errors) > 0 {
		b.WriteString("\n## Errors\n\n")
		for _, e := range r.Errors {
			fmt.Fprintf(&b, "- %s\n", e)
		}
	}
	return b.String()
}

func fmtValue(v Value) string { return fmtNum(v.Value) + " " + v.Unit }

func fmtNum(f float64) string {
	switch {
	case f == float64(int64(f)):
		return fmt.Sprintf("%d", int64(f))
	case f >= 100:
		return fmt.Sprintf("%.0f", f)
	case f >= 1:
		return fmt.Sprintf("%.2f", f)
	}
	return fmt.Sprintf("%.3g", f)
}

// median returns the median of xs.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the p-th quantile of ds (0 ≤ p ≤ 1).
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[int(float64(len(s)-1)*p)]
}

// row builds a row from per-trial values, with an optional baseline (the
// median of its trials), ratio and target check.
func row(name, unit string, trials []float64, baseName string, base []float64, target string, met func(v, ratio float64) bool) Row {
	r := Row{Name: name, Value: Value{median(trials), unit}, Trials: trials, Target: target}
	ratio := 0.0
	if len(base) > 0 {
		bv := Value{median(base), unit}
		r.Baseline, r.BaselineName = &bv, baseName
		if bv.Value != 0 {
			ratio = r.Value.Value / bv.Value
			r.Ratio = &ratio
		}
	}
	if met != nil {
		ok := met(r.Value.Value, ratio)
		r.Met = &ok
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

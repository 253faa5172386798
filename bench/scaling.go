package bench

import (
	"context"
	"fmt"
)

func init() {
	Register(Figure{Name: "scaling", Title: "Scaling: throughput and dispatch p99 at 10, 100 and 1,000 devices", Order: 40, Run: runScaling})
}

func runScaling(ctx context.Context, env *Env) (*Result, error) {
	type point struct{ devices, procs int }
	points := []point{{10, 1}, {100, 2}, {1000, 20}}
	if env.Short {
		points = []point{{2, 1}, {4, 2}}
	}
	var res Result
	var first float64
	for i, pt := range points {
		s, err := startServer(ctx, env, fmt.Sprintf("scaling-%d", pt.devices))
		if err != nil {
			return nil, err
		}
		w, err := startWorkers(ctx, env, s, pt.procs, pt.devices/pt.procs, "sc")
		if err != nil {
			s.stop()
			return nil, err
		}
		var jps, p99 []float64
		for range env.Trials {
			run, err := saturate(ctx, env, s, "sc", env.scale(max(2000, 5*pt.devices), 40), false)
			if err != nil {
				w.stop()
				s.stop()
				return nil, err
			}
			lat, err := dispatchLatencies(ctx, s.c, "sc", env.scale(300, 20))
			if err != nil {
				w.stop()
				s.stop()
				return nil, err
			}
			jps, p99 = append(jps, run.jobsPerSec), append(p99, ms(percentile(lat, .99)))
		}
		w.stop()
		s.stop()
		procs := fmt.Sprintf("%d worker processes", pt.procs)
		if pt.procs == 1 {
			procs = "1 worker process"
		}
		r := row(fmt.Sprintf("%d devices (%s): jobs/s", pt.devices, procs), "jobs/s", jps, "", nil, "", nil)
		if i == 0 {
			first = r.Value.Value
		} else if first > 0 {
			rel := Value{first, "jobs/s"}
			r.Baseline, r.BaselineName = &rel, fmt.Sprintf("at %d devices", points[0].devices)
			ratio := r.Value.Value / first
			r.Ratio = &ratio
		}
		res.Rows = append(res.Rows, r, row(fmt.Sprintf("%d devices: idle dispatch p99", pt.devices), "ms", p99, "", nil, "", nil))
		env.Log.Info("scaling point", "devices", pt.devices, "jobs_per_s", median(jps), "dispatch_p99_ms", median(p99))
	}
	res.Notes = append(res.Notes, "Each point runs its own server and worker processes (every device serves the shared queue and one of its own), saturates them with max(2000, 5 × devices) no-op jobs, then measures idle dispatch p99 over 300 jobs submitted one at a time. The ratio compares jobs/s with the smallest point: flat means ≈ 1.")
	return &res, nil
}

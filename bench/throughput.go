package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sync/atomic"
	"time"
)

func init() {
	Register(Figure{Name: "throughput", Title: "Throughput: no-op jobs end to end, 1,000 devices over 20 worker processes, with a live observer", Order: 20, Run: runThroughput})
}

// loadRun is one saturated run: n no-op jobs submitted at once.
type loadRun struct {
	jobsPerSec   float64
	intakePerSec float64
	msgsPerJob   float64
	observed     uint64
	published    uint64
	slowClients  int64
}

// saturate submits n no-op jobs to queue at once and waits for all of them
// to end, counting the server's messages; when observe is set, a `flinger
// watch --json` process watches every event meanwhile.
func saturate(ctx context.Context, env *Env, s *server, queue string, n int, observe bool) (*loadRun, error) {
	tr, err := trackJobs(s.c)
	if err != nil {
		return nil, err
	}
	defer tr.close()
	var watch *exec.Cmd
	var lines atomic.Uint64
	watchDone := make(chan struct{})
	if observe {
		watch = exec.Command(env.Flinger, "watch", "--json", "--nats", s.url)
		out, err := watch.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := watch.Start(); err != nil {
			return nil, err
		}
		go func() {
			defer close(watchDone)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				lines.Add(1)
			}
		}()
		defer func() { _ = watch.Process.Kill(); _ = watch.Wait() }()
		time.Sleep(500 * time.Millisecond) // let the watcher subscribe
	}
	evBefore, err := eventCount(ctx, s.c)
	if err != nil {
		return nil, err
	}
	before, err := s.emb.Stats()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ids, err := submitAsync(ctx, s.c, queue, n)
	if err != nil {
		return nil, err
	}
	if err := tr.waitEnded(ctx, ids); err != nil {
		return nil, err
	}
	took := time.Since(start)
	after, err := s.emb.Stats()
	if err != nil {
		return nil, err
	}
	r := &loadRun{jobsPerSec: float64(n) / took.Seconds(), intakePerSec: float64(n) / tr.accepted().Sub(start).Seconds(), msgsPerJob: float64(after.InMsgs-before.InMsgs) / float64(n),
		slowClients: after.SlowConsumers - before.SlowConsumers}
	if observe {
		// Devices go back to idle (and say so) just after job_end: let the
		// last events land, then wait for the watcher to print them all.
		time.Sleep(time.Second)
		evAfter, err := eventCount(ctx, s.c)
		if err != nil {
			return nil, err
		}
		r.published = evAfter - evBefore
		deadline := time.Now().Add(time.Minute)
		for lines.Load() < r.published && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		r.observed = lines.Load()
	}
	return r, nil
}

func runThroughput(ctx context.Context, env *Env) (*Result, error) {
	procs, perProc := env.scale(20, 2), env.scale(50, 5)
	jobs, rawN := env.scale(10000, 200), env.scale(200000, 5000)
	s, err := startServer(ctx, env, "throughput")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	profDir := env.Profiles
	if profDir == "" {
		profDir = filepath.Join(env.Dir, "profiles")
	}
	if err := os.MkdirAll(profDir, 0o755); err != nil {
		return nil, err
	}
	workerProf := filepath.Join(profDir, "worker-{p}.pprof")
	w, err := startWorkers(ctx, env, s, procs, perProc, "tp", "--cpuprofile", workerProf)
	if err != nil {
		return nil, err
	}
	defer w.stop()

	var jps, mpj, pub, cons, ratio, observed, slow []float64
	var notes []string
	for trial := range env.Trials {
		p, c, err := rawRates(ctx, s.url, rawN, 256)
		if err != nil {
			return nil, fmt.Errorf("raw baseline: %w", err)
		}
		var run *loadRun
		if trial == 0 {
			// Profile the process holding the NATS server, the orchestrator
			// and the submitter during the first trial.
			f, err := os.Create(filepath.Join(profDir, "server.pprof"))
			if err != nil {
				return nil, err
			}
			_ = pprof.StartCPUProfile(f)
			run, err = saturate(ctx, env, s, "tp", jobs, true)
			pprof.StopCPUProfile()
			f.Close()
			if err != nil {
				return nil, err
			}
		} else if run, err = saturate(ctx, env, s, "tp", jobs, true); err != nil {
			return nil, err
		}
		jps, mpj = append(jps, run.jobsPerSec), append(mpj, run.msgsPerJob)
		pub, cons = append(pub, p), append(cons, c)
		ratio = append(ratio, run.jobsPerSec*run.msgsPerJob/p)
		observed = append(observed, float64(run.observed)/float64(max(run.published, 1)))
		slow = append(slow, float64(run.slowClients))
		notes = append(notes, fmt.Sprintf("Trial %d: %d jobs at %.0f jobs/s, %.1f NATS messages per job; raw publish %.0f msgs/s, consume %.0f msgs/s; observer printed %d of %d events.",
			trial+1, jobs, run.jobsPerSec, run.msgsPerJob, p, c, run.observed, run.published))
		env.Log.Info("throughput trial", "trial", trial+1, "jobs_per_s", run.jobsPerSec, "intake_per_s", run.intakePerSec, "msgs_per_job", run.msgsPerJob,
			"raw_pub", p, "raw_cons", c, "observed", run.observed, "published", run.published)
	}
	w.stop() // writes the worker profiles
	res := &Result{Rows: []Row{
		row("jobs per second", "jobs/s", jps, "", nil, "≥ 1000", func(v, _ float64) bool { return v >= 1000 }),
		row("NATS messages per job", "msgs", mpj, "", nil, "", nil),
		row("raw JetStream async publish", "msgs/s", pub, "", nil, "", nil),
		row("raw JetStream pull consume", "msgs/s", cons, "", nil, "", nil),
		row("(jobs/s × msgs/job) ÷ raw publish rate", "", ratio, "", nil, "≥ 0.3", func(v, _ float64) bool { return v >= 0.3 }),
		row("observer: events printed ÷ events published", "", observed, "", nil, "= 1", func(v, _ float64) bool { return v == 1 }),
		row("slow-consumer disconnects", "", slow, "", nil, "0", func(v, _ float64) bool { return v == 0 }),
	}}
	res.Notes = append(res.Notes, fmt.Sprintf("%d worker processes with %d fake devices each; every device serves the shared queue and one of its own. Each trial submits %d no-op jobs (setup and cleanup only; the other phases are skipped) asynchronously as JSON and waits for every job_end. Messages per job counts every message clients published to the server during the trial (submissions, records, queue, events, output, device status, acks, pull requests) divided by jobs. The raw baseline publishes %d messages of 256 bytes asynchronously to a stream on the same server's disk, then consumes them with a pull consumer. The observer is `flinger watch --json` reading every event; its lines are counted.", procs, perProc, jobs, rawN))
	res.Notes = append(res.Notes, notes...)
	res.Notes = append(res.Notes, "CPU profile of the process holding the NATS server, orchestrator and submitter (first trial), top functions:\n\n```\n"+pprofTop(ctx, filepath.Join(profDir, "server.pprof"), 20)+"\n```")
	res.Notes = append(res.Notes, "CPU profile of one worker process (all trials), top functions:\n\n```\n"+pprofTop(ctx, filepath.Join(profDir, "worker-0.pprof"), 15)+"\n```")
	return res, nil
}

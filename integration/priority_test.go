package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/workers"
)

// priorityJob is a job of queue and priority whose test runs cmd.
func priorityJob(queue string, priority int, cmd string) string {
	return fmt.Sprintf("job_queue: %s\njob_priority: %d\ntest_data: {test_cmds: '%s'}\n", queue, priority, cmd)
}

// TestPriorityOrder queues jobs of priorities 0, 5, 0, 10, 5 behind the
// only device's running job: when it frees, they run highest first, and
// in the order they came within a priority.
func TestPriorityOrder(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:prio"), workers.Config{})
	c := l.Client
	blocker := submit(t, c, priorityJob("prio", 0, "sleep 300"))
	waitEvent(t, c, blocker, events.PhaseStart(events.PhaseTest))
	prios := []int{0, 5, 0, 10, 5}
	ids := make([]string, len(prios))
	for i, p := range prios {
		ids[i] = submit(t, c, priorityJob("prio", p, "true"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := client.Cancel(ctx, c, blocker, "make way"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	type run struct {
		i  int
		at time.Time
	}
	var runs []run
	for i, id := range ids {
		rec := waitEnd(t, c, id)
		if rec.Outcome != events.OutcomePass || rec.Device != "dev-1" {
			t.Fatalf("job %d (priority %d): %s on %q", i, prios[i], rec.Outcome, rec.Device)
		}
		runs = append(runs, run{i, rec.StartedAt})
	}
	slices.SortFunc(runs, func(a, b run) int { return a.at.Compare(b.at) })
	var got []int
	for _, r := range runs {
		got = append(got, r.i)
	}
	// Jobs 3 (10), 1 and 4 (5, in submission order), 0 and 2 (0).
	if want := []int{3, 1, 4, 0, 2}; !slices.Equal(got, want) {
		t.Errorf("jobs ran in the order %v (priorities %v), want %v", got, prios, want)
	}
}

// TestPriorityTwoWorkers frees the devices of two lab hosts serving one
// queue one at a time: each takes the highest-priority job waiting, the
// oldest first within a priority, including one submitted after others
// had started.
func TestPriorityTwoWorkers(t *testing.T) {
	l := startLab(t, nil, workers.Config{})
	c := l.Client
	cfg := workers.Config{DrainTimeout: 200 * time.Millisecond}
	startWorker(t, l, hostFile(t, "h1", "dev-1:prio2"), cfg)
	startWorker(t, l, hostFile(t, "h2", "dev-2:prio2"), cfg)
	job := func(p int) string { return priorityJob("prio2", p, "sleep 300") }
	ctx, cancel := context.WithTimeout(context.Background(), 5*waitLong)
	defer cancel()

	started := map[string]string{} // job id → device
	waitStart := func(id string) string {
		t.Helper()
		ev := waitEvent(t, c, id, events.EventJobStart)
		started[id] = ev.Device
		return ev.Device
	}
	blockers := []string{submit(t, c, job(0)), submit(t, c, job(0))}
	for _, b := range blockers {
		waitStart(b)
	}
	if started[blockers[0]] == started[blockers[1]] {
		t.Fatalf("both blockers on %s", started[blockers[0]])
	}
	names := map[string]string{}
	waiting := map[string]bool{}
	for _, j := range []struct {
		name string
		p    int
	}{{"a0", 0}, {"a5", 5}, {"b0", 0}, {"a10", 10}, {"b5", 5}} {
		names[j.name] = submit(t, c, job(j.p))
		waiting[names[j.name]] = true
	}
	// step cancels the job running on a device and checks that the device
	// takes want next and that no other waiting job started.
	step := func(running, want string) {
		t.Helper()
		device := started[running]
		if _, err := client.Cancel(ctx, c, running, "next"); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		id := names[want]
		if got := waitStart(id); got != device {
			t.Fatalf("%s started on %s, want %s (freed by the cancel)", want, got, device)
		}
		delete(waiting, id)
		for w := range waiting {
			rec, _, err := c.GetJob(ctx, w)
			if err != nil || rec.State != events.JobWaiting {
				for n, nid := range names {
					if nid == w {
						t.Fatalf("after %s started, %s is %v (%v), want waiting", want, n, rec.State, err)
					}
				}
			}
		}
	}
	names["b0-blocker"], names["b1-blocker"] = blockers[0], blockers[1]
	step(blockers[0], "a10")
	// A later arrival goes before the older jobs of lower priority.
	names["c7"] = submit(t, c, job(7))
	waiting[names["c7"]] = true
	step(blockers[1], "c7")
	step(names["a10"], "a5")
	step(names["c7"], "b5")
	step(names["a5"], "a0")
	step(names["b5"], "b0")
	for _, n := range []string{"a0", "b0"} {
		if _, err := client.Cancel(ctx, c, names[n], "done"); err != nil {
			t.Fatalf("cancel: %v", err)
		}
	}
	hosts := map[string]bool{}
	for _, d := range started {
		hosts[d] = true
	}
	if len(hosts) != 2 {
		t.Errorf("jobs ran on %v, want both hosts' devices", hosts)
	}
}

// TestPriorityJobDispatchedAtOnce submits a priority job while the only
// device is idle with its pull request of priority 0 open: it starts at
// once, not when that pull request runs out.
func TestPriorityJobDispatchedAtOnce(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:prio3"), workers.Config{})
	c := l.Client
	// One job through first, so that the device is back to waiting on its queue.
	waitEnd(t, c, submit(t, c, priorityJob("prio3", 0, "true")))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	eventually(t, "dev-1 idle", func() bool {
		d, err := c.GetDevice(ctx, "dev-1")
		return err == nil && d.State == events.StateIdle
	})
	// The last job's level lost its consumer (as the server removes one
	// unused for long): the worker makes it again.
	for i, p := range []int{3, 9, 1, 3} {
		if i == 3 {
			if err := c.JS.DeleteConsumer(ctx, c.Subj.QueueStreamOf("prio3"), c.Subj.QueuePriorityConsumer("prio3", p)); err != nil {
				t.Fatalf("delete the consumer of priority %d: %v", p, err)
			}
		}
		sent := time.Now()
		id := submit(t, c, priorityJob("prio3", p, "true"))
		ev := waitEvent(t, c, id, events.EventJobStart)
		took := ev.Time.Sub(sent)
		t.Logf("priority %d: submit → job_start %s", p, took)
		if took > 5*time.Second {
			t.Errorf("priority %d job started %s after its submission, want at once", p, took)
		}
		waitEnd(t, c, id)
	}
}

// TestExcludedJobWaitsWithoutLooping queues a job that excludes the only
// device, at priority 0 and above: it waits without being offered to that
// device over and over, other jobs run past it, and a device another host
// brings up later takes it at once.
func TestExcludedJobWaitsWithoutLooping(t *testing.T) {
	for _, priority := range []int{0, 5} {
		t.Run(fmt.Sprintf("priority %d", priority), func(t *testing.T) {
			t.Parallel()
			queue := fmt.Sprintf("excl%d", priority)
			l := startLab(t, nil, workers.Config{})
			c := l.Client
			startWorker(t, l, hostFile(t, "h1", "dev-1:"+queue), workers.Config{DrainTimeout: 200 * time.Millisecond})
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			eventually(t, "dev-1 idle", func() bool {
				d, err := c.GetDevice(ctx, "dev-1")
				return err == nil && d.State == events.StateIdle
			})
			x := submit(t, c, fmt.Sprintf("job_queue: %s\njob_priority: %d\nexclude_agents: [dev-1]\ntest_data: {test_cmds: 'true'}\n", queue, priority))
			// Other jobs of the queue run past it.
			for _, p := range []int{0, priority} {
				y := submit(t, c, priorityJob(queue, p, "true"))
				if rec := waitEnd(t, c, y); rec.Device != "dev-1" || rec.Outcome != events.OutcomePass {
					t.Fatalf("job of priority %d behind the excluded one: %s on %q", p, rec.Outcome, rec.Device)
				}
			}

			// Over the window, the excluded job is offered to dev-1 a few
			// times (at 0, 2, 6 and 14 s at priority 0), not every 2 s.
			const window = 15 * time.Second
			time.Sleep(window)
			cons, err := c.JS.Consumer(ctx, c.Subj.QueueStreamOf(queue), c.Subj.QueuePriorityConsumer(queue, priority))
			if err != nil {
				t.Fatal(err)
			}
			info, err := cons.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			deliveries := info.Delivered.Consumer - 1 // less the other job's
			if priority == 0 {
				deliveries-- // both other jobs were of priority 0
			}
			t.Logf("the excluded job was delivered %d times in %s", deliveries, window)
			if deliveries > 5 {
				t.Errorf("the excluded job was delivered %d times in %s, want at most 5", deliveries, window)
			}
			rec, _, err := c.GetJob(ctx, x)
			if err != nil || rec.State != events.JobWaiting {
				t.Fatalf("excluded job: %v, %v; want waiting", rec.State, err)
			}

			// A device of another host that the job allows takes it at
			// once, although the job is held on h1 for several seconds more.
			start := time.Now()
			startWorker(t, l, hostFile(t, "h2", "dev-2:"+queue), workers.Config{Heartbeat: time.Second, DrainTimeout: 200 * time.Millisecond})
			rec = waitEnd(t, c, x)
			took := time.Since(start)
			t.Logf("a device on another host took the excluded job %s after its worker started", took)
			if rec.Device != "dev-2" || rec.Outcome != events.OutcomePass {
				t.Fatalf("excluded job: %s on %q, want a pass on dev-2", rec.Outcome, rec.Device)
			}
			if took > 10*time.Second {
				t.Errorf("the excluded job reached dev-2 %s after its worker started, want at once", took)
			}
		})
	}
}

// TestPriorityJobHandedBack stops a worker gracefully while it runs a
// priority job: the job goes back to its level, and an idle device of
// another host, which had looked at that level before and found it empty,
// takes it at once.
func TestPriorityJobHandedBack(t *testing.T) {
	l := startLab(t, nil, workers.Config{})
	c := l.Client
	cfg := workers.Config{Lease: 5 * time.Minute, DrainTimeout: 200 * time.Millisecond}
	first := startWorker(t, l, hostFile(t, "h1", "dev-1:prio4"), cfg)
	dir := t.TempDir()
	id := submit(t, c, fmt.Sprintf("job_queue: prio4\njob_priority: 4\ntest_data:\n  test_cmds: |\n    if [ -e %[1]s/first ]; then echo finished elsewhere; exit 0; fi\n    touch %[1]s/first\n    sleep 120\n", dir))
	eventually(t, "first attempt running its test", func() bool {
		_, err := os.Stat(filepath.Join(dir, "first"))
		return err == nil
	})
	startWorker(t, l, hostFile(t, "h2", "dev-2:prio4"), cfg)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	eventually(t, "dev-2 idle", func() bool {
		d, err := c.GetDevice(ctx, "dev-2")
		return err == nil && d.State == events.StateIdle
	})
	start := time.Now()
	first.stop(t)
	rec := waitEnd(t, c, id)
	took := time.Since(start)
	if rec.Outcome != events.OutcomePass || rec.Device != "dev-2" || rec.Attempt != 2 {
		t.Fatalf("handed-back job: %s on %s attempt %d", rec.Outcome, rec.Device, rec.Attempt)
	}
	t.Logf("handed back and finished on dev-2 %s after the stop", took)
	if took > 10*time.Second {
		t.Errorf("the handed-back job finished %s after its worker stopped, want at once", took)
	}
}

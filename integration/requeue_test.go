package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// brokenHost is a host file of fake devices serving queue; those named in
// broken fail recovery on every job (the fake driver's device-level fail).
func brokenHost(t testing.TB, host, queue string, devices []string, broken ...string) *drivers.HostConfig {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "host: %s\ndevices:\n", host)
	for _, d := range devices {
		fmt.Fprintf(&b, "  - agent_name: %s\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [%s]\n", d, queue)
		if slices.Contains(broken, d) {
			b.WriteString("    fail: recovery\n")
		}
	}
	h, err := drivers.ParseHost([]byte(b.String()), "test-host.yaml")
	if err != nil {
		t.Fatalf("host file: %v", err)
	}
	return h
}

func deviceStatus(t testing.TB, c *broker.Client, name string) *events.DeviceStatus {
	t.Helper()
	st, err := c.GetDevice(context.Background(), name)
	if err != nil {
		t.Fatalf("device %s: %v", name, err)
	}
	return st
}

// TestRequeueOnRecoveryFailure: a device fails recovery mid-provision; the
// job passes on a second device without anyone touching it, and its events
// tell both attempts' stories.
func TestRequeueOnRecoveryFailure(t *testing.T) {
	// The worker takes the idle device whose name sorts first: a-broken.
	host := brokenHost(t, "h1", "rq", []string{"a-broken", "b-good"}, "a-broken")
	l := startLab(t, host, workers.Config{})
	c := l.Client
	id := submit(t, c, "job_queue: rq\nprovision_data: {url: http://example.invalid/image.img}\ntest_data: {test_cmds: echo ran on $AGENT_NAME}\n")
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomePass || rec.Device != "b-good" || rec.Attempt != 2 || rec.Generation != 1 {
		t.Fatalf("job ended %s on %s, attempt %d, generation %d; want pass on b-good, attempt 2, generation 1",
			rec.Outcome, rec.Device, rec.Attempt, rec.Generation)
	}
	if len(rec.Attempts) != 1 || rec.Attempts[0].Device != "a-broken" || rec.Attempts[0].Result != events.AttemptRecoveryFail ||
		rec.Attempts[0].Phase != events.PhaseProvision || rec.Attempts[0].N != 1 {
		t.Fatalf("attempts %+v: want attempt 1 on a-broken ended by recovery_fail in provision", rec.Attempts)
	}
	if !slices.Contains(rec.Job.ExcludeAgents, "a-broken") {
		t.Errorf("requeued job does not exclude a-broken: %v", rec.Job.ExcludeAgents)
	}
	evs := jobEvents(t, c, id)
	got := names(evs)
	for _, want := range []string{events.EventRecoveryFail, events.EventJobRequeued} {
		if n := countName(got, want); n != 1 {
			t.Errorf("events %v: %d %s, want 1", got, n, want)
		}
	}
	if n := countName(got, events.EventJobStart); n != 2 {
		t.Errorf("events %v: %d job_start, want 2", got, n)
	}
	if n := countName(got, events.EventJobEnd); n != 1 || got[len(got)-1] != events.EventJobEnd && !strings.HasPrefix(got[len(got)-1], "cleanup") && got[len(got)-1] != events.EventAttemptEnd {
		t.Errorf("events %v: want one job_end", got)
	}
	rf := slices.IndexFunc(evs, func(e *events.Event) bool { return e.Name == events.EventRecoveryFail })
	rq := slices.IndexFunc(evs, func(e *events.Event) bool { return e.Name == events.EventJobRequeued })
	start2 := slices.IndexFunc(evs, func(e *events.Event) bool { return e.Name == events.EventJobStart && e.Attempt == 2 })
	if !(rf < rq && rq < start2) || evs[rf].Device != "a-broken" || evs[start2].Device != "b-good" {
		t.Errorf("events %v: want recovery_fail on a-broken, then job_requeued, then job_start of attempt 2 on b-good", got)
	}
	if !strings.Contains(evs[rq].Detail, "a-broken") {
		t.Errorf("job_requeued detail %q does not name the failed device", evs[rq].Detail)
	}
	if !strings.Contains(output(t, c, id), "ran on b-good") {
		t.Errorf("the test did not run on b-good")
	}
	eventually(t, "a-broken offline with bad health", func() bool {
		st := deviceStatus(t, c, "a-broken")
		return st.State == events.StateOffline && st.Health == events.HealthBad && strings.Contains(st.Comment, id)
	})
	eventually(t, "b-good idle and good", func() bool {
		st := deviceStatus(t, c, "b-good")
		return st.State == events.StateIdle && st.Health == events.HealthGood
	})
}

func countName(names []string, name string) int {
	n := 0
	for _, s := range names {
		if s == name {
			n++
		}
	}
	return n
}

// TestRequeueGivesUp: the job ends cleanly, with every attempt in its
// record and events, when its attempts run out or no other device is left.
func TestRequeueGivesUp(t *testing.T) {
	cases := []struct {
		name     string
		devices  []string
		broken   []string
		attempts int
		wantTry  []string
		reason   string
	}{
		{"no other device", []string{"solo"}, []string{"solo"}, 3, []string{"solo"}, "no other device in service serves queue"},
		{"every device broken", []string{"a", "b"}, []string{"a", "b"}, 3, []string{"a", "b"}, "no other device in service serves queue"},
		{"attempts run out", []string{"a", "b", "c"}, []string{"a", "b", "c"}, 2, []string{"a", "b"}, "2 devices have tried it (the limit is 2)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			o := labOptions(t, brokenHost(t, "h1", "gu", tc.devices, tc.broken...), workers.Config{RunDir: t.TempDir()}, "")
			o.Orchestrator.MaxAttempts = tc.attempts
			l := startLabWith(ctx, t, o)
			c := l.Client
			id := submit(t, c, "job_queue: gu\nprovision_data: {url: http://example.invalid/image.img}\n")
			rec := waitEnd(t, c, id)
			if rec.Outcome != events.OutcomeRecoveryFail || rec.EndReason != events.EventRecoveryFail || rec.State != events.JobCompleted {
				t.Fatalf("job ended %s/%s/%s, want completed with recovery_fail", rec.State, rec.Outcome, rec.EndReason)
			}
			var tried []string
			for _, a := range rec.Attempts {
				tried = append(tried, a.Device)
				if a.Result != events.AttemptRecoveryFail {
					t.Errorf("attempt %+v: want result recovery_fail", a)
				}
			}
			if !slices.Equal(tried, tc.wantTry) {
				t.Errorf("attempts on %v, want %v", tried, tc.wantTry)
			}
			evs := jobEvents(t, c, id)
			got := names(evs)
			if got[len(got)-1] != events.EventJobEnd || countName(got, events.EventJobEnd) != 1 {
				t.Fatalf("events %v: want job_end once, last", got)
			}
			if reason, _ := evs[len(evs)-1].Data["reason"].(string); !strings.Contains(reason, tc.reason) {
				t.Errorf("job_end reason %q, want it to contain %q", reason, tc.reason)
			}
			if n := countName(got, events.EventRecoveryFail); n != len(tc.wantTry) {
				t.Errorf("events %v: %d recovery_fail, want %d", got, n, len(tc.wantTry))
			}
			if n := countName(got, events.EventJobRequeued); n != len(tc.wantTry)-1 {
				t.Errorf("events %v: %d job_requeued, want %d", got, n, len(tc.wantTry)-1)
			}
			if code := client.ExitStatus(rec); code != drivers.ExitRecoveryFailed {
				t.Errorf("submit --wait exit status %d, want %d", code, drivers.ExitRecoveryFailed)
			}
		})
	}
}

// TestCancelDuringProvision cancels a job while it provisions: the phase
// stops at once, cleanup runs, and the device goes back to service with its
// health unknown, since its image was not finished.
func TestCancelDuringProvision(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:cp"), workers.Config{})
	c := l.Client
	id := submit(t, c, "job_queue: cp\nprovision_data: {delay: 10m}\ntest_data: {test_cmds: echo never}\n")
	waitEvent(t, c, id, events.PhaseStart(events.PhaseProvision))
	start := time.Now()
	if _, err := client.Cancel(context.Background(), c, id, "test"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	rec := waitEnd(t, c, id)
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("cancel took %s", took)
	}
	if rec.Outcome != events.OutcomeCancelled || rec.State != events.JobCancelled {
		t.Fatalf("job ended %s/%s, want cancelled", rec.State, rec.Outcome)
	}
	got := names(jobEvents(t, c, id))
	for _, want := range []string{events.EventCancelled, events.PhaseFail(events.PhaseProvision), events.PhaseSuccess(events.PhaseCleanup)} {
		if !slices.Contains(got, want) {
			t.Errorf("events %v lack %s", got, want)
		}
	}
	if slices.Contains(got, events.PhaseStart(events.PhaseTest)) {
		t.Errorf("events %v: the test phase ran after the cancel", got)
	}
	eventually(t, "device idle with unknown health", func() bool {
		st := deviceStatus(t, c, "dev-1")
		return st.State == events.StateIdle && st.Health == events.HealthUnknown
	})
}

// TestReserveExtend extends a running reservation, is refused beyond the
// maximum, and sees the new end in the record, the worker's output and
// the events.
func TestReserveExtend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	o := labOptions(t, hostFile(t, "h1", "dev-1:rx"), workers.Config{RunDir: t.TempDir()}, "")
	o.Orchestrator.MaxReservation = 2 * time.Hour
	l := startLabWith(ctx, t, o)
	c := l.Client
	id := submit(t, c, "job_queue: rx\nreserve_data: {timeout: 3}\n")
	waitEvent(t, c, id, events.PhaseStart(events.PhaseReserve))
	var rec *events.JobRecord
	eventually(t, "reservation end recorded", func() bool {
		rec, _, _ = c.GetJob(ctx, id)
		return rec != nil && !rec.ReserveUntil.IsZero()
	})
	reply, err := client.Control(ctx, c, "reserve-extend", &events.CtlRequest{JobID: id, Duration: "1h"})
	if err != nil {
		t.Fatalf("extend: %v", err)
	}
	if want := rec.ReserveUntil.Add(time.Hour); reply.ReserveUntil.Sub(want).Abs() > 5*time.Second {
		t.Errorf("extended to %s, want about %s", reply.ReserveUntil, want)
	}
	waitEvent(t, c, id, events.EventReservationExtended)
	if _, err := client.Control(ctx, c, "reserve-extend", &events.CtlRequest{JobID: id, Duration: "2h"}); err == nil ||
		!strings.Contains(err.Error(), "may last 2h0m0s in all") {
		t.Errorf("extend beyond the maximum: %v, want a refusal naming the maximum", err)
	}
	if _, err := client.Control(ctx, c, "reserve-extend", &events.CtlRequest{JobID: id, Duration: "soon"}); err == nil ||
		!strings.Contains(err.Error(), `duration "soon"`) {
		t.Errorf("extend with a bad duration: %v", err)
	}
	// The reservation outlives its original 3 s.
	time.Sleep(5 * time.Second)
	if cur, _, err := c.GetJob(ctx, id); err != nil || cur.State != events.JobState(events.PhaseReserve) {
		t.Fatalf("after its first end the job is %v (%v), want still reserved", cur.State, err)
	}
	st, err := client.Status(ctx, c, id)
	if err != nil || client.Reach(st.Record) != "ssh ubuntu@127.0.0.1" {
		t.Errorf("reach: %q (%v)", client.Reach(st.Record), err)
	}
	if _, err := client.Cancel(ctx, c, id, "done"); err != nil {
		t.Fatal(err)
	}
	if rec := waitEnd(t, c, id); rec.Outcome != events.OutcomeCancelled {
		t.Errorf("ended %s", rec.Outcome)
	}
	if !strings.Contains(output(t, c, id), "reservation extended until") {
		t.Errorf("the worker did not report the new end")
	}
	if _, err := client.Control(ctx, c, "reserve-extend", &events.CtlRequest{JobID: id, Duration: "1h"}); err == nil {
		t.Errorf("extend of an ended job succeeded")
	}
}

// TestReservationExpires: a reservation that nobody extends ends on time
// with reservation_expired, and the job passes.
func TestReservationExpires(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:rexp"), workers.Config{})
	c := l.Client
	id := submit(t, c, "job_queue: rexp\nreserve_data: {timeout: 1}\n")
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomePass {
		t.Fatalf("ended %s", rec.Outcome)
	}
	if got := names(jobEvents(t, c, id)); !slices.Contains(got, events.EventReservationExpired) {
		t.Errorf("events %v lack reservation_expired", got)
	}
}

// TestWorkerFencesItsJob cuts a worker off NATS mid-job without killing
// it: it stops the job itself within its fence, before another device
// could start it, so that the job never runs on two devices at once.
func TestWorkerFencesItsJob(t *testing.T) {
	l := startLab(t, nil, workers.Config{})
	c := l.Client
	dir := t.TempDir()
	cfg := workers.Config{Lease: 10 * time.Second, Fence: 2 * time.Second, Heartbeat: time.Second}
	first := startWorker(t, l, hostFile(t, "h1", "dev-1:fence"), cfg)
	job := fmt.Sprintf("job_queue: fence\ntest_data:\n  test_cmds: |\n    if [ -e %[1]s/first ]; then echo second; exit 0; fi\n    touch %[1]s/first\n    while true; do date +%%s%%N >> %[1]s/beat; sleep 0.1; done\n", dir)
	id := submit(t, c, job)
	eventually(t, "first attempt running", func() bool {
		_, err := os.Stat(filepath.Join(dir, "beat"))
		return err == nil
	})
	first.c.NC.Close()
	cut := time.Now()
	// The fenced test command stops beating within the fence and a few
	// checks; give it a generous bound.
	eventually(t, "the cut-off worker stopped its test", func() bool {
		a, _ := os.ReadFile(filepath.Join(dir, "beat"))
		time.Sleep(500 * time.Millisecond)
		b, _ := os.ReadFile(filepath.Join(dir, "beat"))
		return len(a) == len(b)
	})
	stopped := time.Since(cut)
	startWorker(t, l, hostFile(t, "h2", "dev-2:fence"), cfg)
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomePass || rec.Device != "dev-2" {
		t.Fatalf("job ended %s on %s", rec.Outcome, rec.Device)
	}
	t.Logf("fenced job stopped %s after the cut", stopped.Round(time.Millisecond))
}

// startLabWith starts a lab with options o and stops it when the test ends.
func startLabWith(ctx context.Context, t testing.TB, o lab.Options) *lab.Lab {
	t.Helper()
	l, err := lab.Start(ctx, o)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(l.Stop)
	return l
}

// TestLostWorkerJob cuts a worker off NATS mid-test. An orchestrator finds
// its device lost within its device timeout and, by policy, requeues the
// job once to another host's device, or ends it. The cut-off worker has
// stopped the job itself by then (its fence is shorter), so the two
// attempts never overlap.
func TestLostWorkerJob(t *testing.T) {
	cases := []struct {
		policy  string
		outcome events.Outcome
	}{
		{orchestrator.LostJobRequeue, events.OutcomePass},
		{orchestrator.LostJobFail, events.OutcomeFail},
	}
	for _, tc := range cases {
		t.Run(tc.policy, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			o := labOptions(t, nil, workers.Config{}, "")
			o.Orchestrator.DeviceTimeout = 3 * time.Second
			o.Orchestrator.LostJobPolicy = tc.policy
			l := startLabWith(ctx, t, o)
			c := l.Client
			dir := t.TempDir()
			// A long lease: the orchestrator, not JetStream's redelivery, moves the job.
			cfg := workers.Config{Lease: 5 * time.Minute, Fence: time.Second, Heartbeat: 500 * time.Millisecond}
			first := startWorker(t, l, hostFile(t, "h1", "dev-1:lost"), cfg)
			job := fmt.Sprintf("job_queue: lost\ntest_data:\n  test_cmds: |\n    if [ -e %[1]s/first ]; then date +%%s%%N > %[1]s/second; exit 0; fi\n    touch %[1]s/first\n    while true; do date +%%s%%N > %[1]s/beat; sleep 0.05; done\n", dir)
			id := submit(t, c, job)
			eventually(t, "first attempt running", func() bool {
				_, err := os.Stat(filepath.Join(dir, "beat"))
				return err == nil
			})
			first.crash()
			startWorker(t, l, hostFile(t, "h2", "dev-2:lost"), cfg)
			rec := waitEnd(t, c, id)
			if rec.Outcome != tc.outcome {
				t.Fatalf("job ended %s (%s), want %s", rec.Outcome, rec.EndReason, tc.outcome)
			}
			if len(rec.Attempts) != 1 || rec.Attempts[0].Device != "dev-1" || rec.Attempts[0].Result != events.AttemptLost {
				t.Fatalf("attempts %+v: want attempt 1 on dev-1 lost", rec.Attempts)
			}
			got := names(jobEvents(t, c, id))
			if countName(got, events.EventAttemptLost) != 1 || countName(got, events.EventJobEnd) != 1 {
				t.Errorf("events %v: want one attempt_lost and one job_end", got)
			}
			if tc.policy == orchestrator.LostJobFail {
				if rec.EndReason != events.EventAttemptLost || countName(got, events.EventJobRequeued) != 0 {
					t.Errorf("fail policy: end reason %s, events %v", rec.EndReason, got)
				}
				return
			}
			if rec.Device != "dev-2" || rec.Attempt != 2 || countName(got, events.EventJobRequeued) != 1 {
				t.Fatalf("requeue policy: ended on %s, attempt %d, events %v", rec.Device, rec.Attempt, got)
			}
			beat, err1 := os.ReadFile(filepath.Join(dir, "beat"))
			second, err2 := os.ReadFile(filepath.Join(dir, "second"))
			if err1 != nil || err2 != nil {
				t.Fatalf("markers: %v %v", err1, err2)
			}
			if string(beat) >= string(second) && len(beat) == len(second) {
				t.Errorf("the first attempt still ran (last beat %s) when the second started (%s)", beat, second)
			}
		})
	}
}

// TestTwoOrchestratorsUnderLoad runs a stream of jobs, some of which meet
// a broken device, with two orchestrators, one of which is restarted half
// way: every job is taken in once, requeued at most once per broken
// device, started once per attempt, and ends once.
func TestTwoOrchestratorsUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitLong)
	defer cancel()
	host := brokenHost(t, "h1", "load", []string{"a-broken", "b-broken", "c-good", "d-good", "e-good"}, "a-broken", "b-broken")
	o := labOptions(t, host, workers.Config{RunDir: t.TempDir()}, "")
	o.NoOrchestrator = true
	l := startLabWith(ctx, t, o)
	c := l.Client
	startOrch := func(name string) *orchestrator.Orchestrator {
		oc := connect(t, l, name)
		orch, err := orchestrator.New(orchestrator.Config{Client: oc, Log: testLog(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := orch.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return orch
	}
	first, second := startOrch("orch-1"), startOrch("orch-2")
	defer func() { second.Stop() }()
	const n = 120
	ids := make([]string, 0, n)
	for i := range n {
		if i == n/2 {
			first.Stop()
			first = startOrch("orch-1b")
		}
		ids = append(ids, submit(t, c, "job_queue: load\nprovision_data: {output_lines: 1}\ntest_data: {test_cmds: 'true'}\n"))
	}
	defer first.Stop()
	requeued := 0
	for _, id := range ids {
		rec := waitEnd(t, c, id)
		if rec.Outcome != events.OutcomePass {
			t.Errorf("job %s ended %s (%s)", id, rec.Outcome, rec.EndReason)
		}
		got := names(jobEvents(t, c, id))
		if countName(got, events.EventJobSubmitted) != 1 || countName(got, events.EventJobEnd) != 1 {
			t.Errorf("job %s: events %v: want one job_submitted and one job_end", id, got)
		}
		r := countName(got, events.EventJobRequeued)
		if r > 2 || countName(got, events.EventJobStart) != r+1 || rec.Attempt != r+1 {
			t.Errorf("job %s: %d requeues, %d starts, attempt %d: %v", id, r, countName(got, events.EventJobStart), rec.Attempt, got)
		}
		requeued += r
	}
	// Each broken device fails one job, goes offline and takes no other.
	if requeued != 2 {
		t.Errorf("%d jobs requeued, want 2 (one per broken device)", requeued)
	}
}

package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/workers"
)

// phaseEvents lists start and success of each phase, as a passing job emits them.
func phaseEvents(phases ...events.Phase) []string {
	var out []string
	for _, p := range phases {
		out = append(out, events.PhaseStart(p), events.PhaseSuccess(p))
	}
	return out
}

func seq(parts ...[]string) []string { return slices.Concat(parts...) }

func one(names ...string) []string { return names }

// TestEventSequences checks the exact events of a passing job, a failing
// test, failing phases and a recovery failure, and the record each ends with.
func TestEventSequences(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:seq"), workers.Config{})
	c := l.Client
	all := []events.Phase{events.PhaseSetup, events.PhaseProvision, events.PhaseFirmwareUpdate, events.PhaseTest, events.PhaseAllocate, events.PhaseReserve}
	tests := []struct {
		name     string
		job      string
		want     []string
		outcome  events.Outcome
		end      string
		status   map[events.Phase]int
		offline  bool
		inOutput []string
	}{
		{
			name: "pass",
			job:  "job_queue: seq\nprovision_data: {output_lines: 2}\ntest_data: {test_cmds: 'echo hello from $AGENT_NAME'}\n",
			want: seq(one(events.EventJobSubmitted, events.EventJobStart), phaseEvents(all...), phaseEvents(events.PhaseCleanup),
				one(events.EventJobEnd)),
			outcome:  events.OutcomePass,
			end:      events.EventNormalExit,
			status:   map[events.Phase]int{events.PhaseSetup: 0, events.PhaseProvision: 0, events.PhaseTest: 0, events.PhaseCleanup: 0},
			inOutput: []string{"hello from dev-1", "Starting testflinger test phase on dev-1"},
		},
		{
			name: "test fails",
			job:  "job_queue: seq\ntest_data: {test_cmds: [echo one, 'exit 7']}\n",
			want: seq(one(events.EventJobSubmitted, events.EventJobStart), phaseEvents(events.PhaseSetup, events.PhaseProvision, events.PhaseFirmwareUpdate),
				one(events.PhaseStart(events.PhaseTest), events.PhaseFail(events.PhaseTest)),
				phaseEvents(events.PhaseAllocate, events.PhaseReserve, events.PhaseCleanup), one(events.EventJobEnd)),
			outcome: events.OutcomeTestFail,
			end:     events.EventNormalExit,
			status:  map[events.Phase]int{events.PhaseSetup: 0, events.PhaseTest: 7, events.PhaseCleanup: 0},
		},
		{
			name: "provision fails",
			job:  "job_queue: seq\nprovision_data: {fail: provision}\ntest_data: {test_cmds: echo never}\n",
			want: seq(one(events.EventJobSubmitted, events.EventJobStart), phaseEvents(events.PhaseSetup),
				one(events.PhaseStart(events.PhaseProvision), events.PhaseFail(events.PhaseProvision)),
				phaseEvents(events.PhaseCleanup), one(events.EventJobEnd)),
			outcome: events.OutcomeFail,
			end:     events.PhaseFail(events.PhaseProvision),
			status:  map[events.Phase]int{events.PhaseSetup: 0, events.PhaseProvision: 1, events.PhaseCleanup: 0},
		},
		{
			name: "firmware update fails",
			job:  "job_queue: seq\nprovision_data: {fail: firmware_update}\nfirmware_update_data: {version: latest}\ntest_data: {test_cmds: echo never}\n",
			want: seq(one(events.EventJobSubmitted, events.EventJobStart), phaseEvents(events.PhaseSetup, events.PhaseProvision),
				one(events.PhaseStart(events.PhaseFirmwareUpdate), events.PhaseFail(events.PhaseFirmwareUpdate)),
				phaseEvents(events.PhaseCleanup), one(events.EventJobEnd)),
			outcome: events.OutcomeFail,
			end:     events.PhaseFail(events.PhaseFirmwareUpdate),
			status:  map[events.Phase]int{events.PhaseSetup: 0, events.PhaseProvision: 0, events.PhaseFirmwareUpdate: 1, events.PhaseCleanup: 0},
		},
		{
			name: "recovery fails",
			job:  "job_queue: seq\nprovision_data: {fail: recovery}\ntest_data: {test_cmds: echo never}\n",
			want: seq(one(events.EventJobSubmitted, events.EventJobStart), phaseEvents(events.PhaseSetup),
				one(events.PhaseStart(events.PhaseProvision), events.EventRecoveryFail),
				phaseEvents(events.PhaseCleanup), one(events.EventAttemptEnd, events.EventJobEnd)),
			outcome: events.OutcomeRecoveryFail,
			end:     events.EventRecoveryFail,
			status:  map[events.Phase]int{events.PhaseSetup: 0, events.PhaseProvision: 46, events.PhaseCleanup: 0},
			offline: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := submit(t, c, tc.job)
			rec := waitEnd(t, c, id)
			if got := names(jobEvents(t, c, id)); !slices.Equal(got, tc.want) {
				t.Errorf("events:\n got  %v\n want %v", got, tc.want)
			}
			if rec.Outcome != tc.outcome || rec.EndReason != tc.end {
				t.Errorf("outcome %s (%s), want %s (%s)", rec.Outcome, rec.EndReason, tc.outcome, tc.end)
			}
			if !equalStatus(rec.Status, tc.status) {
				t.Errorf("status %v, want %v", rec.Status, tc.status)
			}
			if rec.State != events.JobCompleted || rec.Device != "dev-1" || rec.Attempt != 1 {
				t.Errorf("record: state %s device %s attempt %d", rec.State, rec.Device, rec.Attempt)
			}
			out := output(t, c, id)
			for _, s := range tc.inOutput {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			want := events.StateIdle
			if tc.offline {
				want = events.StateOffline
			}
			var dev *events.DeviceStatus
			eventually(t, "device back to "+string(want), func() bool {
				d, err := c.GetDevice(context.Background(), "dev-1")
				dev = d
				return err == nil && d.State == want
			})
			if tc.offline && (dev.Health != events.HealthBad || !strings.Contains(dev.Comment, id)) {
				t.Errorf("device after recovery failure: %s/%s %q", dev.State, dev.Health, dev.Comment)
			}
		})
	}
}

func equalStatus(a, b map[events.Phase]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestSkipRules checks Testflinger's skip rules: a phase runs only when its
// data section is present, not empty, and not skip: true; setup and
// cleanup always run; phases run in Testflinger's order.
func TestSkipRules(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:skip"), workers.Config{})
	c := l.Client
	tests := []struct {
		name string
		job  string
		ran  []events.Phase
	}{
		{"only test", "job_queue: skip\ntest_data: {test_cmds: 'true'}\n",
			[]events.Phase{events.PhaseSetup, events.PhaseTest, events.PhaseCleanup}},
		{"provision skip true", "job_queue: skip\nprovision_data: {skip: true}\ntest_data: {test_cmds: 'true'}\n",
			[]events.Phase{events.PhaseSetup, events.PhaseTest, events.PhaseCleanup}},
		{"empty sections", "job_queue: skip\nfirmware_update_data: {}\nallocate_data: {}\n",
			[]events.Phase{events.PhaseSetup, events.PhaseCleanup}},
		{"every phase", "job_queue: skip\nprovision_data: {delay: 0}\nfirmware_update_data: {version: latest}\ntest_data: {test_cmds: 'true'}\nreserve_data: {timeout: 1}\n",
			[]events.Phase{events.PhaseSetup, events.PhaseProvision, events.PhaseFirmwareUpdate, events.PhaseTest, events.PhaseReserve, events.PhaseCleanup}},
		{"firmware skip true", "job_queue: skip\nfirmware_update_data: {version: latest, skip: true}\ntest_data: {test_cmds: 'true'}\n",
			[]events.Phase{events.PhaseSetup, events.PhaseTest, events.PhaseCleanup}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := submit(t, c, tc.job)
			rec := waitEnd(t, c, id)
			var ran, started []events.Phase
			for _, ev := range jobEvents(t, c, id) {
				if strings.HasSuffix(ev.Name, "_start") && ev.Name != events.EventJobStart {
					started = append(started, ev.Phase)
				}
				if strings.HasSuffix(ev.Name, "_success") && !strings.HasPrefix(ev.Detail, "skipped") {
					ran = append(ran, ev.Phase)
				}
			}
			if !slices.Equal(ran, tc.ran) {
				t.Errorf("phases run %v, want %v", ran, tc.ran)
			}
			if !slices.Equal(started, events.Phases) {
				t.Errorf("phases started %v, want every phase in order %v", started, events.Phases)
			}
			for _, p := range tc.ran {
				if _, ok := rec.Status[p]; !ok {
					t.Errorf("no status for %s in %v", p, rec.Status)
				}
			}
			if len(rec.Status) != len(tc.ran) {
				t.Errorf("status %v has phases that did not run", rec.Status)
			}
		})
	}
}

// TestCancelDuringTest cancels a job whose test runs for minutes: the
// test stops within a second, cleanup runs, and the job ends cancelled.
func TestCancelDuringTest(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:cancel"), workers.Config{})
	c := l.Client
	id := submit(t, c, "job_queue: cancel\ntest_data: {test_cmds: 'echo started; sleep 300'}\n")
	waitEvent(t, c, id, events.PhaseStart(events.PhaseTest))
	eventually(t, "test output", func() bool { return strings.Contains(output(t, c, id), "started") })
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	sent := time.Now()
	if _, err := client.Cancel(ctx, c, id, "test says stop"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	rec := waitEnd(t, c, id)
	evs := jobEvents(t, c, id)
	var cancelled, testFail *events.Event
	for _, ev := range evs {
		switch ev.Name {
		case events.EventCancelled:
			cancelled = ev
		case events.PhaseFail(events.PhaseTest):
			testFail = ev
		}
	}
	if cancelled == nil || testFail == nil {
		t.Fatalf("events %v lack cancelled and test_fail", names(evs))
	}
	if took := testFail.Time.Sub(sent); took > time.Second {
		t.Errorf("test phase stopped %s after the cancel, want within 1s", took)
	}
	if !strings.Contains(cancelled.Detail, "test says stop") {
		t.Errorf("cancelled detail %q lacks the comment", cancelled.Detail)
	}
	want := one(events.EventCancelled, events.PhaseFail(events.PhaseTest), events.PhaseStart(events.PhaseCleanup),
		events.PhaseSuccess(events.PhaseCleanup), events.EventJobEnd)
	if got := names(evs); !slices.Equal(got[len(got)-len(want):], want) {
		t.Errorf("events end with %v, want %v", got, want)
	}
	if rec.State != events.JobCancelled || rec.Outcome != events.OutcomeCancelled {
		t.Errorf("record %s/%s, want cancelled", rec.State, rec.Outcome)
	}
	if _, err := client.Cancel(ctx, c, id, ""); err == nil || !strings.Contains(err.Error(), "already ended") {
		t.Errorf("second cancel: %v, want an already-ended error", err)
	}
	eventually(t, "device idle", func() bool {
		d, err := c.GetDevice(ctx, "dev-1")
		return err == nil && d.State == events.StateIdle
	})
}

// TestCancelWaiting cancels a job that no device serves: it ends at once,
// and no device ever runs it.
func TestCancelWaiting(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:served"), workers.Config{})
	c := l.Client
	id := submit(t, c, "job_queue: nobody-serves-this\ntest_data: {test_cmds: 'true'}\n")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	st, err := client.Status(ctx, c, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.Record.State != events.JobWaiting || !strings.Contains(st.Explain(), "no device serves queue nobody-serves-this") {
		t.Errorf("status of an unserved job: %s: %q", st.Record.State, st.Explain())
	}
	state, err := client.Cancel(ctx, c, id, "")
	if err != nil || state != events.JobCancelled {
		t.Fatalf("cancel: %s, %v", state, err)
	}
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomeCancelled || rec.Device != "" {
		t.Errorf("record %s on %q", rec.Outcome, rec.Device)
	}
	if got, want := names(jobEvents(t, c, id)), one(events.EventJobSubmitted, events.EventCancelled, events.EventJobEnd); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// TestBadJobsRejectedGoodJobsRun interleaves malformed submissions with good
// ones: each bad one is refused with its field named, to the submitter and
// as an event; every good one runs.
func TestBadJobsRejectedGoodJobsRun(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:mixed", "dev-2:mixed"), workers.Config{})
	c := l.Client
	bad := []struct{ job, field string }{
		{"job_queue: [not, a, string]\n", "job_queue"},
		{"name: no queue\n", "job_queue"},
		{"job_queue: mixed\nglobal_timeout: soon\n", "global_timeout"},
		{"job_queue: mixed\nreserve_data: {ssh_keys: ['lp: bob']}\n", "reserve_data.ssh_keys[0]"},
		{"job_queue: mixed\nreserve_data: {timeout: 'a while'}\n", "reserve_data.timeout"},
		{"job_queue: mixed\njob_id: not-a-uuid\n", "job_id"},
		{"job_queue: mixed\ntest_data: {test_cmd: oops}\n", "test_data.test_cmd"},
		{"job_queue: mixed\n  bad: [indent\n", ""},
		{"job_queue: mixed\nname: " + strings.Repeat("x", 2<<20) + "\n", ""},
	}
	var good []string
	for i, b := range bad {
		good = append(good, submit(t, c, fmt.Sprintf("job_queue: mixed\nname: good-%d\ntest_data: {test_cmds: 'echo good %d'}\n", i, i)))
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		reply, err := client.Submit(ctx, c, []byte(b.job), events.FormatYAML)
		cancel()
		var rej *client.RejectedError
		if !errors.As(err, &rej) {
			t.Errorf("bad job %d accepted or failed otherwise: %v", i, err)
			continue
		}
		if b.field != "" && !slices.ContainsFunc(rej.Reply.Fields, func(f events.FieldError) bool { return f.Field == b.field }) {
			t.Errorf("bad job %d: fields %v do not name %s", i, rej.Reply.Fields, b.field)
		}
		if reply != nil && reply.JobID != "" && b.field != "" {
			ev := waitEvent(t, c, reply.JobID, events.EventJobRejected)
			if !strings.Contains(ev.Detail, b.field) {
				t.Errorf("rejection event %q does not name %s", ev.Detail, b.field)
			}
		}
	}
	for i, id := range good {
		rec := waitEnd(t, c, id)
		if rec.Outcome != events.OutcomePass {
			t.Errorf("good job %d: %s", i, rec.Outcome)
		}
		if out := output(t, c, id); !strings.Contains(out, fmt.Sprintf("good %d", i)) {
			t.Errorf("good job %d output lacks its line:\n%s", i, out)
		}
	}
}

// TestTwoDevicesOneQueue checks that two devices serving one queue run two
// jobs at the same time, and that over many jobs none runs twice.
func TestTwoDevicesOneQueue(t *testing.T) {
	dir := t.TempDir()
	l := startLab(t, hostFile(t, "h1", "dev-a:pair", "dev-b:pair"), workers.Config{})
	c := l.Client
	// Each job waits until both jobs of its pair have started, which only
	// happens if two devices run them at once.
	barrier := func(pair, me int) string {
		return fmt.Sprintf("job_queue: pair\ntest_data:\n  test_cmds: |\n    touch %[1]s/pair%[2]d-%[3]d\n    for i in $(seq 1 600); do [ -e %[1]s/pair%[2]d-0 ] && [ -e %[1]s/pair%[2]d-1 ] && exit 0; sleep 0.05; done\n    exit 9\n",
			dir, pair, me)
	}
	first := []string{submit(t, c, barrier(0, 0)), submit(t, c, barrier(0, 1))}
	devices := map[string]bool{}
	for _, id := range first {
		rec := waitEnd(t, c, id)
		if rec.Outcome != events.OutcomePass {
			t.Fatalf("job %s: %s: both jobs of the pair did not run at once", id, rec.Outcome)
		}
		devices[rec.Device] = true
	}
	if len(devices) != 2 {
		t.Errorf("the pair ran on %v, want two devices", devices)
	}

	const n = 40
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i] = submit(t, c, fmt.Sprintf("job_queue: pair\ntest_data: {test_cmds: 'echo run >> %s/count-%d'}\n", dir, i))
		}()
	}
	wg.Wait()
	for i, id := range ids {
		rec := waitEnd(t, c, id)
		if rec.Attempt != 1 || rec.Outcome != events.OutcomePass {
			t.Errorf("job %d: attempt %d outcome %s", i, rec.Attempt, rec.Outcome)
		}
		data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("count-%d", i)))
		if err != nil || strings.Count(string(data), "run") != 1 {
			t.Errorf("job %d ran %d times", i, strings.Count(string(data), "run"))
		}
		starts := 0
		for _, ev := range jobEvents(t, c, id) {
			if ev.Name == events.EventJobStart {
				starts++
			}
		}
		if starts != 1 {
			t.Errorf("job %d started %d times", i, starts)
		}
	}
}

// TestWorkerCrashMidJob kills a worker's connection while its job's test
// runs: the lease runs out, a restarted worker claims the job as attempt
// 2, says so in a job_requeued event, and finishes it.
func TestWorkerCrashMidJob(t *testing.T) {
	l := startLab(t, nil, workers.Config{})
	c := l.Client
	host := hostFile(t, "h1", "dev-1:crash")
	cfg := workers.Config{Lease: time.Second, Heartbeat: time.Second}
	first := startWorker(t, l, host, cfg)
	dir := t.TempDir()
	// The first attempt blocks; the second finds the marker and passes.
	job := fmt.Sprintf("job_queue: crash\ntest_data:\n  test_cmds: |\n    if [ -e %[1]s/first ]; then echo second attempt; exit 0; fi\n    touch %[1]s/first\n    sleep 120\n", dir)
	id := submit(t, c, job)
	eventually(t, "first attempt running its test", func() bool {
		_, err := os.Stat(filepath.Join(dir, "first"))
		return err == nil
	})
	first.crash()
	startWorker(t, l, host, cfg)
	rec := waitEnd(t, c, id)
	if rec.Attempt != 2 || rec.Outcome != events.OutcomePass {
		t.Fatalf("after the crash: attempt %d outcome %s", rec.Attempt, rec.Outcome)
	}
	evs := jobEvents(t, c, id)
	requeued := slices.IndexFunc(evs, func(e *events.Event) bool { return e.Name == events.EventJobRequeued })
	if requeued < 0 || evs[requeued].Attempt != 2 || !strings.Contains(evs[requeued].Detail, "attempt 1 on dev-1") {
		t.Errorf("events %v: want a job_requeued for attempt 2 naming attempt 1", names(evs))
	}
	if !strings.Contains(output(t, c, id), "second attempt") {
		t.Errorf("output lacks the second attempt")
	}
}

// TestWorkerShutdownHandsBack stops a worker gracefully while its job's
// test outlasts the drain timeout: the job goes back to its queue at once
// (no lease wait) and another worker finishes it.
func TestWorkerShutdownHandsBack(t *testing.T) {
	l := startLab(t, nil, workers.Config{})
	c := l.Client
	cfg := workers.Config{Lease: 5 * time.Minute, DrainTimeout: 200 * time.Millisecond}
	first := startWorker(t, l, hostFile(t, "h1", "dev-1:drain"), cfg)
	dir := t.TempDir()
	job := fmt.Sprintf("job_queue: drain\ntest_data:\n  test_cmds: |\n    if [ -e %[1]s/first ]; then echo finished elsewhere; exit 0; fi\n    touch %[1]s/first\n    sleep 120\n", dir)
	id := submit(t, c, job)
	eventually(t, "first attempt running its test", func() bool {
		_, err := os.Stat(filepath.Join(dir, "first"))
		return err == nil
	})
	first.stop(t)
	rec, _, err := c.GetJob(context.Background(), id)
	if err != nil || rec.State != events.JobWaiting || rec.Device != "" {
		t.Fatalf("after shutdown the job is %v on %q (%v), want waiting", rec.State, rec.Device, err)
	}
	start := time.Now()
	startWorker(t, l, hostFile(t, "h2", "dev-2:drain"), cfg)
	rec = waitEnd(t, c, id)
	if rec.Outcome != events.OutcomePass || rec.Device != "dev-2" || rec.Attempt != 2 {
		t.Fatalf("handed-back job: %s on %s attempt %d", rec.Outcome, rec.Device, rec.Attempt)
	}
	if took := time.Since(start); took > time.Minute {
		t.Errorf("handed-back job took %s to finish: it waited for the lease", took)
	}
	got := names(jobEvents(t, c, id))
	if !slices.Contains(got, events.EventJobRequeued) {
		t.Errorf("events %v lack job_requeued", got)
	}
}

// TestDeviceStateSurvivesRestart checks that a device taken offline by a
// recovery failure stays offline, and takes no job, after its worker restarts.
func TestDeviceStateSurvivesRestart(t *testing.T) {
	l := startLab(t, nil, workers.Config{})
	c := l.Client
	host := hostFile(t, "h1", "dev-1:persist")
	w := startWorker(t, l, host, workers.Config{})
	id := submit(t, c, "job_queue: persist\nprovision_data: {fail: recovery}\n")
	if rec := waitEnd(t, c, id); rec.Outcome != events.OutcomeRecoveryFail {
		t.Fatalf("outcome %s", rec.Outcome)
	}
	w.stop(t)
	startWorker(t, l, hostFile(t, "h1", "dev-1:persist"), workers.Config{})
	next := submit(t, c, "job_queue: persist\ntest_data: {test_cmds: 'true'}\n")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	eventually(t, "device record rewritten by the new worker", func() bool {
		d, err := c.GetDevice(ctx, "dev-1")
		return err == nil && d.Heartbeat.After(time.Now().Add(-2*time.Second))
	})
	time.Sleep(500 * time.Millisecond)
	d, err := c.GetDevice(ctx, "dev-1")
	if err != nil || d.State != events.StateOffline || d.Health != events.HealthBad {
		t.Fatalf("device after restart: %+v, %v", d, err)
	}
	st, err := client.Status(ctx, c, next)
	if err != nil || st.Record.State != events.JobWaiting {
		t.Fatalf("job on an offline device's queue: %v, %v", st, err)
	}
	if !strings.Contains(st.Explain(), "out of service") {
		t.Errorf("status %q does not say the devices are out of service", st.Explain())
	}
}

// TestExcludeAgents checks that a job never runs on a device it excludes.
func TestExcludeAgents(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:ex", "dev-2:ex"), workers.Config{})
	c := l.Client
	for i := range 6 {
		id := submit(t, c, "job_queue: ex\nexclude_agents: [dev-1]\ntest_data: {test_cmds: 'true'}\n")
		if rec := waitEnd(t, c, id); rec.Device != "dev-2" || rec.Outcome != events.OutcomePass {
			t.Errorf("job %d ran on %s (%s), want dev-2", i, rec.Device, rec.Outcome)
		}
	}
}

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// setDevice sets a device's state through the control service and returns
// its status afterwards and when the request was answered.
func setDevice(t testing.TB, c *broker.Client, name, state, comment string) (*events.DeviceStatus, time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	reply, err := client.Control(ctx, c, "device-set", &events.CtlRequest{Device: name, State: state, Comment: comment})
	if err != nil {
		t.Fatalf("device set %s %s: %v", name, state, err)
	}
	return reply.Device, time.Now()
}

// waitDevice polls device name's record until cond holds, and returns it.
func waitDevice(t testing.TB, c *broker.Client, name, what string, cond func(*events.DeviceStatus) bool) *events.DeviceStatus {
	t.Helper()
	var st *events.DeviceStatus
	eventually(t, name+": "+what, func() bool {
		d, err := c.GetDevice(context.Background(), name)
		st = d
		return err == nil && cond(d)
	})
	return st
}

// deviceEvents returns the stored events about device name (not those of
// its jobs), in order.
func deviceEvents(t testing.TB, c *broker.Client, name string) []*events.Event {
	t.Helper()
	var out []*events.Event
	for _, m := range readStream(t, c, c.Subj.EventStream(), c.Subj.DeviceEvents(name)) {
		var ev events.Event
		if err := events.Decode(m.Data(), &ev); err != nil {
			t.Fatalf("event: %v", err)
		}
		out = append(out, &ev)
	}
	return out
}

// waitHealthCheck waits for device name's n-th health_check event and returns it.
func waitHealthCheck(t testing.TB, c *broker.Client, name string, n int) *events.Event {
	t.Helper()
	var found *events.Event
	eventually(t, fmt.Sprintf("%s: health check %d", name, n), func() bool {
		seen := 0
		for _, ev := range deviceEvents(t, c, name) {
			if ev.Name == events.EventHealthCheck {
				if seen++; seen == n {
					found = ev
					return true
				}
			}
		}
		return false
	})
	return found
}

// healthHost builds a host file of fake devices (name:queue) whose type
// has the health check job.
func healthHost(t testing.TB, host, job string, devices ...string) *drivers.HostConfig {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	fmt.Fprintf(&b, "host: %s\n", host)
	if job != "" {
		path := filepath.Join(dir, "health.yaml")
		if err := os.WriteFile(path, []byte(job), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "health_checks:\n  fake_connector: %s\n", path)
	}
	b.WriteString("devices:\n")
	for _, d := range devices {
		name, queue, _ := strings.Cut(d, ":")
		fmt.Fprintf(&b, "  - {agent_name: %s, provision_type: fake_connector, device_ip: 127.0.0.1, job_queues: [%s]}\n", name, queue)
	}
	h, err := drivers.ParseHost([]byte(b.String()), filepath.Join(dir, "host.yaml"))
	if err != nil {
		t.Fatalf("host file: %v", err)
	}
	return h
}

// TestDeviceSetRoundTrip takes a device offline and into maintenance and
// brings it back, idle and busy: no job starts on it while it is out of
// service, and a busy device finishes its job before it goes.
func TestDeviceSetRoundTrip(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:ds"), workers.Config{})
	c := l.Client
	idle := func(t *testing.T) {
		t.Helper()
		waitDevice(t, c, "dev-1", "idle", func(d *events.DeviceStatus) bool { return d.State == events.StateIdle })
	}

	for _, state := range []string{orchestrator.DeviceOffline, orchestrator.DeviceMaintenance} {
		t.Run("idle "+state, func(t *testing.T) {
			idle(t)
			st, _ := setDevice(t, c, "dev-1", state, "testing "+state)
			if string(st.State) != state || st.Comment != "testing "+state {
				t.Fatalf("device set %s: %+v", state, st)
			}
			id := submit(t, c, "job_queue: ds\ntest_data: {test_cmds: 'true'}\n")
			// The job waits: it can only start once the device is back.
			_, online := setDevice(t, c, "dev-1", orchestrator.DeviceOnline, "back")
			rec := waitEnd(t, c, id)
			if rec.Outcome != events.OutcomePass || rec.StartedAt.Before(online.Add(-time.Second)) {
				t.Fatalf("job %s started at %s, before the device came back at %s", rec.Outcome, rec.StartedAt, online)
			}
		})
	}

	t.Run("busy maintenance", func(t *testing.T) {
		idle(t)
		running := submit(t, c, "job_queue: ds\nprovision_data: {delay: 2}\ntest_data: {test_cmds: 'true'}\n")
		waitEvent(t, c, running, events.PhaseStart(events.PhaseProvision))
		st, _ := setDevice(t, c, "dev-1", orchestrator.DeviceMaintenance, "after this job")
		if st.State != events.StateBusy || st.Pending != events.StateMaintenance || st.JobID != running {
			t.Fatalf("busy device set maintenance: %s pending %q job %q", st.State, st.Pending, st.JobID)
		}
		next := submit(t, c, "job_queue: ds\ntest_data: {test_cmds: 'true'}\n")
		if rec := waitEnd(t, c, running); rec.Outcome != events.OutcomePass {
			t.Fatalf("running job ended %s, want pass", rec.Outcome)
		}
		d := waitDevice(t, c, "dev-1", "in maintenance after its job", func(d *events.DeviceStatus) bool {
			return d.State == events.StateMaintenance
		})
		if d.Pending != "" || d.JobID != "" || d.Comment != "after this job" {
			t.Errorf("device after its job: %+v", d)
		}
		_, online := setDevice(t, c, "dev-1", orchestrator.DeviceOnline, "")
		rec := waitEnd(t, c, next)
		if rec.StartedAt.Before(online.Add(-time.Second)) {
			t.Errorf("next job started at %s, while the device was in maintenance (back at %s)", rec.StartedAt, online)
		}
	})
}

// TestDeviceSetSurvivesRestarts sets a device into maintenance and checks
// that it stays so across a worker restart and an orchestrator restart,
// while its neighbour, online, stays online (Testflinger's #1328).
func TestDeviceSetSurvivesRestarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	l := startLab(t, nil, workers.Config{})
	c := l.Client
	host := func() *drivers.HostConfig { return hostFile(t, "h1", "dev-1:sr1", "dev-2:sr2") }
	w := startWorker(t, l, host(), workers.Config{})
	waitDevice(t, c, "dev-2", "idle", func(d *events.DeviceStatus) bool { return d.State == events.StateIdle })
	setDevice(t, c, "dev-1", orchestrator.DeviceMaintenance, "new SD card")
	waiting := submit(t, c, "job_queue: sr1\ntest_data: {test_cmds: 'true'}\n")

	w.stop(t)
	restarted := time.Now()
	startWorker(t, l, host(), workers.Config{})
	for _, name := range []string{"dev-1", "dev-2"} {
		waitDevice(t, c, name, "rewritten by the new worker", func(d *events.DeviceStatus) bool { return d.Heartbeat.After(restarted) })
	}
	if d := deviceStatus(t, c, "dev-1"); d.State != events.StateMaintenance || d.Comment != "new SD card" {
		t.Errorf("dev-1 after a worker restart: %s %q, want maintenance", d.State, d.Comment)
	}
	if d := deviceStatus(t, c, "dev-2"); d.State != events.StateIdle {
		t.Errorf("dev-2 after a worker restart: %s, want idle", d.State)
	}
	if rec := waitEnd(t, c, submit(t, c, "job_queue: sr2\ntest_data: {test_cmds: 'true'}\n")); rec.Device != "dev-2" || rec.Outcome != events.OutcomePass {
		t.Errorf("job on the online device: %s on %s", rec.Outcome, rec.Device)
	}

	// A new orchestrator, on a new connection, knows nothing but the records.
	l.Orchestrator.Stop()
	oc := connect(t, l, "orchestrator-2")
	o, err := orchestrator.New(orchestrator.Config{Client: oc, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Stop)
	if d := deviceStatus(t, c, "dev-1"); d.State != events.StateMaintenance {
		t.Errorf("dev-1 after an orchestrator restart: %s, want maintenance", d.State)
	}
	if rec, _, err := c.GetJob(ctx, waiting); err != nil || rec.State != events.JobWaiting || rec.Attempt != 0 {
		t.Fatalf("job on the device in maintenance: %+v %v", rec, err)
	}
	_, online := setDevice(t, c, "dev-1", orchestrator.DeviceOnline, "")
	if rec := waitEnd(t, c, waiting); rec.Device != "dev-1" || rec.StartedAt.Before(online.Add(-time.Second)) {
		t.Errorf("waiting job ran on %s at %s (device back at %s)", rec.Device, rec.StartedAt, online)
	}
}

// TestHeartbeatKeepsDeviceSet races device set against a worker writing
// its device's record every few milliseconds: each setting must survive
// the worker's next writes.
func TestHeartbeatKeepsDeviceSet(t *testing.T) {
	l := startLab(t, hostFile(t, "h1", "dev-1:hb"), workers.Config{Heartbeat: 5 * time.Millisecond})
	c := l.Client
	waitDevice(t, c, "dev-1", "idle", func(d *events.DeviceStatus) bool { return d.State == events.StateIdle })
	states := []string{orchestrator.DeviceOffline, orchestrator.DeviceOnline, orchestrator.DeviceMaintenance, orchestrator.DeviceOnline}
	want := map[string]events.DeviceState{
		orchestrator.DeviceOffline: events.StateOffline, orchestrator.DeviceOnline: events.StateIdle,
		orchestrator.DeviceMaintenance: events.StateMaintenance,
	}
	for i := range 20 {
		state := states[i%len(states)]
		comment := fmt.Sprintf("round %d", i)
		_, at := setDevice(t, c, "dev-1", state, comment)
		// Three heartbeats after the answer, the setting must still hold.
		var beats []time.Time
		d := waitDevice(t, c, "dev-1", "heartbeats after device set", func(d *events.DeviceStatus) bool {
			if d.Heartbeat.After(at) && (len(beats) == 0 || d.Heartbeat.After(beats[len(beats)-1])) {
				beats = append(beats, d.Heartbeat)
			}
			return len(beats) >= 3
		})
		if d.State != want[state] || d.Comment != comment || d.CommentBy != orchestrator.DeviceSetBy {
			t.Fatalf("round %d: set %s, then the worker's heartbeats left %s %q (by %q)", i, state, d.State, d.Comment, d.CommentBy)
		}
	}
}

// TestHealthCheck runs a device's health check before its first job: one
// that passes makes the device good and lets user jobs through; one that
// fails takes the device offline with health bad, and no user job reaches
// it, even after it is set online again.
func TestHealthCheck(t *testing.T) {
	t.Run("passes", func(t *testing.T) {
		l := startLab(t, healthHost(t, "h1", "test_data: {test_cmds: 'echo healthy'}\n", "dev-1:hc"), workers.Config{})
		c := l.Client
		ev := waitHealthCheck(t, c, "dev-1", 1)
		id, _ := ev.Data["job_id"].(string)
		if ev.Data["passed"] != true || !events.IsHealthCheck(id) || !strings.Contains(id, "dev-1") {
			t.Fatalf("health check event: %q %v", ev.Detail, ev.Data)
		}
		rec, _, err := c.GetJob(context.Background(), id)
		if err != nil || rec.Outcome != events.OutcomePass || rec.Device != "dev-1" || rec.Job.JobQueue != "hc" {
			t.Fatalf("health check record: %+v %v", rec, err)
		}
		got := names(jobEvents(t, c, id))
		if len(got) < 3 || got[0] != events.EventJobSubmitted || got[1] != events.EventJobStart || got[len(got)-1] != events.EventJobEnd {
			t.Errorf("health check events %v: want job_submitted, job_start ... job_end", got)
		}
		if !strings.Contains(output(t, c, id), "healthy") {
			t.Errorf("health check output lacks its test's")
		}
		waitDevice(t, c, "dev-1", "good", func(d *events.DeviceStatus) bool {
			return d.Health == events.HealthGood && d.State == events.StateIdle
		})
		user := waitEnd(t, c, submit(t, c, "job_queue: hc\ntest_data: {test_cmds: 'true'}\n"))
		if user.Outcome != events.OutcomePass || user.Device != "dev-1" || user.StartedAt.Before(rec.EndedAt) {
			t.Errorf("user job %s on %s at %s, health check ended at %s", user.Outcome, user.Device, user.StartedAt, rec.EndedAt)
		}
		if n := countEvents(deviceEvents(t, c, "dev-1"), events.EventHealthCheck); n != 1 {
			t.Errorf("%d health checks, want 1: a good device needs none", n)
		}
	})
	t.Run("fails", func(t *testing.T) {
		l := startLab(t, healthHost(t, "h1", "test_data: {test_cmds: 'exit 3'}\n", "dev-1:hf"), workers.Config{})
		c := l.Client
		ev := waitHealthCheck(t, c, "dev-1", 1)
		id, _ := ev.Data["job_id"].(string)
		if ev.Data["passed"] != false || !events.IsHealthCheck(id) {
			t.Fatalf("health check event: %q %v", ev.Detail, ev.Data)
		}
		d := waitDevice(t, c, "dev-1", "offline", func(d *events.DeviceStatus) bool { return d.State == events.StateOffline })
		if d.Health != events.HealthBad || !strings.Contains(d.Comment, "health check "+id+" failed") {
			t.Errorf("device after a failed health check: %s %q", d.Health, d.Comment)
		}
		if rec, _, err := c.GetJob(context.Background(), id); err != nil || rec.Outcome != events.OutcomeTestFail || !rec.State.Terminal() {
			t.Errorf("health check record: %+v %v", rec, err)
		}
		user := submit(t, c, "job_queue: hf\ntest_data: {test_cmds: 'true'}\n")
		// Online again: health unknown, so the check runs (and fails) first.
		st, _ := setDevice(t, c, "dev-1", orchestrator.DeviceOnline, "try again")
		if st.State != events.StateIdle || st.Health != events.HealthUnknown {
			t.Fatalf("bad device set online: %s/%s, want idle/unknown", st.State, st.Health)
		}
		if ev := waitHealthCheck(t, c, "dev-1", 2); ev.Data["passed"] != false {
			t.Fatalf("second health check: %v", ev.Data)
		}
		waitDevice(t, c, "dev-1", "offline again", func(d *events.DeviceStatus) bool { return d.State == events.StateOffline })
		if rec, _, err := c.GetJob(context.Background(), user); err != nil || rec.State != events.JobWaiting || rec.Attempt != 0 {
			t.Errorf("user job on a device failing its health check: %+v %v", rec, err)
		}
	})
}

func countEvents(evs []*events.Event, name string) int {
	n := 0
	for _, ev := range evs {
		if ev.Name == name {
			n++
		}
	}
	return n
}

// TestLostWorker cuts a worker off NATS without a word, as a killed
// process would be: within the device timeout its device's health becomes
// unknown and the record says the worker is lost. When a worker comes
// back, the device stays unknown and runs its health check before user
// jobs.
func TestLostWorker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	const timeout = 2 * time.Second
	o := labOptions(t, nil, workers.Config{}, "")
	o.Orchestrator = orchestrator.Config{DeviceTimeout: timeout}
	l := startLabWith(ctx, t, o)
	c := l.Client
	wcfg := workers.Config{Heartbeat: 200 * time.Millisecond}
	w := startWorker(t, l, hostFile(t, "h1", "dev-1:lw"), wcfg)
	if rec := waitEnd(t, c, submit(t, c, "job_queue: lw\ntest_data: {test_cmds: 'true'}\n")); rec.Outcome != events.OutcomePass {
		t.Fatalf("first job: %s", rec.Outcome)
	}
	waitDevice(t, c, "dev-1", "good", func(d *events.DeviceStatus) bool { return d.Health == events.HealthGood })

	w.crash()
	cut := time.Now()
	d := waitDevice(t, c, "dev-1", "lost", func(d *events.DeviceStatus) bool { return d.Lost })
	took := time.Since(cut)
	if d.Health != events.HealthUnknown || d.State != events.StateIdle || !strings.Contains(d.Comment, "worker on h1 lost: no heartbeat since") {
		t.Errorf("lost device: %s/%s %q", d.State, d.Health, d.Comment)
	}
	if took > 5*timeout {
		t.Errorf("device marked lost %s after its worker was cut off; the device timeout is %s", took, timeout)
	}
	t.Logf("device marked lost %s after its worker was cut off (device timeout %s)", took.Round(time.Millisecond), timeout)

	// The worker comes back with a health check configured: the mark goes,
	// the health stays unknown until the check passes, before any user job.
	back := time.Now()
	startWorker(t, l, healthHost(t, "h1", "test_data: {test_cmds: 'true'}\n", "dev-1:lw"), wcfg)
	ev := waitHealthCheck(t, c, "dev-1", 1)
	if ev.Data["passed"] != true || ev.Time.Before(back) {
		t.Fatalf("health check after the worker came back: %v at %s", ev.Data, ev.Time)
	}
	waitDevice(t, c, "dev-1", "good again", func(d *events.DeviceStatus) bool {
		return !d.Lost && d.Health == events.HealthGood && d.State == events.StateIdle
	})
	user := waitEnd(t, c, submit(t, c, "job_queue: lw\ntest_data: {test_cmds: 'true'}\n"))
	if user.Outcome != events.OutcomePass || user.StartedAt.Before(ev.Time.Add(-time.Second)) {
		t.Errorf("user job %s at %s; the health check ended at %s", user.Outcome, user.StartedAt, ev.Time)
	}
}

// TestDeviceSetCommand drives `flinger device set` and `flinger devices`
// against a lab: the state, health and comment are printed and listed,
// and an unknown device is a clear error.
func TestDeviceSetCommand(t *testing.T) {
	bin := flingerBinary(t)
	l := startLab(t, hostFile(t, "h1", "cmd-1:cmd"), workers.Config{})
	waitDevice(t, l.Client, "cmd-1", "idle", func(d *events.DeviceStatus) bool { return d.State == events.StateIdle })
	run := func(args ...string) cliResult {
		return runFlinger(t, bin, append(args, "--nats", l.URL)...)
	}
	r := run("device", "set", "cmd-1", "maintenance", "--comment", "new relay")
	if r.code != 0 || !strings.Contains(r.stdout, "cmd-1: maintenance") || !strings.Contains(r.stdout, "comment: new relay") {
		t.Fatalf("device set: %s", r)
	}
	r = run("devices")
	row, ok := parseDevices(r.stdout)["cmd-1"]
	if r.code != 0 || !ok || row.state != "maintenance" || row.health == "" || !strings.Contains(row.line, "new relay") {
		t.Fatalf("devices after device set: %s", r)
	}
	r = run("device", "set", "nosuch", "offline")
	if r.code == 0 || !strings.Contains(r.stderr, `no device named "nosuch"`) {
		t.Errorf("device set of an unknown device: %s", r)
	}
	r = run("device", "set", "cmd-1", "sideways")
	if r.code == 0 || !strings.Contains(r.stderr, "use online, offline or maintenance") {
		t.Errorf("device set with an unknown state: %s", r)
	}
	r = run("device", "set", "cmd-1", "online")
	if r.code != 0 || !strings.Contains(r.stdout, "cmd-1: idle") {
		t.Errorf("device set online: %s", r)
	}
}

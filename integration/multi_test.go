package integration

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/workers"
)

// multiDevices are the fake devices the children of the multi-device jobs
// of these tests run on, and their addresses.
var multiDevices = map[string]string{"m-dev-1": "10.0.0.1", "m-dev-2": "10.0.0.2"}

// startMultiLab starts a lab with a multi device (queue multi) and the
// fake devices of multiDevices, each on its own queue (its name).
func startMultiLab(t *testing.T) *lab.Lab {
	t.Helper()
	var b strings.Builder
	b.WriteString("host: multi-host\ndevices:\n  - {agent_name: multi-1, provision_type: multi, job_queues: [multi]}\n")
	for _, name := range slices.Sorted(maps.Keys(multiDevices)) {
		fmt.Fprintf(&b, "  - {agent_name: %s, provision_type: fake, job_queues: [%s], device_ip: %s}\n", name, name, multiDevices[name])
	}
	host, err := drivers.ParseHost([]byte(b.String()), "multi-host.yaml")
	if err != nil {
		t.Fatalf("host file: %v", err)
	}
	return startLab(t, host, workers.Config{})
}

// multiJob is a multi-device job with one child per entry (each a job
// body in YAML flow style), and extra top-level YAML.
func multiJob(extra string, children ...string) string {
	var b strings.Builder
	b.WriteString("job_queue: multi\n")
	b.WriteString(extra)
	b.WriteString("provision_data:\n  jobs:\n")
	for _, c := range children {
		fmt.Fprintf(&b, "    - %s\n", c)
	}
	return b.String()
}

// checkReleased waits until every child of parent has ended and every
// device of multiDevices is idle with no job, and returns the children.
func checkReleased(t *testing.T, c *broker.Client, parent string, wantChildren int) []*events.JobRecord {
	t.Helper()
	ctx := context.Background()
	rec, _, err := c.GetJob(ctx, parent)
	if err != nil {
		t.Fatalf("parent record: %v", err)
	}
	if len(rec.Children) != wantChildren {
		t.Fatalf("parent lists children %v, want %d", rec.Children, wantChildren)
	}
	children := make([]*events.JobRecord, len(rec.Children))
	for i, id := range rec.Children {
		eventually(t, "child "+id+" ends", func() bool {
			r, _, err := c.GetJob(ctx, id)
			children[i] = r
			return err == nil && r.State.Terminal()
		})
		if children[i].Job.ParentJobID != parent {
			t.Errorf("child %s: parent_job_id %q, want %q", id, children[i].Job.ParentJobID, parent)
		}
	}
	for name := range multiDevices {
		eventually(t, "device "+name+" idle", func() bool {
			st, err := c.GetDevice(ctx, name)
			return err == nil && st.State == events.StateIdle && st.JobID == ""
		})
	}
	return children
}

// hasEvent reports whether job id has an event called name.
func hasEvent(t *testing.T, c *broker.Client, id, name string) bool {
	t.Helper()
	return slices.Contains(names(jobEvents(t, c, id)), name)
}

// TestMultiDeviceJob runs a multi-device job whose two children are
// allocated: the parent's test sees both devices, the job passes, and
// both children end and release their devices.
func TestMultiDeviceJob(t *testing.T) {
	l := startMultiLab(t)
	c := l.Client
	id := submit(t, c, multiJob("test_data:\n  test_cmds: 'echo \"devices: $DEVICE_IP_1 and $DEVICE_IP_2\"; cat job_list.json'\n",
		"{job_queue: m-dev-1, provision_data: {output_lines: 1}}",
		"{job_queue: m-dev-2, provision_data: {output_lines: 1}}"))
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomePass {
		t.Fatalf("outcome %s (%s); output:\n%s", rec.Outcome, rec.EndReason, output(t, c, id))
	}
	out := output(t, c, id)
	if !strings.Contains(out, "devices: 10.0.0.1 and 10.0.0.2") {
		t.Errorf("the test phase did not see DEVICE_IP_1 and DEVICE_IP_2:\n%s", out)
	}
	for _, child := range rec.Children {
		for _, s := range []string{"Created job " + child + "\n", `"job_id": "` + child + `"`} {
			if !strings.Contains(out, s) {
				t.Errorf("output lacks %q:\n%s", s, out)
			}
		}
	}
	children := checkReleased(t, c, id, 2)
	for i, child := range children {
		want := fmt.Sprintf("m-dev-%d", i+1)
		if child.Device != want || child.DeviceInfo["device_ip"] != multiDevices[want] {
			t.Errorf("child %d ran on %s with device_info %v, want %s", i+1, child.Device, child.DeviceInfo, want)
		}
		if !hasEvent(t, c, child.Job.JobID, events.EventJobAllocated) {
			t.Errorf("child %d was never allocated", i+1)
		}
		if a, _ := child.Job.AllocateData.Bool("allocate", false); !a {
			t.Errorf("child %d: allocate_data %v", i+1, child.Job.AllocateData)
		}
	}
	evs := jobEvents(t, c, id)
	var last *events.Event
	for _, ev := range evs {
		if ev.Name == events.EventChildJobs {
			last = ev
		}
	}
	if last == nil {
		t.Fatalf("no child_jobs event: %v", names(evs))
	}
	if got := fmt.Sprint(last.Data["job_ids"]); got != fmt.Sprint(rec.Children) {
		t.Errorf("child_jobs lists %s, want %v", got, rec.Children)
	}
}

// TestMultiChildFailureReleasesEveryDevice fails one child after the other
// is allocated: the multi-device job fails, and every child ends and every
// device returns to service.
func TestMultiChildFailureReleasesEveryDevice(t *testing.T) {
	l := startMultiLab(t)
	c := l.Client
	id := submit(t, c, multiJob("test_data: {test_cmds: echo never runs}\n",
		"{job_queue: m-dev-1}",
		"{job_queue: m-late, provision_data: {fail: provision}}"))
	ev := waitEvent(t, c, id, events.EventChildJobs)
	first := fmt.Sprint(ev.Data["job_ids"].([]any)[0])
	waitEvent(t, c, first, events.EventJobAllocated)
	// Only now does a device serve the second child's queue: it fails.
	late := startWorker(t, l, hostFile(t, "late-host", "late-dev:m-late"), workers.Config{})
	defer late.stop(t)

	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomeFail || rec.EndReason != events.PhaseFail(events.PhaseProvision) {
		t.Errorf("outcome %s (%s), want fail (provision_fail)", rec.Outcome, rec.EndReason)
	}
	if out := output(t, c, id); !strings.Contains(out, "Unable to allocate all devices") || strings.Contains(out, "never runs") {
		t.Errorf("output:\n%s", out)
	}
	children := checkReleased(t, c, id, 2)
	if children[0].Outcome != events.OutcomeCancelled {
		t.Errorf("allocated child ended %s, want cancelled", children[0].Outcome)
	}
	if children[1].Outcome != events.OutcomeFail {
		t.Errorf("failing child ended %s, want fail", children[1].Outcome)
	}
}

// TestMultiAllocationTimeout gives a multi-device job a child nobody
// serves: at its allocation_timeout every child is cancelled, the devices
// are released and an allocation_timeout event says which child was late.
func TestMultiAllocationTimeout(t *testing.T) {
	l := startMultiLab(t)
	c := l.Client
	id := submit(t, c, multiJob("allocation_timeout: 3\ntest_data: {test_cmds: echo never runs}\n",
		"{job_queue: m-dev-1}",
		"{job_queue: nobody-serves-this}"))
	ev := waitEvent(t, c, id, events.EventAllocationTimeout)
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomeFail || rec.EndReason != events.PhaseFail(events.PhaseProvision) {
		t.Errorf("outcome %s (%s), want fail (provision_fail)", rec.Outcome, rec.EndReason)
	}
	late := rec.Children[1]
	if got := fmt.Sprint(ev.Data["pending"]); !strings.Contains(got, late) || ev.Data["allocation_timeout"] == nil {
		t.Errorf("allocation_timeout data %v does not name the late child %s", ev.Data, late)
	}
	children := checkReleased(t, c, id, 2)
	for i, child := range children {
		if child.Outcome != events.OutcomeCancelled {
			t.Errorf("child %d ended %s, want cancelled", i+1, child.Outcome)
		}
	}
}

// TestMultiParentCancelled cancels a multi-device job while its test runs
// on the allocated devices: every child ends and every device is released.
func TestMultiParentCancelled(t *testing.T) {
	l := startMultiLab(t)
	c := l.Client
	id := submit(t, c, multiJob("test_data: {test_cmds: sleep 600}\n", "{job_queue: m-dev-1}", "{job_queue: m-dev-2}"))
	waitEvent(t, c, id, events.PhaseStart(events.PhaseTest))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := client.Cancel(ctx, c, id, "test"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomeCancelled {
		t.Errorf("outcome %s, want cancelled", rec.Outcome)
	}
	for _, child := range checkReleased(t, c, id, 2) {
		if !hasEvent(t, c, child.Job.JobID, events.EventJobAllocated) {
			t.Errorf("child %s was not allocated before the cancel", child.Job.JobID)
		}
	}
}

// TestMultiOrphanedChildren checks the orchestrator's safety net for a
// multi-device job whose worker is gone: its children are cancelled when
// it ends, and when it is requeued (a new attempt makes new children).
func TestMultiOrphanedChildren(t *testing.T) {
	l := startMultiLab(t)
	c := l.Client
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	// A parent that no device runs, listing children as a lost worker left them.
	orphan := func(children ...string) (string, []string) {
		parent := submit(t, c, "job_queue: no-multi-device\n")
		var ids []string
		for _, q := range children {
			ids = append(ids, submit(t, c, fmt.Sprintf("job_queue: %s\nparent_job_id: %s\nallocate_data: {allocate: true}\n", q, parent)))
		}
		if _, _, err := c.UpdateJob(ctx, parent, func(r *events.JobRecord) error {
			r.Children = ids
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return parent, ids
	}

	t.Run("parent ends", func(t *testing.T) {
		parent, ids := orphan("m-dev-1", "nobody-serves-this")
		waitEvent(t, c, ids[0], events.EventJobAllocated)
		if _, err := client.Cancel(ctx, c, parent, "test"); err != nil {
			t.Fatal(err)
		}
		checkReleased(t, c, parent, 2)
		if r, _, _ := c.GetJob(ctx, ids[1]); r.Outcome != events.OutcomeCancelled {
			t.Errorf("waiting child ended %s, want cancelled", r.Outcome)
		}
	})
	t.Run("parent requeued", func(t *testing.T) {
		parent, ids := orphan("m-dev-1", "m-dev-2")
		for _, id := range ids {
			waitEvent(t, c, id, events.EventJobAllocated)
		}
		ev := events.NewEvent(events.EventJobRequeued)
		ev.JobID, ev.Queue, ev.Detail = parent, "no-multi-device", "its device was lost"
		if err := c.PublishEventSync(ctx, ev); err != nil {
			t.Fatal(err)
		}
		for _, child := range checkReleased(t, c, parent, 2) {
			if child.Outcome != events.OutcomeCancelled {
				t.Errorf("child %s ended %s, want cancelled", child.Job.JobID, child.Outcome)
			}
		}
		if r, _, _ := c.GetJob(ctx, parent); r.State != events.JobWaiting {
			t.Errorf("requeued parent is %s, want still waiting", r.State)
		}
	})
}

// TestMultiNewAttemptCancelsEarlierChildren starts a multi-device job whose
// record already lists a child holding a device, as an earlier attempt
// lost with its worker leaves it: the new attempt cancels that child before
// creating its own, which need that very device.
func TestMultiNewAttemptCancelsEarlierChildren(t *testing.T) {
	l := startMultiLab(t)
	c := l.Client
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	// Queue multi-later has no device yet, so the job waits while its
	// record gets the earlier child.
	job := strings.Replace(multiJob("test_data: {test_cmds: 'echo \"devices: $DEVICE_IP_1 and $DEVICE_IP_2\"'}\n",
		"{job_queue: m-dev-1}", "{job_queue: m-dev-2}"), "job_queue: multi\n", "job_queue: multi-later\n", 1)
	held := submit(t, c, job)
	old := submit(t, c, fmt.Sprintf("job_queue: m-dev-1\nparent_job_id: %s\nallocate_data: {allocate: true}\n", held))
	waitEvent(t, c, old, events.EventJobAllocated)
	if _, _, err := c.UpdateJob(ctx, held, func(r *events.JobRecord) error {
		r.Children = []string{old}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	later, err := drivers.ParseHost([]byte("host: later-host\ndevices:\n  - {agent_name: multi-2, provision_type: multi, job_queues: [multi-later]}\n"), "later.yaml")
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, l, later, workers.Config{})

	rec := waitEnd(t, c, held)
	if rec.Outcome != events.OutcomePass {
		t.Fatalf("outcome %s (%s); output:\n%s", rec.Outcome, rec.EndReason, output(t, c, held))
	}
	if r, _, _ := c.GetJob(ctx, old); r.Outcome != events.OutcomeCancelled {
		t.Errorf("earlier attempt's child ended %s, want cancelled", r.Outcome)
	}
	if !slices.Contains(rec.Children, old) || len(rec.Children) != 3 {
		t.Errorf("children %v: want the earlier child and two new ones", rec.Children)
	}
	if out := output(t, c, held); !strings.Contains(out, "devices: 10.0.0.1 and 10.0.0.2") {
		t.Errorf("output:\n%s", out)
	}
}

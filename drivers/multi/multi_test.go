package multi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/multi"
	"github.com/flingerlab/flinger/events"
)

const parentID = "00000000-0000-4000-8000-0000000000aa"

// Queues the fake job service understands.
const (
	queueOK     = "ok"     // the child is allocated at once
	queueLate   = "late"   // the child is allocated when the test says so
	queueFail   = "fail"   // the child ends (provision_fail) without being allocated
	queueNever  = "never"  // the child is never allocated
	queueReject = "reject" // intake refuses the child
)

// fakeJobs is an in-memory drivers.JobService: what becomes of a child
// depends on its queue.
type fakeJobs struct {
	mu        sync.Mutex
	submitted []*events.Job
	ids       []string
	state     map[string]events.JobState
	info      map[string]map[string]any
	cancelled []string
	cancelErr error
	changed   chan struct{} // closed and replaced on every change
}

func newFakeJobs() *fakeJobs {
	return &fakeJobs{state: map[string]events.JobState{}, info: map[string]map[string]any{}, changed: make(chan struct{})}
}

func (f *fakeJobs) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeJobs) Submit(ctx context.Context, job *events.Job) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if job.JobQueue == queueReject {
		return "", errors.New("invalid job: job_queue: nobody takes this queue")
	}
	id := fmt.Sprintf("child-%d", len(f.ids)+1)
	f.submitted = append(f.submitted, job)
	f.ids = append(f.ids, id)
	f.state[id] = events.JobWaiting
	if job.JobQueue == queueOK {
		f.allocateLocked(id)
	}
	if job.JobQueue == queueFail {
		f.state[id] = events.JobCompleted
	}
	f.notifyLocked()
	return id, nil
}

func (f *fakeJobs) allocateLocked(id string) {
	n := len(f.info) + 1
	f.state[id] = events.JobAllocated
	f.info[id] = map[string]any{"device_ip": fmt.Sprintf("10.0.0.%d", n), "agent_name": fmt.Sprintf("dev-%d", n)}
}

// allocate allocates child id now.
func (f *fakeJobs) allocate(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allocateLocked(id)
	f.notifyLocked()
}

func (f *fakeJobs) Await(ctx context.Context, ids []string) ([]drivers.Allocation, error) {
	for {
		f.mu.Lock()
		out := make([]drivers.Allocation, len(ids))
		all := true
		for i, id := range ids {
			switch st := f.state[id]; {
			case st == events.JobAllocated:
				out[i] = drivers.Allocation{JobID: id, DeviceInfo: f.info[id]}
			case st.Terminal():
				f.mu.Unlock()
				return out, &drivers.ChildEndedError{JobID: id, State: st, Outcome: events.OutcomeFail, Reason: "provision_fail"}
			default:
				all = false
			}
		}
		changed := f.changed
		f.mu.Unlock()
		if all {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, fmt.Errorf("waiting for child jobs: %w", context.Cause(ctx))
		case <-changed:
		}
	}
}

func (f *fakeJobs) Cancel(ctx context.Context, id, comment string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cancelErr != nil {
		return f.cancelErr
	}
	if _, ok := f.state[id]; !ok {
		return fmt.Errorf("no such job %s", id)
	}
	f.cancelled = append(f.cancelled, id)
	if !f.state[id].Terminal() {
		f.state[id] = events.JobCancelled
	}
	f.notifyLocked()
	return nil
}

func (f *fakeJobs) cancels() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.cancelled)
}

func (f *fakeJobs) children() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ids)
}

func device() *drivers.DeviceConfig {
	return &drivers.DeviceConfig{Name: "multi-001", Type: multi.Type, Queues: []string{"multi"}}
}

func newDriver(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
	t.Helper()
	cfg := device()
	d, err := drivers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d, cfg
}

// parent returns a multi-device job with one child per queue.
func parent(queues ...string) *events.Job {
	var jobs []any
	for _, q := range queues {
		jobs = append(jobs, map[string]any{"job_queue": q, "provision_data": map[string]any{"delay": 1}, "test_data": map[string]any{"test_cmds": "echo child"}})
	}
	return &events.Job{JobID: parentID, JobQueue: "multi", ProvisionData: events.Data{"jobs": jobs}}
}

func newRun(t *testing.T, job *events.Job, jobs drivers.JobService) (*drivers.Run, *drivertest.Output) {
	t.Helper()
	run, out := drivertest.NewRun(t, device(), job)
	run.Jobs = jobs
	return run, out
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, newDriver)
}

func TestRegistered(t *testing.T) {
	if c, ok := drivers.Canonical(multi.Type); !ok || c != multi.Type {
		t.Errorf("Canonical(%q) = %q, %v", multi.Type, c, ok)
	}
}

// TestScenarios runs what needs no lab through the driver and through the
// connector command line (which has no job service).
func TestScenarios(t *testing.T) {
	dev := func(*testing.T) *drivers.DeviceConfig { return device() }
	job := func(pd events.Data) func(*drivers.DeviceConfig) *events.Job {
		return func(*drivers.DeviceConfig) *events.Job {
			return &events.Job{JobID: parentID, JobQueue: "multi", ProvisionData: pd,
				TestData: &events.TestData{TestCmds: events.ScriptCmds(`echo "ip1=[$DEVICE_IP_1]"`)}}
		}
	}
	drivertest.RunScenarios(t, []drivertest.Scenario{
		{Name: "no jobs", Setup: dev, Job: job(nil), Want: drivertest.ProvisioningFails, Output: "provision_data.jobs: required"},
		{Name: "jobs not a list", Setup: dev, Job: job(events.Data{"jobs": "rpi4b"}), Want: drivertest.ProvisioningFails,
			Output: "provision_data.jobs: must be a list of jobs, got a string"},
		{Name: "child without job_queue", Setup: dev, Job: job(events.Data{"jobs": []any{map[string]any{"job_queue": "a"}, map[string]any{"name": "b"}}}),
			Want: drivertest.ProvisioningFails, Output: "provision_data.jobs[1].job_queue"},
		{Name: "no job service", Setup: dev, Job: job(events.Data{"jobs": []any{map[string]any{"job_queue": "a"}}}),
			Want: drivertest.Fails, Output: "no job service"},
		{Name: "test without job_list.json", Setup: dev, Job: job(nil), Phase: events.PhaseTest, Want: drivertest.Succeeds,
			Output: "ip1=[]"},
		{Name: "cleanup without children", Setup: dev, Job: job(nil), Phase: events.PhaseCleanup, Want: drivertest.Succeeds,
			Output: "No child jobs to cancel"},
	})
}

func TestChildJobs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pd     events.Data
		fields []string // the bad fields, in order; none: valid
		msg    string   // in the error
	}{
		{name: "two children", pd: events.Data{"jobs": []any{
			map[string]any{"job_queue": "a", "provision_data": map[string]any{"url": "http://example.com/a.img"}},
			map[string]any{"job_queue": "b", "allocate_data": map[string]any{"allocate": false}, "parent_job_id": "someone-else"},
		}}},
		{name: "missing", pd: events.Data{"url": "http://x"}, fields: []string{"provision_data.jobs"}, msg: "required"},
		{name: "null", pd: events.Data{"jobs": nil}, fields: []string{"provision_data.jobs"}, msg: "required"},
		{name: "not a list", pd: events.Data{"jobs": map[string]any{"job_queue": "a"}}, fields: []string{"provision_data.jobs"}, msg: "must be a list of jobs, got a mapping"},
		{name: "empty", pd: events.Data{"jobs": []any{}}, fields: []string{"provision_data.jobs"}, msg: "must not be empty"},
		{name: "entry not a mapping", pd: events.Data{"jobs": []any{map[string]any{"job_queue": "a"}, "b"}},
			fields: []string{"provision_data.jobs[1]"}, msg: "must be a mapping (a job), got a string"},
		{name: "no job_queue", pd: events.Data{"jobs": []any{map[string]any{"job_queue": "a"}, map[string]any{"provision_data": map[string]any{"url": "http://example.com/y.img"}}}},
			fields: []string{"provision_data.jobs[1].job_queue"}, msg: "provision_data.jobs[1].job_queue: "},
		{name: "every bad entry named", pd: events.Data{"jobs": []any{
			map[string]any{"job_queue": "a", "global_timout": 10},
			map[string]any{"job_queue": "b"},
			map[string]any{"job_queue": "c", "global_timeout": "soon"},
		}}, fields: []string{"provision_data.jobs[0].global_timout", "provision_data.jobs[2].global_timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := &events.Job{JobID: parentID, JobQueue: "multi", ProvisionData: tc.pd}
			children, err := multi.ChildJobs(job)
			if len(tc.fields) == 0 {
				if err != nil {
					t.Fatalf("ChildJobs: %v", err)
				}
				list := tc.pd["jobs"].([]any)
				if len(children) != len(list) {
					t.Fatalf("%d children, want %d", len(children), len(list))
				}
				for i, c := range children {
					want := list[i].(map[string]any)["job_queue"]
					if c.JobQueue != want || c.ParentJobID != parentID {
						t.Errorf("child %d: queue %q parent %q, want %q %q", i, c.JobQueue, c.ParentJobID, want, parentID)
					}
					if allocate, err := c.AllocateData.Bool("allocate", false); err != nil || !allocate {
						t.Errorf("child %d: allocate_data = %v, want allocate: true", i, c.AllocateData)
					}
				}
				if url, _ := children[0].ProvisionData.String("url", ""); url != "http://example.com/a.img" {
					t.Errorf("child 0 lost its provision_data: %v", children[0].ProvisionData)
				}
				return
			}
			var verr *events.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("ChildJobs = %v (%T), want a *events.ValidationError", err, err)
			}
			var got []string
			for _, f := range verr.Fields {
				got = append(got, f.Field)
			}
			if !slices.Equal(got, tc.fields) {
				t.Errorf("bad fields %q, want %q (%v)", got, tc.fields, err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q lacks %q", err, tc.msg)
			}
		})
	}
}

func TestAllocationTimeout(t *testing.T) {
	for _, tc := range []struct {
		job  *events.Job
		want time.Duration
	}{
		{nil, multi.DefaultAllocationTimeout},
		{&events.Job{}, 2 * time.Hour},
		{&events.Job{AllocationTimeout: 90}, 90 * time.Second},
	} {
		if got := multi.AllocationTimeout(tc.job); got != tc.want {
			t.Errorf("AllocationTimeout(%+v) = %s, want %s", tc.job, got, tc.want)
		}
	}
}

func readJobList(t *testing.T, dir string) []drivers.Allocation {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, multi.JobListFile))
	if err != nil {
		t.Fatalf("job_list.json: %v", err)
	}
	var list []drivers.Allocation
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatalf("job_list.json: %v: %s", err, data)
	}
	return list
}

// TestAllAllocated runs a multi job through provision, test and cleanup.
func TestAllAllocated(t *testing.T) {
	d, _ := newDriver(t)
	jobs := newFakeJobs()
	job := parent(queueOK, queueOK)
	job.TestData = &events.TestData{TestCmds: events.ScriptCmds("echo \"devices $DEVICE_IP_1 $DEVICE_IP_2 [$DEVICE_IP_3]\"\n")}
	run, out := newRun(t, job, jobs)
	run.Env = append(run.Env, "DEVICE_IP_3=stale")

	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	for _, s := range []string{"Created job child-1\n", "Created job child-2\n", "Job child-2 allocated device dev-2 at 10.0.0.2", "All 2 devices allocated"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	list := readJobList(t, run.Dir)
	if len(list) != 2 || list[0].JobID != "child-1" || list[1].JobID != "child-2" ||
		list[0].DeviceInfo["device_ip"] != "10.0.0.1" || list[1].DeviceInfo["agent_name"] != "dev-2" {
		t.Errorf("job_list.json = %+v", list)
	}
	for i, c := range jobs.submitted {
		if c.ParentJobID != parentID || c.JobQueue != queueOK || c.TestData == nil || c.TestData.TestCmds.Script != "echo child" {
			t.Errorf("child %d submitted as %+v", i, c)
		}
		if a, _ := c.AllocateData.Bool("allocate", false); !a {
			t.Errorf("child %d: allocate_data %v", i, c.AllocateData)
		}
	}
	if got := jobs.cancels(); len(got) != 0 {
		t.Errorf("children cancelled during a good provision: %v", got)
	}

	rc, err := d.RunTest(t.Context(), run)
	if err != nil || rc != 0 {
		t.Fatalf("RunTest = %d, %v\n%s", rc, err, out)
	}
	if !strings.Contains(out.String(), "devices 10.0.0.1 10.0.0.2 []") {
		t.Errorf("test did not see DEVICE_IP_1 and _2 (and only them):\n%s", out)
	}

	if err := d.Cleanup(t.Context(), run); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if got := jobs.cancels(); !slices.Equal(got, []string{"child-1", "child-2"}) {
		t.Errorf("cleanup cancelled %v, want both children", got)
	}
}

// TestAllOrNothing checks that every failure of the wait cancels every child.
func TestAllOrNothing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		job       *events.Job
		cancelAt  string // cancel the phase once the output holds this
		submitted int
		check     func(t *testing.T, err error)
	}{
		{
			name: "a child fails", job: parent(queueOK, queueFail, queueNever), submitted: 3,
			check: func(t *testing.T, err error) {
				var ce *drivers.ChildEndedError
				if !errors.As(err, &ce) || ce.JobID != "child-2" {
					t.Errorf("error %v does not name child-2 as ended", err)
				}
				if !strings.Contains(err.Error(), "unable to allocate all devices") {
					t.Errorf("error %q", err)
				}
			},
		},
		{
			name: "allocation timeout", job: func() *events.Job { j := parent(queueOK, queueNever); j.AllocationTimeout = 1; return j }(), submitted: 2,
			check: func(t *testing.T, err error) {
				var te *drivers.AllocationTimeoutError
				if !errors.As(err, &te) {
					t.Fatalf("error %v (%T) is not an allocation timeout", err, err)
				}
				if te.Timeout != time.Second || !slices.Equal(te.Pending, []string{"child-2"}) {
					t.Errorf("timeout %s pending %v, want 1s [child-2]", te.Timeout, te.Pending)
				}
			},
		},
		{
			name: "parent cancelled", job: parent(queueOK, queueNever), cancelAt: "Waiting up to 2h0m0s", submitted: 2,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, context.Canceled) {
					t.Errorf("error %v does not wrap context.Canceled", err)
				}
			},
		},
		{
			name: "a submission is refused", job: parent(queueOK, queueReject, queueOK), submitted: 1,
			check: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "provision_data.jobs[1]") || !strings.Contains(err.Error(), "nobody takes this queue") {
					t.Errorf("error %q does not name the refused child", err)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDriver(t)
			jobs := newFakeJobs()
			run, out := newRun(t, tc.job, jobs)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- d.Provision(ctx, run) }()
			if tc.cancelAt != "" {
				if !out.WaitFor(tc.cancelAt, 10*time.Second) {
					t.Fatalf("output never said %q:\n%s", tc.cancelAt, out)
				}
				cancel()
			}
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("Provision did not return; output:\n%s", out)
			}
			if err == nil {
				t.Fatalf("Provision succeeded:\n%s", out)
			}
			if drivers.IsRecovery(err) {
				t.Errorf("Provision = %v: a recovery failure", err)
			}
			var pe *drivers.ProvisioningError
			if want := tc.cancelAt == ""; errors.As(err, &pe) != want {
				t.Errorf("Provision = %v: ProvisioningError %v, want %v", err, !want, want)
			}
			tc.check(t, err)
			ids := jobs.children()
			if len(ids) != tc.submitted {
				t.Errorf("%d children submitted, want %d", len(ids), tc.submitted)
			}
			if got := jobs.cancels(); !slices.Equal(got, ids) {
				t.Errorf("cancelled %v, want every child created: %v\n%s", got, ids, out)
			}
			if _, err := os.Stat(filepath.Join(run.Dir, multi.JobListFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("job_list.json written by a failed provision: %v", err)
			}
			// Cleanup still finds every child, for a second try at cancelling.
			if got, err := multi.Children(run.Dir); err != nil || !slices.Equal(got, ids) {
				t.Errorf("Children = %v, %v; want %v", got, err, ids)
			}
		})
	}
}

// TestWaitsForLateChild checks that the barrier holds until the last child
// is allocated.
func TestWaitsForLateChild(t *testing.T) {
	d, _ := newDriver(t)
	jobs := newFakeJobs()
	run, out := newRun(t, parent(queueOK, queueLate), jobs)
	done := make(chan error, 1)
	go func() { done <- d.Provision(t.Context(), run) }()
	if !out.WaitFor("Waiting up to", 10*time.Second) {
		t.Fatalf("no wait announced:\n%s", out)
	}
	select {
	case err := <-done:
		t.Fatalf("Provision returned %v before the second child was allocated", err)
	default:
	}
	jobs.allocate("child-2")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Provision: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Provision did not return once every child was allocated")
	}
	if list := readJobList(t, run.Dir); len(list) != 2 || list[1].JobID != "child-2" {
		t.Errorf("job_list.json = %+v", list)
	}
}

func TestRunTestDeviceIPs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		list    string // job_list.json ("": none)
		want    string // in the output
		wantErr bool
	}{
		{"two devices", `[{"job_id":"a","device_info":{"device_ip":"192.0.2.1"}},{"job_id":"b","device_info":{"device_ip":"192.0.2.2"}}]`,
			"ips=192.0.2.1,192.0.2.2,", false},
		{"no device_ip", `[{"job_id":"a","device_info":{"agent_name":"x"}}]`, "Job a reported no device_ip: DEVICE_IP_1 is empty", false},
		{"no job_list.json", "", "No job_list.json in the run directory", false},
		{"malformed job_list.json", `{"job_id":`, "Unable to read the multi-device job's devices", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDriver(t)
			job := &events.Job{JobID: parentID, JobQueue: "multi", TestData: &events.TestData{TestCmds: events.ListCmds(`echo "ips=$DEVICE_IP_1,$DEVICE_IP_2,$DEVICE_IP_3"`)}}
			run, out := newRun(t, job, newFakeJobs())
			if tc.list != "" {
				if err := os.WriteFile(filepath.Join(run.Dir, multi.JobListFile), []byte(tc.list), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			rc, err := d.RunTest(t.Context(), run)
			if (err != nil) != tc.wantErr || (rc != 0) != tc.wantErr {
				t.Errorf("RunTest = %d, %v; want an error: %v", rc, err, tc.wantErr)
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

func TestCleanup(t *testing.T) {
	for _, tc := range []struct {
		name      string
		children  string // child_jobs.json ("": none)
		list      string // job_list.json ("": none)
		cancelErr error
		want      []string // cancelled
		errText   string
	}{
		{name: "nothing created", want: nil},
		{name: "children and job list", children: `["c1","c2","c3"]`, list: `[{"job_id":"c1","device_info":{}},{"job_id":"c4","device_info":{}}]`,
			want: []string{"c1", "c2", "c3", "c4"}},
		{name: "job list only", list: `[{"job_id":"c1","device_info":{}}]`, want: []string{"c1"}},
		{name: "cancel fails", children: `["c1"]`, cancelErr: errors.New("no orchestrator is running"), errText: "child job c1: no orchestrator is running"},
		{name: "malformed children file", children: `{`, errText: "child_jobs.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDriver(t)
			jobs := newFakeJobs()
			jobs.cancelErr = tc.cancelErr
			for _, id := range []string{"c1", "c2", "c3", "c4"} {
				jobs.state[id] = events.JobAllocated
			}
			run, _ := newRun(t, parent(queueOK), jobs)
			for name, content := range map[string]string{multi.ChildrenFile: tc.children, multi.JobListFile: tc.list} {
				if content != "" {
					if err := os.WriteFile(filepath.Join(run.Dir, name), []byte(content), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			err := d.Cleanup(t.Context(), run)
			if tc.errText == "" {
				if err != nil {
					t.Fatalf("Cleanup: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("Cleanup = %v, want an error containing %q", err, tc.errText)
			}
			if got := jobs.cancels(); !slices.Equal(got, tc.want) {
				t.Errorf("cancelled %v, want %v", got, tc.want)
			}
		})
	}
}

// Package multi is the multi driver: Testflinger's multi-device connector
// (DC/devices/multi/ in canonical/testflinger). A job on a multi device
// runs on several other devices at once: provision_data.jobs lists one
// ordinary job per device, and the multi device's own test phase runs on
// the lab host with the address of every one of them.
//
//	job_queue: multi
//	allocation_timeout: 3600        # seconds; default 7200 (2 h), as in Testflinger
//	provision_data:
//	  jobs:
//	    - {job_queue: rpi4b, provision_data: {url: http://...}}
//	    - {job_queue: maas-x86, provision_data: {distro: noble}}
//	test_data:
//	  test_cmds: ssh ubuntu@$DEVICE_IP_1 ... ; ssh ubuntu@$DEVICE_IP_2 ...
//
// Provision creates one child job per entry, each a copy of the entry with
// allocate_data: {allocate: true} and parent_job_id set to the multi job,
// through the lab's intake (Run.Jobs), printing "Created job <id>" for
// each as Testflinger does (its poll-multi GitHub action reads these
// lines). It then waits, by events, until every child is allocated: its
// device provisioned, tested and held for the multi job. The wait is
// all or nothing: as soon as one child ends without being allocated, or
// allocation_timeout runs out, or the multi job is cancelled, every child
// is cancelled (which releases the devices already held) and provisioning
// fails. When all are allocated it writes job_list.json in the run
// directory: [{"job_id": ..., "device_info": {"device_ip": ..., ...}}, ...]
// in the order of provision_data.jobs.
//
// RunTest runs test_cmds on the lab host, as Testflinger's multi runtest
// does, with DEVICE_IP_1..N exported from job_list.json. Cleanup cancels
// every child job created (one already ended is fine), which releases
// their devices. FirmwareUpdate, Allocate and Reserve are those of
// drivers.Base, which is what Testflinger's multi connector inherits.
//
// Where Flinger differs: every entry of provision_data.jobs is checked
// against the job schema before any child is created, so a typo fails the
// job at once naming the field (provision_data.jobs[1].job_queue) instead
// of after half the children were submitted; Testflinger skips an entry
// that is not a mapping, Flinger refuses it. The wait reacts to the
// children's events instead of polling every 10 s, and a child that ends
// after it was allocated but before the others were fails the wait too
// (its device is no longer held). The device configuration needs none of
// Testflinger's testflinger_server, client_id or secret_key: the worker
// submits to the lab it belongs to.
package multi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/events"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "multi"

// DefaultAllocationTimeout is how long Provision waits for every child job
// to be allocated when the job gives no allocation_timeout (Testflinger's 2 h).
const DefaultAllocationTimeout = 2 * time.Hour

// JobListFile is the file, in the run directory, that lists the allocated
// child jobs and their devices, as Testflinger's multi connector names it.
const JobListFile = "job_list.json"

// ChildrenFile is the file, in the run directory, that lists every child
// job Provision created (allocated or not), so that Cleanup cancels them
// all, even when it runs in another process.
const ChildrenFile = "child_jobs.json"

// cancelTimeout bounds the cancellation of the children once the phase's
// own context is over (a cancelled or timed-out provision).
const cancelTimeout = 30 * time.Second

func init() {
	drivers.Register(Type, New)
}

// Driver is the multi driver. Phases it does not implement come from
// drivers.Base.
type Driver struct {
	drivers.Base
	cfg *drivers.DeviceConfig
}

var _ drivers.Driver = (*Driver)(nil)

// New returns the multi driver of the device cfg describes.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("multi: no device configuration")
	}
	return &Driver{cfg: cfg}, nil
}

func out(run *drivers.Run) io.Writer {
	if run.Out == nil {
		return io.Discard
	}
	return run.Out
}

// AllocationTimeout returns how long a multi-device job waits for its
// children to be allocated: its allocation_timeout, or
// DefaultAllocationTimeout when it gives none.
func AllocationTimeout(job *events.Job) time.Duration {
	if job == nil || job.AllocationTimeout <= 0 {
		return DefaultAllocationTimeout
	}
	return time.Duration(job.AllocationTimeout) * time.Second
}

// ChildJobs returns the child jobs of a multi-device job: each entry of
// provision_data.jobs, with allocate_data: {allocate: true} and
// parent_job_id set to the job's id, checked against the job schema as
// intake would check it. Every bad entry is reported in one
// *events.ValidationError whose fields are paths from the job's root, such
// as provision_data.jobs[1].job_queue.
func ChildJobs(job *events.Job) ([]*events.Job, error) {
	const field = "provision_data.jobs"
	bad := func(path, format string, args ...any) error {
		return &events.ValidationError{Fields: []events.FieldError{{Field: path, Message: fmt.Sprintf(format, args...)}}}
	}
	if job == nil {
		return nil, errors.New("multi: no job")
	}
	v, ok := job.ProvisionData["jobs"]
	if !ok || v == nil {
		return nil, bad(field, "required: a multi-device job lists its child jobs there")
	}
	list, ok := v.([]any)
	if !ok {
		return nil, bad(field, "must be a list of jobs, got %s", events.TypeName(v))
	}
	if len(list) == 0 {
		return nil, bad(field, "must not be empty: a multi-device job needs at least one child job")
	}
	var fields []events.FieldError
	children := make([]*events.Job, 0, len(list))
	for i, entry := range list {
		path := fmt.Sprintf("%s[%d]", field, i)
		m, ok := entry.(map[string]any)
		if !ok {
			fields = append(fields, events.FieldError{Field: path, Message: "must be a mapping (a job), got " + events.TypeName(entry)})
			continue
		}
		doc := make(map[string]any, len(m)+2)
		for k, v := range m {
			doc[k] = v
		}
		doc["allocate_data"] = map[string]any{"allocate": true}
		doc["parent_job_id"] = job.JobID
		data, err := events.Encode(doc)
		if err != nil {
			fields = append(fields, events.FieldError{Field: path, Message: err.Error()})
			continue
		}
		child, err := events.ParseJob(data, events.FormatMsgpack, 0)
		var verr *events.ValidationError
		switch {
		case errors.As(err, &verr):
			for _, f := range verr.Fields {
				p := path
				if f.Field != "" && f.Field != "(job)" {
					p += "." + f.Field
				}
				fields = append(fields, events.FieldError{Field: p, Message: f.Message})
			}
			continue
		case err != nil:
			fields = append(fields, events.FieldError{Field: path, Message: err.Error()})
			continue
		}
		children = append(children, child)
	}
	if len(fields) > 0 {
		return nil, &events.ValidationError{Fields: fields}
	}
	return children, nil
}

// Provision creates the child jobs and waits until every one is
// allocated, as the package documentation describes. A bad
// provision_data.jobs, a child intake refuses, a child that ends before
// all are allocated and the allocation timeout (a *drivers.AllocationTimeoutError
// inside) are *drivers.ProvisioningErrors; a cancelled phase returns an
// error wrapping ctx.Err(). In every failure every child created so far is
// cancelled before Provision returns.
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("multi provision: %w", err)
	}
	if err := d.PreProvision(ctx, run); err != nil {
		return err
	}
	w := out(run)
	children, err := ChildJobs(run.Job)
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	if run.Jobs == nil {
		return errors.New("multi provision: no job service to create the child jobs with: " +
			"a multi device creates jobs in its lab and runs only under a flinger worker")
	}
	if run.Dir == "" {
		return errors.New("multi provision: no run directory")
	}
	timeout := AllocationTimeout(run.Job)
	fmt.Fprintf(w, "Creating %d child jobs\n", len(children))

	var ids []string
	for i, child := range children {
		id, err := run.Jobs.Submit(ctx, child)
		if err != nil {
			d.cancelAll(ctx, run, ids, "its multi-device job could not create all its child jobs")
			if ctx.Err() != nil {
				return fmt.Errorf("multi provision: cancelled while creating child jobs: %w", ctx.Err())
			}
			fmt.Fprintf(w, "Unable to create job provision_data.jobs[%d] (queue %s): %v\n", i, display.Printable(child.JobQueue), err)
			return &drivers.ProvisioningError{Err: fmt.Errorf("unable to create job provision_data.jobs[%d]: %w", i, err)}
		}
		fmt.Fprintf(w, "Created job %s\n", id)
		ids = append(ids, id)
		if err := writeJSON(filepath.Join(run.Dir, ChildrenFile), ids); err != nil {
			d.cancelAll(ctx, run, ids, "its multi-device job could not record its child jobs")
			return fmt.Errorf("multi provision: %w", err)
		}
	}

	fmt.Fprintf(w, "Waiting up to %s (allocation_timeout) for %d devices to be allocated\n", timeout, len(ids))
	start := time.Now()
	actx, cancel := context.WithTimeoutCause(ctx, timeout, errAllocationTimeout)
	allocs, err := run.Jobs.Await(actx, ids)
	cause := context.Cause(actx)
	cancel()
	if err != nil {
		switch {
		case ctx.Err() != nil:
			d.cancelAll(ctx, run, ids, "its multi-device job was stopped")
			return fmt.Errorf("multi provision: stopped while waiting for the child jobs: %w", ctx.Err())
		case errors.Is(cause, errAllocationTimeout):
			te := &drivers.AllocationTimeoutError{Timeout: timeout, Pending: pending(ids, allocs)}
			fmt.Fprintf(w, "Timed out after %s waiting for devices to allocate; cancelling every child job\n", timeout)
			d.cancelAll(ctx, run, ids, "its multi-device job timed out waiting for allocation")
			return &drivers.ProvisioningError{Err: te}
		}
		fmt.Fprintf(w, "Unable to allocate all devices: %v; cancelling every child job\n", err)
		d.cancelAll(ctx, run, ids, "another child of its multi-device job could not be allocated")
		return &drivers.ProvisioningError{Err: fmt.Errorf("unable to allocate all devices: %w", err)}
	}
	for _, a := range allocs {
		fmt.Fprintf(w, "Job %s allocated %s\n", a.JobID, describe(a.DeviceInfo))
	}
	if err := writeJSON(filepath.Join(run.Dir, JobListFile), allocs); err != nil {
		d.cancelAll(ctx, run, ids, "its multi-device job could not record its devices")
		return fmt.Errorf("multi provision: %w", err)
	}
	fmt.Fprintf(w, "All %d devices allocated in %s\n", len(allocs), time.Since(start).Round(time.Millisecond))
	return nil
}

// errAllocationTimeout is the cause of the wait's context when the
// allocation timeout runs out.
var errAllocationTimeout = errors.New("allocation timeout")

// pending returns the ids of ids that allocs does not show allocated.
func pending(ids []string, allocs []drivers.Allocation) []string {
	var out []string
	for i, id := range ids {
		if i >= len(allocs) || allocs[i].JobID == "" {
			out = append(out, id)
		}
	}
	return out
}

// describe renders a device_info for the output: agent_name and device_ip.
func describe(info map[string]any) string {
	name, _ := info["agent_name"].(string)
	ip, _ := info["device_ip"].(string)
	switch {
	case name != "" && ip != "":
		return fmt.Sprintf("device %s at %s", display.Printable(name), display.Printable(ip))
	case name != "":
		return "device " + display.Printable(name)
	case ip != "":
		return "a device at " + display.Printable(ip)
	}
	return "a device that reported no agent_name or device_ip"
}

// cancelAll cancels every child of ids, also when ctx is already over
// (then within cancelTimeout), and reports failures in the output: one
// child not cancelled here ends all the same when the multi job ends.
func (d *Driver) cancelAll(ctx context.Context, run *drivers.Run, ids []string, why string) {
	if len(ids) == 0 || run.Jobs == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelTimeout)
	defer cancel()
	w := out(run)
	comment := why
	if run.Job != nil && run.Job.JobID != "" {
		comment = fmt.Sprintf("%s (parent job %s)", why, run.Job.JobID)
	}
	for _, id := range ids {
		fmt.Fprintf(w, "Cancelling job %s\n", id)
		if err := run.Jobs.Cancel(cctx, id, comment); err != nil {
			fmt.Fprintf(w, "Unable to cancel job %s: %v\n", id, err)
			run.Logger().Warn("multi: child job not cancelled", "child", id, "err", err)
		}
	}
}

// writeJSON writes v as JSON to path, replacing the file atomically.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o640); err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	return nil
}

// ReadJobList reads the job_list.json of run directory dir. A missing file
// is no error: it returns nil (Testflinger's multi connector then runs the
// test without device addresses).
func ReadJobList(dir string) ([]drivers.Allocation, error) {
	data, err := os.ReadFile(filepath.Join(dir, JobListFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", JobListFile, err)
	}
	var list []drivers.Allocation
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", JobListFile, err)
	}
	return list, nil
}

// DeviceIPs returns the DEVICE_IP_1..N variables (KEY=VALUE) of the
// allocations, in order: each child's device_info.device_ip, or an empty
// value for a child whose device reported none.
func DeviceIPs(list []drivers.Allocation) []string {
	env := make([]string, len(list))
	for i, a := range list {
		ip, _ := a.DeviceInfo["device_ip"].(string)
		env[i] = "DEVICE_IP_" + strconv.Itoa(i+1) + "=" + ip
	}
	return env
}

// RunTest runs test_data.test_cmds on the lab host (drivers.RunTestCmds)
// with DEVICE_IP_1..N of job_list.json added to the environment, as
// Testflinger's multi runtest does. Without job_list.json the commands run
// without them, after a line saying so; a job_list.json that cannot be
// read fails the phase.
func (d *Driver) RunTest(ctx context.Context, run *drivers.Run) (int, error) {
	if err := ctx.Err(); err != nil {
		return drivers.RunTestCmds(ctx, run)
	}
	w := out(run)
	var list []drivers.Allocation
	if run.Dir != "" {
		var err error
		if list, err = ReadJobList(run.Dir); err != nil {
			fmt.Fprintf(w, "Unable to read the multi-device job's devices: %v\n", err)
			return drivers.ExitFailed, fmt.Errorf("multi runtest: %w", err)
		}
	}
	if list == nil {
		fmt.Fprintf(w, "No %s in the run directory: test_cmds run without DEVICE_IP_N variables\n", JobListFile)
	}
	ips := DeviceIPs(list)
	for i, a := range list {
		if ip, _ := a.DeviceInfo["device_ip"].(string); ip == "" {
			fmt.Fprintf(w, "Job %s reported no device_ip: DEVICE_IP_%d is empty\n", a.JobID, i+1)
		}
	}
	env := slices.DeleteFunc(slices.Clone(run.Env), func(kv string) bool {
		return strings.HasPrefix(kv, "DEVICE_IP_")
	})
	r := *run
	r.Env = append(env, ips...)
	return drivers.RunTestCmds(ctx, &r)
}

// Children returns the child jobs recorded in run directory dir: those of
// ChildrenFile, then any job of JobListFile not already listed.
func Children(dir string) ([]string, error) {
	var ids []string
	data, err := os.ReadFile(filepath.Join(dir, ChildrenFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", ChildrenFile, err)
	default:
		if err := json.Unmarshal(data, &ids); err != nil {
			return nil, fmt.Errorf("%s: %w", ChildrenFile, err)
		}
	}
	list, err := ReadJobList(dir)
	if err != nil {
		return nil, err
	}
	for _, a := range list {
		if a.JobID != "" && !slices.Contains(ids, a.JobID) {
			ids = append(ids, a.JobID)
		}
	}
	return ids, nil
}

// Cleanup cancels every child job Provision created, which releases their
// devices; a child that has already ended is fine. A child that could not
// be cancelled fails the phase, naming it.
func (d *Driver) Cleanup(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("multi cleanup: %w", err)
	}
	w := out(run)
	var ids []string
	if run.Dir != "" {
		var err error
		if ids, err = Children(run.Dir); err != nil {
			return fmt.Errorf("multi cleanup: %w", err)
		}
	}
	if len(ids) == 0 {
		fmt.Fprintln(w, "No child jobs to cancel")
		return nil
	}
	if run.Jobs == nil {
		return fmt.Errorf("multi cleanup: no job service to cancel the child jobs %s with", strings.Join(ids, ", "))
	}
	comment := "its multi-device job is cleaning up"
	if run.Job != nil && run.Job.JobID != "" {
		comment = fmt.Sprintf("%s (parent job %s)", comment, run.Job.JobID)
	}
	var errs []error
	for _, id := range ids {
		fmt.Fprintf(w, "Cancelling job %s\n", id)
		if err := run.Jobs.Cancel(ctx, id, comment); err != nil {
			fmt.Fprintf(w, "Unable to cancel job %s: %v\n", id, err)
			errs = append(errs, fmt.Errorf("child job %s: %w", id, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("multi cleanup: %w", err)
	}
	return nil
}

package drivers

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/flingerlab/flinger/events"
)

// JobService is how a driver creates and follows other jobs: the child
// jobs of a multi-device job (Testflinger's multi connector). The worker
// gives one to every phase it runs (Run.Jobs); it submits through the
// lab's normal intake and follows jobs by their events, so that a driver
// needs to know nothing of how jobs travel.
type JobService interface {
	// Submit submits job, a child of the job being run, through normal
	// intake (validation, a fresh job id, its queue) and returns the id
	// intake gave it. A job intake refuses is an error naming its bad
	// fields.
	Submit(ctx context.Context, job *events.Job) (id string, err error)
	// Await blocks until every job of ids is allocated (its device is
	// held for the job running this phase: the child's allocate phase)
	// and returns their allocations in the order of ids. It fails with a
	// *ChildEndedError as soon as one of them ends (cancelled or
	// completed) before all are allocated, and with an error wrapping
	// ctx's cause when ctx ends first. On failure the allocations seen so
	// far are returned with the error: the entries of jobs not allocated
	// have an empty JobID.
	Await(ctx context.Context, ids []string) ([]Allocation, error)
	// Cancel cancels job id, waiting or running, giving comment as the
	// reason. A job that has already ended is not an error.
	Cancel(ctx context.Context, id, comment string) error
}

// Allocation is one allocated child job: its id and the device
// information its device reported when it was allocated. It is also one
// entry of the job_list.json file Testflinger's multi connector writes.
type Allocation struct {
	// JobID is the child job's id.
	JobID string `json:"job_id"`
	// DeviceInfo is what the child's device reported (device_ip,
	// agent_name, ...).
	DeviceInfo map[string]any `json:"device_info"`
}

// ChildEndedError reports that a child job ended before every child job
// was allocated, so the multi-device job cannot go on.
type ChildEndedError struct {
	// JobID is the child job that ended.
	JobID string
	// State is the state it ended in (cancelled or completed).
	State events.JobState
	// Outcome is how it ended (fail, cancelled, ...), when known.
	Outcome events.Outcome
	// Reason is its end reason (provision_fail, cancelled, ...), when known.
	Reason string
}

// Error names the child and how it ended.
func (e *ChildEndedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "child job %s ended (%s", e.JobID, e.State)
	if e.Outcome != "" {
		fmt.Fprintf(&b, ": %s", e.Outcome)
	}
	if e.Reason != "" && e.Reason != string(e.Outcome) {
		fmt.Fprintf(&b, ", %s", e.Reason)
	}
	b.WriteString(") before every child job was allocated")
	return b.String()
}

// AllocationTimeoutError reports that the child jobs of a multi-device
// job were not all allocated within its allocation_timeout. The worker
// announces it as an allocation_timeout event.
type AllocationTimeoutError struct {
	// Timeout is the allocation_timeout that ran out.
	Timeout time.Duration
	// Pending are the child jobs that were not allocated by then.
	Pending []string
}

// Error says how long was waited and for which children.
func (e *AllocationTimeoutError) Error() string {
	return fmt.Sprintf("timed out after %s (allocation_timeout) waiting for child jobs to be allocated: %s still pending",
		e.Timeout, strings.Join(e.Pending, ", "))
}

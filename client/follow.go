package client

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// Follow calls onEvent for each of a job's events and onOutput for each
// chunk of its output, from the job's start, until the job ends; then it
// returns the job's final record.
func Follow(ctx context.Context, c *broker.Client, jobID string, onEvent func(*events.Event), onOutput func(*events.LogChunk)) (*events.JobRecord, error) {
	return FollowStream(ctx, c, jobID, StreamOutput, onEvent, onOutput)
}

// FollowStream is Follow for either log stream: StreamOutput, or
// StreamSerial for the device's serial console.
func FollowStream(ctx context.Context, c *broker.Client, jobID, stream string, onEvent func(*events.Event), onOutput func(*events.LogChunk)) (*events.JobRecord, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, err := Watch(ctx, c, WatchOptions{JobID: jobID})
	if err != nil {
		return nil, err
	}
	logs, err := LogStream(ctx, c, jobID, stream)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex // serialises the callbacks
	lastOutput := make(chan struct{}, 1)
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		for chunk, err := range logs {
			if err != nil {
				continue
			}
			mu.Lock()
			if onOutput != nil {
				onOutput(chunk)
			}
			mu.Unlock()
			select {
			case lastOutput <- struct{}{}:
			default:
			}
		}
	}()
	ended := false
	for ev, err := range evs {
		if err != nil {
			continue
		}
		mu.Lock()
		if onEvent != nil {
			onEvent(ev)
		}
		mu.Unlock()
		if ev.Name == events.EventJobEnd {
			ended = true
			break
		}
	}
	if !ended {
		return nil, fmt.Errorf("follow %s: %w", jobID, context.Cause(ctx))
	}
	// Output published before job_end may still be on its way: wait for a
	// short quiet spell.
	for quiet := false; !quiet; {
		select {
		case <-lastOutput:
		case <-time.After(300 * time.Millisecond):
			quiet = true
		case <-ctx.Done():
			quiet = true
		}
	}
	cancel()
	<-logsDone
	rec, _, err := c.GetJob(context.Background(), jobID)
	return rec, err
}

// ExitStatus is what `flinger submit --follow` exits with for a finished
// job: the test phase's exit status when it ran, 46 when the device could
// not be recovered, 1 when another phase failed, the job timed out or was
// cancelled, and 0 otherwise.
func ExitStatus(rec *events.JobRecord) int {
	switch rec.Outcome {
	case events.OutcomeRecoveryFail:
		return drivers.ExitRecoveryFailed
	case events.OutcomeFail, events.OutcomeCancelled:
		return drivers.ExitFailed
	}
	if rc, ok := rec.Status[events.PhaseTest]; ok && rc != 0 {
		return rc
	}
	if rec.Outcome == events.OutcomeTimeout {
		return drivers.ExitFailed
	}
	return 0
}

// JobStatus is a job's record and, for a waiting job, which devices could take it.
type JobStatus struct {
	// Record is the job's record.
	Record *events.JobRecord
	// Serving lists the devices that serve the job's queue.
	Serving []*events.DeviceStatus
}

// Status returns a job's record and the devices serving its queue.
func Status(ctx context.Context, c *broker.Client, jobID string) (*JobStatus, error) {
	rec, _, err := c.GetJob(ctx, jobID)
	if err != nil {
		return nil, err
	}
	st := &JobStatus{Record: rec}
	devs, _, err := c.ListDevices(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		if d.Serves(rec.Job.JobQueue) {
			st.Serving = append(st.Serving, d)
		}
	}
	return st, nil
}

// Explain says in words where a job stands, and for a waiting job, why.
func (s *JobStatus) Explain() string {
	rec := s.Record
	switch {
	case rec.State.Terminal():
		return fmt.Sprintf("ended (%s): %s", rec.Outcome, rec.EndReason)
	case rec.State != events.JobWaiting:
		return fmt.Sprintf("running on %s (attempt %d), phase %s", rec.Device, rec.Attempt, rec.State)
	case rec.AttachmentsStatus == events.AttachmentsWaiting:
		return "waiting for its attachments: the submitter has not finished sending them"
	case len(s.Serving) == 0:
		return fmt.Sprintf("waiting: no device serves queue %s", rec.Job.JobQueue)
	}
	inService := 0
	for _, d := range s.Serving {
		if d.State == events.StateIdle || d.State == events.StateBusy {
			inService++
		}
	}
	if inService == 0 {
		return fmt.Sprintf("waiting: all %d devices serving queue %s are out of service", len(s.Serving), rec.Job.JobQueue)
	}
	return fmt.Sprintf("waiting for one of %d devices serving queue %s", inService, rec.Job.JobQueue)
}

// Reach says how to reach the device running a job, from the device_info
// in its record: the ssh command (with the job's test_username) and the
// serial console, when known; "" when the record has no address.
func Reach(rec *events.JobRecord) string {
	ip, _ := rec.DeviceInfo["device_ip"].(string)
	if ip == "" {
		return ""
	}
	user := drivers.DefaultTestUsername
	if rec.Job.TestData != nil && rec.Job.TestData.TestUsername != "" {
		user = rec.Job.TestData.TestUsername
	}
	s := "ssh " + user + "@" + ip
	if port, _ := events.AsInt(rec.DeviceInfo["ssh_port"]); port > 0 {
		s = fmt.Sprintf("ssh -p %d %s@%s", port, user, ip)
	}
	if host, _ := rec.DeviceInfo["serial_host"].(string); host != "" {
		if port, _ := events.AsInt(rec.DeviceInfo["serial_port"]); port > 0 {
			s += fmt.Sprintf("; serial console: telnet %s %d", host, port)
		}
	}
	return s
}

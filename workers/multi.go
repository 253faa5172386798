package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// recordTimeout bounds one update of the parent's record by the job service.
const recordTimeout = 10 * time.Second

// jobService is the drivers.JobService the worker gives each phase of a
// job: it submits child jobs through intake as any client does, lists
// them in the parent's record (Children) so that whoever ends the parent
// can cancel them, follows them by their events and cancels them through
// the control service.
type jobService struct {
	r     *jobRun
	phase events.Phase

	mu sync.Mutex
	// created are the children this service submitted: this attempt's.
	created []string
	// earlierDone is set once the children of earlier attempts have
	// been cancelled.
	earlierDone bool
}

var _ drivers.JobService = (*jobService)(nil)

// jobService returns the job service of phase p of this attempt.
func (r *jobRun) jobService(p events.Phase) drivers.JobService {
	return &jobService{r: r, phase: p}
}

// Submit submits job as a child of the running job (its parent_job_id is
// set to it) through intake, records the child in the parent's record and
// announces it in a child_jobs event whose Data job_ids lists every child
// this attempt has created so far.
//
// The first submission of an attempt first cancels the children that
// earlier attempts of the job left (a requeued multi-device job starts
// over with new children). A child that cannot be recorded in the parent's
// record is cancelled at once, since nothing else would know to cancel it.
func (s *jobService) Submit(ctx context.Context, job *events.Job) (string, error) {
	if job == nil {
		return "", errors.New("submit child job: no job")
	}
	r := s.r
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.earlierDone {
		s.earlierDone = true
		s.cancelEarlier(ctx)
	}

	child := *job
	child.ParentJobID = r.job.JobID
	data, err := json.Marshal(&child)
	if err != nil {
		return "", fmt.Errorf("submit child job on queue %s: %w", child.JobQueue, err)
	}
	reply, err := client.Submit(ctx, r.d.w.c, data, events.FormatJSON)
	if err != nil {
		return "", fmt.Errorf("submit child job on queue %s: %w", child.JobQueue, err)
	}
	id := reply.JobID

	uctx, cancel := context.WithTimeout(ctx, recordTimeout)
	err = r.updateRecord(uctx, func(rec *events.JobRecord) {
		if !slices.Contains(rec.Children, id) {
			rec.Children = append(rec.Children, id)
		}
	})
	cancel()
	if err != nil {
		if errors.Is(err, errLeaseLost) {
			r.cancel(errLeaseLost)
		}
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		if cerr := s.Cancel(cctx, id, "its parent job "+r.job.JobID+" could not record it"); cerr != nil {
			r.log.Warn("unrecorded child job not cancelled", "child", id, "err", cerr)
		}
		ccancel()
		return "", fmt.Errorf("record child job %s in job %s: %w", id, r.job.JobID, err)
	}
	s.created = append(s.created, id)
	ev := r.event(events.EventChildJobs, s.phase, fmt.Sprintf("created child job %s on queue %s", id, child.JobQueue))
	ev.Data = map[string]any{"job_ids": slices.Clone(s.created)}
	r.publish(ev)
	r.log.Info("child job created", "child", id, "queue", child.JobQueue)
	return id, nil
}

// cancelEarlier cancels the children the parent's record lists that this
// service did not create: those of earlier attempts of the job.
func (s *jobService) cancelEarlier(ctx context.Context) {
	if s.r.rec == nil {
		return
	}
	for _, id := range s.r.rec.Children {
		if slices.Contains(s.created, id) {
			continue
		}
		comment := fmt.Sprintf("attempt %d of its parent job %s starts over with new child jobs", s.r.attempt, s.r.job.JobID)
		if err := s.Cancel(ctx, id, comment); err != nil {
			s.r.log.Warn("child job of an earlier attempt not cancelled", "child", id, "err", err)
		}
	}
}

// Await follows the children's allocated, job_requeued and job_end events
// until every child is allocated. It reads them with an ordered consumer
// of the event stream filtered to those subjects, from each child's first
// event: a transition that happened before Await was called is seen, and
// the consumer resumes where it was after a reconnection, so nothing is
// polled and nothing is missed. Each child's record is also read once, so
// that a child already ended fails the wait even if its job_end event was
// lost.
//
// A child's job_requeued (its device was lost; another device starts it
// over) takes back its allocation until it is allocated again; its
// job_end fails the wait with a *drivers.ChildEndedError. Success is only
// decided on an event that leaves nothing older to read, so that a replay
// of history never passes the barrier on an allocation already taken back.
func (s *jobService) Await(ctx context.Context, ids []string) ([]drivers.Allocation, error) {
	allocs := make([]drivers.Allocation, len(ids))
	if len(ids) == 0 {
		return allocs, nil
	}
	c := s.r.d.w.c
	index := make(map[string]int, len(ids))
	var filters []string
	for i, id := range ids {
		index[id] = i
		for _, name := range []string{events.EventJobAllocated, events.EventJobRequeued, events.EventJobEnd} {
			filters = append(filters, c.Subj.JobEvent(id, name))
		}
	}
	cons, err := c.JS.OrderedConsumer(ctx, c.Subj.EventStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: filters,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return allocs, fmt.Errorf("follow child jobs: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return allocs, fmt.Errorf("follow child jobs: %w", err)
	}
	msgs := make(chan jetstream.Msg)
	stop := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		for {
			m, err := it.Next()
			if err != nil {
				readErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-stop:
				return
			}
		}
	}()
	defer func() {
		close(stop)
		it.Stop()
	}()

	for _, id := range ids {
		rec, _, err := c.GetJob(ctx, id)
		switch {
		case err != nil:
			s.r.log.Warn("child job record not read; following its events only", "child", id, "err", err)
		case rec.State.Terminal():
			return allocs, &drivers.ChildEndedError{JobID: id, State: rec.State, Outcome: rec.Outcome, Reason: rec.EndReason}
		}
	}

	for {
		var m jetstream.Msg
		select {
		case <-ctx.Done():
			return allocs, fmt.Errorf("waiting for child jobs %s: %w", strings.Join(unallocated(ids, allocs), ", "), context.Cause(ctx))
		case err := <-readErr:
			if ctx.Err() != nil {
				continue
			}
			return allocs, fmt.Errorf("following child jobs: %w", err)
		case m = <-msgs:
		}
		var ev events.Event
		if err := events.Decode(m.Data(), &ev); err != nil {
			s.r.log.Warn("undecodable child job event skipped", "subject", m.Subject(), "err", err)
			continue
		}
		i, ok := index[ev.JobID]
		if !ok {
			continue
		}
		switch ev.Name {
		case events.EventJobAllocated:
			allocs[i] = drivers.Allocation{JobID: ev.JobID, DeviceInfo: s.deviceInfo(ctx, &ev)}
		case events.EventJobRequeued:
			allocs[i] = drivers.Allocation{}
		case events.EventJobEnd:
			outcome, _ := ev.Data["outcome"].(string)
			state := events.JobCompleted
			if events.Outcome(outcome) == events.OutcomeCancelled {
				state = events.JobCancelled
			}
			return allocs, &drivers.ChildEndedError{JobID: ev.JobID, State: state, Outcome: events.Outcome(outcome), Reason: ev.Detail}
		}
		md, err := m.Metadata()
		if err == nil && md.NumPending == 0 && len(unallocated(ids, allocs)) == 0 {
			return allocs, nil
		}
	}
}

// deviceInfo returns the device information of an allocated event, or,
// when the event lacks it, that of the child's record.
func (s *jobService) deviceInfo(ctx context.Context, ev *events.Event) map[string]any {
	if info, ok := ev.Data["device_info"].(map[string]any); ok {
		return info
	}
	rec, _, err := s.r.d.w.c.GetJob(ctx, ev.JobID)
	if err != nil {
		s.r.log.Warn("allocated child job's device information not read", "child", ev.JobID, "err", err)
		return map[string]any{}
	}
	if rec.DeviceInfo == nil {
		return map[string]any{}
	}
	return rec.DeviceInfo
}

// unallocated returns the ids whose allocation is not known.
func unallocated(ids []string, allocs []drivers.Allocation) []string {
	var out []string
	for i, id := range ids {
		if allocs[i].JobID == "" {
			out = append(out, id)
		}
	}
	return out
}

// Cancel asks the control service to cancel job id; a job that has
// already ended is fine.
func (s *jobService) Cancel(ctx context.Context, id, comment string) error {
	state, err := client.Cancel(ctx, s.r.d.w.c, id, comment)
	if err != nil && !state.Terminal() {
		return fmt.Errorf("child job %s: %w", id, err)
	}
	return nil
}

// noteAllocationTimeout announces an allocation_timeout event when err
// (a phase's error) reports that the children of a multi-device job were
// not all allocated in time.
func (r *jobRun) noteAllocationTimeout(p events.Phase, err error) {
	var te *drivers.AllocationTimeoutError
	if !errors.As(err, &te) {
		return
	}
	ev := r.event(events.EventAllocationTimeout, p, te.Error())
	ev.Data = map[string]any{"allocation_timeout": int64(te.Timeout / time.Second), "pending": slices.Clone(te.Pending)}
	r.publish(ev)
}

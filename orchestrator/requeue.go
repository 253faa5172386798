package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// RequeueConsumer is the durable consumer, shared by every orchestrator,
// that reads recovery_fail events.
const RequeueConsumer = "requeue"

// errHandled reports an attempt whose end has already been dealt with.
var errHandled = errors.New("attempt already handled")

// startRequeue reads recovery_fail events: the device of the attempt that
// failed is already out of service, and the job goes back to its queue with
// that device excluded, or ends when it has used its attempts or no other
// device could take it.
func (o *Orchestrator) startRequeue(ctx, runCtx context.Context) error {
	cons, err := o.c.JS.CreateOrUpdateConsumer(ctx, o.c.Subj.EventStream(), jetstream.ConsumerConfig{
		Durable:        RequeueConsumer,
		Description:    "Orchestrators: requeue jobs whose device failed recovery",
		FilterSubjects: []string{o.c.Subj.EveryJobEvent(events.EventRecoveryFail), o.c.Subj.EveryJobEvent(events.EventAttemptEnd)},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		MaxAckPending:  1000,
	})
	if err != nil {
		return fmt.Errorf("requeue consumer: %w", err)
	}
	o.goLoop(func() {
		broker.ConsumeEach(runCtx, cons, 64, o.log, "requeue", func(m jetstream.Msg) {
			var ev events.Event
			if err := events.Decode(m.Data(), &ev); err != nil {
				o.log.Error("requeue: dropping an unreadable event", "subject", m.Subject(), "err", err)
				_ = m.Term()
				return
			}
			hctx, cancel := context.WithTimeout(runCtx, 30*time.Second)
			defer cancel()
			if err := o.attemptFailed(hctx, &ev, events.AttemptRecoveryFail, ev.Name == events.EventAttemptEnd); err != nil {
				o.log.Error("requeue: will retry", "job", ev.JobID, "err", err)
				_ = m.NakWithDelay(time.Second)
				return
			}
			_ = m.Ack()
		})
	})
	return nil
}

// requeueLost deals with the job of a device whose worker stopped
// renewing it (st is the device's last status, with its JobID): by
// LostJobPolicy the job is requeued to another device or ends, once.
func (o *Orchestrator) requeueLost(ctx context.Context, st *events.DeviceStatus) {
	if st.JobID == "" {
		return
	}
	rec, _, err := o.c.GetJob(ctx, st.JobID)
	if err != nil {
		o.log.Warn("lost device's job not readable", "device", st.Name, "job", st.JobID, "err", err)
		return
	}
	if rec.State.Terminal() || rec.Device != st.Name || rec.State == events.JobWaiting {
		return
	}
	ev := events.NewEvent(events.EventAttemptLost)
	ev.ID = fmt.Sprintf("lost-%s-%d", rec.Job.JobID, rec.Attempt)
	ev.JobID, ev.Device, ev.Host, ev.Queue, ev.Attempt = rec.Job.JobID, st.Name, st.Host, rec.Job.JobQueue, rec.Attempt
	ev.Phase = events.Phase(rec.State)
	ev.Detail = fmt.Sprintf("worker on %s lost: no heartbeat from %s since %s", st.Host, st.Name, st.Heartbeat.Format(time.RFC3339))
	if err := o.c.PublishEventSync(ctx, ev); err != nil {
		o.log.Warn("attempt_lost not published", "job", rec.Job.JobID, "err", err)
	}
	if err := o.attemptFailed(ctx, ev, events.AttemptLost, true); err != nil {
		o.log.Error("lost device's job not handled", "device", st.Name, "job", st.JobID, "err", err)
	}
}

// attemptFailed ends the attempt ev names (its job, attempt and device)
// with result, and requeues the job or ends it. A job that can be
// requeued is at once, while its failed device still cleans up; one that
// cannot ends only when final (the device has cleaned up, or is lost), so
// that job_end is its last event. It does nothing when the attempt has
// already been dealt with, so that a repeated event or a second
// orchestrator changes nothing.
func (o *Orchestrator) attemptFailed(ctx context.Context, ev *events.Event, result string, final bool) error {
	rec, _, err := o.c.GetJob(ctx, ev.JobID)
	if errors.Is(err, broker.ErrNoJob) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.State.Terminal() {
		return nil
	}
	if events.IsHealthCheck(rec.Job.JobID) && result != events.AttemptLost {
		// A health check judges its own device: its worker ends it.
		return nil
	}
	if rec.Attempt != ev.Attempt || rec.Device != ev.Device {
		// Already requeued: make sure the requeued copy is in the queue (a
		// crash may have come between recording and queueing it; the queue
		// drops a second copy).
		if rec.State == events.JobWaiting && rec.Generation > 0 && endedAs(rec, ev.Attempt, result) {
			return o.route(ctx, rec, 0)
		}
		return nil
	}
	exclude := appendNew(rec.Job.ExcludeAgents, ev.Device)
	reason := ""
	switch {
	case events.IsHealthCheck(rec.Job.JobID):
		reason = "it is a health check of the lost device"
	case result == events.AttemptLost && o.cfg.LostJobPolicy == LostJobFail:
		reason = "its device was lost and the lost-job policy is fail"
	case rec.CancelRequested:
		reason = "it was cancelled"
	case rec.Attempt >= o.cfg.MaxAttempts:
		reason = fmt.Sprintf("%d devices have tried it (the limit is %d)", rec.Attempt, o.cfg.MaxAttempts)
	default:
		ok, err := o.anotherDevice(ctx, rec.Job.JobQueue, exclude)
		if err != nil {
			return err
		}
		if !ok {
			reason = fmt.Sprintf("no other device in service serves queue %s", rec.Job.JobQueue)
		}
	}
	end := events.Attempt{N: rec.Attempt, Device: ev.Device, Host: ev.Host, Phase: events.Phase(rec.State), Result: result,
		Detail: ev.Detail, StartedAt: rec.StartedAt, EndedAt: time.Now().UTC()}
	if reason != "" {
		if !final {
			return nil
		}
		return o.endJob(ctx, rec.Job.JobID, ev, end, reason)
	}
	return o.requeue(ctx, rec.Job.JobID, ev, end, exclude)
}

// endedAs reports whether rec holds attempt n ended with result.
func endedAs(rec *events.JobRecord, n int, result string) bool {
	for _, a := range rec.Attempts {
		if a.N == n && a.Result == result {
			return true
		}
	}
	return false
}

func appendNew(list []string, v string) []string {
	if slices.Contains(list, v) {
		return slices.Clone(list)
	}
	return append(slices.Clone(list), v)
}

// checkAttempt refuses to change a record whose attempt is not ev's any more.
func checkAttempt(rec *events.JobRecord, ev *events.Event) error {
	if rec.State.Terminal() || rec.Attempt != ev.Attempt || rec.Device != ev.Device {
		return errHandled
	}
	return nil
}

// requeue puts the job back in its queue for another device: the record
// gets the attempt's story, the next generation and the device excluded,
// job_requeued is stored, and the new copy is queued.
func (o *Orchestrator) requeue(ctx context.Context, id string, ev *events.Event, end events.Attempt, exclude []string) error {
	rec, _, err := o.c.UpdateJob(ctx, id, func(rec *events.JobRecord) error {
		if err := checkAttempt(rec, ev); err != nil {
			return err
		}
		rec.Attempts = append(rec.Attempts, end)
		rec.Job.ExcludeAgents = exclude
		rec.Generation++
		rec.State, rec.Device, rec.Host, rec.ReservedAt, rec.ReserveUntil = events.JobWaiting, "", "", time.Time{}, time.Time{}
		return nil
	})
	if errors.Is(err, errHandled) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	req := events.NewEvent(events.EventJobRequeued)
	req.ID = fmt.Sprintf("requeued-%s-%d", id, rec.Generation)
	req.JobID, req.Queue, req.Device, req.Attempt = id, rec.Job.JobQueue, ev.Device, end.N
	what := "failed recovery"
	if end.Result == events.AttemptLost {
		what = "was lost"
	}
	req.Detail = fmt.Sprintf("attempt %d on %s %s during %s; attempt %d waits in queue %s without %s",
		end.N, ev.Device, what, end.Phase, end.N+1, rec.Job.JobQueue, strings.Join(exclude, ", "))
	req.Data = map[string]any{"attempt": end.N, "generation": rec.Generation, "excluded": anySlice(exclude), "reason": end.Result,
		"children": len(rec.Children)}
	if err := o.c.PublishEventSync(ctx, req); err != nil {
		o.log.Warn("job_requeued not stored", "job", id, "err", err)
	}
	if err := o.route(ctx, rec, 0); err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	o.log.Info("job requeued", "job", id, "failed_device", ev.Device, "attempt", end.N, "reason", end.Result)
	return nil
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// endJob ends a job whose attempt failed and that is not requeued, saying why.
func (o *Orchestrator) endJob(ctx context.Context, id string, ev *events.Event, end events.Attempt, reason string) error {
	outcome, endReason, state := events.OutcomeRecoveryFail, events.EventRecoveryFail, events.JobCompleted
	if end.Result == events.AttemptLost {
		outcome, endReason = events.OutcomeFail, events.EventAttemptLost
	}
	rec, _, err := o.c.UpdateJob(ctx, id, func(rec *events.JobRecord) error {
		if err := checkAttempt(rec, ev); err != nil {
			return err
		}
		if rec.CancelRequested {
			outcome, endReason, state = events.OutcomeCancelled, events.EventCancelled, events.JobCancelled
		}
		rec.Attempts = append(rec.Attempts, end)
		rec.State, rec.Outcome, rec.EndReason, rec.EndedAt = state, outcome, endReason, end.EndedAt
		return nil
	})
	if errors.Is(err, errHandled) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("end %s: %w", id, err)
	}
	je := events.NewEvent(events.EventJobEnd)
	je.ID = "end-" + id
	je.JobID, je.Queue, je.Device, je.Host, je.Attempt, je.Detail = id, rec.Job.JobQueue, ev.Device, ev.Host, end.N, endReason
	je.Data = map[string]any{"outcome": string(outcome), "reason": "not requeued: " + reason, "attempts": len(rec.Attempts),
		"children": len(rec.Children)}
	if len(rec.Status) > 0 {
		st := map[string]any{}
		for p, rc := range rec.Status {
			st[string(p)] = rc
		}
		je.Data["status"] = st
	}
	if err := o.c.PublishEventSync(ctx, je); err != nil {
		return fmt.Errorf("end %s: job_end: %w", id, err)
	}
	o.log.Info("job ended after a failed attempt", "job", id, "device", ev.Device, "reason", reason)
	return nil
}

// deviceCache is the orchestrator's copy of every device's record, kept
// current by the watch of the device bucket (watchDevices), so that a
// requeue decision need not read every record of a large lab.
type deviceCache struct {
	mu      sync.RWMutex
	loaded  bool
	records map[string]*events.DeviceStatus
}

func (c *deviceCache) put(key string, st *events.DeviceStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.records == nil {
		c.records = map[string]*events.DeviceStatus{}
	}
	c.records[key] = st
}

func (c *deviceCache) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.records, key)
}

// ready marks the cache complete: the watch has delivered every record.
func (c *deviceCache) ready() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loaded = true
}

// list returns the cached records, or false before the cache is complete.
func (c *deviceCache) list() ([]*events.DeviceStatus, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.loaded {
		return nil, false
	}
	out := make([]*events.DeviceStatus, 0, len(c.records))
	for _, st := range c.records {
		out = append(out, st)
	}
	return out, true
}

// anotherDevice reports whether a device in service, not in exclude,
// serves queue.
func (o *Orchestrator) anotherDevice(ctx context.Context, queue string, exclude []string) (bool, error) {
	devs, ok := o.devices.list()
	if !ok {
		var err error
		if devs, _, err = o.c.ListDevices(ctx); err != nil {
			return false, fmt.Errorf("list devices: %w", err)
		}
	}
	for _, d := range devs {
		if !d.Serves(queue) || slices.Contains(exclude, d.Name) || d.Health == events.HealthBad {
			continue
		}
		if d.State == events.StateIdle || d.State == events.StateBusy {
			return true, nil
		}
	}
	return false, nil
}

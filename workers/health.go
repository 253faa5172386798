package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

// Health checks, after LAVA: a device whose health is unknown (new, its
// worker lost or restarted mid-job, provisioning interrupted) or bad (set
// online again by an operator after a failure) runs its health-check job,
// when it has one, before any user job reaches it. The check is a normal
// job with its own id (events.HealthCheckPrefix), record and events, run
// on the device's first queue without passing through it. A pass makes the
// device's health good and the device idle; any other outcome makes it bad
// and takes the device offline, with a comment naming the check. Either
// way a health_check event says so. A check stopped by the worker itself
// (shutdown, cut off from NATS) gives no verdict: it runs again later.

// checkRetry is how long a device waits before running again a health
// check that could not give a verdict.
const checkRetry = 10 * time.Second

// needsCheck reports whether a device with status st must pass its health
// check before it takes jobs.
func (d *device) needsCheck(st *events.DeviceStatus) bool {
	return d.cfg.HealthCheckJob != nil && st.Health != events.HealthGood
}

// checkJob builds a new health-check job for the device from its
// health-check file.
func (d *device) checkJob() *events.Job {
	job := *d.cfg.HealthCheckJob
	job.JobID = fmt.Sprintf("%s%s-%d", events.HealthCheckPrefix, d.cfg.Name, time.Now().UnixMilli())
	job.JobQueue = d.cfg.Queues[0]
	if job.Name == "" {
		job.Name = "health check of " + d.cfg.Name
	}
	return &job
}

// healthCheck runs the device's health check, which ready started after
// taking the device, and returns the device to service.
func (d *device) healthCheck() {
	defer d.jobEnded()
	job := d.checkJob()
	st, _ := d.snapshot()
	log := d.log.With("job", job.JobID)
	log.Info("health check starts", "health", st.Health, "file", d.cfg.HealthCheck)

	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	_, err := d.w.c.CreateJob(ctx, &events.JobRecord{Job: *job, State: events.JobWaiting, SubmittedAt: time.Now().UTC()})
	if err == nil {
		ev := events.NewEvent(events.EventJobSubmitted)
		ev.ID = "submitted-" + job.JobID
		ev.JobID, ev.Queue, ev.Device, ev.Host = job.JobID, job.JobQueue, d.cfg.Name, d.w.Host()
		ev.Detail = fmt.Sprintf("health check of %s (health %s), from %s", d.cfg.Name, st.Health, d.cfg.HealthCheck)
		err = d.w.c.PublishEventSync(ctx, ev)
	}
	cancel()
	if err != nil {
		log.Warn("health check not started; trying again later", "err", err, "retry", checkRetry)
		d.pause()
		return
	}

	r := d.attempt(localMsg{}, job, job.JobQueue)
	passed, decided := r.verdict(r.ended)
	if !decided {
		log.Info("health check stopped without a verdict", "outcome", r.ended)
		d.pause()
		return
	}
	ev := events.NewEvent(events.EventHealthCheck)
	ev.Device, ev.Host, ev.Queue = d.cfg.Name, d.w.Host(), job.JobQueue
	ev.Data = map[string]any{"passed": passed, "job_id": job.JobID, "outcome": string(r.ended)}
	ev.Detail = fmt.Sprintf("health check %s passed", job.JobID)
	if !passed {
		ev.Detail = fmt.Sprintf("health check %s failed (%s): device offline", job.JobID, r.ended)
	}
	ctx, cancel = context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := d.w.c.PublishEventSync(ctx, ev); err != nil {
		log.Warn("health_check event not published", "err", err)
	}
	log.Info("health check ended", "passed", passed, "outcome", r.ended)
}

// pause waits before a health check is tried again, or until the worker
// shuts down.
func (d *device) pause() {
	t := time.NewTimer(checkRetry)
	defer t.Stop()
	select {
	case <-t.C:
	case <-d.w.draining:
	}
}

// isHealthCheck reports whether the run is a health check rather than a
// job from a queue.
func (r *jobRun) isHealthCheck() bool {
	_, ok := r.msg.(localMsg)
	return ok
}

// verdict tells what a health check that ended with outcome says of its
// device: passed, or failed, or (decided false) nothing, when the worker
// stopped the check itself or it never ran.
func (r *jobRun) verdict(outcome events.Outcome) (passed, decided bool) {
	switch outcome {
	case events.OutcomePass:
		return true, true
	case events.OutcomeTestFail, events.OutcomeFail, events.OutcomeRecoveryFail, events.OutcomeTimeout, events.OutcomeCancelled:
		return false, !r.stoppedByWorker()
	default:
		return false, false
	}
}

// stoppedByWorker reports whether the run was stopped by its own worker:
// shutting down, or cut off from NATS.
func (r *jobRun) stoppedByWorker() bool {
	cause := context.Cause(r.ctx)
	return r.draining.Load() || errors.Is(cause, errShutdown) || errors.Is(cause, errFenced)
}

// checked applies a health check's outcome to its device's status, in the
// update that ends the check: good when it passed; bad and offline when it
// failed; unchanged without a verdict.
func (r *jobRun) checked(s *events.DeviceStatus, outcome events.Outcome) {
	passed, decided := r.verdict(outcome)
	switch {
	case !decided:
	case passed:
		s.Health = events.HealthGood
	default:
		s.State, s.Health = events.StateOffline, events.HealthBad
		s.Comment = fmt.Sprintf("Set to offline by worker: health check %s failed (%s)", r.job.JobID, outcome)
	}
}

// stopCheck ends a health check its worker stopped (shutting down, or cut
// off from NATS) as cancelled, where a job would be handed back to its
// queue: the device's health stays as it was, and the check runs again.
func (r *jobRun) stopCheck() {
	why := errShutdown.Error()
	if errors.Is(context.Cause(r.ctx), errFenced) {
		why = errFenced.Error()
	}
	r.emit(events.EventCancelled, "", "health check stopped: "+why, nil)
	r.finish(events.EventCancelled, events.OutcomeCancelled)
}

// localMsg stands in for the queue message of a job the worker runs on its
// own, a health check: there is no message to acknowledge or renew, so
// every acknowledgement is a no-op.
type localMsg struct{}

var errNoMessage = errors.New("a health check has no queue message")

// Metadata implements jetstream.Msg; a local run has none.
func (localMsg) Metadata() (*jetstream.MsgMetadata, error) { return nil, errNoMessage }

// Data implements jetstream.Msg.
func (localMsg) Data() []byte { return nil }

// Headers implements jetstream.Msg.
func (localMsg) Headers() nats.Header { return nil }

// Subject implements jetstream.Msg.
func (localMsg) Subject() string { return "" }

// Reply implements jetstream.Msg.
func (localMsg) Reply() string { return "" }

// Ack implements jetstream.Msg as a no-op.
func (localMsg) Ack() error { return nil }

// DoubleAck implements jetstream.Msg as a no-op.
func (localMsg) DoubleAck(context.Context) error { return nil }

// Nak implements jetstream.Msg as a no-op.
func (localMsg) Nak() error { return nil }

// NakWithDelay implements jetstream.Msg as a no-op.
func (localMsg) NakWithDelay(time.Duration) error { return nil }

// InProgress implements jetstream.Msg as a no-op.
func (localMsg) InProgress() error { return nil }

// Term implements jetstream.Msg as a no-op.
func (localMsg) Term() error { return nil }

// TermWithReason implements jetstream.Msg as a no-op.
func (localMsg) TermWithReason(string) error { return nil }

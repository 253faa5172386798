package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/events"
)

// Why a job or a phase stopped early.
var (
	errGlobalTimeout = errors.New("global timeout reached")
	errOutputTimeout = errors.New("output timeout reached")
	errLeaseLost     = errors.New("the job's lease passed to another device")
	errShutdown      = errors.New("worker shutting down")
	errStale         = errors.New("job already ended")
	errSuperseded    = errors.New("a newer copy of the job was queued")
	errFenced        = errors.New("the job's lease could not be confirmed: worker cut off from NATS")
)

// cancelRequest is the cause of a job stopped by `flinger cancel`.
type cancelRequest struct{ detail string }

func (c *cancelRequest) Error() string { return c.detail }

// Defaults Testflinger uses where neither job nor device sets a limit.
const (
	defaultGlobalTimeout = 4 * time.Hour
	defaultOutputTimeout = 15 * time.Minute
	// excludedRetry is how long a job that excludes the device that drew
	// it waits before it is offered again.
	excludedRetry = 2 * time.Second
	// exitInternal is the status of a phase that could not be run at all (Testflinger's agent uses 100).
	exitInternal = 100
)

// jobRun is one attempt at one job on one device.
type jobRun struct {
	d       *device
	msg     jetstream.Msg
	job     *events.Job
	queue   string
	attempt int
	log     *slog.Logger

	ctx       context.Context
	cancel    context.CancelCauseFunc
	stopLease context.CancelFunc
	draining  atomic.Bool
	// interrupted is set when provisioning was stopped half way, so that
	// the device's health becomes unknown.
	interrupted bool
	// extended is signalled when `reserve extend` moved the reservation's end.
	extended chan struct{}
	// busyStored is closed once the device's record says busy with this job.
	busyStored chan struct{}
	// ended is how the attempt ended for this device, set by release.
	ended events.Outcome

	// rec and rev are the job's record as this attempt last stored it.
	rec *events.JobRecord
	rev uint64

	dir       string
	env       []string
	secretEnv []string        // the job's resolved secrets, for the test phase
	masker    *drivers.Masker // masks their values in output and events
	deadline  time.Time
	status    map[events.Phase]int
	info      map[string]any
	serial    *serialLog // the device's serial console, once captured
}

// runJob runs one job delivered from queue to this device, from claim to
// acknowledgement, and returns the device to service afterwards.
func (d *device) runJob(msg jetstream.Msg, job *events.Job, queue string) {
	defer d.jobEnded()
	d.attempt(msg, job, queue)
}

// attempt runs one attempt at job on this device, from claim to
// acknowledgement (or hand-back), and returns it. msg is the job's queued
// message; a health check runs with a localMsg, which acknowledges nothing.
func (d *device) attempt(msg jetstream.Msg, job *events.Job, queue string) *jobRun {
	r := &jobRun{d: d, msg: msg, job: job, queue: queue, log: d.log.With("job", job.JobID), status: map[events.Phase]int{},
		extended: make(chan struct{}, 1)}
	r.ctx, r.cancel = context.WithCancelCause(context.Background())
	defer r.cancel(nil)

	// Listen for cancellation before claiming, so a cancel sent between the
	// claim and the first phase is not missed.
	token := events.Token(job.JobID)
	d.w.running.Store(token, r)
	defer d.w.running.CompareAndDelete(token, r)

	if !r.claim() {
		return r
	}
	leaseCtx, stopLease := context.WithCancel(r.ctx)
	r.stopLease = stopLease
	defer stopLease()
	go r.keepLease(leaseCtx)
	go func() {
		select {
		case <-d.w.draining:
			r.draining.Store(true)
			t := time.NewTimer(d.w.cfg.DrainTimeout)
			defer t.Stop()
			select {
			case <-t.C:
				r.cancel(errShutdown)
			case <-r.ctx.Done():
			}
		case <-r.ctx.Done():
		}
	}()
	r.run()
	return r
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// claim takes the job in its record with compare-and-set, so that no two
// devices run it. It returns false when the job is not to be run here.
func (r *jobRun) claim() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var prevDevice string
	var prevState events.JobState
	var cancelledNow bool
	gen, _ := strconv.Atoi(r.msg.Headers().Get(events.HeaderGeneration))
	update := func(rec *events.JobRecord) error {
		prevDevice, prevState, cancelledNow = rec.Device, rec.State, false
		if rec.State.Terminal() {
			return errStale
		}
		if rec.Generation > gen {
			return errSuperseded
		}
		now := time.Now().UTC()
		if rec.CancelRequested {
			rec.State, rec.Outcome, rec.EndReason, rec.EndedAt = events.JobCancelled, events.OutcomeCancelled, events.EventCancelled, now
			cancelledNow = true
			return nil
		}
		if rec.Device != "" && rec.State != events.JobWaiting {
			// JetStream handed the job on because the device running it
			// stopped renewing its lease before any orchestrator noticed.
			rec.Attempts = append(rec.Attempts, events.Attempt{N: rec.Attempt, Device: rec.Device, Host: rec.Host,
				Phase: events.Phase(rec.State), Result: events.AttemptLost, Detail: "lease not renewed",
				StartedAt: rec.StartedAt, EndedAt: now})
		}
		rec.Attempt++
		rec.Device, rec.Host, rec.State, rec.StartedAt = r.d.cfg.Name, r.d.w.Host(), events.PhaseStateSetup, now
		rec.Status, rec.DeviceInfo, rec.Outcome, rec.EndReason, rec.EndedAt = nil, r.d.reachInfo(), "", "", time.Time{}
		return nil
	}
	known, knownRev := r.queuedRecord()
	rec, rev, err := r.d.w.c.UpdateJobFrom(ctx, r.job.JobID, known, knownRev, update)
	if errors.Is(err, broker.ErrNoJob) {
		// The record expired or was lost; the queued job is the truth.
		_, cerr := r.d.w.c.CreateJob(ctx, &events.JobRecord{Job: *r.job, State: events.JobWaiting, SubmittedAt: time.Now().UTC()})
		if cerr != nil && !errors.Is(cerr, jetstream.ErrKeyExists) {
			err = cerr
		} else {
			rec, rev, err = r.d.w.c.UpdateJob(ctx, r.job.JobID, update)
		}
	}
	switch {
	case errors.Is(err, errStale):
		r.log.Info("job already ended; dropping a repeated delivery", "state", rec.State)
		_ = r.msg.Ack()
		return false
	case errors.Is(err, errSuperseded):
		r.log.Info("dropping an old copy of a requeued job", "generation", gen, "current", rec.Generation)
		_ = r.msg.Ack()
		return false
	case err != nil:
		r.log.Error("cannot claim job; leaving it for another try", "err", err)
		_ = r.msg.NakWithDelay(time.Second)
		return false
	case cancelledNow:
		r.emit(events.EventCancelled, "", "cancelled before it started", nil)
		r.emitEnd(events.EventCancelled, events.OutcomeCancelled)
		_ = r.msg.Ack()
		return false
	}
	r.attempt, r.rec, r.rev = rec.Attempt, rec, rev
	r.log = r.log.With("attempt", r.attempt)
	if prevDevice != "" && prevState != events.JobWaiting {
		r.emit(events.EventJobRequeued, "", fmt.Sprintf("attempt %d on %s stopped renewing its lease during %s; attempt %d starts on %s",
			r.attempt-1, prevDevice, prevState, r.attempt, r.d.cfg.Name), nil)
	}
	return true
}

// queuedRecord rebuilds the record intake stored, from the queued message
// and its headers, so that an uncontested claim is one compare-and-set.
func (r *jobRun) queuedRecord() (*events.JobRecord, uint64) {
	h := r.msg.Headers()
	if h == nil || r.job.HasAttachments() {
		// A job with attachments has more in its record than intake's
		// first write: it is read.
		return nil, 0
	}
	rev, err := strconv.ParseUint(h.Get(events.HeaderRecordRevision), 10, 64)
	if err != nil {
		return nil, 0
	}
	at, err := time.Parse(time.RFC3339Nano, h.Get(events.HeaderSubmittedAt))
	if err != nil {
		return nil, 0
	}
	return &events.JobRecord{Type: events.JobRecordType, Job: *r.job, State: events.JobWaiting, SubmittedAt: at}, rev
}

// updateRecord changes this attempt's job record with fn, refusing when
// another attempt owns the job (errLeaseLost).
func (r *jobRun) updateRecord(ctx context.Context, fn func(*events.JobRecord)) error {
	rec, rev, err := r.d.w.c.UpdateJobFrom(ctx, r.job.JobID, r.rec, r.rev, func(rec *events.JobRecord) error {
		if rec.Attempt != r.attempt || rec.Device != r.d.cfg.Name {
			return errLeaseLost
		}
		fn(rec)
		return nil
	})
	if err == nil {
		r.rec, r.rev = rec, rev
	}
	return err
}

// keepLease tells JetStream the job is in progress well within the lease,
// stops the job if its record shows another attempt has taken over or a
// cancel the signal did not bring, and fences the job: when neither the
// lease nor the record could be confirmed for the fence time (the worker is
// cut off from NATS), the job is stopped here, before the orchestrator can
// hand it to another device, so that it never runs on two at once.
func (r *jobRun) keepLease(ctx context.Context) {
	lease := r.d.w.leases[r.queue]
	if lease <= 0 {
		lease = r.d.w.cfg.Lease
	}
	fence := r.d.w.fence(lease)
	every := min(lease/3, fence/3)
	fenced := time.AfterFunc(fence, func() {
		r.log.Error("lease not confirmed for the fence time; stopping the job", "fence", fence)
		r.cancel(errFenced)
	})
	defer fenced.Stop()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		renewed := true
		if err := r.msg.InProgress(); err != nil {
			renewed = false
			r.log.Warn("lease not renewed", "err", err)
		}
		gctx, cancel := context.WithTimeout(ctx, every)
		rec, _, err := r.d.w.c.GetJob(gctx, r.job.JobID)
		cancel()
		switch {
		case err != nil:
			r.log.Warn("job record not readable to confirm the lease", "err", err)
			continue
		case rec.Attempt != r.attempt || rec.Device != r.d.cfg.Name:
			r.log.Warn("another attempt owns the job; stopping this one", "owner", rec.Device, "attempt", rec.Attempt)
			r.cancel(errLeaseLost)
			return
		case rec.CancelRequested:
			r.cancel(&cancelRequest{detail: "cancelled on request"})
		}
		if renewed {
			fenced.Reset(fence)
		}
	}
}

// run runs the phases, then cleanup, and ends the job.
func (r *jobRun) run() {
	d := r.d
	global := limit(r.job.GlobalTimeout, d.cfg.GlobalTimeout, defaultGlobalTimeout)
	r.deadline = time.Now().Add(global)
	r.dir = filepath.Join(d.w.cfg.RunDir, r.job.JobID)
	if r.attempt > 1 {
		// The device of an earlier attempt may still be cleaning up its
		// directory on this host.
		r.dir += fmt.Sprintf(".attempt-%d", r.attempt)
	}
	r.env = d.cfg.Environ(os.Environ())
	r.emit(events.EventJobStart, "", "flinger status "+r.job.JobID, nil)
	// The device's record says busy while setup already runs: the write
	// is off the path from claim to setup, and the job's next device write
	// waits for it (deviceUpdate), so that they stay in order.
	r.busyStored = make(chan struct{})
	go func() {
		defer close(r.busyStored)
		d.update("running job "+r.job.JobID, func(s *events.DeviceStatus) {
			s.State, s.JobID, s.Phase = events.StateBusy, r.job.JobID, events.PhaseSetup
		})
	}()

	endReason, outcome := events.EventNormalExit, events.OutcomePass
	handBack, requeue := false, false
	var failedIn events.Phase // the phase whose recovery failed, and why
	var failure string
	var giveUp *events.Attempt // how this attempt ends when the job is handed back
	run := []events.Phase{events.PhaseSetup, events.PhaseProvision, events.PhaseFirmwareUpdate,
		events.PhaseTest, events.PhaseAllocate, events.PhaseReserve}
phases:
	for i, p := range run {
		if cause := context.Cause(r.ctx); cause != nil {
			var cr *cancelRequest
			switch {
			case errors.As(cause, &cr):
				r.emit(events.EventCancelled, "", cr.detail, nil)
				endReason, outcome = events.EventCancelled, events.OutcomeCancelled
			case errors.Is(cause, errLeaseLost):
				r.abandon()
				return
			case errors.Is(cause, errShutdown):
				handBack = true
			case errors.Is(cause, errFenced):
				handBack, giveUp = true, r.attemptEnd(p, events.AttemptLost, errFenced.Error())
			}
			break
		}
		if r.draining.Load() && r.remaining(run[i:]) {
			handBack = true
			break
		}
		if time.Now().After(r.deadline) {
			r.emit(events.EventGlobalTimeout, p, fmt.Sprintf("global timeout of %s reached before %s", global, p), nil)
			endReason, outcome = events.EventGlobalTimeout, events.OutcomeTimeout
			break
		}
		r.emit(events.PhaseStart(p), p, "", nil)
		if reason := r.job.SkipReason(p); reason != "" {
			r.emit(events.PhaseSuccess(p), p, "skipped: "+reason, nil)
			continue
		}
		if p != events.PhaseSetup { // the claim recorded setup
			r.setPhase(p)
		}
		rc, err, cause := r.runPhase(p)
		r.status[p] = rc
		if cause != nil && p == events.PhaseProvision {
			r.interrupted = true
		}
		var cr *cancelRequest
		switch {
		case errors.Is(cause, errLeaseLost):
			r.abandon()
			return
		case errors.Is(cause, errFenced):
			r.emit(events.PhaseFail(p), p, "stopped: "+errFenced.Error(), &rc)
			handBack, giveUp = true, r.attemptEnd(p, events.AttemptLost, errFenced.Error())
			break phases
		case errors.As(cause, &cr):
			r.emit(events.EventCancelled, p, cr.detail, nil)
			r.emit(events.PhaseFail(p), p, "cancelled during "+string(p), &rc)
			endReason, outcome = events.EventCancelled, events.OutcomeCancelled
			break phases
		case errors.Is(cause, errShutdown):
			r.emit(events.PhaseFail(p), p, "stopped: "+errShutdown.Error(), &rc)
			handBack = true
			break phases
		case errors.Is(cause, errGlobalTimeout):
			r.emit(events.EventGlobalTimeout, p, fmt.Sprintf("global timeout of %s reached during %s", global, p), nil)
			r.emit(events.PhaseFail(p), p, errGlobalTimeout.Error(), &rc)
			endReason, outcome = events.EventGlobalTimeout, events.OutcomeTimeout
			break phases
		case errors.Is(cause, errOutputTimeout):
			r.emit(events.EventOutputTimeout, p, err.Error(), nil)
			r.emit(events.PhaseFail(p), p, err.Error(), &rc)
			outcome = events.OutcomeTimeout
		case rc == drivers.ExitRecoveryFailed:
			r.recoveryFailed(err)
			r.attemptFailed(p, err, rc)
			failedIn, failure = p, detail(err, rc)
			requeue = true
			break phases
		case rc != 0:
			r.emit(events.PhaseFail(p), p, detail(err, rc), &rc)
			if p != events.PhaseTest {
				endReason, outcome = events.PhaseFail(p), events.OutcomeFail
				break phases
			}
			if outcome == events.OutcomePass {
				outcome = events.OutcomeTestFail
			}
		default:
			r.emit(events.PhaseSuccess(p), p, "", &rc)
		}
	}

	r.cleanup()
	switch {
	case requeue && r.isHealthCheck():
		// A health check is never requeued: it ends here, its device out of service.
		r.finish(events.EventRecoveryFail, events.OutcomeRecoveryFail)
	case requeue:
		// The orchestrator requeues the job, or ends it now that this
		// device has cleaned up; this device is done with it.
		artifacts := r.storeArtifacts()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		status := maps.Clone(r.status)
		if err := r.updateRecord(ctx, func(rec *events.JobRecord) {
			rec.Status = status
			if artifacts != nil {
				rec.Artifacts = artifacts
			}
		}); err != nil && !errors.Is(err, errLeaseLost) {
			r.log.Warn("phase statuses not recorded", "err", err)
		}
		cancel()
		r.emitSync(r.event(events.EventAttemptEnd, failedIn, failure))
		r.release(events.OutcomeRecoveryFail)
	case handBack:
		r.handBack(giveUp)
	default:
		r.finish(endReason, outcome)
	}
}

// attemptEnd describes how this attempt ends, for the job's record.
func (r *jobRun) attemptEnd(p events.Phase, result, detail string) *events.Attempt {
	started := time.Time{}
	if r.rec != nil {
		started = r.rec.StartedAt
	}
	return &events.Attempt{N: r.attempt, Device: r.d.cfg.Name, Host: r.d.w.Host(), Phase: p, Result: result,
		Detail: r.masker.String(detail), StartedAt: started, EndedAt: time.Now().UTC()}
}

// attemptFailed reports that the device could not be recovered during phase
// p: the phase statuses go into the job's record, recovery_fail is stored
// in the event stream, and the queued copy of the job is acknowledged. The
// orchestrator, on that event, puts the job back in its queue for another
// device or ends it; this attempt only cleans up.
func (r *jobRun) attemptFailed(p events.Phase, err error, rc int) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r.stopLease()
	status := maps.Clone(r.status)
	if uerr := r.updateRecord(ctx, func(rec *events.JobRecord) { rec.Status = status }); uerr != nil && !errors.Is(uerr, errLeaseLost) {
		r.log.Warn("phase statuses not recorded", "err", uerr)
	}
	ev := r.event(events.EventRecoveryFail, p, detail(err, rc))
	ev.ExitCode = &rc
	r.d.w.cfg.Metrics.Observe(ev)
	if perr := r.d.w.c.PublishEventSync(ctx, ev); perr != nil {
		r.log.Error("recovery_fail not stored; the job is handled when its device is found lost", "err", perr)
		return
	}
	if aerr := r.msg.DoubleAck(ctx); aerr != nil {
		r.log.Warn("acknowledgement of the failed attempt not confirmed", "err", aerr)
	}
}

// remaining reports whether any of phases would run for this job.
func (r *jobRun) remaining(phases []events.Phase) bool {
	for _, p := range phases {
		if r.job.SkipReason(p) == "" {
			return true
		}
	}
	return false
}

func detail(err error, rc int) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("exit status %d", rc)
}

func limit(job, device int, def time.Duration) time.Duration {
	d := def
	if job > 0 {
		d = time.Duration(job) * time.Second
	}
	if device > 0 && time.Duration(device)*time.Second < d {
		d = time.Duration(device) * time.Second
	}
	return d
}

// setPhase records the phase the job is in, in its record and the device's.
func (r *jobRun) setPhase(p events.Phase) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The two records are written at once: one round trip, not two.
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		r.deviceUpdate("", func(s *events.DeviceStatus) { s.Phase = p })
	}()
	err := r.updateRecord(ctx, func(rec *events.JobRecord) { rec.State = events.JobState(p) })
	<-stored
	if errors.Is(err, errLeaseLost) {
		r.cancel(errLeaseLost)
	} else if err != nil {
		r.log.Warn("job state not recorded", "phase", p, "err", err)
	}
}

// runPhase runs one phase with its limits and returns its exit status, its
// error and, when it was stopped early, why.
func (r *jobRun) runPhase(p events.Phase) (rc int, err error, cause error) {
	d := r.d
	out := newPhaseOutput(d.w.c, r.job.JobID, r.attempt, p, "", r.masker)
	if p != events.PhaseSetup {
		out = newPhaseOutput(d.w.c, r.job.JobID, r.attempt, p, filepath.Join(r.dir, string(p)+".log"), r.masker)
	}
	defer out.Close()
	if p != events.PhaseSetup {
		r.startSerial(p)
	}

	var ctx context.Context
	var cancel context.CancelFunc
	switch p {
	case events.PhaseCleanup:
		ctx, cancel = context.WithTimeout(context.Background(), d.w.cfg.CleanupTimeout)
	case events.PhaseReserve:
		ctx, cancel = context.WithCancel(r.ctx)
	default:
		ctx, cancel = context.WithDeadlineCause(r.ctx, r.deadline, errGlobalTimeout)
	}
	defer cancel()
	if p == events.PhaseTest {
		outTimeout := limit(r.job.OutputTimeout, d.cfg.OutputTimeout, defaultOutputTimeout)
		var stop context.CancelCauseFunc
		ctx, stop = context.WithCancelCause(ctx)
		defer stop(nil)
		timer := time.AfterFunc(outTimeout, func() {
			stop(fmt.Errorf("%w: no output for %s", errOutputTimeout, outTimeout))
		})
		defer timer.Stop()
		out.onWrite = func() { timer.Reset(outTimeout) }
	}
	line := fmt.Sprintf("Starting testflinger %s phase on %s", p, d.cfg.Name)
	out.Printf("%s\n* %s *\n%s", strings.Repeat("*", len(line)+4), line, strings.Repeat("*", len(line)+4))

	env := r.env
	if p == events.PhaseTest && len(r.secretEnv) > 0 {
		env = append(slices.Clip(env), r.secretEnv...)
	}
	run := &drivers.Run{Job: r.job, Device: d.cfg, Dir: r.dir, Out: out, Env: env, Log: r.log.With("phase", p), Images: d.w.images}
	run.Jobs = r.jobService(p)
	if p == events.PhaseProvision {
		progress := r.progressEvents(p)
		defer progress.flush()
		run.Progress = progress.report
	}
	switch p {
	case events.PhaseSetup:
		err = r.setup(out)
	case events.PhaseProvision:
		err = d.drv.Provision(ctx, run)
		r.noteAllocationTimeout(p, err)
	case events.PhaseFirmwareUpdate:
		err = d.drv.FirmwareUpdate(ctx, run)
	case events.PhaseTest:
		rc, err = d.drv.RunTest(ctx, run)
		if err != nil && rc == 0 {
			rc = exitInternal
			if drivers.IsRecovery(err) {
				rc = drivers.ExitRecoveryFailed
			}
		}
	case events.PhaseAllocate:
		var info map[string]any
		if info, err = d.drv.Allocate(ctx, run); err == nil {
			err = r.holdAllocated(ctx, out, info)
		}
	case events.PhaseReserve:
		if err = d.drv.Reserve(ctx, run); err == nil {
			err = r.holdReserved(ctx, out)
		}
	case events.PhaseCleanup:
		err = d.drv.Cleanup(ctx, run)
	}
	if p != events.PhaseTest {
		rc = drivers.ExitCode(err)
	}
	if ctx.Err() != nil {
		cause = context.Cause(ctx)
		if rc == 0 {
			rc = drivers.ExitFailed
		}
	}
	if err != nil {
		out.Printf("%s failed: %v", p, err)
	} else if cause != nil {
		out.Printf("%s stopped: %v", p, cause)
	}
	if errors.Is(cause, errOutputTimeout) {
		err = cause
	}
	return rc, err, cause
}

// setup prepares the run directory as Testflinger's agent does.
func (r *jobRun) setup(out *phaseOutput) error {
	if err := os.RemoveAll(r.dir); err != nil {
		return fmt.Errorf("clear run directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(r.dir, "artifacts"), 0o750); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	files := map[string]any{
		"testflinger.json":         r.job,
		"testflinger-outcome.json": map[string]any{},
		"device-info.json":         r.d.cfg.DeviceInfo(),
	}
	for name, v := range files {
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(r.dir, name), data, 0o640); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	out.Printf("run directory %s ready", r.dir)
	if err := r.fetchAttachments(r.ctx, out); err != nil {
		return err
	}
	return r.resolveSecrets()
}

// resolveSecrets resolves the job's test_data.secrets from the host's
// secret store, for the test phase's environment, and masks their values
// in the job's output and events from then on. A secret the store does
// not hold fails the setup phase, naming its path, before anything runs
// on the device.
func (r *jobRun) resolveSecrets() error {
	if r.job.TestData == nil || len(r.job.TestData.Secrets) == 0 {
		return nil
	}
	store := r.d.w.cfg.Secrets
	if store == nil {
		return fmt.Errorf("test_data.secrets: lab host %s has no secret store (secrets_file or secrets_kv in its host file)", r.d.w.Host())
	}
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	values, err := store.Resolve(ctx, r.job.TestData.Secrets)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(values))
	vals := make([]string, 0, len(values))
	for name, v := range values {
		names = append(names, name)
		vals = append(vals, v)
	}
	slices.Sort(names)
	for _, name := range names {
		r.secretEnv = append(r.secretEnv, name+"="+values[name])
	}
	r.masker = drivers.NewMasker(vals)
	return nil
}

// holdAllocated records the device as allocated to the job and holds it
// until the job is cancelled, its parent job ends, or time runs out.
func (r *jobRun) holdAllocated(ctx context.Context, out *phaseOutput, info map[string]any) error {
	r.info = info
	uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := r.updateRecord(uctx, func(rec *events.JobRecord) { rec.State, rec.DeviceInfo = events.JobAllocated, info })
	cancel()
	if errors.Is(err, errLeaseLost) {
		r.cancel(errLeaseLost)
		return err
	} else if err != nil {
		return fmt.Errorf("record allocation: %w", err)
	}
	ev := r.event(events.EventJobAllocated, events.PhaseAllocate, "device allocated")
	ev.Data = map[string]any{"device_info": info}
	r.publish(ev)

	parentDone := make(chan struct{})
	if parent := r.job.ParentJobID; parent != "" {
		sub, err := r.d.w.c.NC.Subscribe(r.d.w.c.Subj.JobEvent(parent, events.EventJobEnd), func(*nats.Msg) {
			select {
			case <-parentDone:
			default:
				close(parentDone)
			}
		})
		if err != nil {
			return fmt.Errorf("watch parent job %s: %w", parent, err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		// Read after subscribing, so that an end between the two is seen:
		// a parent already cancelled or completed, or gone, holds nothing.
		if rec, _, err := r.d.w.c.GetJob(ctx, parent); (err == nil && rec.State.Terminal()) || errors.Is(err, broker.ErrNoJob) {
			out.Printf("parent job %s has already ended", parent)
			return nil
		}
		out.Printf("device allocated; holding it until parent job %s ends", parent)
	} else {
		out.Printf("device allocated; holding it until the job is cancelled (flinger cancel %s)", r.job.JobID)
	}
	select {
	case <-parentDone:
		out.Printf("parent job ended; releasing the device")
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// holdReserved keeps the device for the reservation's length, which
// `flinger reserve extend` may move: the orchestrator records the new end
// and signals it, and the timer follows the record.
func (r *jobRun) holdReserved(ctx context.Context, out *phaseOutput) error {
	length := events.DefaultReserveTimeout
	if r.job.ReserveData != nil && r.job.ReserveData.Timeout > 0 {
		length = time.Duration(r.job.ReserveData.Timeout) * time.Second
	}
	now := time.Now().UTC()
	until := now.Add(length)
	uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := r.updateRecord(uctx, func(rec *events.JobRecord) { rec.ReservedAt, rec.ReserveUntil = now, until })
	cancel()
	if errors.Is(err, errLeaseLost) {
		r.cancel(errLeaseLost)
		return err
	} else if err != nil {
		r.log.Warn("reservation end not recorded; reserve extend will not find it", "err", err)
	}
	out.Printf("device reserved for %s, until %s; extend it with: flinger reserve extend %s DURATION; end it early with: flinger cancel %s",
		length, until.Format(time.RFC3339), r.job.JobID, r.job.JobID)
	t := time.NewTimer(length)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if later := r.reserveUntil(ctx); later.After(until) {
				until = later
				t.Reset(time.Until(until))
				continue
			}
			out.Printf("reservation over")
			r.emit(events.EventReservationExpired, events.PhaseReserve, "reservation ended at "+until.Format(time.RFC3339), nil)
			return nil
		case <-r.extended:
			if later := r.reserveUntil(ctx); !later.Equal(until) && !later.IsZero() {
				until = later
				t.Reset(time.Until(until))
				out.Printf("reservation extended until %s (%s left)", until.Format(time.RFC3339), time.Until(until).Round(time.Second))
			}
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// reserveUntil reads the reservation's end from the job's record (zero
// when it cannot be read).
func (r *jobRun) reserveUntil(ctx context.Context) time.Time {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rec, _, err := r.d.w.c.GetJob(gctx, r.job.JobID)
	if err != nil {
		r.log.Warn("reservation end not readable", "err", err)
		return time.Time{}
	}
	return rec.ReserveUntil
}

// recoveryFailed takes the device out of service, as Testflinger's agent does on exit 46.
func (r *jobRun) recoveryFailed(err error) {
	comment := fmt.Sprintf("Set to offline by worker: recovery failed during job %s", r.job.JobID)
	if err != nil {
		comment += ": " + r.masker.String(err.Error())
	}
	r.deviceUpdate(comment, func(s *events.DeviceStatus) {
		s.State, s.Health, s.Comment = events.StateOffline, events.HealthBad, comment
	})
	r.log.Error("device taken offline", "reason", comment)
}

// cleanup runs the cleanup phase, which always runs.
func (r *jobRun) cleanup() {
	p := events.PhaseCleanup
	r.emit(events.PhaseStart(p), p, "", nil)
	r.deviceUpdate("", func(s *events.DeviceStatus) { s.Phase = p })
	rc, err, _ := r.runPhase(p)
	r.status[p] = rc
	if rc != 0 {
		r.emit(events.PhaseFail(p), p, detail(err, rc), &rc)
		if rc == drivers.ExitRecoveryFailed {
			r.recoveryFailed(err)
		}
		return
	}
	r.emit(events.PhaseSuccess(p), p, "", &rc)
}

// finish records how the job ended, announces job_end and acknowledges the job.
func (r *jobRun) finish(endReason string, outcome events.Outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	state := events.JobCompleted
	if outcome == events.OutcomeCancelled {
		state = events.JobCancelled
	}
	artifacts := r.storeArtifacts()
	err := r.updateRecord(ctx, func(rec *events.JobRecord) {
		rec.State, rec.Outcome, rec.EndReason, rec.EndedAt = state, outcome, endReason, time.Now().UTC()
		rec.Status = r.status
		if artifacts != nil {
			rec.Artifacts = artifacts
		}
		if r.info != nil {
			rec.DeviceInfo = r.info
		}
	})
	if errors.Is(err, errLeaseLost) {
		r.abandon()
		return
	}
	if err != nil {
		r.log.Error("final job record not stored", "err", err)
	}
	r.emitEnd(endReason, outcome)
	if err := r.msg.DoubleAck(ctx); err != nil {
		r.log.Warn("job acknowledgement not confirmed", "err", err)
	}
	r.release(outcome)
}

// emitEnd publishes job_end and waits until the stream has it.
func (r *jobRun) emitEnd(endReason string, outcome events.Outcome) {
	ev := r.event(events.EventJobEnd, "", endReason)
	ev.Data = map[string]any{"outcome": string(outcome)}
	if r.rec != nil {
		ev.Data["children"] = len(r.rec.Children)
	}
	if len(r.status) > 0 {
		st := map[string]any{}
		for p, rc := range r.status {
			st[string(p)] = rc
		}
		ev.Data["status"] = st
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.d.w.cfg.Metrics.Observe(ev)
	if err := r.d.w.c.PublishEventSync(ctx, ev); err != nil {
		r.log.Warn("job_end not published", "err", err)
	}
}

// release removes the run directory and returns the device to service.
func (r *jobRun) release(outcome events.Outcome) {
	if r.serial != nil {
		r.serial.stop()
		r.serial = nil
	}
	if !r.d.w.cfg.KeepRunDirs && r.dir != "" {
		_ = os.RemoveAll(r.dir)
	}
	r.ended = outcome
	r.deviceUpdate("job "+r.job.JobID+" ended: "+string(outcome), func(s *events.DeviceStatus) {
		s.JobID, s.Phase = "", ""
		if s.State == events.StateBusy {
			s.State = events.StateIdle
		}
		switch {
		case r.isHealthCheck():
			r.checked(s, outcome)
		case r.interrupted && s.Health != events.HealthBad:
			// Provisioning stopped half way: the next job rewrites the
			// device, but until something passes on it its health is
			// not known (a health check runs first, when one is set).
			s.Health = events.HealthUnknown
		case s.State == events.StateIdle && (outcome == events.OutcomePass || outcome == events.OutcomeTestFail):
			s.Health = events.HealthGood
		}
	})
}

// handBack returns the job to its queue for another device after a
// shutdown, or after the job was fenced (end says so; nil for a shutdown).
func (r *jobRun) handBack(end *events.Attempt) {
	if r.isHealthCheck() {
		r.stopCheck()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	why := "shut down"
	if end == nil {
		end = r.attemptEnd(events.Phase(r.rec.State), events.AttemptHandedBack, errShutdown.Error())
	} else {
		why = "lost its lease"
	}
	err := r.updateRecord(ctx, func(rec *events.JobRecord) {
		rec.State, rec.Device, rec.Host = events.JobWaiting, "", ""
		rec.Attempts = append(rec.Attempts, *end)
	})
	if errors.Is(err, errLeaseLost) {
		r.abandon()
		return
	}
	if err != nil {
		r.log.Error("job record not reset for hand-back", "err", err)
	}
	ev := r.event(events.EventJobRequeued, "", fmt.Sprintf("worker on %s %s during attempt %d; the job goes back to queue %s",
		r.d.w.Host(), why, r.attempt, r.queue))
	ev.Data = map[string]any{"children": len(r.rec.Children)}
	r.publish(ev)
	if err := r.msg.Nak(); err != nil {
		r.log.Error("job not handed back; it returns when its lease runs out", "err", err)
	}
	r.log.Info("job handed back to its queue")
	r.release("handed back")
}

// abandon stops work on a job whose lease another attempt now holds,
// leaving its record and acknowledgement to that attempt.
func (r *jobRun) abandon() {
	r.log.Warn("job abandoned: " + errLeaseLost.Error())
	r.release("abandoned")
}

// progressInterval is the shortest time between two provision_progress
// events of a job.
const progressInterval = time.Second

// progressEvents turns a driver's progress reports into provision_progress
// events, at most one every progressInterval, and the last one when the
// phase ends.
type progressEvents struct {
	r     *jobRun
	phase events.Phase

	mu      sync.Mutex
	last    time.Time
	pending *image.Progress
}

func (r *jobRun) progressEvents(p events.Phase) *progressEvents {
	return &progressEvents{r: r, phase: p}
}

func (pe *progressEvents) report(p image.Progress) {
	pe.mu.Lock()
	defer pe.mu.Unlock()
	if time.Since(pe.last) < progressInterval {
		pe.pending = &p
		return
	}
	pe.last, pe.pending = time.Now(), nil
	pe.publishLocked(p)
}

func (pe *progressEvents) flush() {
	pe.mu.Lock()
	defer pe.mu.Unlock()
	if pe.pending != nil {
		pe.publishLocked(*pe.pending)
		pe.pending = nil
	}
}

func (pe *progressEvents) publishLocked(p image.Progress) {
	ev := pe.r.event(events.EventProvisionProgress, pe.phase, "")
	ev.Data = map[string]any{"bytes_in": p.BytesIn, "bytes_written": p.BytesOut, "total": p.Total, "rate": int64(p.Rate)}
	pe.r.publish(ev)
}

// event builds an event about this job.
func (r *jobRun) event(name string, p events.Phase, detail string) *events.Event {
	ev := events.NewEvent(name)
	ev.JobID, ev.Device, ev.Queue, ev.Host = r.job.JobID, r.d.cfg.Name, r.job.JobQueue, r.d.w.Host()
	ev.Phase, ev.Detail, ev.Attempt = p, r.masker.String(detail), r.attempt
	return ev
}

func (r *jobRun) emit(name string, p events.Phase, detail string, rc *int) {
	ev := r.event(name, p, detail)
	if rc != nil {
		v := *rc
		ev.ExitCode = &v
	}
	r.publish(ev)
}

// deviceUpdate changes the device's status for this job with fn, after
// the write that marked it busy.
func (r *jobRun) deviceUpdate(detail string, fn func(*events.DeviceStatus)) {
	if r.busyStored != nil {
		<-r.busyStored
	}
	r.d.update(detail, fn)
}

// emitSync publishes ev and waits until the stream has it.
func (r *jobRun) emitSync(ev *events.Event) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.d.w.cfg.Metrics.Observe(ev)
	if err := r.d.w.c.PublishEventSync(ctx, ev); err != nil {
		r.log.Warn("event not stored", "event", ev.Name, "err", err)
	}
}

func (r *jobRun) publish(ev *events.Event) {
	r.d.w.cfg.Metrics.Observe(ev)
	if err := r.d.w.c.PublishEvent(ev); err != nil {
		r.log.Warn("event not published", "event", ev.Name, "err", err)
	}
}

package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// errNotReserved reports a reserve extend for a job that holds no reservation.
var errNotReserved = errors.New("the job is not in its reserve phase")

// ctlReserveExtend answers reserve-extend: {job_id, duration}.
func (o *Orchestrator) ctlReserveExtend(ctx context.Context, req *events.CtlRequest) *events.CtlReply {
	if req.JobID == "" {
		return &events.CtlReply{Error: "reserve extend: job_id is required"}
	}
	secs, err := events.ParseDuration(req.Duration)
	if err != nil || secs <= 0 {
		return &events.CtlReply{Error: fmt.Sprintf("reserve extend: duration %q: use seconds or a duration such as 90m or 2h30m", req.Duration)}
	}
	rec, err := o.ExtendReservation(ctx, req.JobID, time.Duration(secs)*time.Second)
	reply := &events.CtlReply{}
	if rec != nil {
		reply.State, reply.ReserveUntil = rec.State, rec.ReserveUntil
	}
	if err != nil {
		reply.Error = err.Error()
	}
	return reply
}

// ExtendReservation moves the end of job id's reservation by d, from its
// current end (or from now, if that has passed), within MaxReservation of
// the reservation's start, and tells the worker holding it.
func (o *Orchestrator) ExtendReservation(ctx context.Context, id string, d time.Duration) (*events.JobRecord, error) {
	var until time.Time
	rec, _, err := o.c.UpdateJob(ctx, id, func(rec *events.JobRecord) error {
		if rec.State.Terminal() {
			return fmt.Errorf("%w (%s)", errEnded, rec.State)
		}
		if rec.State != events.JobState(events.PhaseReserve) || rec.ReserveUntil.IsZero() {
			return fmt.Errorf("%w (state %s)", errNotReserved, rec.State)
		}
		from := rec.ReserveUntil
		if now := time.Now().UTC(); from.Before(now) {
			from = now
		}
		until = from.Add(d).UTC()
		if limit := rec.ReservedAt.Add(o.cfg.MaxReservation); until.After(limit) {
			return fmt.Errorf("a reservation may last %s in all: this one can end at %s at the latest, not %s",
				o.cfg.MaxReservation, limit.Format(time.RFC3339), until.Format(time.RFC3339))
		}
		rec.ReserveUntil = until
		return nil
	})
	if errors.Is(err, broker.ErrNoJob) {
		return nil, fmt.Errorf("reserve extend: %w", err)
	}
	if err != nil {
		return rec, fmt.Errorf("reserve extend %s: %w", id, err)
	}
	if err := o.c.NC.Publish(o.c.Subj.ReserveSignal(id), nil); err != nil {
		return rec, fmt.Errorf("reserve extend %s: signal the worker: %w", id, err)
	}
	ev := events.NewEvent(events.EventReservationExtended)
	ev.JobID, ev.Queue, ev.Device, ev.Host, ev.Phase, ev.Attempt = id, rec.Job.JobQueue, rec.Device, rec.Host, events.PhaseReserve, rec.Attempt
	ev.Detail = fmt.Sprintf("reservation extended by %s, until %s", d, until.Format(time.RFC3339))
	ev.Data = map[string]any{"reserve_until": until.Format(time.RFC3339Nano)}
	if err := o.c.PublishEvent(ev); err != nil {
		o.log.Warn("reservation_extended not published", "job", id, "err", err)
	}
	return rec, nil
}

package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// MultiConsumer is the durable consumer, shared by every orchestrator,
// that reads the job_end and job_requeued events of multi-device jobs.
const MultiConsumer = "multi"

// startMulti starts the safety net of multi-device jobs. A multi-device
// job's worker cancels the job's children itself when it cannot go on and
// when it cleans up; when that worker is lost, nobody would, and a child
// already allocated would hold its device until its own timeout. So on
// every job_end, and on every job_requeued (a new attempt creates new
// children), the children the job's record lists that have not ended are
// cancelled here. Each event is handled by one orchestrator (a shared
// durable consumer) and acknowledged once handled; a failure is retried.
//
// A requeued job's children are only cancelled while the job waits in its
// queue: once a new attempt has claimed it, that attempt cancels its
// predecessors' children itself before it creates its own, which this
// reactor could not tell apart.
func (o *Orchestrator) startMulti(ctx, runCtx context.Context) error {
	cons, err := o.c.JS.CreateOrUpdateConsumer(ctx, o.c.Subj.EventStream(), jetstream.ConsumerConfig{
		Durable:     MultiConsumer,
		Description: "Orchestrators: cancel the child jobs of multi-device jobs that ended or were requeued",
		FilterSubjects: []string{
			o.c.Subj.EveryJobEvent(events.EventJobEnd),
			o.c.Subj.EveryJobEvent(events.EventJobRequeued),
		},
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 1000,
		MaxDeliver:    20,
	})
	if err != nil {
		return fmt.Errorf("multi-device consumer: %w", err)
	}
	o.goLoop(func() {
		broker.ConsumeEach(runCtx, cons, 64, o.log, "multi", func(m jetstream.Msg) {
			var ev events.Event
			if err := events.Decode(m.Data(), &ev); err != nil {
				o.log.Error("multi: dropping an unreadable event", "subject", m.Subject(), "err", err)
				_ = m.Term()
				return
			}
			hctx, cancel := context.WithTimeout(runCtx, 30*time.Second)
			defer cancel()
			if err := o.releaseChildren(hctx, &ev); err != nil {
				o.log.Error("multi: will retry", "job", ev.JobID, "event", ev.Name, "err", err)
				_ = m.NakWithDelay(time.Second)
				return
			}
			_ = m.Ack()
		})
	})
	return nil
}

// releaseChildren cancels the children of the job ev is about that have
// not ended (nor been asked to), when ev is its job_end, or its
// job_requeued while it waits in its queue again.
func (o *Orchestrator) releaseChildren(ctx context.Context, ev *events.Event) error {
	// The event says how many children the job has, when its publisher
	// knew: most jobs have none, and need no read of their record.
	if n, ok := events.AsInt(ev.Data["children"]); ok && n == 0 {
		return nil
	}
	rec, _, err := o.c.GetJob(ctx, ev.JobID)
	if errors.Is(err, broker.ErrNoJob) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(rec.Children) == 0 {
		return nil
	}
	var why string
	switch {
	case ev.Name == events.EventJobEnd && rec.State.Terminal():
		why = fmt.Sprintf("its parent job %s ended (%s)", ev.JobID, rec.State)
	case ev.Name == events.EventJobRequeued && rec.State == events.JobWaiting:
		why = fmt.Sprintf("its parent job %s was requeued and will create new child jobs", ev.JobID)
	default:
		return nil
	}
	var errs []error
	for _, id := range rec.Children {
		child, _, err := o.c.GetJob(ctx, id)
		switch {
		case errors.Is(err, broker.ErrNoJob):
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		case child.State.Terminal() || child.CancelRequested:
			continue
		}
		if _, err := o.Cancel(ctx, id, why); err != nil && !errors.Is(err, errEnded) {
			errs = append(errs, err)
			continue
		}
		o.log.Info("multi: child job cancelled", "parent", ev.JobID, "child", id, "reason", why)
	}
	return errors.Join(errs...)
}

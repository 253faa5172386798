package client

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// History returns every stored event of job jobID, oldest first: its full
// history as the event stream keeps it (events older than the stream's
// max age are gone). A job that has neither events nor a record is an
// error wrapping broker.ErrNoJob.
func History(ctx context.Context, c *broker.Client, jobID string) ([]*events.Event, error) {
	last, err := lastJobEvent(ctx, c, jobID)
	if err != nil {
		return nil, err
	}
	if last == 0 {
		return nil, noEvents(ctx, c, jobID)
	}
	cons, err := c.JS.OrderedConsumer(ctx, c.Subj.EventStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{c.Subj.JobEvents(jobID)},
	})
	if err != nil {
		return nil, fmt.Errorf("history of job %s: %w", jobID, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return nil, fmt.Errorf("history of job %s: %w", jobID, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	var out []*events.Event
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("history of job %s: %w", jobID, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return nil, fmt.Errorf("history of job %s: %w", jobID, err)
		}
		var ev events.Event
		if err := events.Decode(m.Data(), &ev); err != nil {
			return nil, fmt.Errorf("history of job %s: event %d: %w", jobID, meta.Sequence.Stream, err)
		}
		out = append(out, &ev)
		if meta.Sequence.Stream >= last {
			return out, nil
		}
	}
}

// FollowHistory yields job jobID's stored events, oldest first, then its
// new ones as they are published, until its job_end (or ctx is done). An
// event that cannot be decoded is yielded as an error and following goes
// on. A job that has neither events nor a record is an error wrapping
// broker.ErrNoJob.
func FollowHistory(ctx context.Context, c *broker.Client, jobID string) (iter.Seq2[*events.Event, error], error) {
	last, err := lastJobEvent(ctx, c, jobID)
	if err != nil {
		return nil, err
	}
	if last == 0 {
		if err := noEvents(ctx, c, jobID); err != nil {
			return nil, err
		}
	}
	seq, err := Watch(ctx, c, WatchOptions{JobID: jobID})
	if err != nil {
		return nil, err
	}
	return func(yield func(*events.Event, error) bool) {
		for ev, err := range seq {
			if !yield(ev, err) || (err == nil && ev.Name == events.EventJobEnd) {
				return
			}
		}
	}, nil
}

// lastJobEvent returns the stream sequence of job jobID's newest event, 0
// when it has none.
func lastJobEvent(ctx context.Context, c *broker.Client, jobID string) (uint64, error) {
	st, err := c.JS.Stream(ctx, c.Subj.EventStream())
	if err != nil {
		return 0, fmt.Errorf("event stream: %w", err)
	}
	m, err := st.GetLastMsgForSubject(ctx, c.Subj.JobEvents(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("history of job %s: %w", jobID, err)
	}
	return m.Sequence, nil
}

// noEvents explains a job with no stored event: an error wrapping
// broker.ErrNoJob when it has no record either, nil when it has one.
func noEvents(ctx context.Context, c *broker.Client, jobID string) error {
	_, _, err := c.GetJob(ctx, jobID)
	if errors.Is(err, broker.ErrNoJob) {
		return fmt.Errorf("job %s has no events (unknown job, or its events have expired): %w", jobID, broker.ErrNoJob)
	}
	return err
}

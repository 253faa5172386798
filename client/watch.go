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

// WatchOptions selects the events to watch.
type WatchOptions struct {
	// JobID limits the events to one job's, replayed from its start.
	JobID string
	// Device limits the events to those naming this device.
	Device string
	// FromStart replays every stored event first instead of starting from now.
	FromStart bool
}

// Watch yields events as they are published, in order, until ctx is done.
// An event that cannot be decoded is yielded as an error and watching goes on.
func Watch(ctx context.Context, c *broker.Client, o WatchOptions) (iter.Seq2[*events.Event, error], error) {
	filter := c.Subj.Events()
	switch {
	case o.JobID != "":
		filter = c.Subj.JobEvents(o.JobID)
	}
	policy := jetstream.DeliverNewPolicy
	if o.FromStart || o.JobID != "" {
		policy = jetstream.DeliverAllPolicy
	}
	cons, err := c.JS.OrderedConsumer(ctx, c.Subj.EventStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  policy,
	})
	if err != nil {
		return nil, fmt.Errorf("watch events: %w", err)
	}
	return func(yield func(*events.Event, error) bool) {
		it, err := cons.Messages(jetstream.PullMaxMessages(512))
		if err != nil {
			yield(nil, fmt.Errorf("watch events: %w", err))
			return
		}
		defer it.Stop()
		stop := context.AfterFunc(ctx, it.Stop)
		defer stop()
		for {
			m, err := it.Next()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					yield(nil, fmt.Errorf("watch events: %w", err))
				}
				return
			}
			var ev events.Event
			if err := events.Decode(m.Data(), &ev); err != nil {
				if !yield(nil, fmt.Errorf("event on %s: %w", m.Subject(), err)) {
					return
				}
				continue
			}
			if o.Device != "" && ev.Device != o.Device {
				continue
			}
			if !yield(&ev, nil) {
				return
			}
		}
	}, nil
}

// Logs yields a job's output chunks in order, from the first, until ctx is done.
func Logs(ctx context.Context, c *broker.Client, jobID string) (iter.Seq2[*events.LogChunk, error], error) {
	cons, err := c.JS.OrderedConsumer(ctx, c.Subj.LogStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{c.Subj.Logs(jobID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("job output: %w", err)
	}
	return func(yield func(*events.LogChunk, error) bool) {
		it, err := cons.Messages(jetstream.PullMaxMessages(256))
		if err != nil {
			yield(nil, fmt.Errorf("job output: %w", err))
			return
		}
		defer it.Stop()
		stop := context.AfterFunc(ctx, it.Stop)
		defer stop()
		for {
			m, err := it.Next()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					yield(nil, fmt.Errorf("job output: %w", err))
				}
				return
			}
			var chunk events.LogChunk
			if err := events.Decode(m.Data(), &chunk); err != nil {
				if !yield(nil, fmt.Errorf("output on %s: %w", m.Subject(), err)) {
					return
				}
				continue
			}
			if !yield(&chunk, nil) {
				return
			}
		}
	}, nil
}

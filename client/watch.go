package client

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

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
	if o.JobID != "" {
		filter = c.Subj.JobEvents(o.JobID)
	}
	policy := jetstream.DeliverNewPolicy
	if o.FromStart || o.JobID != "" {
		policy = jetstream.DeliverAllPolicy
	}
	seq, err := consume[events.Event](ctx, c, c.Subj.EventStream(), filter, policy, 512, "watch events")
	if err != nil || o.Device == "" {
		return seq, err
	}
	return func(yield func(*events.Event, error) bool) {
		for ev, err := range seq {
			if err == nil && ev.Device != o.Device {
				continue
			}
			if !yield(ev, err) {
				return
			}
		}
	}, nil
}

// Log streams of a job's phases.
const (
	// StreamOutput is what the phases' commands printed.
	StreamOutput = "output"
	// StreamSerial is the device's serial console, while the phase ran.
	StreamSerial = "serial"
)

// Logs yields a job's output chunks in order, from the first, until ctx is done.
func Logs(ctx context.Context, c *broker.Client, jobID string) (iter.Seq2[*events.LogChunk, error], error) {
	return LogStream(ctx, c, jobID, StreamOutput)
}

// LogStream yields the chunks of one log stream of a job (StreamOutput or
// StreamSerial) in order, from the first, until ctx is done.
func LogStream(ctx context.Context, c *broker.Client, jobID, stream string) (iter.Seq2[*events.LogChunk, error], error) {
	return consume[events.LogChunk](ctx, c, c.Subj.LogStream(), c.Subj.StreamLogs(jobID, stream), jetstream.DeliverAllPolicy, 256, "job "+stream)
}

// consume yields the messages of stream under filter, decoded as T, in
// order, through an ordered consumer, until ctx is done. A message that
// cannot be decoded is yielded as an error and consuming goes on.
func consume[T any](ctx context.Context, c *broker.Client, stream, filter string, policy jetstream.DeliverPolicy, batch int, what string) (iter.Seq2[*T, error], error) {
	cons, err := c.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  policy,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return func(yield func(*T, error) bool) {
		it, err := cons.Messages(jetstream.PullMaxMessages(batch))
		if err != nil {
			yield(nil, fmt.Errorf("%s: %w", what, err))
			return
		}
		defer it.Stop()
		stop := context.AfterFunc(ctx, it.Stop)
		defer stop()
		for {
			m, err := it.Next()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					yield(nil, fmt.Errorf("%s: %w", what, err))
				}
				return
			}
			v := new(T)
			if err := events.Decode(m.Data(), v); err != nil {
				if !yield(nil, fmt.Errorf("%s on %s: %w", what, m.Subject(), err)) {
					return
				}
				continue
			}
			if !yield(v, nil) {
				return
			}
		}
	}, nil
}

// LogsSoFar returns a job's output chunks stored so far (of phase p only,
// when p is not empty), in order, without waiting for more.
func LogsSoFar(ctx context.Context, c *broker.Client, jobID string, p events.Phase) ([]*events.LogChunk, error) {
	return StreamSoFar(ctx, c, jobID, p, StreamOutput)
}

// StreamSoFar is LogsSoFar for either log stream.
func StreamSoFar(ctx context.Context, c *broker.Client, jobID string, p events.Phase, stream string) ([]*events.LogChunk, error) {
	filter := c.Subj.StreamLogs(jobID, stream)
	if p != "" {
		filter = c.Subj.Log(jobID, p, stream)
	}
	st, err := c.JS.Stream(ctx, c.Subj.LogStream())
	if err != nil {
		return nil, fmt.Errorf("job output: %w", err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("job output: %w", err)
	}
	if len(info.State.Subjects) == 0 {
		return nil, nil
	}
	cons, err := c.JS.OrderedConsumer(ctx, c.Subj.LogStream(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		return nil, fmt.Errorf("job output: %w", err)
	}
	var out []*events.LogChunk
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			return out, fmt.Errorf("job output: %w", err)
		}
		var chunk events.LogChunk
		if err := events.Decode(m.Data(), &chunk); err != nil {
			return out, fmt.Errorf("job output on %s: %w", m.Subject(), err)
		}
		out = append(out, &chunk)
		meta, err := m.Metadata()
		if err != nil {
			return out, fmt.Errorf("job output: %w", err)
		}
		if meta.NumPending == 0 {
			return out, nil
		}
	}
}

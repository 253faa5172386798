package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// outboxLimit bounds the messages an outbox holds while JetStream cannot
// store them; beyond it the oldest are dropped, with an error logged.
const outboxLimit = 200_000

// Retry pacing of an outbox whose messages JetStream does not acknowledge.
const (
	outboxMinRetry = 250 * time.Millisecond
	outboxMaxRetry = 5 * time.Second
)

// outbox publishes a client's events and log chunks to JetStream in the
// order they were given, and keeps each until the stream acknowledges it.
// When JetStream cannot be reached (a leaf node's link is down, a
// cluster is electing a leader) it sends them all again, in order, until
// they are stored: each carries a de-duplication id, so a message stored
// whose acknowledgement was lost is not stored twice.
type outbox struct {
	c *Client

	mu      sync.Mutex
	queue   []*outMsg // sent or to be sent, oldest first
	stalled bool      // a message failed: hold new ones until the queue is resent
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

type outMsg struct {
	m     *nats.Msg
	fut   jetstream.PubAckFuture // nil while waiting to be sent again
	acked chan struct{}          // closed once stored
}

func newOutbox(c *Client) *outbox {
	o := &outbox{c: c, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go o.run()
	return o
}

// publish queues m and sends it, unless earlier messages wait to be sent
// again. The returned channel is closed once the stream has stored m.
func (o *outbox) publish(m *nats.Msg) <-chan struct{} {
	om := &outMsg{m: m, acked: make(chan struct{})}
	o.mu.Lock()
	if len(o.queue) >= outboxLimit {
		o.c.log.Error("outbox full: dropping the oldest message JetStream has not stored", "subject", o.queue[0].m.Subject)
		o.queue = o.queue[1:]
	}
	o.queue = append(o.queue, om)
	if !o.stalled {
		o.sendLocked(om)
	}
	o.mu.Unlock()
	o.poke()
	return om.acked
}

func (o *outbox) poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// sendLocked sends om; an error leaves it, and every message after it,
// to be sent again one at a time.
func (o *outbox) sendLocked(om *outMsg) {
	fut, err := o.c.JS.PublishMsgAsync(om.m)
	if err != nil {
		om.fut = nil
		o.stalled = true
		return
	}
	om.fut = fut
}

// run waits for the oldest message's acknowledgement. After a failure
// it holds new messages back, waits, and sends the queued ones again one
// at a time, each only once the one before it is stored, so that none is
// stored before an earlier one while the link comes and goes; once the
// queue is empty it goes back to sending at once.
func (o *outbox) run() {
	defer close(o.done)
	retry := outboxMinRetry
	for {
		o.mu.Lock()
		var head *outMsg
		if len(o.queue) > 0 {
			head = o.queue[0]
		}
		careful := o.stalled
		if careful && head != nil && head.fut == nil {
			o.sendHeadLocked(head)
		}
		if careful && head == nil {
			o.stalled = false // caught up: send at once again
		}
		o.mu.Unlock()
		if head == nil {
			select {
			case <-o.wake:
				continue
			case <-o.stop:
				return
			}
		}
		if head.fut == nil {
			// Not even sent (the connection is down): wait and try again.
			if !o.pause(&retry) {
				return
			}
			continue
		}
		select {
		case <-head.fut.Ok():
			o.mu.Lock()
			o.queue = o.queue[1:]
			o.mu.Unlock()
			close(head.acked)
			retry = outboxMinRetry
		case err := <-head.fut.Err():
			o.c.log.Warn("JetStream did not store a message; holding the ones after it and sending them again in order",
				"subject", head.m.Subject, "err", err, "retry", retry)
			o.mu.Lock()
			o.stalled = true
			for _, om := range o.queue {
				om.fut = nil // all are sent again, one at a time
			}
			o.mu.Unlock()
			if !o.pause(&retry) {
				return
			}
		case <-o.stop:
			return
		}
	}
}

// sendHeadLocked sends the oldest message alone.
func (o *outbox) sendHeadLocked(om *outMsg) {
	fut, err := o.c.JS.PublishMsgAsync(om.m)
	if err == nil {
		om.fut = fut
	}
}

// pause waits retry (doubling it, up to outboxMaxRetry); false when the
// outbox is closing.
func (o *outbox) pause(retry *time.Duration) bool {
	select {
	case <-time.After(*retry):
	case <-o.stop:
		return false
	}
	*retry = min(2**retry, outboxMaxRetry)
	return true
}

// flush waits until every queued message is stored, or ctx ends.
func (o *outbox) flush(ctx context.Context) error {
	o.mu.Lock()
	var last *outMsg
	if n := len(o.queue); n > 0 {
		last = o.queue[n-1]
	}
	o.mu.Unlock()
	if last == nil {
		return nil
	}
	select {
	case <-last.acked:
		return nil
	case <-ctx.Done():
		o.mu.Lock()
		n := len(o.queue)
		o.mu.Unlock()
		return fmt.Errorf("%d messages not stored: %w", n, ctx.Err())
	}
}

func (o *outbox) close() {
	select {
	case <-o.stop:
	default:
		close(o.stop)
	}
	<-o.done
}

// errNotStored reports a message that was not stored in time; it stays
// queued and is stored later.
var errNotStored = errors.New("not stored yet: it stays queued and is sent again")

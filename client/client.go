// Package client holds what submitters and observers do over NATS: submit
// a job and get its id, follow its events and output, read its status,
// cancel it, and watch events live. The CLI, the demo and the tests use it.
package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// ErrRejected wraps the reply of a submission that intake refused.
var ErrRejected = errors.New("job rejected")

// RejectedError is a refused submission with the fields intake named.
type RejectedError struct {
	// Reply is intake's answer.
	Reply *events.SubmitReply
}

func (e *RejectedError) Error() string { return e.Reply.Error }

// Unwrap lets errors.Is(err, ErrRejected) match.
func (e *RejectedError) Unwrap() error { return ErrRejected }

// ReplyTimeout bounds the wait for intake's answer to a submission.
const ReplyTimeout = 30 * time.Second

// Submit stores a job in the submission stream and waits for intake's
// answer. A job intake refuses is returned as a *RejectedError.
func Submit(ctx context.Context, c *broker.Client, data []byte, format events.Format) (*events.SubmitReply, error) {
	inbox := c.NC.NewRespInbox()
	sub, err := c.NC.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	msg := nats.NewMsg(c.Subj.Submit())
	msg.Data = data
	msg.Header.Set(events.HeaderSubmitFormat, string(format))
	msg.Header.Set(events.HeaderReplyTo, inbox)
	msg.Header.Set(events.HeaderMsgID, nuid.Next())
	if _, err := c.JS.PublishMsg(ctx, msg); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && strings.Contains(strings.ToLower(apiErr.Description), "maximum") {
			return nil, &RejectedError{Reply: &events.SubmitReply{Error: fmt.Sprintf("job is %d bytes, larger than the server accepts: %s", len(data), apiErr.Description)}}
		}
		return nil, fmt.Errorf("submit: %w", err)
	}
	wait, cancel := context.WithTimeout(ctx, ReplyTimeout)
	defer cancel()
	m, err := sub.NextMsgWithContext(wait)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("submit: the job is stored, but no orchestrator answered within %s; is one running?", ReplyTimeout)
		}
		return nil, fmt.Errorf("submit: %w", err)
	}
	var reply events.SubmitReply
	if err := events.Decode(m.Data, &reply); err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	if reply.Error != "" {
		return &reply, &RejectedError{Reply: &reply}
	}
	return &reply, nil
}

// Control sends req to the control service's verb (cancel, device-set,
// reserve-extend) and returns its reply; an error the service reports is
// returned as an error, with the reply.
func Control(ctx context.Context, c *broker.Client, verb string, req *events.CtlRequest) (*events.CtlReply, error) {
	data, err := events.Encode(req)
	if err != nil {
		return nil, err
	}
	m, err := c.NC.RequestWithContext(ctx, c.Subj.Ctl(verb), data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("%s: no orchestrator is running", verb)
		}
		return nil, fmt.Errorf("%s: %w", verb, err)
	}
	var reply events.CtlReply
	if err := events.Decode(m.Data, &reply); err != nil {
		return nil, fmt.Errorf("%s: %w", verb, err)
	}
	if reply.Error != "" {
		return &reply, errors.New(reply.Error)
	}
	return &reply, nil
}

// Cancel asks the orchestrator to cancel job jobID and returns the job's
// state afterwards.
func Cancel(ctx context.Context, c *broker.Client, jobID, comment string) (events.JobState, error) {
	reply, err := Control(ctx, c, "cancel", &events.CtlRequest{JobID: jobID, Comment: comment})
	if reply == nil {
		return "", err
	}
	return reply.State, err
}

package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// ControlService is the name of the control service on the NATS micro API.
const ControlService = "flinger-control"

// Version is the control service's version.
const Version = "0.1.0"

// errEnded reports a request about a job that has already ended.
var errEnded = errors.New("job has already ended")

// ctlEndpoint is one verb of the control service.
type ctlEndpoint struct {
	verb        string
	description string
	handle      func(ctx context.Context, req *events.CtlRequest) *events.CtlReply
}

// endpoints lists the control service's verbs; each answers on
// <prefix>.ctl.<verb>.
func (o *Orchestrator) endpoints() []ctlEndpoint {
	return []ctlEndpoint{
		{"cancel", "cancel a job: {job_id, comment}", o.ctlCancel},
		{"device-set", "set a device online, offline or maintenance: {device, state, comment}", o.ctlDeviceSet},
		{"reserve-extend", "extend a job's reservation: {job_id, duration}", o.ctlReserveExtend},
		{"attachments", "a job's attachment archive is stored: {job_id, object: {name, size, sha256}}", o.ctlAttachments},
	}
}

func (o *Orchestrator) startControl() (micro.Service, error) {
	svc, err := micro.AddService(o.c.NC, micro.Config{
		Name:        ControlService,
		Version:     Version,
		Description: "Flinger control: cancel jobs, set devices, extend reservations",
		QueueGroup:  "flinger-control",
	})
	if err != nil {
		return nil, fmt.Errorf("control service: %w", err)
	}
	for _, ep := range o.endpoints() {
		h := micro.HandlerFunc(func(r micro.Request) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, err := decodeCtl(r.Data())
			if err != nil {
				respond(r, &events.CtlReply{Error: err.Error()})
				return
			}
			respond(r, ep.handle(ctx, req))
		})
		if err := svc.AddEndpoint(ep.verb, h, micro.WithEndpointSubject(o.c.Subj.Ctl(ep.verb)),
			micro.WithEndpointMetadata(map[string]string{"description": ep.description})); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("control service: %s: %w", ep.verb, err)
		}
	}
	return svc, nil
}

// decodeCtl reads a control request in msgpack or, for scripts, JSON.
func decodeCtl(data []byte) (*events.CtlRequest, error) {
	var req events.CtlRequest
	if len(data) > 0 && data[0] == '{' {
		if err := json.Unmarshal(data, &req); err != nil {
			return nil, fmt.Errorf("control request: %w", err)
		}
		return &req, nil
	}
	if err := events.Decode(data, &req); err != nil {
		return nil, err
	}
	return &req, nil
}

func respond(r micro.Request, reply *events.CtlReply) {
	data, err := events.Encode(reply)
	if err != nil {
		_ = r.Error("500", err.Error(), nil)
		return
	}
	_ = r.Respond(data)
}

func (o *Orchestrator) ctlCancel(ctx context.Context, req *events.CtlRequest) *events.CtlReply {
	if req.JobID == "" {
		return &events.CtlReply{Error: "cancel: job_id is required"}
	}
	state, err := o.Cancel(ctx, req.JobID, req.Comment)
	reply := &events.CtlReply{State: state}
	if err != nil {
		reply.Error = err.Error()
	}
	return reply
}

// Cancel cancels job id: a job still waiting ends at once; a running job's
// worker is told to stop it. It returns the job's state afterwards.
func (o *Orchestrator) Cancel(ctx context.Context, id, comment string) (events.JobState, error) {
	var endedNow bool
	rec, _, err := o.c.UpdateJob(ctx, id, func(r *events.JobRecord) error {
		endedNow = false
		if r.State.Terminal() {
			return errEnded
		}
		r.CancelRequested = true
		if r.State == events.JobWaiting {
			r.State, r.Outcome, r.EndReason = events.JobCancelled, events.OutcomeCancelled, events.EventCancelled
			r.EndedAt = time.Now().UTC()
			endedNow = true
		}
		return nil
	})
	switch {
	case errors.Is(err, errEnded):
		return rec.State, fmt.Errorf("cancel %s: %w (%s)", id, errEnded, rec.State)
	case errors.Is(err, broker.ErrNoJob):
		return "", fmt.Errorf("cancel: %w", err)
	case err != nil:
		return "", err
	}
	detail := "cancelled on request"
	if comment != "" {
		detail += ": " + comment
	}
	if endedNow && rec.AttachmentsStatus != "" {
		o.dropAttachments(ctx, id)
	}
	if endedNow {
		for _, name := range []string{events.EventCancelled, events.EventJobEnd} {
			ev := events.NewEvent(name)
			ev.JobID, ev.Queue, ev.Detail = id, rec.Job.JobQueue, detail
			if name == events.EventJobEnd {
				ev.Detail = events.EventCancelled
			}
			if err := o.c.PublishEvent(ev); err != nil {
				o.log.Warn("cancel: event not published", "job", id, "err", err)
			}
		}
		return rec.State, nil
	}
	if err := o.c.NC.Publish(o.c.Subj.CancelSignal(id), []byte(detail)); err != nil {
		return rec.State, fmt.Errorf("cancel %s: signal the worker: %w", id, err)
	}
	return rec.State, nil
}

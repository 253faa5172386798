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

// errAttachmentsDone reports an attachments request for a job whose
// archive was already accepted: answered as a success.
var errAttachmentsDone = errors.New("attachments already complete")

// ctlAttachments accepts a job's attachment archive, which the submitter
// has stored under the job's id in the attachments bucket: it checks the
// archive against what the submitter declared (size and SHA-256) and the
// lab's limit, records it and queues the job. An archive that fails a
// check fails the job before it reaches a device, naming the check, and
// is deleted.
func (o *Orchestrator) ctlAttachments(ctx context.Context, req *events.CtlRequest) *events.CtlReply {
	switch {
	case req.JobID == "":
		return &events.CtlReply{Error: "attachments: job_id is required"}
	case req.Object == nil || req.Object.Name == "":
		return &events.CtlReply{Error: "attachments: object is required: the name, size and sha256 of the stored archive"}
	}
	rec, _, err := o.c.GetJob(ctx, req.JobID)
	if err != nil {
		return &events.CtlReply{Error: fmt.Sprintf("attachments: %v", err)}
	}
	switch {
	case rec.AttachmentsStatus == events.AttachmentsComplete:
		return &events.CtlReply{State: rec.State}
	case rec.State.Terminal():
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: job %s has already ended (%s)", req.JobID, rec.State)}
	case rec.AttachmentsStatus != events.AttachmentsWaiting:
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: job %s names no attachments", req.JobID)}
	case req.Object.Name != req.JobID:
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: the archive must be stored under the job's id %s, not %q", req.JobID, req.Object.Name)}
	}
	store, err := o.c.Attachments(ctx)
	if err != nil {
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: %v", err)}
	}
	info, err := broker.StatObject(ctx, store, req.JobID)
	if errors.Is(err, broker.ErrNoObject) {
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: no archive is stored for job %s in %s", req.JobID, o.c.Subj.AttachmentBucket())}
	} else if err != nil {
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: %v", err)}
	}
	ref := &events.ObjectRef{Name: req.JobID, Size: int64(info.Size), Files: req.Object.Files}
	ref.SHA256, err = broker.ObjectSHA256(info)
	var refuse string
	switch {
	case err != nil:
		refuse = err.Error()
	case ref.Size > o.cfg.MaxAttachmentBytes:
		refuse = fmt.Sprintf("the attachment archive is %d bytes, over the lab's limit of %d bytes", ref.Size, o.cfg.MaxAttachmentBytes)
	case ref.Size != req.Object.Size:
		refuse = fmt.Sprintf("the attachment archive is %d bytes, but the submitter sent %d: it was not stored whole", ref.Size, req.Object.Size)
	case ref.SHA256 != req.Object.SHA256:
		refuse = fmt.Sprintf("checksum mismatch: the stored attachment archive has sha256 %s, the submitter computed %s", ref.SHA256, req.Object.SHA256)
	}
	if refuse != "" {
		state := o.failAttachments(ctx, rec, refuse)
		return &events.CtlReply{State: state, Error: "attachments refused: " + refuse}
	}
	rec, _, err = o.c.UpdateJob(ctx, req.JobID, func(r *events.JobRecord) error {
		switch {
		case r.AttachmentsStatus == events.AttachmentsComplete:
			return errAttachmentsDone
		case r.State.Terminal():
			return errEnded
		}
		r.AttachmentsStatus, r.Attachments = events.AttachmentsComplete, ref
		return nil
	})
	switch {
	case errors.Is(err, errAttachmentsDone):
		return &events.CtlReply{State: rec.State}
	case errors.Is(err, errEnded):
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: job %s has already ended (%s)", req.JobID, rec.State)}
	case err != nil:
		return &events.CtlReply{Error: fmt.Sprintf("attachments: %v", err)}
	}
	ev := events.NewEvent(events.EventAttachmentsComplete)
	ev.ID = "attachments-" + req.JobID
	ev.JobID, ev.Queue = req.JobID, rec.Job.JobQueue
	ev.Detail = fmt.Sprintf("attachment archive stored: %d bytes, sha256 %s; queued on %s", ref.Size, ref.SHA256, rec.Job.JobQueue)
	ev.Data = map[string]any{"size": ref.Size, "sha256": ref.SHA256, "files": ref.Files}
	if err := o.c.PublishEventSync(ctx, ev); err != nil {
		o.log.Warn("attachments: event not published", "job", req.JobID, "err", err)
	}
	// Queued without the record's revision: a device rebuilds only
	// intake's plain record from the queued job, and this one holds more.
	if err := o.route(ctx, rec, 0); err != nil {
		// The record says complete: a repeat of this request (the
		// submitter retries on an error) routes it.
		o.log.Error("attachments: cannot queue job", "job", req.JobID, "err", err)
		if _, _, uerr := o.c.UpdateJob(ctx, req.JobID, func(r *events.JobRecord) error {
			if r.State != events.JobWaiting {
				return broker.ErrUnchanged
			}
			r.AttachmentsStatus = events.AttachmentsWaiting
			return nil
		}); uerr != nil && !errors.Is(uerr, broker.ErrUnchanged) {
			o.log.Warn("attachments: cannot reset status", "job", req.JobID, "err", uerr)
		}
		return &events.CtlReply{State: rec.State, Error: fmt.Sprintf("attachments: queue the job: %v; send the request again", err)}
	}
	return &events.CtlReply{State: rec.State}
}

// failAttachments ends a job whose attachment archive was refused, before
// it was queued, and deletes the archive. It returns the job's state.
func (o *Orchestrator) failAttachments(ctx context.Context, rec *events.JobRecord, why string) events.JobState {
	id := rec.Job.JobID
	o.dropAttachments(ctx, id)
	detail := "attachments refused: " + why
	var endedNow bool
	stored, _, err := o.c.UpdateJob(ctx, id, func(r *events.JobRecord) error {
		endedNow = false
		if r.State.Terminal() {
			return broker.ErrUnchanged
		}
		r.State, r.Outcome, r.EndReason = events.JobCancelled, events.OutcomeFail, detail
		r.EndedAt = time.Now().UTC()
		endedNow = true
		return nil
	})
	if err != nil && !errors.Is(err, broker.ErrUnchanged) {
		o.log.Warn("attachments: job not ended", "job", id, "err", err)
		return rec.State
	}
	if endedNow {
		for _, name := range []string{events.EventCancelled, events.EventJobEnd} {
			ev := events.NewEvent(name)
			ev.JobID, ev.Queue, ev.Detail = id, rec.Job.JobQueue, detail
			if name == events.EventJobEnd {
				ev.Data = map[string]any{"outcome": string(events.OutcomeFail)}
			}
			if err := o.c.PublishEventSync(ctx, ev); err != nil {
				o.log.Warn("attachments: event not published", "job", id, "event", name, "err", err)
			}
		}
	}
	return stored.State
}

// dropAttachments deletes the attachment archive of job id, if any: the
// job ended before a device took it.
func (o *Orchestrator) dropAttachments(ctx context.Context, id string) {
	store, err := o.c.Attachments(ctx)
	if err != nil {
		o.log.Warn("attachments: archive not deleted", "job", id, "err", err)
		return
	}
	if err := store.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		o.log.Warn("attachments: archive not deleted", "job", id, "err", err)
	}
}

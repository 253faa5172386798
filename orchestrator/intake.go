package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

// intakeParallel is how many submissions one orchestrator handles at once.
const intakeParallel = 64

func (o *Orchestrator) intakeLoop(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(256))
		if err != nil {
			o.log.Error("intake: cannot pull submissions; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		go func() { <-ctx.Done(); it.Stop() }()
		work := make(chan jetstream.Msg)
		var wg sync.WaitGroup
		for range intakeParallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for m := range work {
					o.handleSubmission(ctx, m)
				}
			}()
		}
		for {
			m, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					o.log.Error("intake: pulling submissions", "err", err)
				}
				break
			}
			work <- m
		}
		close(work)
		wg.Wait()
	}
}

// submissionFormat tells how a submission is written, from its headers and else its bytes.
func submissionFormat(m jetstream.Msg) events.Format {
	h := m.Headers()
	switch strings.ToLower(h.Get(events.HeaderSubmitFormat)) {
	case "yaml":
		return events.FormatYAML
	case "json":
		return events.FormatJSON
	case "msgpack":
		return events.FormatMsgpack
	}
	ct := strings.ToLower(h.Get(events.HeaderContentType))
	switch {
	case strings.Contains(ct, "msgpack"):
		return events.FormatMsgpack
	case strings.Contains(ct, "json"):
		return events.FormatJSON
	case strings.Contains(ct, "yaml"):
		return events.FormatYAML
	}
	return events.DetectFormat("", m.Data())
}

// handleSubmission validates one submission and, when it is good, records
// the job and routes it to its queue. A rejection is answered and announced;
// a transient failure leaves the submission to be delivered again.
func (o *Orchestrator) handleSubmission(ctx context.Context, m jetstream.Msg) {
	replyTo := m.Headers().Get(events.HeaderReplyTo)
	job, err := events.ParseJob(m.Data(), submissionFormat(m), o.max)
	if err != nil {
		o.reject(ctx, m, replyTo, err)
		return
	}
	derived := job.JobID == ""
	if derived {
		job.JobID = submissionJobID(m)
	}
	rec := &events.JobRecord{Job: *job, State: events.JobWaiting, SubmittedAt: time.Now().UTC()}
	if job.HasAttachments() {
		// Testflinger's attachments_status: the job is queued once its
		// attachment archive is stored (ctlAttachments).
		rec.AttachmentsStatus = events.AttachmentsWaiting
	}
	rev, err := o.c.CreateJob(ctx, rec)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			o.log.Error("intake: cannot record job; will retry", "job", job.JobID, "err", err)
			_ = m.NakWithDelay(time.Second)
			return
		}
		existing, _, gerr := o.c.GetJob(ctx, job.JobID)
		if gerr != nil {
			o.log.Error("intake: cannot read existing job; will retry", "job", job.JobID, "err", gerr)
			_ = m.NakWithDelay(time.Second)
			return
		}
		// The same submission delivered again after a crash between
		// recording and routing: route it (the queue drops a second copy).
		// One delivered again after it was routed (its ack lost in a
		// failover) is answered with its job. Anything else reuses a job
		// id: refuse it.
		if derived && existing.State != events.JobWaiting && sameJob(&existing.Job, job) {
			o.reply(replyTo, &events.SubmitReply{JobID: job.JobID, Queue: job.JobQueue})
			_ = m.Ack()
			return
		}
		if existing.State != events.JobWaiting || !sameJob(&existing.Job, job) {
			o.reply(replyTo, &events.SubmitReply{JobID: job.JobID, Queue: existing.Job.JobQueue, Duplicate: true,
				Error: fmt.Sprintf("job_id %s is already taken by a job in state %s", job.JobID, existing.State)})
			_ = m.Ack()
			return
		}
		rec, rev = existing, 0
	}
	// job_submitted is stored before the job is queued, so that it comes
	// before the device's events; its fixed id drops a repeat on a retry.
	ev := events.NewEvent(events.EventJobSubmitted)
	ev.ID = "submitted-" + job.JobID
	ev.JobID, ev.Queue, ev.Detail = job.JobID, job.JobQueue, "queued on "+job.JobQueue
	if rec.AttachmentsStatus == events.AttachmentsWaiting {
		ev.Detail = "waiting for its attachments, for " + job.JobQueue
	}
	// The webhook reactor learns the job's webhook (or that it has none)
	// from here, without reading the record.
	ev.Data = map[string]any{"job_status_webhook": job.JobStatusWebhook}
	if err := o.c.PublishEventSync(ctx, ev); err != nil {
		o.log.Error("intake: cannot announce job; will retry", "job", job.JobID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	if rec.AttachmentsStatus == events.AttachmentsWaiting {
		o.reply(replyTo, &events.SubmitReply{JobID: job.JobID, Queue: job.JobQueue,
			AttachmentsStatus: rec.AttachmentsStatus, AttachmentLimit: o.cfg.MaxAttachmentBytes})
		_ = m.Ack()
		return
	}
	if err := o.route(ctx, rec, rev); err != nil {
		o.log.Error("intake: cannot queue job; will retry", "job", job.JobID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	o.reply(replyTo, &events.SubmitReply{JobID: job.JobID, Queue: job.JobQueue})
	_ = m.Ack()
}

// submissionNamespace names the job ids derived from submissions.
var submissionNamespace = uuid.MustParse("5b0c6a53-2f0e-4d1c-9a65-0d3a4f1e7c21")

// submissionJobID is the id of the job a submission without job_id
// creates: derived from where and when the submission was stored, so that
// the submission delivered again (after an orchestrator or a NATS node
// failed before its ack) makes the same job, not a second one.
func submissionJobID(m jetstream.Msg) string {
	md, err := m.Metadata()
	if err != nil {
		return uuid.NewString()
	}
	key := fmt.Sprintf("%s/%d/%d", md.Stream, md.Sequence.Stream, md.Timestamp.UnixNano())
	return uuid.NewSHA1(submissionNamespace, []byte(key)).String()
}

func sameJob(a, b *events.Job) bool {
	ea, err1 := events.Encode(a)
	eb, err2 := events.Encode(b)
	return err1 == nil && err2 == nil && string(ea) == string(eb)
}

// route publishes an accepted job to its queue, on the subject of its
// job_priority, de-duplicated on its id, with its record's revision (when
// known) so a device can claim it at once.
func (o *Orchestrator) route(ctx context.Context, rec *events.JobRecord, rev uint64) error {
	job := &rec.Job
	msg, err := events.NewMsg(o.c.Subj.QueuePriority(job.JobQueue, job.JobPriority), job)
	if err != nil {
		return err
	}
	msg.Header.Set(events.HeaderMsgID, job.JobID)
	if rec.Generation > 0 {
		// A requeued copy: its own de-duplication id, and its generation
		// so that a device drops any older copy still in the queue.
		gen := strconv.Itoa(rec.Generation)
		msg.Header.Set(events.HeaderMsgID, job.JobID+"#"+gen)
		msg.Header.Set(events.HeaderGeneration, gen)
	}
	if rev > 0 {
		msg.Header.Set(events.HeaderRecordRevision, strconv.FormatUint(rev, 10))
		msg.Header.Set(events.HeaderSubmittedAt, rec.SubmittedAt.Format(time.RFC3339Nano))
	}
	if _, err := o.c.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("queue %s: %w", job.JobQueue, err)
	}
	return nil
}

func (o *Orchestrator) reject(ctx context.Context, m jetstream.Msg, replyTo string, err error) {
	id := uuid.NewString()
	reply := &events.SubmitReply{JobID: id, Error: err.Error()}
	var verr *events.ValidationError
	if errors.As(err, &verr) {
		reply.Fields = verr.Fields
	}
	ev := events.NewEvent(events.EventJobRejected)
	ev.JobID, ev.Detail = id, err.Error()
	if len(reply.Fields) > 0 {
		fields := make([]any, len(reply.Fields))
		for i, f := range reply.Fields {
			fields[i] = map[string]any{"field": f.Field, "message": f.Message}
		}
		ev.Data = map[string]any{"fields": fields}
	}
	if perr := o.c.PublishEventSync(ctx, ev); perr != nil {
		o.log.Warn("intake: rejection event not published", "err", perr)
	}
	o.log.Info("intake: job rejected", "id", id, "reason", err)
	o.reply(replyTo, reply)
	_ = m.Ack()
}

func (o *Orchestrator) reply(subject string, r *events.SubmitReply) {
	if subject == "" {
		return
	}
	msg, err := events.NewMsg(subject, r)
	if err != nil {
		o.log.Error("intake: cannot encode reply", "err", err)
		return
	}
	if err := o.c.NC.PublishMsg(msg); err != nil {
		o.log.Warn("intake: reply not sent", "subject", subject, "err", err)
	}
}

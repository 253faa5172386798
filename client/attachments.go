package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/archive"
	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// ErrAttachmentLimit reports an attachment archive larger than the lab takes.
var ErrAttachmentLimit = errors.New("attachments over the lab's limit")

// PackedJob is a job file made ready to submit: its attachments' local
// files found, and their entries rewritten as Testflinger's CLI does
// (local dropped, agent set to the file's place in the archive).
type PackedJob struct {
	// Data and Format are the job to submit.
	Data   []byte
	Format events.Format
	// Sources are the files to pack into its attachment archive, each
	// named <phase>/<agent>.
	Sources []archive.Source
}

// PrepareJob reads the attachments of a job file: every local path
// (relative ones from base, the job file's directory) is checked to
// exist, and its entry rewritten to name its agent path. A job whose
// attachments name no local file is returned as it is. Errors name the
// attachment's field.
func PrepareJob(data []byte, format events.Format, base string) (*PackedJob, error) {
	var doc map[string]any
	var err error
	if format == events.FormatMsgpack {
		err = msgpack.Unmarshal(data, &doc)
	} else {
		err = yaml.Unmarshal(data, &doc)
	}
	if err != nil || doc == nil {
		// Intake names what is wrong with it.
		return &PackedJob{Data: data, Format: format}, nil //nolint:nilerr
	}
	var srcs []archive.Source
	rewrote := false
	for _, p := range events.AttachmentPhases {
		section, _ := doc[string(p)+"_data"].(map[string]any)
		list, _ := section["attachments"].([]any)
		for i, e := range list {
			field := fmt.Sprintf("%s_data.attachments[%d]", p, i)
			m, ok := e.(map[string]any)
			if !ok {
				continue
			}
			local, ok := m["local"].(string)
			if !ok || local == "" {
				continue
			}
			src, agent, err := attachmentSource(local, m["agent"], base)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", field, err)
			}
			srcs = append(srcs, archive.Source{Path: src, Name: string(p) + "/" + agent})
			delete(m, "local")
			m["agent"] = agent
			rewrote = true
		}
	}
	if !rewrote {
		return &PackedJob{Data: data, Format: format}, nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	return &PackedJob{Data: out, Format: events.FormatJSON, Sources: srcs}, nil
}

// attachmentSource resolves an attachment's local file and its agent
// path: the agent field without a leading "/", else the local path
// relative to base when it is inside base, else the file's name.
func attachmentSource(local string, agentField any, base string) (string, string, error) {
	src := local
	if !filepath.IsAbs(src) {
		src = filepath.Join(base, src)
	}
	if _, err := os.Stat(src); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("local: %s: no such file or directory", local)
		}
		return "", "", fmt.Errorf("local: %w", err)
	}
	var agent string
	switch a := agentField.(type) {
	case nil:
		absBase, err1 := filepath.Abs(base)
		absSrc, err2 := filepath.Abs(src)
		rel, err3 := filepath.Rel(absBase, absSrc)
		if err1 == nil && err2 == nil && err3 == nil && filepath.IsLocal(rel) {
			agent = filepath.ToSlash(rel)
		} else {
			agent = filepath.Base(src)
		}
	case string:
		agent = strings.TrimLeft(a, "/")
	default:
		return "", "", fmt.Errorf("agent: must be a string")
	}
	agent = path.Clean(agent)
	if err := archive.ValidName(agent); err != nil {
		return "", "", fmt.Errorf("agent: %q: %w", agent, err)
	}
	return src, agent, nil
}

// SubmitJob submits a prepared job and, when intake holds it for its
// attachments, packs and stores them (UploadAttachments). A job whose
// attachments cannot be sent is cancelled, as Testflinger's CLI does, and
// the error says why.
func SubmitJob(ctx context.Context, c *broker.Client, job *PackedJob, progress func(sent int64)) (*events.SubmitReply, error) {
	reply, err := Submit(ctx, c, job.Data, job.Format)
	if err != nil {
		return reply, err
	}
	if reply.AttachmentsStatus != events.AttachmentsWaiting {
		return reply, nil
	}
	if _, err := UploadAttachments(ctx, c, reply.JobID, job.Sources, reply.AttachmentLimit, progress); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ReplyTimeout)
		defer cancel()
		// The orchestrator may have ended it already (an archive it refused).
		if _, cerr := Cancel(cctx, c, reply.JobID, "attachments not sent"); cerr != nil && !strings.Contains(cerr.Error(), "already ended") {
			return reply, fmt.Errorf("job %s: %w (and it could not be cancelled: %v)", reply.JobID, err, cerr)
		}
		return reply, fmt.Errorf("job %s submitted and cancelled: %w", reply.JobID, err)
	}
	return reply, nil
}

// UploadAttachments packs srcs into a tar.gz, streams it into the lab's
// attachments bucket under the job's id (stopping once it passes limit
// bytes, when limit > 0), and tells the orchestrator, which checks it and
// queues the job. progress, when not nil, is called with the bytes sent.
func UploadAttachments(ctx context.Context, c *broker.Client, jobID string, srcs []archive.Source, limit int64, progress func(sent int64)) (*events.ObjectRef, error) {
	pr, pw := io.Pipe()
	var stats archive.Stats
	go func() {
		var err error
		stats, err = archive.Pack(ctx, &limitWriter{w: pw, limit: limit, progress: progress}, srcs)
		pw.CloseWithError(err)
	}()
	ref, err := c.PutObject(ctx, c.Subj.AttachmentBucket(), jobID, "attachments of job "+jobID, pr)
	_ = pr.CloseWithError(errors.New("upload ended"))
	if err != nil {
		var le *limitError
		if errors.As(err, &le) {
			return nil, fmt.Errorf("attachments: %w: the archive passed %d bytes", ErrAttachmentLimit, le.limit)
		}
		return nil, fmt.Errorf("attachments: %w", err)
	}
	ref.Files = stats.Files
	if _, err := Control(ctx, c, "attachments", &events.CtlRequest{JobID: jobID, Object: ref}); err != nil {
		return ref, err
	}
	return ref, nil
}

type limitError struct{ limit int64 }

func (e *limitError) Error() string { return fmt.Sprintf("over the limit of %d bytes", e.limit) }

// limitWriter passes writes on until limit bytes have gone through.
type limitWriter struct {
	w        io.Writer
	limit, n int64
	progress func(int64)
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.limit > 0 && l.n+int64(len(p)) > l.limit {
		return 0, &limitError{limit: l.limit}
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	if l.progress != nil {
		l.progress(l.n)
	}
	return n, err
}

// ErrNoArtifacts reports a job that left no artifact archive.
var ErrNoArtifacts = errors.New("no artifacts")

// DownloadArtifacts fetches the artifact archive of job jobID, checks it
// against its recorded size and SHA-256, and unpacks it into dir (refusing
// entries that would land outside dir, and more than maxBytes of content
// when maxBytes > 0). It returns what was unpacked and the job's record.
func DownloadArtifacts(ctx context.Context, c *broker.Client, jobID, dir string, maxBytes int64) (archive.Stats, *events.JobRecord, error) {
	rec, _, err := c.GetJob(ctx, jobID)
	if err != nil {
		return archive.Stats{}, nil, err
	}
	if rec.Artifacts == nil {
		if !rec.State.Terminal() {
			return archive.Stats{}, rec, fmt.Errorf("job %s: %w yet: it has not ended (%s), and its artifacts are stored when it does", jobID, ErrNoArtifacts, rec.State)
		}
		return archive.Stats{}, rec, fmt.Errorf("job %s: %w: it left nothing in artifacts/", jobID, ErrNoArtifacts)
	}
	store, err := c.Artifacts(ctx)
	if err != nil {
		return archive.Stats{}, rec, err
	}
	rd, err := broker.OpenObject(ctx, store, rec.Artifacts)
	if errors.Is(err, broker.ErrNoObject) {
		return archive.Stats{}, rec, fmt.Errorf("job %s: its artifacts are no longer stored (expired or deleted): %w", jobID, ErrNoArtifacts)
	} else if err != nil {
		return archive.Stats{}, rec, fmt.Errorf("artifacts: %w", err)
	}
	defer rd.Close()
	st, err := archive.Unpack(ctx, rd, dir, archive.Limits{MaxBytes: maxBytes})
	if err == nil {
		_, err = io.Copy(io.Discard, rd) // to the end, where the checksum is checked
	}
	if err != nil {
		return st, rec, fmt.Errorf("artifacts: %w", err)
	}
	return st, rec, nil
}

package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flingerlab/flinger/archive"
	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// Defaults of the worker's archive limits.
const (
	// DefaultMaxUnpacked bounds what a job's attachment archive may
	// unpack to (16 GiB): a compressed archive within the lab's 4 GiB
	// limit can hold much more.
	DefaultMaxUnpacked = 16 << 30
	// DefaultMaxArtifacts bounds a job's artifact archive (4 GiB).
	DefaultMaxArtifacts = 4 << 30
	// artifactTimeout bounds the upload of a job's artifacts.
	artifactTimeout = 30 * time.Minute
)

// attachmentsDir is where a job's attachments are unpacked in its run
// directory: attachments/<phase>/<agent path>.
const attachmentsDir = "attachments"

// fetchAttachments unpacks the job's attachment archive into the run
// directory, checking it against the record (size and SHA-256) and that
// every attachment the job names is there. Any failure fails the setup
// phase, naming the file, before anything runs on the device; nothing is
// written outside attachments/.
func (r *jobRun) fetchAttachments(ctx context.Context, out *phaseOutput) error {
	if !r.job.HasAttachments() {
		return nil
	}
	if r.rec == nil || r.rec.Attachments == nil || r.rec.AttachmentsStatus != events.AttachmentsComplete {
		status := ""
		if r.rec != nil {
			status = r.rec.AttachmentsStatus
		}
		return fmt.Errorf("attachments: the job names attachments but its archive was never stored (attachments_status %q)", status)
	}
	ref := r.rec.Attachments
	store, err := r.d.w.c.Attachments(ctx)
	if err != nil {
		return fmt.Errorf("attachments: %w", err)
	}
	rd, err := broker.OpenObject(ctx, store, ref)
	if errors.Is(err, broker.ErrNoObject) {
		return fmt.Errorf("attachments: the job's archive is no longer in the lab's store %s (expired or deleted)", r.d.w.c.Subj.AttachmentBucket())
	} else if err != nil {
		return fmt.Errorf("attachments: %w", err)
	}
	defer rd.Close()
	dest := filepath.Join(r.dir, attachmentsDir)
	top := make([]string, len(events.AttachmentPhases))
	for i, p := range events.AttachmentPhases {
		top[i] = string(p)
	}
	stats, err := archive.Unpack(ctx, rd, dest, archive.Limits{MaxBytes: r.d.w.cfg.MaxUnpacked, Top: top})
	if err == nil {
		// The archive's end may come before the stream's: read to it,
		// so that its size and checksum are checked.
		_, err = io.Copy(io.Discard, rd)
	}
	if err != nil {
		_ = os.RemoveAll(dest)
		return fmt.Errorf("attachments: %w", err)
	}
	for _, p := range events.AttachmentPhases {
		for i, a := range r.job.AttachmentsOf(p) {
			name := strings.TrimLeft(a.Agent, "/")
			field := fmt.Sprintf("%s_data.attachments[%d]", p, i)
			if name == "" {
				continue
			}
			if !filepath.IsLocal(filepath.FromSlash(name)) {
				return fmt.Errorf("%s.agent: %q leads outside attachments/%s", field, a.Agent, p)
			}
			if _, err := os.Lstat(filepath.Join(dest, string(p), filepath.FromSlash(name))); err != nil {
				return fmt.Errorf("%s: %s is not in the job's attachment archive", field, a.Agent)
			}
		}
	}
	out.Printf("attachments: %d files, %d bytes unpacked into %s (archive %d bytes, sha256 %s)",
		stats.Files, stats.Bytes, dest, ref.Size, ref.SHA256)
	return nil
}

// storeArtifacts uploads whatever the job left in artifacts/ (and the
// serial console's log) as one archive under the job's id in the lab's
// artifacts bucket, and returns its reference; nil when there is nothing
// to store or the upload failed (which is logged and announced).
func (r *jobRun) storeArtifacts() *events.ObjectRef {
	if r.dir == "" {
		return nil
	}
	dir := filepath.Join(r.dir, "artifacts")
	r.serialArtifact(dir)
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), artifactTimeout)
	defer cancel()
	pr, pw := io.Pipe()
	var stats archive.Stats
	go func() {
		var err error
		stats, err = archive.PackDir(ctx, &capWriter{w: pw, limit: r.d.w.cfg.MaxArtifacts}, dir)
		pw.CloseWithError(err)
	}()
	start := time.Now()
	ref, err := r.d.w.c.PutObject(ctx, r.d.w.c.Subj.ArtifactBucket(), r.job.JobID, "artifacts of job "+r.job.JobID, pr)
	_ = pr.CloseWithError(errors.New("upload ended"))
	if err != nil {
		r.artifactsFailed(err)
		return nil
	}
	ref.Files = stats.Files
	detail := fmt.Sprintf("artifacts stored: %d files, %d bytes in %s (sha256 %s)", stats.Files, ref.Size, time.Since(start).Round(time.Millisecond), ref.SHA256)
	if len(stats.Skipped) > 0 {
		detail += fmt.Sprintf("; skipped (links leading out, special files): %s", strings.Join(stats.Skipped, ", "))
	}
	ev := r.event(events.EventArtifactsStored, "", detail)
	ev.Data = map[string]any{"size": ref.Size, "sha256": ref.SHA256, "files": stats.Files}
	r.publish(ev)
	return ref
}

func (r *jobRun) artifactsFailed(err error) {
	r.log.Warn("artifacts not stored", "err", err)
	r.publish(r.event(events.EventArtifactsStored, "", "artifacts not stored: "+err.Error()))
}

// capWriter fails a write that would pass limit bytes in all.
type capWriter struct {
	w        io.Writer
	limit, n int64
}

func (c *capWriter) Write(p []byte) (int, error) {
	if c.limit > 0 && c.n+int64(len(p)) > c.limit {
		return 0, fmt.Errorf("the artifacts pass the lab host's limit of %d bytes", c.limit)
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

func init() {
	Register(Figure{Name: "objects", Title: "Attachments and artifacts: 1 GiB through the object store", Order: 17, Run: runObjects})
}

// writeBlob writes size bytes of incompressible data (an OS image is
// already compressed) to path.
func writeBlob(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.NewChaCha8([32]byte{7})
	if _, err := io.CopyN(w, rng, size); err != nil {
		_ = f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// runObjects measures, for one file of 1 GiB, the attachment upload of
// `flinger submit` (pack into tar.gz, stream into the attachments bucket,
// have the orchestrator check it and queue the job) and the artifact
// download of `flinger results --artifacts` (fetch, check size and
// SHA-256, unpack to disk), beside a raw object store put of the same
// file and a raw get of the object into a file, on the same server.
func runObjects(ctx context.Context, env *Env) (*Result, error) {
	size := int64(1 << 30)
	if env.Short {
		size = 8 << 20
	}
	l, err := orchestrationLab(ctx, env, "objects", nil)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	c := l.Client
	dir := filepath.Join(env.Dir, "objects-files")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	blob := filepath.Join(dir, "image.img.zst")
	if err := writeBlob(blob, size); err != nil {
		return nil, err
	}
	atts, err := c.Attachments(ctx)
	if err != nil {
		return nil, err
	}
	arts, err := c.Artifacts(ctx)
	if err != nil {
		return nil, err
	}
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	var rawPut, upload, rawGet, download []float64
	var libPut string
	for trial := range env.Trials {
		// Raw put: the file straight into an object, with no packing, in
		// the same chunks and flow control as Flinger's uploads.
		f, err := os.Open(blob)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		_, err = c.PutObject(ctx, c.Subj.AttachmentBucket(), fmt.Sprintf("raw-%d", trial), "", f)
		putTook := time.Since(start)
		_ = f.Close()
		if err != nil {
			return nil, fmt.Errorf("raw put: %w", err)
		}
		rawPut = append(rawPut, mbps(putTook))
		if trial == 0 {
			// The client library's own Put, for reference.
			f, err := os.Open(blob)
			if err != nil {
				return nil, err
			}
			start := time.Now()
			_, err = atts.Put(ctx, jetstream.ObjectMeta{Name: "library-put"}, f)
			took := time.Since(start)
			_ = f.Close()
			if err != nil {
				libPut = fmt.Sprintf("The NATS client library's ObjectStore.Put of the same file (default 128 KiB chunks) failed here after %s: %v. It publishes up to 4,000 chunks before waiting for acknowledgements, more than the server buffers; Flinger's put keeps %d chunks in flight.", took.Round(time.Millisecond), err, 64)
			} else {
				libPut = fmt.Sprintf("The NATS client library's ObjectStore.Put of the same file (default 128 KiB chunks) took %s: %.0f MB/s.", took.Round(time.Millisecond), mbps(took))
			}
			_ = atts.Delete(ctx, "library-put")
		}

		// Raw get into a file, as `nats object get` does.
		start = time.Now()
		res, err := atts.Get(ctx, fmt.Sprintf("raw-%d", trial))
		if err != nil {
			return nil, fmt.Errorf("raw get: %w", err)
		}
		out, err := os.Create(filepath.Join(dir, "raw-get"))
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(out, res)
		_ = res.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		getTook := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("raw get: %w", err)
		}
		rawGet = append(rawGet, mbps(getTook))
		_ = atts.Delete(ctx, fmt.Sprintf("raw-%d", trial))
		_ = os.Remove(filepath.Join(dir, "raw-get"))

		// Attachment upload: a job naming the file (on a queue no device
		// serves, so it stays queued), packed and sent as `flinger submit` does.
		job := fmt.Sprintf("job_queue: objects-bench-%d\ntest_data:\n  attachments:\n    - local: %s\n", trial, blob)
		packed, err := client.PrepareJob([]byte(job), events.FormatYAML, dir)
		if err != nil {
			return nil, err
		}
		start = time.Now()
		reply, err := client.SubmitJob(ctx, c, packed, nil)
		upTook := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("attachment upload: %w", err)
		}
		upload = append(upload, mbps(upTook))

		// Artifact download: the same archive stored as the job's
		// artifacts, fetched, checked and unpacked as `flinger results
		// --artifacts` does.
		rec, _, err := c.GetJob(ctx, reply.JobID)
		if err != nil {
			return nil, err
		}
		rd, err := broker.OpenObject(ctx, atts, rec.Attachments)
		if err != nil {
			return nil, err
		}
		ref, err := c.PutObject(ctx, c.Subj.ArtifactBucket(), reply.JobID, "", rd)
		_ = rd.Close()
		if err != nil {
			return nil, err
		}
		if _, _, err := c.UpdateJob(ctx, reply.JobID, func(r *events.JobRecord) error {
			r.Artifacts = ref
			r.State = events.JobCompleted
			return nil
		}); err != nil {
			return nil, err
		}
		dest := filepath.Join(dir, "artifacts")
		start = time.Now()
		st, _, err := client.DownloadArtifacts(ctx, c, reply.JobID, dest, 0)
		downTook := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("artifact download: %w", err)
		}
		if st.Bytes != size {
			return nil, fmt.Errorf("artifact download: %d bytes unpacked, want %d", st.Bytes, size)
		}
		download = append(download, mbps(downTook))
		_ = os.RemoveAll(dest)
		_ = atts.Delete(ctx, reply.JobID)
		_ = arts.Delete(ctx, reply.JobID)
		env.Log.Info("objects trial", "trial", trial+1, "raw put MB/s", mbps(putTook), "upload MB/s", mbps(upTook),
			"raw get MB/s", mbps(getTook), "download MB/s", mbps(downTook))
	}
	res := &Result{Rows: []Row{
		row("attachment upload", "MB/s", upload, "raw put of the file into the object store", rawPut, "≥ 0.5× raw",
			func(_, ratio float64) bool { return ratio >= 0.5 }),
		row("artifact download", "MB/s", download, "raw object store get into a file", rawGet, "≥ 0.5× raw",
			func(_, ratio float64) bool { return ratio >= 0.5 }),
	}}
	res.Notes = append(res.Notes, fmt.Sprintf("One file of %d MiB of incompressible data (as an OS image is), on an in-process lab (embedded NATS, store on disk). Upload: `flinger submit`'s path: pack into tar.gz (gzip, fastest level), stream into the attachments bucket in %d KiB chunks while hashing, then the orchestrator checks size, SHA-256 and limit and queues the job. Download: `flinger results --artifacts`' path: stream from the artifacts bucket, check size and SHA-256, unpack to disk. Baselines: the raw file put into the object store in the same chunks (no archive, no job), and the client library's Get of that object into a file, as the nats CLI does.", size>>20, broker.ObjectChunk>>10), libPut)
	return res, nil
}

package broker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/flingerlab/flinger/events"
)

// ErrNoObject reports that an object store holds no object of the name
// asked for (never stored, deleted, or expired).
var ErrNoObject = errors.New("no such object")

// ErrChecksum reports an object whose bytes do not match the size or
// SHA-256 recorded for it.
var ErrChecksum = errors.New("checksum mismatch")

// ObjectChunk is the chunk size objects are stored with: large enough
// that a 1 GiB archive is 2048 messages, small enough to stay well under
// the server's default maximum message size (1 MiB).
const ObjectChunk = 512 << 10

// Attachments returns the lab's object store of job attachment archives.
func (c *Client) Attachments(ctx context.Context) (jetstream.ObjectStore, error) {
	return c.objectStore(ctx, c.Subj.AttachmentBucket())
}

// Artifacts returns the lab's object store of job artifact archives.
func (c *Client) Artifacts(ctx context.Context) (jetstream.ObjectStore, error) {
	return c.objectStore(ctx, c.Subj.ArtifactBucket())
}

func (c *Client) objectStore(ctx context.Context, name string) (jetstream.ObjectStore, error) {
	c.objMu.Lock()
	defer c.objMu.Unlock()
	if s, ok := c.objs[name]; ok {
		return s, nil
	}
	s, err := c.JS.ObjectStore(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w (is the orchestrator or `flinger lab` running, with the same --prefix?)", name, err)
	}
	if c.objs == nil {
		c.objs = map[string]jetstream.ObjectStore{}
	}
	c.objs[name] = s
	return s, nil
}

// putWindow is how many chunks of an object may await the server's
// acknowledgement at once: enough to keep a fast link busy (16 MiB),
// few enough that a slow disk slows the sender instead of failing it.
const putWindow = 64

// PutObject stores what r yields as object name of store (in the lab's
// bucket named bucket), and returns its reference: size and SHA-256,
// computed while it streams. It writes the object store's own layout
// (chunks, then the object's description with its digest), so any NATS
// client reads the object; unlike the client library's Put, it waits for
// the server when the server falls behind (a 1 GiB object on a slow disk)
// instead of failing.
func (c *Client) PutObject(ctx context.Context, bucket, name, description string, r io.Reader) (*events.ObjectRef, error) {
	store, err := c.objectStore(ctx, bucket)
	if err != nil {
		return nil, err
	}
	old, err := store.GetInfo(ctx, name, jetstream.GetObjectInfoShowDeleted())
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	js, err := jetstream.New(c.NC, jetstream.WithPublishAsyncMaxPending(putWindow))
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	streamName := "OBJ_" + bucket
	id := nuid.Next()
	chunkSubj := "$O." + bucket + ".C." + id
	purge := func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if st, err := c.JS.Stream(pctx, streamName); err == nil {
			_ = st.Purge(pctx, jetstream.WithPurgeSubject(chunkSubj))
		}
	}
	h := sha256.New()
	buf := make([]byte, ObjectChunk)
	var size int64
	var chunks uint32
	var futures []jetstream.PubAckFuture
	for {
		if err := ctx.Err(); err != nil {
			purge()
			return nil, fmt.Errorf("store %s: %w", name, err)
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			m := nats.NewMsg(chunkSubj)
			m.Data = buf[:n]
			f, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute))
			if err != nil {
				purge()
				return nil, fmt.Errorf("store %s: chunk %d: %w", name, chunks, err)
			}
			buf = make([]byte, ObjectChunk) // the message keeps its data until acknowledged
			futures = append(futures, f)
			size += int64(n)
			chunks++
		}
		if rerr == io.EOF || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			purge()
			return nil, fmt.Errorf("store %s: %w", name, rerr)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		purge()
		return nil, fmt.Errorf("store %s: %w", name, ctx.Err())
	}
	for i, f := range futures {
		select {
		case err := <-f.Err():
			purge()
			return nil, fmt.Errorf("store %s: chunk %d: %w", name, i, err)
		default:
		}
	}
	sum := h.Sum(nil)
	info := &jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: name, Description: description, Opts: &jetstream.ObjectMetaOptions{ChunkSize: ObjectChunk}},
		Bucket:     bucket, NUID: id, Size: uint64(size), Chunks: chunks,
		Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum),
	}
	meta := nats.NewMsg("$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name)))
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	if meta.Data, err = json.Marshal(info); err != nil {
		purge()
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	if _, err := c.JS.PublishMsg(ctx, meta); err != nil {
		purge()
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	if old != nil && !old.Deleted {
		if st, err := c.JS.Stream(ctx, streamName); err == nil {
			_ = st.Purge(ctx, jetstream.WithPurgeSubject("$O."+bucket+".C."+old.NUID))
		}
	}
	return &events.ObjectRef{Name: name, Size: size, SHA256: hex.EncodeToString(sum)}, nil
}

// ObjectSHA256 returns the hex SHA-256 the object store recorded for an
// object (its digest is computed by whoever stored it).
func ObjectSHA256(info *jetstream.ObjectInfo) (string, error) {
	sum, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return "", fmt.Errorf("object %s: digest %q: %w", info.Name, info.Digest, err)
	}
	return hex.EncodeToString(sum), nil
}

// StatObject returns what store knows of object name; a missing object
// is ErrNoObject.
func StatObject(ctx context.Context, store jetstream.ObjectStore, name string) (*jetstream.ObjectInfo, error) {
	info, err := store.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%s: %w", name, ErrNoObject)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return info, nil
}

// OpenObject opens the object ref names for reading. The reader checks
// the bytes against ref's size and SHA-256 as they stream and returns an
// error wrapping ErrChecksum instead of io.EOF when they differ; a
// missing object is ErrNoObject.
func OpenObject(ctx context.Context, store jetstream.ObjectStore, ref *events.ObjectRef) (io.ReadCloser, error) {
	res, err := store.Get(ctx, ref.Name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%s: %w", ref.Name, ErrNoObject)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref.Name, err)
	}
	return &checkedReader{res: res, ref: ref, h: sha256.New()}, nil
}

// checkedReader verifies an object's size and SHA-256 at its end.
type checkedReader struct {
	res jetstream.ObjectResult
	ref *events.ObjectRef
	h   hash.Hash
	n   int64
	err error
}

func (r *checkedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.res.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if r.n > r.ref.Size {
		r.err = fmt.Errorf("%s: %w: more than the %d bytes recorded", r.ref.Name, ErrChecksum, r.ref.Size)
		return n, r.err
	}
	switch {
	case errors.Is(err, jetstream.ErrDigestMismatch):
		r.err = fmt.Errorf("%s: %w: %v", r.ref.Name, ErrChecksum, err)
	case errors.Is(err, io.EOF):
		sum := hex.EncodeToString(r.h.Sum(nil))
		switch {
		case r.n != r.ref.Size:
			r.err = fmt.Errorf("%s: %w: %d bytes read, %d recorded", r.ref.Name, ErrChecksum, r.n, r.ref.Size)
		case sum != r.ref.SHA256:
			r.err = fmt.Errorf("%s: %w: sha256 %s, recorded %s", r.ref.Name, ErrChecksum, sum, r.ref.SHA256)
		default:
			r.err = io.EOF
		}
	case err != nil:
		r.err = fmt.Errorf("%s: %w", r.ref.Name, err)
	}
	if r.err != nil {
		return n, r.err
	}
	return n, nil
}

func (r *checkedReader) Close() error { return r.res.Close() }


package broker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
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
	js, err := newJetStream(c.NC, c.domain, jetstream.WithPublishAsyncMaxPending(putWindow))
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

// OpenObject opens the object ref names for reading. The object's
// recorded digest and size must be ref's, which is checked before a byte
// is read; the bytes are checked against that digest as they stream (the
// client library hashes them), and the reader returns an error wrapping
// ErrChecksum instead of io.EOF when they differ. A missing object is
// ErrNoObject.
func OpenObject(ctx context.Context, store jetstream.ObjectStore, ref *events.ObjectRef) (io.ReadCloser, error) {
	res, err := store.Get(ctx, ref.Name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%s: %w", ref.Name, ErrNoObject)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref.Name, err)
	}
	info, err := res.Info()
	if err != nil {
		_ = res.Close()
		return nil, fmt.Errorf("%s: %w", ref.Name, err)
	}
	sum, err := ObjectSHA256(info)
	switch {
	case err != nil:
		_ = res.Close()
		return nil, fmt.Errorf("%s: %w: %v", ref.Name, ErrChecksum, err)
	case sum != ref.SHA256:
		_ = res.Close()
		return nil, fmt.Errorf("%s: %w: the stored object has sha256 %s, recorded %s", ref.Name, ErrChecksum, sum, ref.SHA256)
	case int64(info.Size) != ref.Size:
		_ = res.Close()
		return nil, fmt.Errorf("%s: %w: the stored object has %d bytes, recorded %d", ref.Name, ErrChecksum, info.Size, ref.Size)
	}
	return newReadAhead(&checkedReader{res: res, ref: ref}, readAheadChunks), nil
}

// readAheadChunks is how many chunks an object reader fetches ahead of
// its consumer: the fetch (and its hashing) runs beside the consumer's
// decompression and disk writes instead of taking turns with them.
const readAheadChunks = 16

// readAhead reads its source in a goroutine of its own, up to n buffers
// ahead of its reader.
type readAhead struct {
	src  io.ReadCloser
	ch   chan []byte
	free chan []byte
	done chan struct{}
	once sync.Once
	err  error  // set before ch is closed
	cur  []byte // what is left of the buffer being read
	buf  []byte // that buffer, whole
}

func newReadAhead(src io.ReadCloser, n int) *readAhead {
	ra := &readAhead{src: src, ch: make(chan []byte, n), free: make(chan []byte, n+2), done: make(chan struct{})}
	for range n + 2 {
		ra.free <- make([]byte, ObjectChunk)
	}
	go ra.fill()
	return ra
}

func (ra *readAhead) fill() {
	defer close(ra.ch)
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.done:
			return
		}
		n, err := io.ReadFull(ra.src, buf)
		if n > 0 {
			select {
			case ra.ch <- buf[:n]:
			case <-ra.done:
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			ra.err = err
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		buf, ok := <-ra.ch
		if !ok {
			return 0, ra.err
		}
		ra.cur, ra.buf = buf, buf
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	if len(ra.cur) == 0 {
		ra.free <- ra.buf[:cap(ra.buf)]
		ra.cur, ra.buf = nil, nil
	}
	return n, nil
}

// Close stops the read-ahead and closes the source.
func (ra *readAhead) Close() error {
	var err error
	ra.once.Do(func() {
		close(ra.done)
		err = ra.src.Close() // ends a read in progress
		for range ra.ch {    // and lets fill end
		}
	})
	return err
}

// checkedReader passes an object's bytes on, turning a digest mismatch
// or a wrong length into ErrChecksum.
type checkedReader struct {
	res jetstream.ObjectResult
	ref *events.ObjectRef
	n   int64
	err error
}

func (r *checkedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.res.Read(p)
	r.n += int64(n)
	switch {
	case r.n > r.ref.Size:
		r.err = fmt.Errorf("%s: %w: more than the %d bytes recorded", r.ref.Name, ErrChecksum, r.ref.Size)
	case errors.Is(err, jetstream.ErrDigestMismatch):
		r.err = fmt.Errorf("%s: %w: %v", r.ref.Name, ErrChecksum, err)
	case errors.Is(err, io.EOF) && r.n != r.ref.Size:
		r.err = fmt.Errorf("%s: %w: %d bytes read, %d recorded", r.ref.Name, ErrChecksum, r.n, r.ref.Size)
	case errors.Is(err, io.EOF):
		r.err = io.EOF
	case err != nil:
		r.err = fmt.Errorf("%s: %w", r.ref.Name, err)
	}
	return n, r.err
}

func (r *checkedReader) Close() error { return r.res.Close() }

package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

// ErrNoObject reports that an object store holds no object of the name
// asked for (never stored, deleted, or expired).
var ErrNoObject = errors.New("no such object")

// ErrChecksum reports an object whose bytes do not match the size or
// SHA-256 recorded for it.
var ErrChecksum = errors.New("checksum mismatch")

// ObjectChunk is the chunk size objects are stored with: large enough
// that a 1 GiB archive is 4096 messages, small enough to stay well under
// the server's maximum message size.
const ObjectChunk = 256 << 10

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

// PutObject stores what r yields as object name of store, and returns
// its reference: size and SHA-256, computed while it streams.
func PutObject(ctx context.Context, store jetstream.ObjectStore, name, description string, r io.Reader) (*events.ObjectRef, error) {
	h := sha256.New()
	// Whole chunks: a pipe or a network reader returns short reads,
	// which would each become a message of their own.
	n := &countingReader{r: io.TeeReader(fullReader{r}, h)}
	info, err := store.Put(ctx, jetstream.ObjectMeta{
		Name:        name,
		Description: description,
		Opts:        &jetstream.ObjectMetaOptions{ChunkSize: ObjectChunk},
	}, n)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	ref := &events.ObjectRef{Name: name, Size: n.n, SHA256: hex.EncodeToString(h.Sum(nil))}
	if int64(info.Size) != ref.Size {
		return nil, fmt.Errorf("store %s: %w: the server holds %d bytes, %d were sent", name, ErrChecksum, info.Size, ref.Size)
	}
	return ref, nil
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

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// fullReader fills each read whole unless the stream ends.
type fullReader struct{ r io.Reader }

func (f fullReader) Read(p []byte) (int, error) {
	n, err := io.ReadFull(f.r, p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

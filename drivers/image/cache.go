package image

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxAge is how long a downloaded URL is used without asking the
// server whether it changed.
const DefaultMaxAge = 5 * time.Minute

// Cache is a per-host, content-addressed cache of downloaded images in one
// directory:
//
//	<dir>/blobs/<sha256>  complete, verified images, as served
//	<dir>/tmp/            downloads in progress (emptied at start)
//	<dir>/index.json      URL → sha256 and validators, last use of each image
//	<dir>/lock            held while a Cache uses the directory
//
// Its methods are safe for concurrent use.
type Cache struct {
	dir    string
	max    int64
	client *http.Client
	log    *slog.Logger
	policy RetryPolicy
	maxAge time.Duration
	unlock func() error
	wg     sync.WaitGroup

	mu       sync.Mutex
	blobs    map[string]*blob     // by sha256
	urls     map[string]*urlEntry // by URL
	flights  map[string]*flight   // by URL and expected sha256
	size     int64                // bytes of blobs
	reserved int64                // bytes announced by downloads in progress
	last     time.Time            // the last time handed out by tick
	closed   bool                 // no more Opens
	released bool                 // the directory is no longer ours: touch nothing
}

// blob is one cached image file.
type blob struct {
	SHA256   string    `json:"sha256"`
	Size     int64     `json:"size"`
	Format   Format    `json:"format"`
	LastUsed time.Time `json:"last_used"`
	refs     int       // open Images
}

// urlEntry remembers what a URL served.
type urlEntry struct {
	URL     string     `json:"url"`
	SHA256  string     `json:"sha256"`
	V       validators `json:"validators"`
	Checked time.Time  `json:"checked"`
}

type index struct {
	Version int         `json:"version"`
	Blobs   []*blob     `json:"blobs"`
	URLs    []*urlEntry `json:"urls"`
}

// Option configures a Cache.
type Option func(*Cache)

// WithMaxAge sets how long a downloaded URL is used without asking the
// server whether it changed (default DefaultMaxAge); zero or less asks on
// every Open. Asking is a conditional request on the ETag and
// Last-Modified the server gave: the image is downloaded again only when
// it changed.
func WithMaxAge(d time.Duration) Option { return func(c *Cache) { c.maxAge = d } }

// WithRetryPolicy sets how downloads recover from failures.
func WithRetryPolicy(p RetryPolicy) Option { return func(c *Cache) { c.policy = p } }

// NewCache opens the cache in dir, creating it if needed, and keeps it
// under maxBytes (0 or less: no limit) by evicting the least recently used
// images that are not open. Images are downloaded with client (nil:
// http.DefaultClient); it should have no overall Timeout, since an image
// can take many minutes: contexts bound the time instead. The directory is
// locked until Close.
func NewCache(dir string, maxBytes int64, client *http.Client, log *slog.Logger, opts ...Option) (*Cache, error) {
	if client == nil {
		client = http.DefaultClient
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		dir: dir, max: maxBytes, client: client, log: log, maxAge: DefaultMaxAge,
		blobs: map[string]*blob{}, urls: map[string]*urlEntry{}, flights: map[string]*flight{},
	}
	for _, o := range opts {
		o(c)
	}
	for _, d := range []string{c.blobDir(), c.tmpDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("image cache: %w", err)
		}
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("image cache %s: %w", dir, err)
	}
	c.unlock = unlock
	if err := c.load(); err != nil {
		_ = unlock()
		return nil, fmt.Errorf("image cache %s: %w", dir, err)
	}
	c.mu.Lock()
	c.evictLocked()
	c.saveLocked()
	c.mu.Unlock()
	return c, nil
}

func (c *Cache) blobDir() string            { return filepath.Join(c.dir, "blobs") }
func (c *Cache) tmpDir() string             { return filepath.Join(c.dir, "tmp") }
func (c *Cache) blobPath(sum string) string { return filepath.Join(c.blobDir(), sum) }

// load reads the index, empties tmp/ and reconciles the index with the
// files in blobs/.
func (c *Cache) load() error {
	tmps, err := os.ReadDir(c.tmpDir())
	if err != nil {
		return err
	}
	for _, e := range tmps {
		if err := os.RemoveAll(filepath.Join(c.tmpDir(), e.Name())); err != nil {
			return err
		}
	}
	var idx index
	switch data, err := os.ReadFile(filepath.Join(c.dir, "index.json")); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(data, &idx); err != nil {
			c.log.Warn("image cache index is unreadable; starting from the files", "dir", c.dir, "error", err)
			idx = index{}
		}
	}
	known := map[string]*blob{}
	for _, b := range idx.Blobs {
		if b != nil {
			known[b.SHA256] = b
		}
	}
	files, err := os.ReadDir(c.blobDir())
	if err != nil {
		return err
	}
	for _, e := range files {
		name := e.Name()
		if sum, err := hex.DecodeString(name); err != nil || len(sum) != 32 || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		b := known[name]
		if b == nil {
			b = &blob{SHA256: name, LastUsed: info.ModTime(), Format: c.sniff(c.blobPath(name))}
		}
		b.Size = info.Size()
		c.blobs[name] = b
		c.size += b.Size
	}
	for _, u := range idx.URLs {
		if u != nil && c.blobs[u.SHA256] != nil {
			c.urls[u.URL] = u
		}
	}
	return nil
}

// sniff returns the format of the file at path (Raw if unreadable).
func (c *Cache) sniff(path string) Format {
	f, err := os.Open(path)
	if err != nil {
		return Raw
	}
	defer f.Close()
	head := make([]byte, MagicLen)
	n, _ := io.ReadFull(f, head)
	return detectBytes(head[:n])
}

// saveLocked writes the index; failures are logged, the cache still works.
func (c *Cache) saveLocked() {
	if c.released {
		return
	}
	idx := index{Version: 1}
	for _, b := range c.blobs {
		idx.Blobs = append(idx.Blobs, b)
	}
	for _, u := range c.urls {
		idx.URLs = append(idx.URLs, u)
	}
	slices.SortFunc(idx.Blobs, func(a, b *blob) int { return cmp.Compare(a.SHA256, b.SHA256) })
	slices.SortFunc(idx.URLs, func(a, b *urlEntry) int { return cmp.Compare(a.URL, b.URL) })
	data, err := json.MarshalIndent(idx, "", " ")
	if err == nil {
		tmp := filepath.Join(c.dir, "index.json.tmp")
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(c.dir, "index.json"))
		}
	}
	if err != nil {
		c.log.Warn("cannot save the image cache index", "dir", c.dir, "error", err)
	}
}

// tick returns the current time, later than any it returned before, so
// that LRU order is strict.
func (c *Cache) tick() time.Time {
	t := time.Now().Round(0)
	if !t.After(c.last) {
		t = c.last.Add(time.Nanosecond)
	}
	c.last = t
	return t
}

// Close cancels the downloads in progress, waits for them and unlocks the
// directory. Images already open stay readable, but closing them no longer
// touches the directory, which another Cache may own by then.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, f := range c.flights {
		f.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	c.saveLocked()
	c.released = true
	c.mu.Unlock()
	return c.unlock()
}

// Open returns the image src names, complete and verified, as the server
// sent it: from the cache when it is there (by the expected sha256, or by
// a URL downloaded less than the max age ago or unchanged since), else
// downloaded into the cache. Concurrent Opens of one URL share one
// download; ctx bounds only this caller's wait. A local file (Path or a
// file URL) is used where it is, verified if src has a sha256, and not
// copied into the cache. progress, if not nil, is called at most every
// ProgressInterval while a download is awaited. The Image must be closed.
func (c *Cache) Open(ctx context.Context, src Source, progress func(Progress)) (*Image, error) {
	r, err := src.resolve()
	if err != nil {
		return nil, err
	}
	if r.path != "" {
		return openLocal(ctx, r, progress)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, newError(Local, r.name, nil, "the image cache %s is closed", c.dir)
	}
	if im := c.hitLocked(r); im != nil {
		c.mu.Unlock()
		return im, nil
	}
	f := c.joinLocked(r, nil)
	c.mu.Unlock()
	return c.wait(ctx, f, r, progress)
}

// hitLocked returns an Image of r from the cache without a request, or nil.
func (c *Cache) hitLocked(r resolved) *Image {
	if r.sha != "" {
		if b := c.blobs[r.sha]; b != nil {
			c.log.Debug("image cache hit by sha256", "url", r.name, "sha256", r.sha)
			return c.acquireLocked(b, r)
		}
		return nil
	}
	if e := c.urls[r.url]; e != nil && c.maxAge > 0 && time.Since(e.Checked) < c.maxAge {
		if b := c.blobs[e.SHA256]; b != nil {
			c.log.Debug("image cache hit", "url", r.name, "sha256", b.SHA256)
			return c.acquireLocked(b, r)
		}
	}
	return nil
}

func (c *Cache) acquireLocked(b *blob, r resolved) *Image {
	b.refs++
	b.LastUsed = c.tick()
	c.saveLocked()
	return c.imageOf(b, r)
}

func (c *Cache) imageOf(b *blob, r resolved) *Image {
	return &Image{c: c, b: b, name: r.name, url: r.url, path: c.blobPath(b.SHA256), size: b.Size, sha: b.SHA256, format: b.Format}
}

// release drops a reference to b and evicts what no longer fits.
func (c *Cache) release(b *blob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b.refs--
	b.LastUsed = c.tick()
	c.evictLocked()
	c.saveLocked()
}

// evictLocked removes the least recently used images that are not open
// until the cache, with the downloads in progress, fits its size.
func (c *Cache) evictLocked() {
	if c.released || c.max <= 0 || c.size+c.reserved <= c.max {
		return
	}
	var cands []*blob
	for _, b := range c.blobs {
		if b.refs == 0 {
			cands = append(cands, b)
		}
	}
	slices.SortFunc(cands, func(a, b *blob) int {
		return cmp.Or(a.LastUsed.Compare(b.LastUsed), cmp.Compare(a.SHA256, b.SHA256))
	})
	for _, b := range cands {
		if c.size+c.reserved <= c.max {
			break
		}
		if err := os.Remove(c.blobPath(b.SHA256)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("cannot evict a cached image", "sha256", b.SHA256, "error", err)
			continue
		}
		delete(c.blobs, b.SHA256)
		c.size -= b.Size
		for u, e := range c.urls {
			if e.SHA256 == b.SHA256 {
				delete(c.urls, u)
			}
		}
		c.log.Info("evicted a cached image", "sha256", b.SHA256, "size", b.Size, "last_used", b.LastUsed)
	}
}

// flight is one download that any number of callers wait for.
type flight struct {
	key    string
	r      resolved
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	cond   *validators // revalidate the URL's cached content...
	pinned *blob       // ...which is this blob, kept until the flight ends
	tap    *tap        // a Stream's view of the bytes as they come, or nil

	in, total atomic.Int64

	// Guarded by Cache.mu.
	waiters  int
	reserved int64
	finished bool
	blob     *blob // the result; the flight holds a reference for each waiter
	err      error
}

// joinLocked joins the download of r, starting it (with t) if there is none.
func (c *Cache) joinLocked(r resolved, t *tap) *flight {
	key := r.url + "\x00" + r.sha
	f := c.flights[key]
	if f == nil {
		ctx, cancel := context.WithCancel(context.Background())
		f = &flight{key: key, r: r, ctx: ctx, cancel: cancel, done: make(chan struct{}), tap: t}
		f.total.Store(-1)
		if e := c.urls[r.url]; e != nil && r.sha == "" {
			if b := c.blobs[e.SHA256]; b != nil {
				v := e.V
				f.cond, f.pinned = &v, b
				b.refs++
			}
		}
		c.flights[key] = f
		c.wg.Add(1)
		go c.run(f)
	}
	f.waiters++
	return f
}

// wait waits for f, which the caller has joined, and returns its Image.
func (c *Cache) wait(ctx context.Context, f *flight, r resolved, progress func(Progress)) (*Image, error) {
	rep := startReporter(progress, &f.in, nil, &f.total)
	select {
	case <-f.done:
	case <-ctx.Done():
		rep.stop(false)
		if b := c.leave(f); b != nil {
			c.release(b)
		}
		return nil, canceled(ctx, r.name)
	}
	rep.stop(f.err == nil)
	if f.err != nil {
		return nil, f.err
	}
	return c.imageOf(f.blob, r), nil
}

// leave takes a waiter away from f. The last to leave cancels the download
// and waits for it to clean up. If f had already finished, the caller owns
// a reference to the returned blob (which may be nil) and must release it.
func (c *Cache) leave(f *flight) *blob {
	c.mu.Lock()
	if f.finished {
		c.mu.Unlock()
		return f.blob
	}
	f.waiters--
	last := f.waiters == 0
	if last {
		f.cancel()
		if c.flights[f.key] == f {
			delete(c.flights, f.key) // new callers start afresh
		}
	}
	c.mu.Unlock()
	if last {
		<-f.done
	}
	return nil
}

// Forget drops what the cache knows of src's URL, so that the next Open
// or Stream of it downloads it again (revalidating it with the server is
// not enough: the server may have been fixed since, or the download
// damaged). It is for a caller that found the image corrupt where this
// package could not see it (see CorruptError); the cached bytes stay
// until evicted, reachable by their sha256. A local file, an invalid
// source, a URL the cache does not know and a nil Cache are ignored.
func (c *Cache) Forget(src Source) {
	if c == nil {
		return
	}
	r, err := src.resolve()
	if err != nil || r.url == "" {
		return
	}
	c.mu.Lock()
	_, known := c.urls[r.url]
	c.mu.Unlock()
	if known {
		c.log.Info("forgetting a corrupt image's URL; the next use downloads it again", "url", r.name)
		c.forget(r.url)
	}
}

// forget drops what the cache knows of url, so that the next Open or
// Stream of it downloads it again: after a corrupt stream, the server may
// have been fixed since, or the download may have been damaged.
func (c *Cache) forget(url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.urls[url]; ok {
		delete(c.urls, url)
		c.saveLocked()
	}
}

// reserve records that f will write n bytes, making room for them.
func (c *Cache) reserve(f *flight, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n = max(n, 0)
	c.reserved += n - f.reserved
	f.reserved = n
	c.evictLocked()
}

// run downloads f and hands the result to its waiters.
func (c *Cache) run(f *flight) {
	defer c.wg.Done()
	d, err := c.download(f)
	c.mu.Lock()
	if c.flights[f.key] == f {
		delete(c.flights, f.key)
	}
	c.reserved -= f.reserved
	f.reserved = 0
	var b *blob
	if err == nil {
		b, err = c.commitLocked(f, d)
	}
	if f.pinned != nil {
		f.pinned.refs--
	}
	if err == nil {
		b.refs += f.waiters
		b.LastUsed = c.tick()
	}
	f.blob, f.err, f.finished = b, err, true
	c.evictLocked()
	c.saveLocked()
	c.mu.Unlock()
	close(f.done)
	if f.tap != nil {
		switch {
		case err != nil:
			f.tap.finish(err)
		case d.notModified:
			f.tap.finish(errFromCache)
		default:
			f.tap.finish(nil)
		}
	}
}

// downloaded is a finished download, not yet in the cache.
type downloaded struct {
	fetched
	tmp    string // the file, or "" when notModified
	sum    string
	format Format
}

// download fetches f into a temporary file and verifies it.
func (c *Cache) download(f *flight) (downloaded, error) {
	r := f.r
	tmp, err := os.CreateTemp(c.tmpDir(), "dl-*.part")
	if err != nil {
		return downloaded{}, newError(Local, r.name, err, "cannot create a file in the image cache: %v", err)
	}
	keep := false
	defer func() {
		if !keep {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	fe := &fetcher{client: c.client, log: c.log, policy: c.policy, url: r.url, name: r.name,
		in: &f.in, total: &f.total, onLength: func(n int64) { c.reserve(f, n) }}
	hs := newHashSink()
	sinks := multiSink{hs, &fileSink{f: tmp, name: r.name}}
	if f.tap != nil {
		sinks = append(sinks, f.tap)
	}
	c.log.Info("downloading image", "url", r.name, "revalidate", f.cond != nil)
	res, err := fe.fetch(f.ctx, f.cond, sinks)
	if err != nil {
		return downloaded{}, err
	}
	if res.notModified {
		return downloaded{fetched: res}, nil
	}
	sum := hs.sum()
	if r.sha != "" && sum != r.sha {
		return downloaded{}, newError(Checksum, r.name, nil, "sha256 mismatch: want %s, got %s", r.sha, sum)
	}
	if f.tap != nil {
		// The Stream reading along has the whole, checked image: let it
		// end its destination while the file is synced to disk.
		f.tap.finish(nil)
	}
	if err := tmp.Sync(); err != nil {
		return downloaded{}, newError(Local, r.name, err, "writing the cache file: %v", err)
	}
	if err := tmp.Close(); err != nil {
		return downloaded{}, newError(Local, r.name, err, "writing the cache file: %v", err)
	}
	keep = true
	c.log.Info("downloaded image", "url", r.name, "sha256", sum, "bytes", res.n, "received", f.in.Load())
	return downloaded{fetched: res, tmp: tmp.Name(), sum: sum, format: detectBytes(hs.head)}, nil
}

// commitLocked moves a download into the cache and records its URL.
func (c *Cache) commitLocked(f *flight, d downloaded) (*blob, error) {
	now := time.Now()
	if d.notModified {
		b := f.pinned
		if e := c.urls[f.r.url]; e != nil && e.SHA256 == b.SHA256 {
			e.V, e.Checked = d.v, now
		} else {
			c.urls[f.r.url] = &urlEntry{URL: f.r.url, SHA256: b.SHA256, V: d.v, Checked: now}
		}
		c.log.Info("image unchanged on the server; using the cached copy", "url", f.r.name, "sha256", b.SHA256)
		return b, nil
	}
	b := c.blobs[d.sum]
	if b != nil {
		// The same bytes are cached already, maybe under another URL.
		_ = os.Remove(d.tmp)
	} else {
		if err := os.Rename(d.tmp, c.blobPath(d.sum)); err != nil {
			_ = os.Remove(d.tmp)
			return nil, newError(Local, f.r.name, err, "cannot move the download into the image cache: %v", err)
		}
		b = &blob{SHA256: d.sum, Size: d.n, Format: d.format}
		c.blobs[d.sum] = b
		c.size += b.Size
	}
	c.urls[f.r.url] = &urlEntry{URL: f.r.url, SHA256: d.sum, V: d.v, Checked: now}
	return b, nil
}

// Image is an open image file, complete and verified, compressed as
// served. A cached image is not evicted while it is open. Its methods are
// safe for concurrent use.
type Image struct {
	c      *Cache // nil for a local file
	b      *blob
	name   string // for messages
	url    string // the URL it was downloaded from, or ""
	path   string
	size   int64
	sha    string
	format Format
	closed atomic.Bool
}

// Path returns the image file's path. Read it only while the Image is open.
func (im *Image) Path() string { return im.path }

// Size returns the size of the image file (compressed).
func (im *Image) Size() int64 { return im.size }

// SHA256 returns the image file's sha256 in hex ("" for a local file
// opened without an expected sha256, which is not hashed).
func (im *Image) SHA256() string { return im.sha }

// Format returns the image's compression, as its first bytes say.
func (im *Image) Format() Format { return im.format }

// Raw returns the image file's bytes as served (still compressed) and
// their format, for a caller that decompresses elsewhere (Format.Cat
// names a command for it). Reads fail once ctx is done.
func (im *Image) Raw(ctx context.Context) (io.ReadCloser, Format, error) {
	if im.closed.Load() {
		return nil, im.format, newError(Local, im.name, nil, "the image was closed")
	}
	f, err := os.Open(im.path)
	if err != nil {
		return nil, im.format, localError(im.name, err)
	}
	return &fileReader{ctxReader: ctxReader{ctx: ctx, r: f, name: im.name}, f: f}, im.format, nil
}

// Reader returns the decompressed image and the compression it was in.
// A damaged stream fails with an *Error of kind Corrupt, and the cache
// then forgets the URL, so that the next Open downloads it again.
func (im *Image) Reader(ctx context.Context) (io.ReadCloser, Format, error) {
	raw, format, err := im.Raw(ctx)
	if err != nil {
		return nil, format, err
	}
	d, err := decompress(format, raw, im.name)
	if err != nil {
		_ = raw.Close()
		return nil, format, err
	}
	return &decodedReader{ReadCloser: d, raw: raw, im: im}, format, nil
}

// Close lets the cache evict the image again. Readers already returned
// keep working on Unix.
func (im *Image) Close() error {
	if im.closed.Swap(true) || im.c == nil {
		return nil
	}
	im.c.release(im.b)
	return nil
}

// openLocal opens a local file as an Image, verifying its sha256 if given.
func openLocal(ctx context.Context, r resolved, progress func(Progress)) (*Image, error) {
	f, err := os.Open(r.path)
	if err != nil {
		return nil, localError(r.name, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, localError(r.name, err)
	}
	if !info.Mode().IsRegular() {
		return nil, newError(Invalid, r.name, nil, "not a regular file")
	}
	hs := newHashSink()
	var in, total atomic.Int64
	total.Store(info.Size())
	if r.sha != "" {
		rep := startReporter(progress, &in, nil, &total)
		cr := &ctxReader{ctx: ctx, r: f, name: r.name}
		buf := make([]byte, 1<<20)
		for {
			n, err := cr.Read(buf)
			_, _ = hs.Write(buf[:n])
			in.Add(int64(n))
			if err == io.EOF {
				break
			}
			if err != nil {
				rep.stop(false)
				return nil, err
			}
		}
		rep.stop(true)
		if sum := hs.sum(); sum != r.sha {
			return nil, newError(Checksum, r.name, nil, "sha256 mismatch: want %s, got %s", r.sha, sum)
		}
	} else {
		head := make([]byte, MagicLen)
		n, _ := io.ReadFull(f, head)
		hs.head = head[:n]
	}
	return &Image{name: r.name, path: r.path, size: info.Size(), sha: r.sha, format: detectBytes(hs.head)}, nil
}

func localError(name string, err error) *Error {
	if errors.Is(err, fs.ErrNotExist) {
		return newError(NotFound, name, err, "no such file")
	}
	return newError(Local, name, err, "%v", err)
}

// ctxReader fails its reads once ctx is done and turns read errors into
// *Error.
type ctxReader struct {
	ctx  context.Context
	r    io.Reader
	name string
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, canceled(c.ctx, c.name)
	}
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		var ie *Error
		if !errors.As(err, &ie) {
			err = newError(Local, c.name, err, "reading: %v", err)
		}
	}
	return n, err
}

// fileReader is a ctxReader over a file it closes.
type fileReader struct {
	ctxReader
	f *os.File
}

func (r *fileReader) Close() error { return r.f.Close() }

// decodedReader closes both the decompressor and the file under it, and
// has the cache forget a URL whose image is corrupt.
type decodedReader struct {
	io.ReadCloser
	raw io.Closer
	im  *Image
}

func (r *decodedReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && KindOf(err) == Corrupt && r.im.c != nil && r.im.url != "" {
		r.im.c.forget(r.im.url)
	}
	return n, err
}

func (r *decodedReader) Close() error {
	_ = r.ReadCloser.Close()
	return r.raw.Close()
}

package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync/atomic"
)

// StreamOptions configures Stream.
type StreamOptions struct {
	// Cache, if not nil, keeps the image: a cached image is streamed from
	// disk, and an image that is not is downloaded into the cache while it
	// is streamed. Nil streams straight from the server and keeps nothing.
	Cache *Cache
	// Client downloads when Cache is nil (nil: http.DefaultClient); the
	// Cache uses its own.
	Client *http.Client
	// Retry bounds the download's retries when Cache is nil; the Cache has
	// its own.
	Retry RetryPolicy
	// Progress, if not nil, is called at most every ProgressInterval, from
	// one goroutine at a time, with BytesIn only growing.
	Progress func(Progress)
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
	// Raw streams the image as served, still compressed, for a caller
	// that decompresses it elsewhere (such as "zstdcat | dd" on a control
	// host: Format.Cat names the command). Everything else is as without
	// it: the cache is filled while streaming, another caller's download
	// is waited for, a dropped download resumes and the sha256 is checked
	// at the end; Result.Format is still found from the first bytes, and
	// Result.BytesOut and Progress.BytesOut count the bytes written to dst,
	// as served. A corrupt stream cannot be noticed here then: a caller
	// whose decompressor finds it corrupt reports it with CorruptError and
	// Cache.Forget.
	Raw bool
	// RawIf, if not nil and Raw is not set, decides from the image's
	// format, once its first bytes have arrived and before anything is
	// written to dst, whether to stream it as served (true, as Raw) or
	// decompressed (false). It is called at most once, from the goroutine
	// calling Stream.
	RawIf func(Format) bool
	// OnComplete, if not nil, is called once every byte has been written
	// to dst and the image has passed its checks (the sha256, when
	// given), before Stream waits for the cache to store its copy (an
	// fsync that takes a while for a large image) and for the last
	// progress report: a caller that has to end dst (close dd's input)
	// can do it then, so that both overlap. It is called at most once,
	// from the goroutine calling Stream, which can still fail after it
	// when the cache cannot store the image.
	OnComplete func()
}

// rawFunc returns the decision between raw and decompressed streaming
// that o asks for (nil: always decompress).
func (o StreamOptions) rawFunc() func(Format) bool {
	if o.Raw {
		return func(Format) bool { return true }
	}
	return o.RawIf
}

// Result says what Stream wrote.
type Result struct {
	// Format is the compression the image was in.
	Format Format
	// BytesIn is the compressed bytes received or read from disk.
	BytesIn int64
	// BytesOut is the bytes written to the destination: decompressed, or
	// as served when Raw is set.
	BytesOut int64
	// SHA256 is the sha256 of the image as served (compressed), in hex.
	SHA256 string
	// FromCache reports that the image was streamed from the cache.
	FromCache bool
	// Raw reports that the bytes were written as served, not decompressed
	// (StreamOptions.Raw or RawIf).
	Raw bool
}

// Stream writes the decompressed image src names to dst as it arrives:
// the download, the cache file (when opts.Cache is set), the decompressor
// and dst all run at once, so dst (typically the stdin of dd) starts
// receiving bytes while the image is still downloading, and a slow dst
// slows the download down rather than filling memory. With opts.Raw (or
// opts.RawIf) the bytes go to dst as served, still compressed, in the
// same way.
//
// With a cache, an image already cached streams from disk without asking
// the server; one that another caller is downloading is waited for and
// then streamed from disk; otherwise this call downloads it, filling the
// cache as it goes (and others may wait for that download). See the
// package documentation for the trade-off.
//
// A local file (src.Path or a file URL) is streamed from where it is, with
// or without a cache. While a Stream waits for another caller's download
// it reports no progress; its reports start when it streams from disk.
//
// The sha256 of src, if given, is checked when the download ends: a
// mismatch fails Stream after dst has received the whole (wrong) image.
// A failure of dst is returned wrapped, as it is (not as an *Error); every
// other failure is an *Error. ctx cancels the stream, but a dst.Write
// that blocks is not interrupted: close the destination to stop it.
func Stream(ctx context.Context, src Source, dst io.Writer, opts StreamOptions) (Result, error) {
	r, err := src.resolve()
	if err != nil {
		return Result{}, err
	}
	p := pumpOpts{progress: opts.Progress, raw: opts.rawFunc(), complete: opts.OnComplete}
	if r.path != "" {
		return streamFile(ctx, r, r.path, "", dst, p)
	}
	if opts.Cache != nil {
		return opts.Cache.stream(ctx, r, dst, p)
	}
	return streamDirect(ctx, r, dst, opts, p)
}

// pumpOpts are the options every way of streaming shares.
type pumpOpts struct {
	progress func(Progress)
	// raw decides whether to stream the bytes as served (nil: never).
	raw func(Format) bool
	// complete, if not nil, is told that dst has the whole, checked image.
	complete func()
}

// completed calls p.complete, if set.
func (p pumpOpts) completed() {
	if p.complete != nil {
		p.complete()
	}
}

// streamDirect streams from the server without a cache.
func streamDirect(ctx context.Context, r resolved, dst io.Writer, opts StreamOptions, p pumpOpts) (Result, error) {
	client, log := opts.Client, opts.Log
	if client == nil {
		client = http.DefaultClient
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var in, out, total atomic.Int64
	total.Store(-1)
	fe := &fetcher{client: client, log: log, policy: opts.Retry, url: r.url, name: r.name, in: &in, total: &total}
	pr, pw := io.Pipe()
	t := &tap{pw: pw, name: r.name}
	hs := newHashSink()
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type outcome struct {
		sum string
		err error
	}
	fetchDone := make(chan outcome, 1)
	go func() {
		_, err := fe.fetch(dctx, nil, multiSink{hs, t})
		sum := hs.sum()
		if err == nil && r.sha != "" && sum != r.sha {
			err = newError(Checksum, r.name, nil, "sha256 mismatch: want %s, got %s", r.sha, sum)
		}
		t.finish(err)
		fetchDone <- outcome{sum, err}
	}()
	stop := context.AfterFunc(ctx, func() { pr.CloseWithError(canceled(ctx, r.name)) })
	defer stop()
	rep := startReporter(p.progress, &in, &out, &total)
	format, raw, err := pump(r.name, pr, dst, &out, p.raw)
	pr.CloseWithError(errStreamEnded)
	if err != nil {
		cancel()
	}
	d := <-fetchDone
	if err == nil {
		err = d.err
	}
	if err == nil {
		p.completed()
	}
	rep.stop(err == nil)
	res := Result{Format: format, BytesIn: in.Load(), BytesOut: out.Load(), SHA256: d.sum, Raw: raw}
	if err != nil {
		res.SHA256 = ""
		if ctx.Err() != nil {
			err = canceled(ctx, r.name)
		}
		return res, err
	}
	return res, nil
}

// stream is Stream with a cache.
func (c *Cache) stream(ctx context.Context, r resolved, dst io.Writer, p pumpOpts) (Result, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Result{}, newError(Local, r.name, nil, "the image cache %s is closed", c.dir)
	}
	if im := c.hitLocked(r); im != nil {
		c.mu.Unlock()
		return c.streamImage(ctx, r, im, dst, p)
	}
	if f := c.flights[r.url+"\x00"+r.sha]; f != nil {
		f.waiters++
		c.mu.Unlock()
		c.log.Info("image is being downloaded already; streaming it from the cache when it is done", "url", r.name)
		im, err := c.wait(ctx, f, r, nil)
		if err != nil {
			return Result{}, err
		}
		return c.streamImage(ctx, r, im, dst, p)
	}
	pr, pw := io.Pipe()
	f := c.joinLocked(r, &tap{pw: pw, name: r.name})
	c.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { pr.CloseWithError(canceled(ctx, r.name)) })
	defer stop()
	var out atomic.Int64
	rep := startReporter(p.progress, &f.in, &out, &f.total)
	format, raw, err := pump(r.name, pr, dst, &out, p.raw)
	pr.CloseWithError(errStreamEnded)
	if errors.Is(err, errFromCache) {
		// The server says the cached copy is current: nothing came through.
		rep.stop(false)
		im, err := c.wait(ctx, f, r, nil)
		if err != nil {
			return Result{}, err
		}
		return c.streamImage(ctx, r, im, dst, p)
	}
	if err != nil {
		rep.stop(false)
		if b := c.leave(f); b != nil {
			c.release(b)
		}
		if KindOf(err) == Corrupt {
			c.forget(r.url)
		}
		if ctx.Err() != nil {
			err = canceled(ctx, r.name)
		}
		return Result{Format: format, BytesIn: f.in.Load(), BytesOut: out.Load(), Raw: raw}, err
	}
	// The stream ended, so the download has, and its sha256 matched:
	// take its result once the cache has stored it.
	p.completed()
	im, err := c.wait(ctx, f, r, nil)
	rep.stop(err == nil)
	res := Result{Format: format, BytesIn: f.in.Load(), BytesOut: out.Load(), Raw: raw}
	if err != nil {
		return res, err
	}
	res.SHA256 = im.SHA256()
	_ = im.Close()
	return res, nil
}

// streamImage streams a cached image from disk and closes it.
func (c *Cache) streamImage(ctx context.Context, r resolved, im *Image, dst io.Writer, p pumpOpts) (Result, error) {
	defer im.Close()
	res, err := streamFile(ctx, r, im.Path(), im.SHA256(), dst, p)
	res.FromCache = true
	if KindOf(err) == Corrupt {
		c.forget(r.url)
	}
	return res, err
}

// streamFile streams a local file; sum is its known sha256, or "" to hash
// it on the way (and check it against r.sha).
func streamFile(ctx context.Context, r resolved, path, sum string, dst io.Writer, p pumpOpts) (Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return Result{}, localError(r.name, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return Result{}, localError(r.name, err)
	}
	if !info.Mode().IsRegular() {
		return Result{}, newError(Invalid, r.name, nil, "not a regular file")
	}
	var in, out, total atomic.Int64
	total.Store(info.Size())
	var src io.Reader = &ctxReader{ctx: ctx, r: &atomicCounter{r: f, n: &in}, name: r.name}
	hs := newHashSink()
	if sum == "" {
		src = io.TeeReader(src, hs)
	}
	rep := startReporter(p.progress, &in, &out, &total)
	format, raw, err := pump(r.name, src, dst, &out, p.raw)
	if err == nil && sum == "" {
		// Hash whatever the decompressor left unread.
		_, err = io.Copy(io.Discard, src)
		sum = hs.sum()
	}
	if err == nil && r.sha != "" && sum != r.sha {
		err = newError(Checksum, r.name, nil, "sha256 mismatch: want %s, got %s", r.sha, sum)
	}
	if err == nil {
		p.completed()
	}
	rep.stop(err == nil)
	res := Result{Format: format, BytesIn: in.Load(), BytesOut: out.Load(), Raw: raw}
	if err != nil {
		return res, err
	}
	res.SHA256 = sum
	return res, nil
}

// pump detects src's compression and writes it to dst, as served when
// raw says so (it is asked once the format is known), decompressed
// otherwise. It reports whether it wrote the bytes as served.
func pump(name string, src io.Reader, dst io.Writer, out *atomic.Int64, raw func(Format) bool) (Format, bool, error) {
	format, rd, err := Detect(src)
	if err != nil {
		return Raw, false, err
	}
	asServed := raw != nil && raw(format)
	var from io.Reader
	if asServed {
		// Hide the reader's WriteTo, which would copy in small pieces.
		from = struct{ io.Reader }{rd}
	} else {
		dec, err := decompress(format, rd, name)
		if err != nil {
			return format, false, err
		}
		defer dec.Close()
		from = dec
	}
	w := &countingWriter{w: dst, n: out}
	_, err = io.CopyBuffer(w, from, make([]byte, 1<<20))
	if w.err != nil {
		return format, asServed, fmt.Errorf("image %s: writing to the destination: %w", name, w.err)
	}
	return format, asServed, err
}

// errFromCache ends a Stream's tap when the download found the cached copy
// current: the Stream reads it from disk instead.
var errFromCache = errors.New("image: the cached copy is current")

// errStreamEnded closes a tap's pipe once its reader is done with it.
var errStreamEnded = errors.New("image: stream ended")

// tap passes a download's bytes to a Stream through a pipe, as they are
// written. If the reader goes away the tap detaches and the download goes
// on. If the download starts again from the first byte with the same
// content, the bytes the reader has already had are skipped; with other
// content the reader fails, since its destination has the old bytes.
type tap struct {
	pw        *io.PipeWriter
	name      string
	delivered int64 // bytes passed to the reader
	pos       int64 // position of the download in the content
	detached  bool
}

func (t *tap) Write(p []byte) (int, error) {
	if t.detached {
		return len(p), nil
	}
	q := p
	if t.pos < t.delivered {
		skip := min(int64(len(q)), t.delivered-t.pos)
		q = q[skip:]
		t.pos += skip
	}
	if len(q) > 0 {
		n, err := t.pw.Write(q)
		t.pos += int64(n)
		t.delivered += int64(n)
		if err != nil {
			t.detached = true
		}
	}
	return len(p), nil
}

func (t *tap) restart(same bool) error {
	t.pos = 0
	if !same && t.delivered > 0 {
		t.finish(newError(HTTP, t.name, nil,
			"the image changed on the server after %d bytes of it had been written; provision again", t.delivered))
	}
	return nil
}

// finish ends the reader's stream: at its end (nil) or with err.
func (t *tap) finish(err error) {
	if t.detached {
		return
	}
	t.detached = true
	_ = t.pw.CloseWithError(err)
}

// countingWriter counts what it writes and keeps the writer's error.
type countingWriter struct {
	w   io.Writer
	n   *atomic.Int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	if err != nil {
		c.err = err
	}
	return n, err
}

// atomicCounter counts the bytes read through it.
type atomicCounter struct {
	r io.Reader
	n *atomic.Int64
}

func (a *atomicCounter) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	a.n.Add(int64(n))
	return n, err
}

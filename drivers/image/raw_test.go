package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// completion records OnComplete's calls and what dst held at the first.
type completion struct {
	mu     sync.Mutex
	calls  int
	dstLen int
}

func (c *completion) hook(dst *syncBuffer) func() {
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.calls++
		if c.calls == 1 {
			c.dstLen = len(dst.Bytes())
		}
	}
}

func (c *completion) get() (calls, dstLen int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls, c.dstLen
}

// TestStreamRaw streams every format as served, from a server that holds
// the end back (with and without a cache) and from a file: dst gets the
// bytes as served before the download ends, the Result has the format
// found from the first bytes, OnComplete runs once when dst has all of
// it, and a cached image is a hit the second time.
func TestStreamRaw(t *testing.T) {
	t.Parallel()
	for _, f := range allFormats {
		for _, from := range []string{"url", "url+cache", "file"} {
			t.Run(f.String()+"/"+from, func(t *testing.T) {
				t.Parallel()
				data := testImage()[f]
				dst := newSyncBuffer()
				srv, released := holdingServer(t, data, dst.first)
				src := Source{URL: srv.URL + "/" + misleadingName[f], SHA256: sum(data)}
				opts := StreamOptions{Retry: testPolicy, Log: testLogger(t), Raw: true}
				switch from {
				case "url+cache":
					opts.Cache = newCache(t, 0)
				case "file":
					path := filepath.Join(t.TempDir(), misleadingName[f])
					if err := os.WriteFile(path, data, 0o644); err != nil {
						t.Fatal(err)
					}
					src = Source{Path: path}
				}
				var progress progressLog
				opts.Progress = progress.add
				var done completion
				opts.OnComplete = done.hook(dst)
				res, err := Stream(context.Background(), src, dst, opts)
				if err != nil {
					t.Fatal(err)
				}
				if from != "file" && !released.Load() {
					t.Error("the destination received nothing until the download was complete")
				}
				if !bytes.Equal(dst.Bytes(), data) {
					t.Fatalf("the destination got %d bytes, not the %d served", len(dst.Bytes()), len(data))
				}
				want := Result{Format: f, BytesIn: int64(len(data)), BytesOut: int64(len(data)), SHA256: sum(data), Raw: true}
				if res != want {
					t.Errorf("Result %+v, want %+v", res, want)
				}
				if calls, n := done.get(); calls != 1 || n != len(data) {
					t.Errorf("OnComplete called %d times, first with %d bytes in dst; want once with %d", calls, n, len(data))
				}
				checkProgress(t, progress.list(), int64(len(data)))
				if opts.Cache == nil {
					return
				}
				srv.Close() // a hit needs no server
				var again bytes.Buffer
				opts.Progress, opts.OnComplete = nil, nil
				res, err = Stream(context.Background(), src, &again, opts)
				want.FromCache = true
				if err != nil || res != want || !bytes.Equal(again.Bytes(), data) {
					t.Errorf("second Stream: %+v, %v; want %+v", res, err, want)
				}
			})
		}
	}
}

// TestStreamRawIf lets the caller choose by format: zstd as served,
// everything else decompressed; the choice is asked once, with the
// format found from the first bytes.
func TestStreamRawIf(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	for _, f := range allFormats {
		for _, cached := range []bool{false, true} {
			t.Run(fmt.Sprint(f, "/cache=", cached), func(t *testing.T) {
				t.Parallel()
				data := testImage()[f]
				url := srv.put(fmt.Sprintf("/rawif-%s-%v", f, cached), data)
				var asked []Format
				opts := StreamOptions{Retry: testPolicy, RawIf: func(got Format) bool {
					asked = append(asked, got)
					return got == Zstd
				}}
				if cached {
					opts.Cache = newCache(t, 0)
				}
				var buf bytes.Buffer
				res, err := Stream(context.Background(), Source{URL: url}, &buf, opts)
				if err != nil {
					t.Fatal(err)
				}
				want := plain()
				if f == Zstd {
					want = data
				}
				if !bytes.Equal(buf.Bytes(), want) || res.Raw != (f == Zstd) || res.Format != f || res.BytesOut != int64(len(want)) {
					t.Errorf("Result %+v with %d bytes written; want %d bytes, Raw %v", res, buf.Len(), len(want), f == Zstd)
				}
				if len(asked) != 1 || asked[0] != f {
					t.Errorf("RawIf asked about %v, want [%v]", asked, f)
				}
			})
		}
	}
}

// TestStreamRawJoinsDownload: a raw Stream that finds the image being
// downloaded for another waits for it and streams the cached file.
func TestStreamRawJoinsDownload(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := testImage()[Xz]
	url := srv.put("/img.xz", data)
	srv.gate = make(chan struct{})
	c := newCache(t, 0)
	type result struct {
		res Result
		out []byte
		err error
	}
	results := make(chan result, 2)
	stream := func() {
		var buf bytes.Buffer
		res, err := Stream(context.Background(), Source{URL: url}, &buf, StreamOptions{Cache: c, Raw: true})
		results <- result{res, buf.Bytes(), err}
	}
	go stream()
	eventually(t, "the first download", func() bool { return waiters(c, url) == 1 })
	go stream()
	eventually(t, "a second waiter", func() bool { return waiters(c, url) == 2 })
	close(srv.gate)
	fromCache := 0
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !bytes.Equal(r.out, data) || !r.res.Raw || r.res.Format != Xz {
			t.Errorf("Result %+v with %d bytes; want the %d bytes served", r.res, len(r.out), len(data))
		}
		if r.res.FromCache {
			fromCache++
		}
	}
	if fromCache != 1 || srv.count() != 1 {
		t.Errorf("%d streams from the cache and %d requests, want 1 and 1", fromCache, srv.count())
	}
}

// TestStreamRawFailures: a checksum mismatch, a 404 and a failing
// destination fail a raw Stream as they fail a decompressing one, and
// OnComplete is not called.
func TestStreamRawFailures(t *testing.T) {
	t.Parallel()
	data := testImage()[Zstd]
	dstErr := errors.New("the remote dd exited")
	for _, tc := range []struct {
		name string
		path string
		sha  string
		dst  io.Writer
		kind Kind
	}{
		{"checksum", "/img", sum(nil), io.Discard, Checksum},
		{"not found", "/missing", "", io.Discard, NotFound},
		{"destination fails", "/img", "", failingWriter{dstErr}, 0},
	} {
		for _, cached := range []bool{false, true} {
			t.Run(fmt.Sprint(tc.name, "/cache=", cached), func(t *testing.T) {
				t.Parallel()
				srv := newServer(t)
				srv.put("/img", data)
				opts := StreamOptions{Retry: testPolicy, Raw: true}
				if cached {
					opts.Cache = newCache(t, 0)
				}
				completed := 0
				opts.OnComplete = func() { completed++ }
				_, err := Stream(context.Background(), Source{URL: srv.URL + tc.path, SHA256: tc.sha}, tc.dst, opts)
				if tc.kind == 0 {
					if !errors.Is(err, dstErr) {
						t.Errorf("error %v, want the destination's", err)
					}
				} else {
					wantKind(t, err, tc.kind)
				}
				if completed != 0 {
					t.Errorf("OnComplete called %d times for a failed stream", completed)
				}
			})
		}
	}
}

// TestOnCompleteDecompressed: OnComplete also runs once for a
// decompressed stream, with the whole image in dst.
func TestOnCompleteDecompressed(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	url := srv.put("/img.gz", testImage()[Gzip])
	for _, cached := range []bool{false, true} {
		dst := newSyncBuffer()
		opts := StreamOptions{Retry: testPolicy}
		if cached {
			opts.Cache = newCache(t, 0)
		}
		var done completion
		opts.OnComplete = done.hook(dst)
		if _, err := Stream(context.Background(), Source{URL: url}, dst, opts); err != nil {
			t.Fatal(err)
		}
		if calls, n := done.get(); calls != 1 || n != len(plain()) {
			t.Errorf("cache=%v: OnComplete called %d times, first with %d bytes in dst; want once with %d", cached, calls, n, len(plain()))
		}
	}
}

// TestCorruptErrorAndForget: a caller that found an image corrupt
// elsewhere reports it as a Corrupt *Error naming the image, and has the
// cache forget the URL so that the next Open downloads it again.
func TestCorruptErrorAndForget(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	url := srv.put("/img.zst", testImage()[Zstd])
	src := Source{URL: url}
	err := CorruptError(src, Zstd, errors.New("zstdcat on control: Data corruption detected"))
	e := wantKind(t, err, Corrupt)
	if want := "image " + url + ": corrupt zstd stream: zstdcat on control: Data corruption detected"; err.Error() != want {
		t.Errorf("message %q, want %q", err.Error(), want)
	}
	if e.URL != url || errors.Unwrap(err) == nil {
		t.Errorf("error %+v does not name the image or carry its cause", e)
	}

	c := newCache(t, 0)
	for i := range 2 {
		im, err := c.Open(context.Background(), src, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = im.Close()
		if srv.count() != i+1 {
			t.Fatalf("open %d: %d requests", i, srv.count())
		}
		c.Forget(src)
	}
	// Nothing to forget: no panic, no effect.
	var nilCache *Cache
	nilCache.Forget(src)
	c.Forget(Source{Path: "/nonexistent"})
	c.Forget(Source{URL: "ftp://example.com/x"})
	c.Forget(Source{URL: srv.URL + "/never-downloaded"})
}

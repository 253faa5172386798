package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncBuffer is a dst that signals its first write.
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	first chan struct{}
	once  sync.Once
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{first: make(chan struct{})} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.once.Do(func() { close(s.first) })
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.buf.Bytes())
}

// progressLog collects progress reports.
type progressLog struct {
	mu  sync.Mutex
	got []Progress
}

func (p *progressLog) add(pr Progress) {
	p.mu.Lock()
	p.got = append(p.got, pr)
	p.mu.Unlock()
}

func (p *progressLog) list() []Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Progress(nil), p.got...)
}

// holdingServer serves data but holds its last bytes until release is
// closed (or 10 s pass), and records which came first.
func holdingServer(t *testing.T, data []byte, release <-chan struct{}) (*httptest.Server, *atomic.Bool) {
	hold := min(64<<10, len(data)/4)
	var released atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"held"`)
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		_, _ = w.Write(data[:len(data)-hold])
		w.(http.Flusher).Flush()
		select {
		case <-release:
			released.Store(true)
		case <-time.After(10 * time.Second):
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(data[len(data)-hold:])
	}))
	t.Cleanup(srv.Close)
	return srv, &released
}

// TestStreamBeforeDownloadEnds: the destination receives decompressed
// bytes while the server still holds the end of the image; the result is
// exact, progress grows, and with a cache a second Stream is a hit.
func TestStreamBeforeDownloadEnds(t *testing.T) {
	t.Parallel()
	for _, f := range allFormats {
		for _, cached := range []bool{false, true} {
			name := f.String() + "/no cache"
			if cached {
				name = f.String() + "/cache"
			}
			t.Run(name, func(t *testing.T) {
				data := testImage()[f]
				dst := newSyncBuffer()
				srv, released := holdingServer(t, data, dst.first)
				opts := StreamOptions{Retry: testPolicy, Log: testLogger(t)}
				if cached {
					opts.Cache = newCache(t, 0)
				}
				var progress progressLog
				opts.Progress = progress.add
				url := srv.URL + "/" + misleadingName[f]
				res, err := Stream(context.Background(), Source{URL: url, SHA256: sum(data)}, dst, opts)
				if err != nil {
					t.Fatal(err)
				}
				if !released.Load() {
					t.Error("the destination received nothing until the download was complete")
				}
				if !bytes.Equal(dst.Bytes(), plain()) {
					t.Fatalf("the destination got %d bytes, not the original %d", len(dst.Bytes()), len(plain()))
				}
				want := Result{Format: f, BytesIn: int64(len(data)), BytesOut: int64(len(plain())), SHA256: sum(data)}
				if res != want {
					t.Errorf("Result %+v, want %+v", res, want)
				}
				checkProgress(t, progress.list(), int64(len(data)))
				if !cached {
					return
				}
				if files := blobFiles(t, opts.Cache); len(files) != 1 || files[0] != sum(data) {
					t.Errorf("cache holds %v", files)
				}
				again := &bytes.Buffer{}
				srv.Close() // a hit needs no server
				res, err = Stream(context.Background(), Source{URL: url}, again, opts)
				if err != nil {
					t.Fatal(err)
				}
				want.FromCache = true
				if res != want || !bytes.Equal(again.Bytes(), plain()) {
					t.Errorf("second Stream: %+v, want %+v", res, want)
				}
			})
		}
	}
}

// TestStreamJoinsDownload: a Stream that finds the image downloading for
// another waits for it and streams from the cache.
func TestStreamJoinsDownload(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := testImage()[Zstd]
	url := srv.put("/img.zst", data)
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
		res, err := Stream(context.Background(), Source{URL: url}, &buf, StreamOptions{Cache: c})
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
		if !bytes.Equal(r.out, plain()) {
			t.Error("content differs")
		}
		if r.res.FromCache {
			fromCache++
		}
	}
	if fromCache != 1 || srv.count() != 1 {
		t.Errorf("%d streams from the cache and %d requests, want 1 and 1", fromCache, srv.count())
	}
}

// TestStreamNotModified: a revalidated, unchanged URL streams from disk.
func TestStreamNotModified(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := testImage()[Xz]
	url := srv.put("/img.xz", data)
	c := newCache(t, 0, WithMaxAge(-1))
	for i, wantCache := range []bool{false, true} {
		var buf bytes.Buffer
		res, err := Stream(context.Background(), Source{URL: url}, &buf, StreamOptions{Cache: c})
		if err != nil {
			t.Fatal(err)
		}
		if res.FromCache != wantCache || !bytes.Equal(buf.Bytes(), plain()) {
			t.Errorf("stream %d: FromCache %v, %d bytes", i, res.FromCache, buf.Len())
		}
	}
	if reqs := srv.reqs(); len(reqs) != 2 || reqs[1].IfNoneMatch == "" {
		t.Errorf("requests %+v, want a download and a conditional request", reqs)
	}
}

// TestStreamRestart: a server that ignores Range sends the image again
// from the start; the bytes the destination already has are skipped. If
// the image changed meanwhile, the stream fails.
func TestStreamRestart(t *testing.T) {
	t.Parallel()
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprint("cache=", cached), func(t *testing.T) {
			srv := newServer(t)
			data := testImage()[Gzip]
			url := srv.put("/img.gz", data)
			srv.dropFirst = 100 << 10
			srv.ignoreRange = true
			opts := StreamOptions{Retry: testPolicy}
			if cached {
				opts.Cache = newCache(t, 0)
			}
			var buf bytes.Buffer
			if _, err := Stream(context.Background(), Source{URL: url}, &buf, opts); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), plain()) || srv.count() != 2 {
				t.Errorf("%d bytes in %d requests", buf.Len(), srv.count())
			}
		})
	}
	t.Run("changed", func(t *testing.T) {
		data := testImage()[Gzip]
		var n atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				w.Header().Set("ETag", `"v1"`)
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				_, _ = w.Write(data[:100<<10])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}
			w.Header().Set("ETag", `"v2"`)
			_, _ = w.Write(data)
		}))
		defer srv.Close()
		_, err := Stream(context.Background(), Source{URL: srv.URL + "/x"}, io.Discard, StreamOptions{Retry: testPolicy})
		wantKind(t, err, HTTP, "the image changed on the server")
	})
}

func TestStreamErrors(t *testing.T) {
	t.Parallel()
	damaged := bytes.Clone(smallImage()[Xz])
	damaged[len(damaged)/2] ^= 0xFF
	dstErr := errors.New("dd: No space left on device")
	tests := []struct {
		name string
		data []byte // nil: 404
		sha  string
		dst  io.Writer
		kind Kind
		say  string
	}{
		{name: "not found", kind: NotFound, say: "HTTP 404 Not Found"},
		{name: "corrupt", data: damaged, dst: io.Discard, kind: Corrupt, say: "corrupt xz stream at offset "},
		{name: "checksum", data: testImage()[Zstd], sha: sum(nil), dst: io.Discard, kind: Checksum, say: "sha256 mismatch: want " + sum(nil)},
		{name: "destination fails", data: testImage()[Zstd], dst: failingWriter{dstErr}, say: "writing to the destination: " + dstErr.Error()},
	}
	for _, tt := range tests {
		for _, cached := range []bool{false, true} {
			t.Run(fmt.Sprint(tt.name, "/cache=", cached), func(t *testing.T) {
				srv := newServer(t)
				url := srv.URL + "/img"
				if tt.data != nil {
					srv.put("/img", tt.data)
				}
				opts := StreamOptions{Retry: testPolicy}
				if cached {
					opts.Cache = newCache(t, 0)
				}
				dst := tt.dst
				if dst == nil {
					dst = io.Discard
				}
				_, err := Stream(context.Background(), Source{URL: url, SHA256: tt.sha}, dst, opts)
				if tt.kind == 0 {
					if !errors.Is(err, dstErr) || KindOf(err) != 0 {
						t.Fatalf("error %v, want the destination's error", err)
					}
					if got := err.Error(); got != "image "+url+": "+tt.say {
						t.Errorf("error %q", got)
					}
				} else {
					wantKind(t, err, tt.kind, tt.say)
				}
				if cached {
					if left := tmpFiles(t, opts.Cache); len(left) != 0 {
						t.Errorf("partial files left: %v", left)
					}
				}
			})
		}
	}
}

// TestCorruptForgotten: after a corrupt stream the cache downloads the
// URL again rather than serve the same bytes.
func TestCorruptForgotten(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	damaged := bytes.Clone(smallImage()[Zstd])
	damaged[len(damaged)/2] ^= 0xFF
	url := srv.put("/img", damaged)
	c := newCache(t, 0)
	for i := range 2 {
		_, err := Stream(context.Background(), Source{URL: url}, io.Discard, StreamOptions{Cache: c})
		wantKind(t, err, Corrupt, "corrupt zstd stream")
		if srv.count() != i+1 {
			t.Fatalf("stream %d: %d requests", i, srv.count())
		}
	}
	im, err := c.Open(context.Background(), Source{URL: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	rc, _, err := im.Reader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	wantKind(t, err, Corrupt)
	n := srv.count()
	im2, err := c.Open(context.Background(), Source{URL: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	im2.Close()
	if srv.count() != n+1 {
		t.Error("Open after a corrupt Reader did not download again")
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// TestStreamCancel cancels a Stream mid-download.
func TestStreamCancel(t *testing.T) {
	t.Parallel()
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprint("cache=", cached), func(t *testing.T) {
			data := testImage()[Zstd]
			dst := newSyncBuffer()
			never := make(chan struct{})
			srv, _ := holdingServer(t, data, never)
			opts := StreamOptions{Retry: testPolicy}
			if cached {
				opts.Cache = newCache(t, 0)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := Stream(ctx, Source{URL: srv.URL + "/x"}, dst, opts)
				errc <- err
			}()
			select {
			case <-dst.first:
			case <-time.After(10 * time.Second):
				t.Fatal("nothing streamed")
			}
			cancel()
			select {
			case err := <-errc:
				wantKind(t, err, Canceled)
			case <-time.After(2 * time.Second):
				t.Fatal("Stream did not return within 2 s of cancel")
			}
			if cached {
				if left := tmpFiles(t, opts.Cache); len(left) != 0 {
					t.Errorf("partial files left: %v", left)
				}
			}
		})
	}
}

// TestStreamFile streams attachments, checking their sha256 at the end.
func TestStreamFile(t *testing.T) {
	t.Parallel()
	data := testImage()[Gzip]
	path := filepath.Join(t.TempDir(), "image.img.bz2")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res, err := Stream(context.Background(), Source{Path: path, SHA256: sum(data)}, &buf, StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Format: Gzip, BytesIn: int64(len(data)), BytesOut: int64(len(plain())), SHA256: sum(data)}
	if res != want || !bytes.Equal(buf.Bytes(), plain()) {
		t.Errorf("Result %+v, want %+v", res, want)
	}
	_, err = Stream(context.Background(), Source{Path: path, SHA256: sum(nil)}, io.Discard, StreamOptions{})
	wantKind(t, err, Checksum, "sha256 mismatch")
	_, err = Stream(context.Background(), Source{Path: path + ".missing"}, io.Discard, StreamOptions{})
	wantKind(t, err, NotFound, "no such file")
}

// BenchmarkStreamZstd streams a 256 MiB image, zstd-compressed, from an
// HTTP server through the decompressor to io.Discard; MB/s is of
// decompressed bytes.
func BenchmarkStreamZstd(b *testing.B) {
	const size = 256 << 20
	data := compress(b, Zstd, genData(42, size))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	b.SetBytes(size)
	for b.Loop() {
		res, err := Stream(context.Background(), Source{URL: srv.URL + "/img.zst"}, io.Discard, StreamOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if res.BytesOut != size {
			b.Fatalf("%d bytes out", res.BytesOut)
		}
	}
	b.ReportMetric(float64(size)/float64(len(data)), "ratio")
}

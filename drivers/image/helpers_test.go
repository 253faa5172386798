package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// testSize is the size of the uncompressed test image.
const testSize = 3 << 20

// genData returns n bytes of pseudo-random but compressible data: words
// from a small vocabulary, some runs of zeros and some random bytes.
func genData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	words := make([][]byte, 512)
	for i := range words {
		w := make([]byte, 2+rng.IntN(10))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = w
	}
	out := make([]byte, 0, n+64)
	for len(out) < n {
		switch r := rng.IntN(100); {
		case r < 2:
			out = append(out, make([]byte, rng.IntN(4096))...)
		case r < 4:
			for range rng.IntN(64) {
				out = append(out, byte(rng.Uint32()))
			}
		default:
			out = append(out, words[rng.IntN(len(words))]...)
			out = append(out, ' ')
		}
	}
	return out[:n]
}

// compress compresses data as f with the libraries the package reads with
// (bzip2 through the reference command, since the standard library only
// decompresses).
func compress(tb testing.TB, f Format, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch f {
	case Raw:
		return bytes.Clone(data)
	case Gzip:
		w, err = gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	case Zstd:
		w, err = zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	case Xz:
		w, err = xz.NewWriter(&buf)
	case Bzip2:
		return bzip2Compress(tb, data)
	}
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

var allFormats = []Format{Raw, Gzip, Xz, Zstd, Bzip2}

// misleadingName is a file name that suggests another compression than f.
var misleadingName = map[Format]string{
	Raw:   "image.img.xz",
	Gzip:  "image.img.zst",
	Xz:    "image.img.gz",
	Zstd:  "image.img.bz2",
	Bzip2: "image.img",
}

// testImage is the shared test image, in every format.
var testImage = sync.OnceValue(func() map[Format][]byte {
	data := genData(1, testSize)
	out := map[Format][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, f := range allFormats {
		wg.Go(func() {
			c := compress(panicTB{}, f, data)
			mu.Lock()
			out[f] = c
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
})

// plain is the uncompressed test image.
func plain() []byte { return testImage()[Raw] }

// smallImage is a 256 KiB image in every format, for tests that only need
// a valid stream to damage.
var smallImage = sync.OnceValue(func() map[Format][]byte {
	data := genData(2, 256<<10)
	out := map[Format][]byte{}
	for _, f := range allFormats {
		out[f] = compress(panicTB{}, f, data)
	}
	return out
})

// panicTB is enough of testing.TB for compress outside a test.
type panicTB struct{ testing.TB }

func (panicTB) Helper()           {}
func (panicTB) Fatal(args ...any) { panic(fmt.Sprint(args...)) }

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// testPolicy retries quickly.
var testPolicy = RetryPolicy{Retries: 3, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}

// request is what the test server saw of one request.
type request struct {
	Path, Range, IfRange, IfNoneMatch string
}

// server serves files from memory with ETag, Last-Modified and Range
// support (http.ServeContent), and can misbehave.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	files    map[string]serverFile
	requests []request
	// dropAfter, if > 0, drops every connection after this many body bytes.
	dropAfter int64
	// dropFirst, if > 0, drops the first connection after this many body bytes.
	dropFirst int64
	// ignoreRange serves the whole file to Range requests.
	ignoreRange bool
	// gate, if not nil, holds every response until it is closed.
	gate chan struct{}
	// aborted counts requests whose client went away while held.
	aborted int
}

type serverFile struct {
	data    []byte
	etag    string
	modtime time.Time
}

func newServer(t testing.TB) *server {
	s := &server{files: map[string]serverFile{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// put serves data at path, with an ETag derived from its content.
func (s *server) put(path string, data []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = serverFile{data: data, etag: `"` + sum(data)[:16] + `"`, modtime: time.Unix(1_700_000_000+int64(len(s.files)), 0)}
	return s.URL + path
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, request{Path: r.URL.Path, Range: r.Header.Get("Range"),
		IfRange: r.Header.Get("If-Range"), IfNoneMatch: r.Header.Get("If-None-Match")})
	f, ok := s.files[r.URL.Path]
	drop, ignore, gate := s.dropAfter, s.ignoreRange, s.gate
	if len(s.requests) == 1 && s.dropFirst > 0 {
		drop = s.dropFirst
	}
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			s.mu.Lock()
			s.aborted++
			s.mu.Unlock()
			return
		}
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	if ignore {
		r.Header.Del("Range")
	}
	w.Header().Set("ETag", f.etag)
	if drop > 0 {
		w = &droppingWriter{ResponseWriter: w, left: drop}
	}
	http.ServeContent(w, r, "", f.modtime, bytes.NewReader(f.data))
}

func (s *server) reqs() []request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]request(nil), s.requests...)
}

func (s *server) count() int { return len(s.reqs()) }

func (s *server) abortedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.aborted
}

// droppingWriter drops the connection once it has written left bytes.
type droppingWriter struct {
	http.ResponseWriter
	left int64
}

func (d *droppingWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= d.left {
		d.left -= int64(len(p))
		return d.ResponseWriter.Write(p)
	}
	n, _ := d.ResponseWriter.Write(p[:d.left])
	d.left = 0
	d.ResponseWriter.(http.Flusher).Flush()
	_ = n
	panic(http.ErrAbortHandler)
}

// newCache returns a cache in a fresh directory, closed at the end of the test.
func newCache(t testing.TB, maxBytes int64, opts ...Option) *Cache {
	t.Helper()
	opts = append([]Option{WithRetryPolicy(testPolicy)}, opts...)
	c, err := NewCache(t.TempDir(), maxBytes, nil, testLogger(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// readAll reads im decompressed.
func readAll(t testing.TB, im *Image) ([]byte, Format) {
	t.Helper()
	rc, f, err := im.Reader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %s: %v", f, err)
	}
	return b, f
}

// wantKind fails the test unless err is an *Error of kind k whose message
// contains each of parts.
func wantKind(t testing.TB, err error, k Kind, parts ...string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want an *Error of kind %v", err, err, k)
	}
	if e.Kind != k {
		t.Fatalf("error kind = %v (%v), want %v", e.Kind, err, k)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
	return e
}

// tmpFiles lists what is left in the cache's tmp directory.
func tmpFiles(t testing.TB, c *Cache) []string {
	t.Helper()
	es, err := os.ReadDir(c.tmpDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// blobFiles lists the cached image files.
func blobFiles(t testing.TB, c *Cache) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(c.blobDir(), "*"))
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		names[i] = filepath.Base(n)
	}
	return names
}

// eventually waits up to 10 s for cond.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

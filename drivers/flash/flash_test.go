package flash_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

const dev = "/dev/sda"

// dial logs in to h.
func dial(t *testing.T, h *sim.DUT) *sshx.Client {
	t.Helper()
	c, err := sshx.Dial(t.Context(), sshx.Config{Addr: h.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()), KeepAlive: -1}, "control")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// host starts a simulated control host with a disk at dev and returns a
// client logged in to it.
func host(t *testing.T, f sim.Faults) (*sim.DUT, *sim.Disk, *sshx.Client) {
	t.Helper()
	h, disk := startHost(t, f)
	return h, disk, dial(t, h)
}

// startHost starts a simulated control host with a disk at dev.
func startHost(t *testing.T, f sim.Faults) (*sim.DUT, *sim.Disk) {
	t.Helper()
	disk := sim.NewDisk(dev, 0)
	h, err := sim.StartDUT(t.Context(), sim.DUTOptions{
		Name: "control", Users: map[string]string{"ubuntu": "ubuntu"}, Faults: f,
		Disks: map[string]*sim.Disk{dev: disk},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, disk
}

// farSide replaces a host's decompressors (zstdcat, zcat, xzcat, bzcat)
// with ones that record that they ran and signal once the first
// decompressed bytes have reached the next stage (dd).
type farSide struct {
	mu    sync.Mutex
	runs  map[string]int
	first chan struct{}
	once  sync.Once
}

func installFarSide(h *sim.DUT) *farSide {
	f := &farSide{runs: map[string]int{}, first: make(chan struct{})}
	for _, format := range []image.Format{image.Gzip, image.Xz, image.Zstd, image.Bzip2} {
		name := format.Cat()
		h.Handle(name, func(_ context.Context, x *sim.Exec) int {
			f.mu.Lock()
			f.runs[name]++
			f.mu.Unlock()
			r, err := image.Decompress(format, x.Stdin)
			if err != nil {
				return x.Errorf(1, "(stdin): %v", err)
			}
			defer r.Close()
			if _, err := io.Copy(&signalWriter{w: x.Stdout, f: f}, r); err != nil {
				return x.Errorf(1, "(stdin): %v", err)
			}
			return 0
		})
	}
	return f
}

// ran returns how many times each decompressor ran.
func (f *farSide) ran() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.runs {
		out[k] = v
	}
	return out
}

// signalWriter closes f.first once a write to w has returned: the next
// stage of the pipeline has read it.
type signalWriter struct {
	w io.Writer
	f *farSide
}

func (s *signalWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if n > 0 {
		s.f.once.Do(func() { close(s.f.first) })
	}
	return n, err
}

// compress compresses b as f.
func compress(t *testing.T, f image.Format, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch f {
	case image.Raw:
		return b
	case image.Zstd:
		w, err = zstd.NewWriter(&buf)
	case image.Gzip:
		w, err = gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	case image.Xz:
		w, err = xz.NewWriter(&buf)
	default:
		t.Fatalf("no compressor for %s in the tests", f)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bzip2Text is bzip2Plain() compressed by bzip2 -9 (the module has no
// bzip2 compressor).
const bzip2Text = "425a68393141592653595358467c015fffd98000104000100033e55c103000f802869a6000a1a698000aaa0d32643c524000c800100007400040001f000180003d0003000070000760004000120005c000a0002400050000a00024000dc000b8001900028000fc5dc914e142414d6119f0"

// bzip2Plain is what bzip2Text decompresses to.
func bzip2Plain() []byte { return bytes.Repeat([]byte("flinger flash bzip2 test\n"), 16384) }

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// server serves files by path and counts the requests for each.
type server struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	reqs  map[string]int
}

func newServer(t *testing.T) *server {
	t.Helper()
	s := &server{files: map[string][]byte{}, reqs: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		body, ok := s.files[r.URL.Path]
		s.reqs[r.URL.Path]++
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Unix(0, 0), bytes.NewReader(body))
	}))
	t.Cleanup(s.Close)
	return s
}

// put serves body at path and returns its URL.
func (s *server) put(path string, body []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = body
	return s.URL + path
}

// requests returns how many requests path has had.
func (s *server) requests(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[path]
}

func newCache(t *testing.T) *image.Cache {
	t.Helper()
	c, err := image.NewCache(t.TempDir(), 1<<30, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// progressLog collects progress reports.
type progressLog struct {
	mu  sync.Mutex
	got []image.Progress
}

func (p *progressLog) add(pr image.Progress) { p.mu.Lock(); p.got = append(p.got, pr); p.mu.Unlock() }

func (p *progressLog) list() []image.Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]image.Progress(nil), p.got...)
}

// TestWriteFormats writes an image of every format in every mode, from a
// URL through a cache and from an attachment, and checks where it was
// decompressed, what reached the disk and what the Result says.
func TestWriteFormats(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 1<<20 + 4321, Seed: 1}
	srv := newServer(t)
	type input struct {
		plain, served []byte
	}
	inputs := map[image.Format]input{}
	for _, f := range []image.Format{image.Raw, image.Gzip, image.Xz, image.Zstd} {
		inputs[f] = input{im.Bytes(), compress(t, f, im.Bytes())}
	}
	bz, err := hex.DecodeString(bzip2Text)
	if err != nil {
		t.Fatal(err)
	}
	inputs[image.Bzip2] = input{bzip2Plain(), bz}

	for _, format := range []image.Format{image.Raw, image.Gzip, image.Xz, image.Zstd, image.Bzip2} {
		in := inputs[format]
		url := srv.put("/image."+format.String(), in.served)
		attachment := filepath.Join(t.TempDir(), "image."+format.String())
		if err := os.WriteFile(attachment, in.served, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, mode := range []flash.Mode{flash.Auto, flash.Local, flash.Remote} {
			// Auto decompresses zstd and gzip on the far side, the
			// others here; Remote every compressed format there.
			wantRemote := format != image.Raw && (mode == flash.Remote || mode == flash.Auto && (format == image.Zstd || format == image.Gzip))
			if mode.FarSide(format) != (wantRemote || format == image.Raw && mode == flash.Remote) {
				t.Errorf("%v.FarSide(%v) = %v", mode, format, mode.FarSide(format))
			}
			for _, fromURL := range []bool{true, false} {
				name := fmt.Sprintf("%s/%s/attachment", format, mode)
				src := image.Source{Path: attachment}
				if fromURL {
					name = fmt.Sprintf("%s/%s/url", format, mode)
					src = image.Source{URL: url, SHA256: sum(in.served)}
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					h, disk, c := host(t, sim.Faults{})
					far := installFarSide(h)
					var out bytes.Buffer
					var progress progressLog
					opts := flash.Options{Device: dev, Sudo: true, Decompress: mode, Out: &out, Progress: progress.add}
					if fromURL {
						opts.Cache = newCache(t)
					}
					res, err := flash.Write(t.Context(), c, src, opts)
					if err != nil {
						t.Fatalf("Write: %v\n%s", err, out.String())
					}
					if last := disk.Last(); !last.Complete || last.SHA256 != sum(in.plain) || last.Bytes != int64(len(in.plain)) {
						t.Errorf("disk holds %d bytes (complete %v); want the %d bytes of the image", last.Bytes, last.Complete, len(in.plain))
					}
					if res.Remote != wantRemote {
						t.Errorf("Remote = %v, want %v", res.Remote, wantRemote)
					}
					wantRuns := map[string]int{}
					if wantRemote {
						wantRuns[format.Cat()] = 1
					}
					if got := far.ran(); fmt.Sprint(got) != fmt.Sprint(wantRuns) {
						t.Errorf("the far side ran %v, want %v", got, wantRuns)
					}
					want := image.Result{Format: format, BytesIn: int64(len(in.served)), BytesOut: int64(len(in.plain)),
						SHA256: sum(in.served), Raw: mode.FarSide(format)}
					if res.Result != want {
						t.Errorf("Result %+v, want %+v", res.Result, want)
					}
					if res.Elapsed <= 0 {
						t.Errorf("Elapsed = %v", res.Elapsed)
					}
					if !strings.Contains(out.String(), "bytes copied") {
						t.Errorf("dd's summary missing from the output: %q", out.String())
					}
					reports := progress.list()
					if len(reports) == 0 || reports[len(reports)-1].BytesIn != int64(len(in.served)) {
						t.Fatalf("progress reports: %+v", reports)
					}
					// Decompressed on the far side, the bytes written are
					// known from dd when it exits, in the last report.
					for _, p := range reports[:len(reports)-1] {
						if wantRemote && p.BytesOut != 0 {
							t.Errorf("progress reports %d bytes written while the far side decompresses", p.BytesOut)
						}
					}
					if last := reports[len(reports)-1]; last.BytesOut != int64(len(in.plain)) {
						t.Errorf("last progress report %+v, want %d bytes written", last, len(in.plain))
					}
				})
			}
		}
	}
}

// TestWriteEmptyImage: an empty attachment still runs dd, which writes
// nothing.
func TestWriteEmptyImage(t *testing.T) {
	t.Parallel()
	empty := filepath.Join(t.TempDir(), "empty.img")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, disk, c := host(t, sim.Faults{})
	res, err := flash.Write(t.Context(), c, image.Source{Path: empty}, flash.Options{Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesOut != 0 || res.Remote || disk.Writes() != 1 {
		t.Errorf("Result %+v, %d writes to the disk; want dd run once with nothing to write", res, disk.Writes())
	}
}

// TestRemoteStreams: with the far side decompressing, dd receives the
// image while the server still holds its end back, and the cache is
// filled by that same download.
func TestRemoteStreams(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 6 << 20, Seed: 5}
	z := compress(t, image.Zstd, im.Bytes())
	h, disk, c := host(t, sim.Faults{})
	far := installFarSide(h)
	var requests, released atomic.Int64
	held := len(z) / 4
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Length", fmt.Sprint(len(z)))
		_, _ = w.Write(z[:len(z)-held])
		w.(http.Flusher).Flush()
		select {
		case <-far.first:
			released.Store(1)
		case <-time.After(20 * time.Second):
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(z[len(z)-held:])
	}))
	t.Cleanup(srv.Close)
	cache := newCache(t)
	src := image.Source{URL: srv.URL + "/image.zst"}
	res, err := flash.Write(t.Context(), c, src, flash.Options{Device: dev, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	if released.Load() != 1 {
		t.Error("dd received nothing until the server had sent the whole image")
	}
	if !res.Remote || disk.Last().SHA256 != im.SHA256() || res.BytesOut != im.Size {
		t.Errorf("Result %+v, disk %+v; want the image decompressed on the far side", res, disk.Last())
	}
	// The same download filled the cache: a second write needs no server.
	srv.Close()
	res, err = flash.Write(t.Context(), c, src, flash.Options{Device: dev, Cache: cache})
	if err != nil || !res.FromCache || disk.Last().SHA256 != im.SHA256() {
		t.Errorf("second Write: %+v, %v; want it from the cache", res, err)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("%d requests for the image, want 1", n)
	}
}

// TestFallbackWithoutDecompressor: a far side without zstdcat makes Write
// say so and decompress here instead, streaming again from the cache (or
// the attachment) rather than downloading again where there is a cache.
func TestFallbackWithoutDecompressor(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 2 << 20, Seed: 6}
	z := compress(t, image.Zstd, im.Bytes())
	srv := newServer(t)
	attachment := filepath.Join(t.TempDir(), "image.zst")
	if err := os.WriteFile(attachment, z, 0o644); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name         string
		fromURL      bool
		cache        bool
		mode         flash.Mode
		wantRequests int
	}{
		{"url with a cache, auto", true, true, flash.Auto, 1},
		{"url with a cache, remote", true, true, flash.Remote, 1},
		{"url without a cache", true, false, flash.Auto, 2},
		{"attachment", false, false, flash.Auto, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, disk := startHost(t, sim.Faults{})
			var missing atomic.Int64
			h.Handle("zstdcat", func(_ context.Context, x *sim.Exec) int {
				missing.Add(1)
				fmt.Fprintln(x.Stderr, "bash: line 1: zstdcat: command not found")
				return 127
			})
			c := dial(t, h)
			// Each case counts the requests on a path of its own.
			path := fmt.Sprintf("/image-%d.zst", i)
			src := image.Source{Path: attachment}
			if tc.fromURL {
				src = image.Source{URL: srv.put(path, z)}
			}
			var out bytes.Buffer
			opts := flash.Options{Device: dev, Sudo: true, Decompress: tc.mode, Out: &out}
			if tc.cache {
				opts.Cache = newCache(t)
			}
			res, err := flash.Write(t.Context(), c, src, opts)
			if err != nil {
				t.Fatalf("Write: %v\n%s", err, out.String())
			}
			if res.Remote || disk.Last().SHA256 != im.SHA256() || !disk.Last().Complete {
				t.Errorf("Result %+v, disk %+v; want the image decompressed here", res, disk.Last())
			}
			if !strings.Contains(out.String(), "zstdcat is not installed on control: decompressing the zstd image here") {
				t.Errorf("the output does not say why the image is decompressed here:\n%s", out.String())
			}
			if missing.Load() != 1 {
				t.Errorf("zstdcat was tried %d times, want once", missing.Load())
			}
			if tc.fromURL {
				if n := srv.requests(path); n != tc.wantRequests {
					t.Errorf("%d requests for the image, want %d", n, tc.wantRequests)
				}
			}
		})
	}
}

// TestWriteFailures checks the typed outcome of every failure, with the
// image decompressed here and on the far side.
func TestWriteFailures(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 8 << 20, Seed: 2}
	srv := newServer(t)
	good := srv.put("/image.zst", compress(t, image.Zstd, im.Bytes()))
	isKind := func(k image.Kind) func(error) bool {
		return func(err error) bool {
			var ie *image.Error
			return errors.As(err, &ie) && ie.Kind == k
		}
	}
	for _, tc := range []struct {
		name   string
		src    image.Source
		device string
		fault  func(*sim.DUT, *sim.Disk)
		check  func(error) bool
		what   string
	}{
		{"404", image.Source{URL: srv.URL + "/missing.zst"}, dev, nil, isKind(image.NotFound), "an *image.Error NotFound"},
		{"sha256 mismatch", image.Source{URL: good, SHA256: sum(nil)}, dev, nil, func(err error) bool {
			return isKind(image.Checksum)(err) && strings.Contains(err.Error(), "sha256 mismatch")
		}, "an *image.Error Checksum"},
		{"dd fails half way", image.Source{URL: good}, dev, func(_ *sim.DUT, d *sim.Disk) { d.FailAfter(3 << 20) }, func(err error) bool {
			var we *flash.WriteError
			return errors.As(err, &we) && strings.Contains(we.Stderr, "Input/output error") && we.Device == dev && we.Status == 1
		}, "a *flash.WriteError with dd's I/O error"},
		{"no such device", image.Source{URL: good}, "/dev/sdz", nil, func(err error) bool {
			var we *flash.WriteError
			return errors.As(err, &we) && strings.Contains(we.Stderr, "/dev/sdz")
		}, "a *flash.WriteError naming the device"},
		{"link drops", image.Source{URL: good}, dev, func(h *sim.DUT, d *sim.Disk) {
			d.SetRate(8 << 20)
			h.SetFaults(sim.Faults{DropAfter: 300 * time.Millisecond})
		}, func(err error) bool {
			var we *flash.WriteError
			var ie *image.Error
			return err != nil && !errors.As(err, &we) && !errors.As(err, &ie) && strings.Contains(err.Error(), "ssh")
		}, "a connection error"},
	} {
		for _, mode := range []flash.Mode{flash.Local, flash.Remote} {
			t.Run(tc.name+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				h, disk := startHost(t, sim.Faults{})
				if tc.fault != nil {
					tc.fault(h, disk)
				}
				// Dial after the fault, so DropAfter applies to this connection.
				c := dial(t, h)
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				var out bytes.Buffer
				_, err := flash.Write(ctx, c, tc.src, flash.Options{Device: tc.device, Decompress: mode, Cache: newCache(t), Out: &out})
				if !tc.check(err) {
					t.Errorf("Write = %v (%T); want %s\n%s", err, err, tc.what, out.String())
				}
				if tc.name == "404" && disk.Writes() != 0 {
					t.Errorf("dd ran (%d writes) for an image that could not be fetched", disk.Writes())
				}
				if _, berr := sim.Bootable(disk.Last()); berr == nil {
					t.Error("the disk holds a bootable image after a failed write")
				}
			})
		}
	}
}

// TestCorruptImage: a corrupt zstd image fails with an *image.Error of
// kind Corrupt wherever it is decompressed, and the cache forgets the URL,
// so that the next Write downloads it again. Decompressed here, dd is
// stopped before the end; on the far side the decompressor's message is
// carried in the error.
func TestCorruptImage(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 8 << 20, Seed: 2}
	z := compress(t, image.Zstd, im.Bytes())
	// A damaged header of a compressed block, which zstd notices at once.
	corrupt := bytes.Clone(z)
	for i := len(corrupt) / 2; i < len(corrupt)/2+4096; i++ {
		corrupt[i] = 0xFF
	}
	for _, mode := range []flash.Mode{flash.Local, flash.Auto, flash.Remote} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			srv := newServer(t)
			url := srv.put("/image.zst", corrupt)
			_, disk, c := host(t, sim.Faults{})
			cache := newCache(t)
			var out bytes.Buffer
			for attempt := 1; attempt <= 2; attempt++ {
				res, err := flash.Write(t.Context(), c, image.Source{URL: url}, flash.Options{Device: dev, Decompress: mode, Cache: cache, Out: &out})
				var ie *image.Error
				if !errors.As(err, &ie) || ie.Kind != image.Corrupt || ie.URL != url || !strings.Contains(err.Error(), "corrupt zstd stream") {
					t.Fatalf("attempt %d: Write = %v (%T); want an *image.Error Corrupt naming the image\n%s", attempt, err, err, out.String())
				}
				if mode != flash.Local && !strings.Contains(err.Error(), "zstdcat on control") {
					t.Errorf("attempt %d: %v does not carry the far side's message", attempt, err)
				}
				if res.Remote {
					t.Errorf("attempt %d: a failed write reports Remote", attempt)
				}
				if n := srv.requests("/image.zst"); n != attempt {
					t.Errorf("attempt %d: %d downloads of the image, want %d: the cache did not forget it", attempt, n, attempt)
				}
			}
			if mode == flash.Local {
				if last := disk.Last(); last.Complete {
					t.Errorf("the disk holds a complete write (%d bytes) of a corrupt image decompressed here", last.Bytes)
				}
			}
		})
	}
}

// TestWriteCancel cancels a write while dd is writing, and while the far
// side's decompressor waits for more of an image the server holds back:
// Write returns promptly with the context's error and the disk is left
// incomplete.
func TestWriteCancel(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 16 << 20, Seed: 3}
	z := compress(t, image.Zstd, im.Bytes())
	srv := newServer(t)
	url := srv.put("/image.zst", z)
	// held serves the first half of the image, then nothing until the
	// client goes away.
	held := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(z)))
		_, _ = w.Write(z[:len(z)/2])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(held.Close)
	for _, tc := range []struct {
		name string
		url  string
		mode flash.Mode
		// rate limits the disk (0: none): 4 MiB/s is four seconds for the
		// whole image, written by dd in blocks of a quarter of a second
		// (the simulated disk writes a block whole).
		rate int64
	}{
		{"local, writing", url, flash.Local, 4 << 20},
		{"remote, writing", url, flash.Remote, 4 << 20},
		{"local, downloading", held.URL + "/image.zst", flash.Local, 0},
		{"remote, downloading", held.URL + "/image.zst", flash.Remote, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, disk, c := host(t, sim.Faults{})
			disk.SetRate(tc.rate)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := flash.Write(ctx, c, image.Source{URL: tc.url}, flash.Options{Device: dev, BlockSize: "1M", Decompress: tc.mode, Cache: newCache(t)})
				done <- err
			}()
			deadline := time.Now().Add(20 * time.Second)
			for disk.Last().Bytes == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Write after cancel = %v, want context.Canceled", err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("Write took %v to return after cancel", d)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Write did not return within 10 s of its context being cancelled")
			}
			if last := disk.Last(); last.Complete || last.Bytes == 0 {
				t.Errorf("a cancelled write left the disk complete or untouched (%d bytes, complete %v)", last.Bytes, last.Complete)
			}
		})
	}
}

func TestSharedCacheDownloadsOnce(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 2 << 20, Seed: 4}
	srv := newServer(t)
	url := srv.put("/image.zst", compress(t, image.Zstd, im.Bytes()))
	cache := newCache(t)
	const devices = 5
	var wg sync.WaitGroup
	errs := make([]error, devices)
	disks := make([]*sim.Disk, devices)
	for i := range devices {
		_, disk, c := host(t, sim.Faults{})
		disks[i] = disk
		wg.Go(func() {
			_, errs[i] = flash.Write(t.Context(), c, image.Source{URL: url}, flash.Options{Device: dev, Cache: cache})
		})
	}
	wg.Wait()
	for i := range devices {
		if errs[i] != nil {
			t.Errorf("device %d: %v", i, errs[i])
		} else if disks[i].Last().SHA256 != im.SHA256() {
			t.Errorf("device %d: wrong bytes written", i)
		}
	}
	if n := srv.requests("/image.zst"); n != 1 {
		t.Errorf("%d devices made %d requests for the image, want 1", devices, n)
	}
}

func TestParseMode(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]flash.Mode{"": flash.Auto, "auto": flash.Auto, "Local": flash.Local, "remote": flash.Remote} {
		if got, err := flash.ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := flash.ParseMode("both"); err == nil || !strings.Contains(err.Error(), "decompress") {
		t.Errorf("ParseMode(both) = %v, want an error naming decompress", err)
	}
}

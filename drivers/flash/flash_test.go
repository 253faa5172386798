package flash_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

const dev = "/dev/sda"

// host starts a simulated control host with a disk at dev and returns a
// client logged in to it.
func host(t *testing.T, f sim.Faults) (*sim.DUT, *sim.Disk, *sshx.Client) {
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
	c, err := sshx.Dial(t.Context(), sshx.Config{Addr: h.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()), KeepAlive: -1}, "control")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return h, disk, c
}

func compress(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// server serves body at /image.zst and counts requests.
func server(t *testing.T, body []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/image.zst" {
			http.NotFound(w, r)
			return
		}
		n.Add(1)
		http.ServeContent(w, r, "image.zst", time.Unix(0, 0), bytes.NewReader(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
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

func TestWrite(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 3 << 20, Seed: 1}
	raw := im.Bytes()
	z := compress(t, raw)
	srv, _ := server(t, z)
	attachment := filepath.Join(t.TempDir(), "image.zst")
	if err := os.WriteFile(attachment, z, 0o644); err != nil {
		t.Fatal(err)
	}
	rawFile := filepath.Join(t.TempDir(), "image.img")
	if err := os.WriteFile(rawFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		src        image.Source
		mode       flash.Mode
		cache      bool
		wantRemote bool
	}{
		{"url local", image.Source{URL: srv.URL + "/image.zst"}, flash.Auto, false, false},
		{"url local cached", image.Source{URL: srv.URL + "/image.zst"}, flash.Local, true, false},
		{"url remote", image.Source{URL: srv.URL + "/image.zst"}, flash.Remote, true, true},
		{"attachment local", image.Source{Path: attachment}, flash.Local, false, false},
		{"attachment remote", image.Source{Path: attachment}, flash.Remote, false, true},
		{"raw attachment remote", image.Source{Path: rawFile}, flash.Remote, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, disk, c := host(t, sim.Faults{})
			var out bytes.Buffer
			var mu sync.Mutex
			var reports []image.Progress
			opts := flash.Options{Device: dev, Sudo: true, Decompress: tc.mode, Out: &out,
				Progress: func(p image.Progress) { mu.Lock(); reports = append(reports, p); mu.Unlock() }}
			if tc.cache {
				opts.Cache = newCache(t)
			}
			res, err := flash.Write(t.Context(), c, tc.src, opts)
			if err != nil {
				t.Fatalf("Write: %v\n%s", err, out.String())
			}
			last := disk.Last()
			if !last.Complete || last.SHA256 != im.SHA256() {
				t.Errorf("disk holds %d bytes (complete %v), sha %s; want the image", last.Bytes, last.Complete, last.SHA256)
			}
			if res.Remote != tc.wantRemote {
				t.Errorf("Remote = %v, want %v", res.Remote, tc.wantRemote)
			}
			if !strings.Contains(out.String(), "bytes copied") {
				t.Errorf("dd's summary missing from the output: %q", out.String())
			}
			mu.Lock()
			defer mu.Unlock()
			if len(reports) == 0 || reports[len(reports)-1].BytesIn == 0 {
				t.Errorf("progress reports: %+v", reports)
			}
		})
	}
}

func TestWriteFailures(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 8 << 20, Seed: 2}
	z := compress(t, im.Bytes())
	srv, _ := server(t, z)
	corrupt := append([]byte(nil), z...)
	for i := len(corrupt) / 2; i < len(corrupt)/2+64; i++ {
		corrupt[i] ^= 0xFF
	}
	badSrv, _ := server(t, corrupt)
	for _, tc := range []struct {
		name  string
		url   string
		fault func(*sim.DUT, *sim.Disk)
		check func(error) bool
		what  string
	}{
		{"404", srv.URL + "/missing.zst", nil, func(err error) bool {
			var ie *image.Error
			return errors.As(err, &ie) && ie.Kind == image.NotFound
		}, "an *image.Error NotFound"},
		{"corrupt", badSrv.URL + "/image.zst", nil, func(err error) bool {
			var ie *image.Error
			return errors.As(err, &ie) && ie.Kind == image.Corrupt
		}, "an *image.Error Corrupt"},
		{"dd fails half way", srv.URL + "/image.zst", func(_ *sim.DUT, d *sim.Disk) { d.FailAfter(3 << 20) }, func(err error) bool {
			var we *flash.WriteError
			return errors.As(err, &we) && strings.Contains(we.Stderr, "Input/output error") && we.Device == dev
		}, "a *flash.WriteError with dd's I/O error"},
		{"link drops", srv.URL + "/image.zst", func(h *sim.DUT, d *sim.Disk) {
			d.SetRate(8 << 20)
			h.SetFaults(sim.Faults{DropAfter: 300 * time.Millisecond})
		}, func(err error) bool {
			var we *flash.WriteError
			return err != nil && !errors.As(err, &we)
		}, "a connection error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, disk, _ := host(t, sim.Faults{})
			if tc.fault != nil {
				tc.fault(h, disk)
			}
			// Dial after the fault, so DropAfter applies to this connection.
			c, err := sshx.Dial(t.Context(), sshx.Config{Addr: h.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()), KeepAlive: -1}, "control")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			_, err = flash.Write(ctx, c, image.Source{URL: tc.url}, flash.Options{Device: dev})
			if !tc.check(err) {
				t.Errorf("Write = %v (%T); want %s", err, err, tc.what)
			}
			if _, berr := sim.Bootable(disk.Last()); berr == nil {
				t.Error("the disk holds a bootable image after a failed write")
			}
		})
	}
}

func TestWriteCancel(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 16 << 20, Seed: 3}
	srv, _ := server(t, compress(t, im.Bytes()))
	_, disk, c := host(t, sim.Faults{})
	disk.SetRate(4 << 20) // four seconds for the whole image
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := flash.Write(ctx, c, image.Source{URL: srv.URL + "/image.zst"}, flash.Options{Device: dev})
		done <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for disk.Last().Bytes == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Write after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write did not return within 10 s of its context being cancelled")
	}
	if last := disk.Last(); last.Complete {
		t.Errorf("a cancelled write left the disk complete (%d bytes)", last.Bytes)
	}
}

func TestSharedCacheDownloadsOnce(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 2 << 20, Seed: 4}
	srv, requests := server(t, compress(t, im.Bytes()))
	cache := newCache(t)
	const devices = 5
	var wg sync.WaitGroup
	errs := make([]error, devices)
	disks := make([]*sim.Disk, devices)
	for i := range devices {
		_, disk, c := host(t, sim.Faults{})
		disks[i] = disk
		wg.Go(func() {
			_, errs[i] = flash.Write(t.Context(), c, image.Source{URL: srv.URL + "/image.zst"}, flash.Options{Device: dev, Cache: cache})
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
	if n := requests.Load(); n != 1 {
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

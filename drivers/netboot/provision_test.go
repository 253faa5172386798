package netboot_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/netboot"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/netbootsim"
	"github.com/flingerlab/flinger/events"
)

// driverGoroutines counts the goroutines running code of package netboot.
func driverGoroutines() int {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, "flinger/drivers/netboot.") {
			n++
		}
	}
	return n
}

// TestCancelMidWrite cancels a provisioning while the imager is fetching
// the image: Provision returns promptly with the context's error (not a
// recovery failure), the one-shot listener is closed, and none of the
// driver's goroutines is left.
func TestCancelMidWrite(t *testing.T) {
	srv := startImageServer(t)
	r, cfg := startRig(t, netbootsim.Options{Start: netbootsim.Master, Faults: netbootsim.Faults{SlowLink: 16 << 10}}, nil)
	d := newDriver(t, cfg)
	run, out := drivertest.NewRun(t, cfg, jobFor(srv.URL+"/new.img.zst"))
	before := driverGoroutines()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Provision(ctx, run) }()
	deadline := time.Now().Add(20 * time.Second)
	for r.Disk().Writes() == 0 {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("the imager did not start writing; output:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	cancelled := time.Now()
	var err error
	select {
	case err = <-done:
	case <-time.After(drivertest.CancelDeadline + time.Second):
		t.Fatalf("Provision did not return within %s of being cancelled; output:\n%s", drivertest.CancelDeadline, out)
	}
	t.Logf("Provision returned %v, %s after cancellation", err, time.Since(cancelled))
	if !errors.Is(err, context.Canceled) || drivers.IsRecovery(err) {
		t.Errorf("cancelled Provision = %v, want an error wrapping context.Canceled, not a recovery failure", err)
	}
	var server string
	for _, req := range r.Requests() {
		if req.Path == "/writeimage" {
			server = req.Server
		}
	}
	if server == "" {
		t.Fatal("the imager was not asked to write")
	}
	if !listenerClosed(server) {
		t.Errorf("the one-shot listener %s still accepts connections", server)
	}
	for driverGoroutines() > before {
		if time.Since(cancelled) > 10*time.Second {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Fatalf("%d goroutines of the driver left after cancelling (%d before):\n%s", driverGoroutines(), before, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// progressLog keeps the progress reports of a run.
type progressLog struct {
	mu  sync.Mutex
	all []image.Progress
}

func (p *progressLog) add(pr image.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.all = append(p.all, pr)
}

func (p *progressLog) last() (image.Progress, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.all) == 0 {
		return image.Progress{}, 0
	}
	return p.all[len(p.all)-1], len(p.all)
}

// TestCachedImages provisions from the host's image cache: an xz image is
// served as it is, byte for byte, and fetched once for two devices; a zstd
// one is recompressed; a qcow2 one is refused before the device is
// touched.
func TestCachedImages(t *testing.T) {
	t.Parallel()
	srv := startImageServer(t)
	cache, err := image.NewCache(t.TempDir(), 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	xzFile := imageFiles(t)["/new.img.xz"]

	provision := func(t *testing.T, opts netbootsim.Options, path string) (*netbootsim.Rig, string, *progressLog, error) {
		r, cfg := startRig(t, opts, nil)
		run, out := drivertest.NewRun(t, cfg, jobFor(srv.URL+path))
		run.Images = cache
		progress := &progressLog{}
		run.Progress = progress.add
		err := newDriver(t, cfg).Provision(t.Context(), run)
		return r, out.String(), progress, err
	}

	for i := range 2 {
		r, out, progress, err := provision(t, netbootsim.Options{Image: &oldImage}, "/new.img.xz")
		if err != nil {
			t.Fatalf("device %d: Provision: %v\n%s", i, err, out)
		}
		wrote(newImage)(t, cfgOf(t, r))
		for _, s := range []string{"served to the imager as it is", fmt.Sprintf("Served %d bytes of xz", len(xzFile))} {
			if !strings.Contains(out, s) {
				t.Errorf("device %d: output lacks %q:\n%s", i, s, out)
			}
		}
		if last, n := progress.last(); n == 0 || last.BytesIn != int64(len(xzFile)) || last.Total != int64(len(xzFile)) {
			t.Errorf("device %d: last of %d progress reports %+v, want all %d bytes served", i, n, last, len(xzFile))
		}
	}
	if n := srv.Requests(); n != 1 {
		t.Errorf("the image was requested %d times for two devices, want once", n)
	}

	r, out, _, err := provision(t, netbootsim.Options{Start: netbootsim.Master}, "/new.img.zst")
	if err != nil {
		t.Fatalf("zstd: Provision: %v\n%s", err, out)
	}
	wrote(newImage)(t, cfgOf(t, r))
	if !strings.Contains(out, "recompressed from zstd, 524288 bytes of image") {
		t.Errorf("zstd: output:\n%s", out)
	}

	r, out, _, err = provision(t, netbootsim.Options{Image: &oldImage}, "/qcow2.img.xz")
	var pe *drivers.ProvisioningError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "qcow2") {
		t.Errorf("qcow2: Provision = %v, want a provisioning failure naming qcow2\n%s", err, out)
	}
	if reqs := r.Requests(); len(reqs) != 0 || r.Calls(netbootsim.RebootScript) != 0 {
		t.Errorf("qcow2: the device was touched (%d imager requests, %d resets)", len(reqs), r.Calls(netbootsim.RebootScript))
	}
}

// cfgOf finds the configuration of a Rig started by startRig.
func cfgOf(t *testing.T, r *netbootsim.Rig) *drivers.DeviceConfig {
	t.Helper()
	var found *drivers.DeviceConfig
	for cfg, rig := range rigs.All() {
		if rig == r {
			found = cfg
			break
		}
	}
	if found == nil {
		t.Fatal("no configuration for this Rig")
	}
	return found
}

// TestProgressWhileStreaming checks the progress reported while an image
// is streamed and recompressed without a cache.
func TestProgressWhileStreaming(t *testing.T) {
	t.Parallel()
	srv := startImageServer(t)
	_, cfg := startRig(t, netbootsim.Options{Start: netbootsim.Master}, nil)
	run, out := drivertest.NewRun(t, cfg, jobFor(srv.URL+"/new.img.zst"))
	progress := &progressLog{}
	run.Progress = progress.add
	if err := newDriver(t, cfg).Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	zst := imageFiles(t)["/new.img.zst"]
	if last, n := progress.last(); n == 0 || last.BytesIn != int64(len(zst)) || last.BytesOut != newImage.Size {
		t.Errorf("last of %d progress reports %+v, want %d bytes in and %d out", n, last, len(zst), newImage.Size)
	}
}

// fakeImager is an imager whose writeimage answer a test chooses: it
// fetches the image (when fetch is set), then answers status and body.
func fakeImager(t *testing.T, fetch bool, status int, body string, delay, writeTimeout time.Duration) *drivers.DeviceConfig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/check":
			fmt.Fprintln(w, netboot.Banner)
		case "/writeimage":
			if fetch {
				c, err := net.Dial("tcp", r.URL.Query().Get("server"))
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		default:
			http.NotFound(w, r)
		}
	}))
	s.Listener = ln
	s.Start()
	t.Cleanup(s.Close)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p, _ := strconv.Atoi(port)
	raw := events.Data{"test_device": "/dev/sda", "imager_port": p, "write_timeout": writeTimeout.String()}
	for k, v := range fast {
		if _, ok := raw[k]; !ok {
			raw[k] = v
		}
	}
	return &drivers.DeviceConfig{Name: "fake-imager", Type: netboot.Type, Queues: []string{"netboot"}, DeviceIP: "127.0.0.1", Raw: raw,
		SSH: drivertest.TOFU(t)}
}

// TestImagerAnswerChecked checks that the imager's answer to writeimage
// is read: its status, a failure in its body, a byte count that is not
// the image's, an answer given without fetching the image, no answer.
func TestImagerAnswerChecked(t *testing.T) {
	t.Parallel()
	srv := startImageServer(t)
	for _, tc := range []struct {
		name   string
		fetch  bool
		status int
		body   string
		delay  time.Duration
		limit  time.Duration
		want   string
	}{
		{"error status", true, http.StatusInternalServerError, "dd: failed to open '/dev/sda': Permission denied\n", 0, time.Minute, "(HTTP 500): dd: failed to open '/dev/sda': Permission denied"},
		{"failure in a 200 answer", true, http.StatusOK, "unxz: (stdin): Compressed data is corrupt\n0+0 records out\n", 0, time.Minute, "the imager reported a failure writing the image to /dev/sda: unxz: (stdin): Compressed data is corrupt"},
		{"short write", true, http.StatusOK, "1024 bytes copied, 0.1 s, 10 kB/s\n", 0, time.Minute, "the imager wrote 1024 bytes to /dev/sda, but the image is 524288 bytes"},
		{"not fetched", false, http.StatusOK, "done\n", 0, time.Minute, "the imager answered without fetching the image"},
		{"no answer", true, http.StatusOK, "", time.Minute, time.Second, "did not finish writing the image to /dev/sda within write_timeout (1s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := fakeImager(t, tc.fetch, tc.status, tc.body, tc.delay, tc.limit)
			run, out := drivertest.NewRun(t, cfg, jobFor(srv.URL+"/new.img.zst"))
			err := newDriver(t, cfg).Provision(t.Context(), run)
			drivertest.CheckOutcome(t, "provision", err, drivertest.ProvisioningFails)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Provision = %v, want %q in it\n%s", err, tc.want, out)
			}
		})
	}
}

func TestNewRejectsBadKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ip   string
		raw  events.Data
		want string
	}{
		{"", events.Data{"test_device": "/dev/sda"}, "device_ip: required"},
		{"10.0.0.2", nil, "test_device: required"},
		{"10.0.0.2", events.Data{"test_device": "/dev/sda", "imager_port": 70000}, "imager_port: 70000 out of range"},
		{"10.0.0.2", events.Data{"test_device": "/dev/sda", "serve_address": "lab-host"}, "serve_address"},
		{"10.0.0.2", events.Data{"test_device": "/dev/sda", "boot_timeout": 0}, "boot_timeout: 0s out of range"},
		{"10.0.0.2", events.Data{"test_device": "/dev/sda", "write_timeout": "soon"}, "write_timeout"},
		{"10.0.0.2", events.Data{"test_device": "/dev/sda", "select_master_script": []any{"pdu boot master", " "}}, "select_master_script[1]: empty command"},
		{"10.0.0.2", events.Data{"test_device": "/dev/sda", "post_flash_cmds": 3}, "post_flash_cmds: must be a command or a list of commands"},
	} {
		_, err := netboot.New(&drivers.DeviceConfig{Name: "x", DeviceIP: tc.ip, Raw: tc.raw})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q, %v) = %v, want an error with %q", tc.ip, tc.raw, err, tc.want)
		}
	}
	// A single string is one command.
	if _, err := netboot.New(&drivers.DeviceConfig{Name: "x", DeviceIP: "10.0.0.2",
		Raw: events.Data{"test_device": "/dev/sda", "select_test_script": "pdu boot test"}}); err != nil {
		t.Errorf("New with a single select_test_script command: %v", err)
	}
}

// TestCommandsRunWithoutAShell checks that a select script's words reach
// the program as they are.
func TestCommandsRunWithoutAShell(t *testing.T) {
	t.Parallel()
	srv := startImageServer(t)
	pwned := t.TempDir() + "/PWNED"
	line := "echo $(touch " + pwned + ");touch " + pwned + " `touch " + pwned + "` | touch " + pwned
	_, cfg := startRig(t, netbootsim.Options{Start: netbootsim.Master}, events.Data{"post_flash_cmds": []any{line}})
	run, out := drivertest.NewRun(t, cfg, jobFor(srv.URL+"/new.img.xz"))
	if err := newDriver(t, cfg).Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "$(touch "+pwned+");touch "+pwned+" `touch") {
		t.Errorf("echo did not get its words verbatim:\n%s", out)
	}
	if _, err := sim.Bootable(rigOf(t, cfg).Disk().Last()); err != nil {
		t.Errorf("disk: %v", err)
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("a command went through a shell: %s exists", pwned)
	}
}

// TestBadURLs checks that a bad provision_data.url fails before the
// device is touched.
func TestBadURLs(t *testing.T) {
	t.Parallel()
	for _, url := range []string{"", "file:///etc/shadow", "ftp://example.com/x.img.xz", "http://example.com/x\n.img", "://nothing"} {
		r, cfg := startRig(t, netbootsim.Options{Image: &oldImage}, nil)
		run, out := drivertest.NewRun(t, cfg, jobFor(url))
		err := newDriver(t, cfg).Provision(t.Context(), run)
		drivertest.CheckOutcome(t, fmt.Sprintf("provision of %q", url), err, drivertest.ProvisioningFails)
		if err == nil || !strings.Contains(err.Error(), "provision_data.url") {
			t.Errorf("Provision(%q) = %v, want an error naming provision_data.url\n%s", url, err, out)
		}
		if n := len(r.Requests()) + r.Calls(netbootsim.SelectMasterScript) + r.Calls(netbootsim.RebootScript); n != 0 {
			t.Errorf("Provision(%q) touched the device (%d requests and script runs)", url, n)
		}
	}
}

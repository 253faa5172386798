package netbootsim_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/netbootsim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

const wait = 20 * time.Second

var testImage = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 512 << 10, Seed: 7}

func start(t *testing.T, opts netbootsim.Options) *netbootsim.Rig {
	t.Helper()
	opts.Dir = t.TempDir()
	if opts.BootTime == 0 {
		opts.BootTime = 100 * time.Millisecond
	}
	r, err := netbootsim.Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

func xzBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	z, err := sim.Compress("xz", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// serve serves data once on loopback and returns its address and the
// address the connection came from.
func serve(t *testing.T, data []byte) (string, <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	from := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		from <- c.RemoteAddr().String()
		_, _ = c.Write(data)
	}()
	return ln.Addr().String(), from
}

func get(t *testing.T, r *netbootsim.Rig, path string) (int, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.ImagerAddr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitRunning waits until the device runs target t, up.
func waitRunning(t *testing.T, r *netbootsim.Rig, target netbootsim.Target) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if got, up := r.Running(); got == target && up {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, up := r.Running()
	t.Fatalf("the device runs %s (up: %v), want %s up", got, up, target)
}

func runScript(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.CommandContext(t.Context(), path).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", path, err, out)
	}
}

func TestWriteImageAndBootIt(t *testing.T) {
	t.Parallel()
	r := start(t, netbootsim.Options{Start: netbootsim.Master})
	code, body, err := get(t, r, "/check")
	if err != nil || code != 200 || !strings.Contains(body, netbootsim.CheckBanner) {
		t.Fatalf("/check = %d %q, %v", code, body, err)
	}
	addr, from := serve(t, xzBytes(t, testImage.Bytes()))
	code, body, err = get(t, r, "/writeimage?server="+addr+"&dev="+r.TestDevice())
	if err != nil || code != 200 {
		t.Fatalf("/writeimage = %d %q, %v", code, body, err)
	}
	if want := "524288 bytes copied"; !strings.Contains(body, want) {
		t.Errorf("/writeimage answered %q, want %q in it", body, want)
	}
	if host, _, _ := net.SplitHostPort(<-from); host != r.DeviceIP() {
		t.Errorf("the imager connected from %s, want the device's address %s", host, r.DeviceIP())
	}
	if last := r.Disk().Last(); !last.Complete || last.SHA256 != testImage.SHA256() {
		t.Errorf("disk holds %d bytes (complete %v, sha %s), want the image", last.Bytes, last.Complete, last.SHA256)
	}
	if reqs := r.Requests(); len(reqs) != 2 || reqs[1].Server != addr || reqs[1].Dev != r.TestDevice() {
		t.Errorf("requests %+v", reqs)
	}

	runScript(t, r.Script(netbootsim.SelectTestScript))
	if r.Selected() != netbootsim.Test {
		t.Fatalf("select_test_script left %s selected", r.Selected())
	}
	if code, body, err := get(t, r, "/reboot"); err != nil || code != 200 {
		t.Fatalf("/reboot = %d %q, %v", code, body, err)
	}
	waitRunning(t, r, netbootsim.Test)
	if _, err := net.DialTimeout("tcp", r.ImagerAddr(), time.Second); err == nil {
		t.Error("the imager still answers while the test image runs")
	}
	c, err := sshx.Dial(t.Context(), sshx.Config{Addr: r.DUT().Addr(), User: netbootsim.DefaultUser, Password: netbootsim.DefaultPassword,
		HostKeys: sshx.TOFU(t.TempDir()), KeepAlive: -1}, "nb")
	if err != nil {
		t.Fatalf("ssh to the test image: %v", err)
	}
	defer c.Close()
	var out bytes.Buffer
	if _, err := c.Run(t.Context(), []string{"cat", "/etc/os-release"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out.String() != testImage.OSRelease {
		t.Errorf("the test image reports %q, want %q", out.String(), testImage.OSRelease)
	}

	// Back to the imager with the scripts.
	runScript(t, r.Script(netbootsim.SelectMasterScript))
	runScript(t, r.Script(netbootsim.RebootScript))
	waitRunning(t, r, netbootsim.Master)
	if r.DUT().State() != sim.Off {
		t.Errorf("the test image is %s while the imager runs", r.DUT().State())
	}
}

func TestWriteImageFailures(t *testing.T) {
	t.Parallel()
	good := xzBytes(t, testImage.Bytes())
	corrupt := bytes.Clone(good)
	for i := len(corrupt) / 2; i < len(corrupt)/2+64; i++ {
		corrupt[i] ^= 0x5a
	}
	for _, tc := range []struct {
		name   string
		faults netbootsim.Faults
		data   []byte
		dev    string
		code   int
		want   string
	}{
		{"disk fails half way", netbootsim.Faults{WriteFailsAfter: 256 << 10}, good, "", 500, "dd: error writing '/dev/mmcblk0': Input/output error"},
		{"link drops", netbootsim.Faults{LinkDropsAfter: int64(len(good) / 2)}, good, "", 500, "unxz: (stdin): Unexpected end of input"},
		{"truncated stream", netbootsim.Faults{}, good[:len(good)/2], "", 500, "unxz: (stdin): Unexpected end of input"},
		{"corrupt stream", netbootsim.Faults{}, corrupt, "", 500, "unxz: (stdin): "},
		{"not xz", netbootsim.Faults{}, testImage.Bytes(), "", 500, "unxz: (stdin): File format not recognized"},
		{"no such disk", netbootsim.Faults{}, good, "/dev/sdz", 500, "dd: failed to open '/dev/sdz'"},
		{"slow link", netbootsim.Faults{SlowLink: 16 << 20}, good, "", 200, "524288 bytes copied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := start(t, netbootsim.Options{Start: netbootsim.Master, Faults: tc.faults})
			addr, _ := serve(t, tc.data)
			dev := tc.dev
			if dev == "" {
				dev = r.TestDevice()
			}
			code, body, err := get(t, r, "/writeimage?server="+addr+"&dev="+dev)
			if err != nil || code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("/writeimage = %d %q, %v; want %d with %q", code, body, err, tc.code, tc.want)
			}
			if tc.code != 200 {
				if _, err := sim.Bootable(r.Disk().Last()); err == nil && tc.dev == "" {
					t.Error("a failed write left a bootable disk")
				}
			}
		})
	}
}

func TestWriteImageServerUnreachable(t *testing.T) {
	t.Parallel()
	r := start(t, netbootsim.Options{Start: netbootsim.Master})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	code, body, err := get(t, r, "/writeimage?server="+addr+"&dev="+r.TestDevice())
	if err != nil || code != 500 || !strings.Contains(body, "nc: connect to 127.0.0.1 port") {
		t.Errorf("/writeimage = %d %q, %v", code, body, err)
	}
}

func TestRebootCutsAWrite(t *testing.T) {
	t.Parallel()
	r := start(t, netbootsim.Options{Start: netbootsim.Master, Faults: netbootsim.Faults{SlowLink: 64 << 10}})
	addr, _ := serve(t, xzBytes(t, testImage.Bytes()))
	done := make(chan error, 1)
	go func() {
		_, _, err := get(t, r, "/writeimage?server="+addr+"&dev="+r.TestDevice())
		done <- err
	}()
	deadline := time.Now().Add(wait)
	for r.Disk().Writes() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	r.Reboot()
	select {
	case err := <-done:
		if err == nil {
			t.Error("the request was answered although the device rebooted")
		}
	case <-time.After(wait):
		t.Fatal("the write went on after a reboot")
	}
	if _, err := sim.Bootable(r.Disk().Last()); err == nil {
		t.Error("a cut write left a bootable disk")
	}
}

func TestNeverBootFaults(t *testing.T) {
	t.Parallel()
	r := start(t, netbootsim.Options{Image: &testImage, Faults: netbootsim.Faults{ImagerNeverBoots: true}})
	waitRunning(t, r, netbootsim.Test)
	if err := r.Select(netbootsim.Master); err != nil {
		t.Fatal(err)
	}
	r.Reboot()
	// The master image is still booting, well past its boot time, while
	// the test image is off.
	time.Sleep(500 * time.Millisecond)
	if got, up := r.Running(); got != netbootsim.Master || up {
		t.Errorf("the device runs %s (up %v), want the master image never up", got, up)
	}
	r.SetFaults(netbootsim.Faults{NeverBoots: true})
	if err := r.Select(netbootsim.Test); err != nil {
		t.Fatal(err)
	}
	r.Reboot()
	if err := r.DUT().WaitState(t.Context(), sim.Booting); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if st := r.DUT().State(); st != sim.Booting {
		t.Errorf("the test image is %s, want booting forever", st)
	}
}

func TestLab(t *testing.T) {
	t.Parallel()
	d, err := sim.StartLab(t.Context(), netbootsim.Type, sim.LabOptions{
		Name: "nb-lab", Dir: t.TempDir(),
		Settings: map[string]any{"boot_time": "100ms", "start": "master", "disk_size": 64 << 20},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cfg := d.Config()
	for _, k := range []string{"device_ip", "ssh_port", "imager_port", "test_device", "select_master_script", "select_test_script", "reboot_script"} {
		if cfg[k] == nil {
			t.Errorf("Config() lacks %s: %v", k, cfg)
		}
	}
	port, _ := cfg["imager_port"].(int)
	resp, err := http.Get("http://" + net.JoinHostPort(cfg["device_ip"].(string), strconv.Itoa(port)) + "/check")
	if err != nil {
		t.Fatalf("/check of the lab device: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), netbootsim.CheckBanner) {
		t.Errorf("/check = %q", b)
	}

	for _, tc := range []struct {
		settings map[string]any
		want     string
	}{
		{map[string]any{"bogus": 1}, "sim.bogus: unknown key"},
		{map[string]any{"start": "sideways"}, "sim.start"},
		{map[string]any{"boot_time": "soon"}, "sim.boot_time"},
		{map[string]any{"never_boots": "yes"}, "sim.never_boots"},
		{map[string]any{"write_fails_after": -3}, "sim.write_fails_after"},
	} {
		_, err := sim.StartLab(t.Context(), netbootsim.Type, sim.LabOptions{Name: "bad", Dir: t.TempDir(), Settings: tc.settings})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("StartLab(%v) = %v, want an error with %q", tc.settings, err, tc.want)
		}
	}
}

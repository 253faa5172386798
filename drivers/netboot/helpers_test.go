package netboot_test

import (
	"bytes"
	"context"
	"io"
	"maps"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/netboot"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/netbootsim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// The images the tests write: small, so that compressing them under the
// race detector stays quick.
var (
	oldImage  = sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Size: 256 << 10, Seed: 1}
	newImage  = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 512 << 10, Seed: 2}
	imageOnce sync.Once
	files     map[string][]byte
)

// imageFiles returns the files the image server serves, by path.
func imageFiles(t testing.TB) map[string][]byte {
	imageOnce.Do(func() {
		raw := newImage.Bytes()
		x := drivertest.Compress(t, "xz", raw)
		corrupt := bytes.Clone(x)
		for i := len(corrupt) / 2; i < len(corrupt)/2+256; i++ {
			corrupt[i] ^= 0xa5
		}
		files = map[string][]byte{
			"/new.img.xz":   x,
			"/new.img.zst":  drivertest.Compress(t, "zst", raw),
			"/new.img":      raw,
			"/corrupt.xz":   corrupt,
			"/disk.qcow2":   append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 64<<10)...),
			"/qcow2.img.xz": drivertest.Compress(t, "xz", append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 64<<10)...)),
		}
	})
	return files
}

// startImageServer serves imageFiles over HTTP.
func startImageServer(t testing.TB) *drivertest.ImageServer {
	return drivertest.StartImageServer(t, imageFiles(t))
}

// fast are the device keys that make a simulated device quick to drive.
var fast = events.Data{
	"boot_check_interval":     "50ms",
	"master_boot_timeout":     "10s",
	"boot_timeout":            "10s",
	"imager_shutdown_timeout": "5s",
	"imager_timeout":          "2s",
	"write_timeout":           "60s",
	"script_timeout":          "10s",
	"reboot_script_timeout":   "10s",
}

// rigs finds the simulated device of a configuration.
var rigs drivertest.Rigs[*netbootsim.Rig]

func rigOf(t *testing.T, cfg *drivers.DeviceConfig) *netbootsim.Rig {
	t.Helper()
	return rigs.Of(t, cfg)
}

// startRig starts a simulated netboot device and returns it with the
// configuration of a device reaching it: the Rig's keys, fast, then raw.
func startRig(t *testing.T, opts netbootsim.Options, raw events.Data) (*netbootsim.Rig, *drivers.DeviceConfig) {
	t.Helper()
	opts.Dir = t.TempDir()
	if opts.Name == "" {
		opts.Name = "nb-sim"
	}
	if opts.BootTime == 0 {
		opts.BootTime = 100 * time.Millisecond
	}
	if opts.Users == nil {
		opts.Users = map[string]string{netboot.DefaultUsername: netboot.DefaultPassword, "tester": "s3cret"}
	}
	r, err := netbootsim.Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("netbootsim.Start: %v", err)
	}
	t.Cleanup(r.Close)
	keys := r.Config()
	port, _ := keys["ssh_port"].(int)
	rawCfg := events.Data{}
	maps.Copy(rawCfg, fast)
	for _, k := range []string{"imager_port", "test_device", "select_master_script", "select_test_script"} {
		rawCfg[k] = keys[k]
	}
	maps.Copy(rawCfg, raw)
	var reboot []string
	if v, ok := rawCfg["reboot_script"]; ok {
		for _, s := range v.([]any) {
			reboot = append(reboot, s.(string))
		}
		delete(rawCfg, "reboot_script")
	} else {
		reboot = []string{r.Script(netbootsim.RebootScript)}
	}
	cfg := &drivers.DeviceConfig{
		Name: opts.Name, Type: netboot.Type, Queues: []string{"netboot"},
		DeviceIP: r.DeviceIP(), SSHPort: port, RebootScript: reboot, Raw: rawCfg,
		SSH: drivertest.TOFU(t),
	}
	rigs.Add(t, cfg, r)
	return r, cfg
}

func newDriver(t *testing.T, cfg *drivers.DeviceConfig) *netboot.Driver {
	t.Helper()
	d, err := netboot.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d.(*netboot.Driver)
}

// jobFor returns a job provisioning url.
func jobFor(url string) *events.Job {
	return &events.Job{JobID: "00000000-0000-4000-8000-00000000000a", JobQueue: "netboot",
		ProvisionData: events.Data{"url": url}, TestData: &events.TestData{}}
}

// osRelease logs in to the test image and returns its os-release.
func osRelease(t *testing.T, r *netbootsim.Rig) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := sshx.Dial(ctx, sshx.Config{Addr: r.DUT().Addr(), User: netboot.DefaultUsername, Password: netboot.DefaultPassword,
		HostKeys: sshx.TOFU(t.TempDir()), KeepAlive: -1}, "check")
	if err != nil {
		t.Fatalf("logging in to the test image: %v", err)
	}
	defer c.Close()
	var out bytes.Buffer
	if _, err := c.Run(ctx, []string{"cat", "/etc/os-release"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// listenerClosed reports whether nothing accepts connections at addr.
func listenerClosed(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return true
	}
	_ = c.Close()
	return false
}

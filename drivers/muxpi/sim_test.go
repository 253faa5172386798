package muxpi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/muxpi"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/muxpisim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// wait bounds what should happen promptly.
const wait = 30 * time.Second

// fast are device keys that keep the simulated rig's timings short.
var fast = events.Data{
	"boot_timeout":                "10s",
	"boot_check_interval":         "50ms",
	"control_retry_timeout":       "2s",
	"control_retry_interval":      "100ms",
	"control_command_timeout":     "10s",
	"control_host_reboot_timeout": "10s",
	"reboot_script_timeout":       "10s",
	"partition_wait":              "300ms",
	// The pre-provision hook's (package drivers/controlhost).
	"control_host_offline_timeout": "5s",
	"control_host_shutdown_wait":   "0s",
	"control_host_online_timeout":  "10s",
	"control_host_check_interval":  "50ms",
	"control_host_script_timeout":  "10s",
	"control_host_request_timeout": "2s",
}

var (
	deviceSeq atomic.Int64
	rigs      drivertest.Rigs[*muxpisim.Rig]
)

// testImage is the image most scenarios write.
var testImage = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "ubuntu", Size: 2 << 20, Seed: 42}

// rigOpts tune a simulated device.
type rigOpts struct {
	faults muxpisim.Faults
	keys   events.Data // device keys added to (or replacing) fast
	setup  func(*muxpisim.Rig)
}

// device starts a rig and returns it with the configuration of a muxpi
// device on it (TOFU host keys of its own, password logins).
func device(t *testing.T, o rigOpts) (*muxpisim.Rig, *drivers.DeviceConfig) {
	t.Helper()
	name := fmt.Sprintf("muxpi-%d", deviceSeq.Add(1))
	rig, err := muxpisim.Start(t.Context(), muxpisim.Options{
		Name: name, Dir: t.TempDir(), BootTime: 150 * time.Millisecond, ControlBootTime: 100 * time.Millisecond, Faults: o.faults,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rig.Close)
	if o.setup != nil {
		o.setup(rig)
	}
	raw := events.Data{}
	for k, v := range fast {
		raw[k] = v
	}
	for k, v := range rig.Config() {
		raw[k] = v
	}
	for k, v := range o.keys {
		raw[k] = v
	}
	port, _ := raw.Int("ssh_port", 0)
	cfg := &drivers.DeviceConfig{
		Name: name, Type: muxpi.Type, Queues: []string{"muxpi"},
		DeviceIP: raw["device_ip"].(string), SSHPort: port,
		ControlHost: raw["control_host"].(string), ControlUser: raw["control_user"].(string),
		RebootScript: []string{rig.RebootScript()}, Raw: raw,
		SSH: drivertest.TOFU(t),
	}
	rigs.Add(t, cfg, rig)
	return rig, cfg
}

func rigOf(t *testing.T, cfg *drivers.DeviceConfig) *muxpisim.Rig {
	t.Helper()
	return rigs.Of(t, cfg)
}

func newDriver(t *testing.T, cfg *drivers.DeviceConfig) drivers.Driver {
	t.Helper()
	d, err := muxpi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func job(pd events.Data) *events.Job {
	return &events.Job{JobID: "00000000-0000-4000-8000-00000000000a", JobQueue: "muxpi", ProvisionData: pd, TestData: &events.TestData{}}
}

// dutRelease logs in to the DUT and returns its os-release.
func dutRelease(t *testing.T, rig *muxpisim.Rig) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	c, err := sshx.Dial(ctx, sshx.Config{Addr: rig.DUT.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()), KeepAlive: -1}, "check")
	if err != nil {
		t.Fatalf("logging in to the DUT: %v", err)
	}
	defer c.Close()
	var out bytes.Buffer
	if _, err := c.Run(ctx, []string{"cat", "/etc/os-release"}, &out, nil); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// checkBooted checks that medium m holds im, is back on the DUT, and that
// the DUT runs it.
func checkBooted(m muxpisim.Media, im sim.Image) func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		rig := rigOf(t, cfg)
		if got := rig.Disk(m).Last(); got.SHA256 != im.SHA256() || !got.Complete {
			t.Errorf("the %s holds %d bytes, sha256 %s; want the image's %s", m, got.Bytes, got.SHA256, im.SHA256())
		}
		if rig.Side(m) != muxpisim.DUTSide {
			t.Errorf("the %s is left on the control host", m)
		}
		if got := dutRelease(t, rig); got != im.OSRelease {
			t.Errorf("the DUT runs %q, want %q", got, im.OSRelease)
		}
		if got := rig.Mounts(); len(got) > 0 {
			t.Errorf("still mounted on the control host: %q", got)
		}
	}
}

// checkHandedBack checks that the SD card went to the control host and
// came back to the DUT.
func checkHandedBack(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	rig := rigOf(t, cfg)
	sw := rig.Switches()
	if len(sw) < 2 || sw[len(sw)-1] != "sd:dut" || rig.Side(muxpisim.MediaSD) != muxpisim.DUTSide {
		t.Errorf("switches %q: the card was not handed back to the DUT", sw)
	}
	if got := rig.Mounts(); len(got) > 0 {
		t.Errorf("still mounted on the control host: %q", got)
	}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		_, cfg := device(t, rigOpts{})
		return newDriver(t, cfg), cfg
	})
}

// bootServer answers /boot/<agent_name> with 200 once that device's DUT
// is up, 503 before.
func bootServer(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/boot/")
		up := false
		for cfg, rig := range rigs.All() {
			if cfg.Name == name && rig.DUT.State() == sim.Up {
				up = true
			}
		}
		if !up || r.URL.Path == "/boot/never" {
			http.Error(w, "not up", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("up\n"))
	}))
	t.Cleanup(s.Close)
	return s
}

// keyServer serves a public key for every user, for reserve_data.ssh_keys.
func keyServer(t *testing.T) *httptest.Server {
	line := ssh.MarshalAuthorizedKey(drivertest.RandomHostKey(t))
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(line) }))
	t.Cleanup(s.Close)
	return s
}

// TestScenarios runs the muxpi driver's outcomes through the driver and
// the connector command line.
func TestScenarios(t *testing.T) {
	images := drivertest.StartImageServer(t, nil)
	imgURL := images.Add("/noble.img.zst", drivertest.Compress(t, "zst", testImage.Bytes()))
	usbImage := sim.Image{OSRelease: sim.UbuntuRelease("25.10", "questing"), Kind: "ubuntu", Size: 1 << 20, Seed: 9}
	usbURL := images.Add("/questing.img.zst", drivertest.Compress(t, "zst", usbImage.Bytes()))
	corrupt := drivertest.Compress(t, "zst", testImage.Bytes())
	corrupt = append(corrupt[:len(corrupt)/2:len(corrupt)/2], bytes.Repeat([]byte{0xA5}, 4096)...)
	corruptURL := images.Add("/corrupt.img.zst", corrupt)
	noise := make([]byte, 1<<20)
	_, _ = rand.Read(noise)
	noiseURL := images.Add("/notadisk.img.zst", drivertest.Compress(t, "zst", noise))
	slowImage := sim.Image{OSRelease: testImage.OSRelease, Kind: "ubuntu", Size: 3 << 20, Seed: 5}
	slowURL := images.Add("/slow.img.zst", drivertest.Compress(t, "zst", slowImage.Bytes()))
	boot := bootServer(t)
	_, bootPort, _ := net.SplitHostPort(strings.TrimPrefix(boot.URL, "http://"))
	keys := keyServer(t)

	setup := func(o rigOpts) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig {
			_, cfg := device(t, o)
			return cfg
		}
	}
	pd := func(d events.Data) func(*drivers.DeviceConfig) *events.Job {
		return func(*drivers.DeviceConfig) *events.Job { return job(d) }
	}
	muxCLI := events.Data{"control_switch_local_cmd": "zapper sdwire set TS"}
	short := events.Data{"boot_timeout": "1s", "control_host_reboot_timeout": "1s", "control_retry_timeout": "500ms", "control_host_online_timeout": "1s"}

	drivertest.RunScenarios(t, []drivertest.Scenario{
		{Name: "url", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": imgURL}), Want: drivertest.Succeeds,
			Output: "Image type detected: ubuntu",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, out string, err error) {
				checkBooted(muxpisim.MediaSD, testImage)(t, cfg, out, err)
				rig := rigOf(t, cfg)
				files := rig.MediumFiles(muxpisim.MediaSD, "writable")
				if ud := files["var/lib/cloud/seed/nocloud-net/user-data"]; !bytes.Contains(ud, []byte("name: ubuntu")) {
					t.Errorf("no cloud-init user-data on the card: %q", ud)
				}
				if _, ok := files["etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"]; ok {
					t.Error("99-fake_cloud.cfg left on a classic image")
				}
				if sw := strings.Join(rig.Switches(), ","); sw != "sd:host,sd:dut" {
					t.Errorf("switches %s", sw)
				}
			}},
		{Name: "media sd", Setup: setup(rigOpts{keys: muxCLI}), Job: pd(events.Data{"url": imgURL, "media": "sd"}), Want: drivertest.Succeeds,
			Output: "zapper sdwire plug_to_self",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, out string, err error) {
				checkBooted(muxpisim.MediaSD, testImage)(t, cfg, out, err)
				if sw := strings.Join(rigOf(t, cfg).Switches(), ","); sw != "sd:host,usb:host,sd:dut" {
					t.Errorf("switches %s", sw)
				}
			}},
		{Name: "media usb", Setup: setup(rigOpts{keys: muxCLI}), Job: pd(events.Data{"url": usbURL, "media": "usb"}), Want: drivertest.Succeeds,
			Check: checkBooted(muxpisim.MediaUSB, usbImage)},
		{Name: "image of another release", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": usbURL}), Want: drivertest.Succeeds,
			Check: checkBooted(muxpisim.MediaSD, usbImage)},
		{Name: "media without a mux CLI", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": imgURL, "media": "usb"}),
			Want: drivertest.ProvisioningFails, Output: "control_switch_local_cmd"},
		{Name: "bad media", Setup: setup(rigOpts{keys: muxCLI}), Job: pd(events.Data{"url": imgURL, "media": "nvme"}),
			Want: drivertest.ProvisioningFails, Output: "provision_data.media"},
		{Name: "create_user false", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": imgURL, "create_user": false}), Want: drivertest.Succeeds,
			Output: "Not creating the test user",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, out string, err error) {
				checkBooted(muxpisim.MediaSD, testImage)(t, cfg, out, err)
				if _, ok := rigOf(t, cfg).MediumFiles(muxpisim.MediaSD, "writable")["var/lib/cloud/seed/nocloud-net/user-data"]; ok {
					t.Error("user-data written with create_user: false")
				}
			}},
		{Name: "boot_check_url", Setup: setup(rigOpts{}), Want: drivertest.Succeeds, Output: "boot_check_url",
			Job: func(cfg *drivers.DeviceConfig) *events.Job {
				return job(events.Data{"url": imgURL, "boot_check_url": "http://$DEVICE_IP:" + bootPort + "/boot/" + cfg.Name})
			},
			Check: checkBooted(muxpisim.MediaSD, testImage)},
		{Name: "boot_check_url never 200", Setup: setup(rigOpts{keys: short}), Want: drivertest.ProvisioningFails, Output: "boot_timeout",
			Job: pd(events.Data{"url": imgURL, "boot_check_url": "http://$DEVICE_IP:" + bootPort + "/boot/never"})},
		{Name: "404", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": images.URL + "/missing.img.zst"}),
			Want: drivertest.ProvisioningFails, Output: "404", Check: checkHandedBack},
		{Name: "corrupt image", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": corruptURL}),
			Want: drivertest.ProvisioningFails, Check: checkHandedBack},
		{Name: "sha256 mismatch", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": imgURL, "sha256": strings.Repeat("ab", 32)}),
			Want: drivertest.ProvisioningFails, Check: checkHandedBack},
		{Name: "not an http url", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": "file:///etc/shadow"}),
			Want: drivertest.ProvisioningFails, Output: "provision_data.url"},
		{Name: "attachment outside attachments/provision", Setup: setup(rigOpts{}), Job: pd(events.Data{"use_attachment": "../../testflinger.json"}),
			Want: drivertest.ProvisioningFails, Output: "use_attachment"},
		{Name: "missing attachment", Setup: setup(rigOpts{}), Job: pd(events.Data{"use_attachment": "image.img.xz"}),
			Want: drivertest.ProvisioningFails, Output: "use_attachment"},
		{Name: "dd fails half way", Setup: setup(rigOpts{faults: muxpisim.Faults{WriteFailsAfter: 512 << 10}}), Job: pd(events.Data{"url": imgURL}),
			Want: drivertest.ProvisioningFails, Output: "Input/output error", Check: checkHandedBack},
		{Name: "not a disk image", Setup: setup(rigOpts{}), Job: pd(events.Data{"url": noiseURL}),
			Want: drivertest.ProvisioningFails, Output: "no labelled partition", Check: checkHandedBack},
		{Name: "never boots", Setup: setup(rigOpts{faults: muxpisim.Faults{NeverBoots: true}, keys: short}), Job: pd(events.Data{"url": imgURL}),
			Want: drivertest.ProvisioningFails, Output: "did not boot"},
		{Name: "link drops during the write", Want: drivertest.ProvisioningFails, Output: "during the write",
			Setup: setup(rigOpts{faults: muxpisim.Faults{ControlDropAfter: 700 * time.Millisecond, WriteRate: 1 << 20}}),
			Job:   pd(events.Data{"url": slowURL}), Check: checkHandedBack},
		{Name: "slow link", Setup: setup(rigOpts{faults: muxpisim.Faults{SlowLink: time.Millisecond}}), Job: pd(events.Data{"url": imgURL}),
			Want: drivertest.Succeeds, Check: checkBooted(muxpisim.MediaSD, testImage)},
		{Name: "reboot_script fails", Setup: setup(rigOpts{faults: muxpisim.Faults{RebootScriptFails: true}}), Job: pd(events.Data{"url": imgURL}),
			Want: drivertest.RecoveryFails, Output: "reboot_script[0]"},
		{Name: "control_host_reboot_script fails", Setup: setup(rigOpts{faults: muxpisim.Faults{ControlRebootScriptFails: true}, keys: short}), Job: pd(events.Data{"url": imgURL}),
			Want: drivertest.RecoveryFails, Output: "control_host_reboot_script[0]"},
		{Name: "control_host_reboot_script fails, REST API down", Job: pd(events.Data{"url": imgURL}),
			Setup: setup(rigOpts{faults: muxpisim.Faults{ControlRebootScriptFails: true, ControlAPIDown: true}, keys: events.Data{"control_host_request_timeout": "200ms"}}),
			Want:  drivertest.RecoveryFails, Output: "control_host_reboot_script[0]"},
		{Name: "control host unreachable", Setup: setup(rigOpts{faults: muxpisim.Faults{ControlUnreachable: true}, keys: short}), Job: pd(events.Data{"url": imgURL}),
			Want: drivertest.RecoveryFails, Output: "control host"},
		{Name: "control host unreachable, mux CLI", Job: pd(events.Data{"url": imgURL, "media": "sd"}),
			Setup: setup(rigOpts{faults: muxpisim.Faults{ControlUnreachable: true}, keys: events.Data{
				"control_switch_local_cmd": "zapper sdwire set TS", "control_retry_timeout": "500ms",
				// No power cycle in the pre-provision hook: the driver
				// itself finds the control host gone.
				"control_host_reboot_script": nil, "control_host_request_timeout": "200ms"}}),
			Want: drivertest.RecoveryFails, Output: "could not be reached"},
		{Name: "new host key after reprovisioning", Setup: setup(rigOpts{faults: muxpisim.Faults{HostKeyChangesOnBoot: true}}),
			Job: pd(events.Data{"url": imgURL}), Want: drivertest.Succeeds, Check: checkBooted(muxpisim.MediaSD, testImage)},
		{Name: "host key changed outside reprovisioning", Phase: events.PhaseReserve, Want: drivertest.Fails, Output: "host key",
			Setup: func(t *testing.T) *drivers.DeviceConfig {
				rig, cfg := device(t, rigOpts{faults: muxpisim.Faults{HostKeyChangesOnBoot: true}, keys: events.Data{"reserve_ssh_timeout": "3s"}})
				cfg.SSH.LaunchpadURL = keys.URL + "/%s"
				// The worker knows the DUT's key; then the DUT reboots
				// with another one, with no provisioning in between.
				dcfg, err := cfg.SSHSettings().DeviceConfig(cfg, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(t.Context(), wait)
				defer cancel()
				c, err := sshx.Dial(ctx, dcfg, cfg.Name)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.Close()
				rig.DUT.PowerCycle()
				if err := rig.DUT.WaitState(ctx, sim.Up); err != nil {
					t.Fatal(err)
				}
				return cfg
			},
			Job: func(*drivers.DeviceConfig) *events.Job {
				j := job(events.Data{})
				j.ReserveData = &events.ReserveData{SSHKeys: []string{"lp:tester"}, Timeout: 1}
				return j
			}},
	})
}

// TestProvisionFromAttachment writes an xz attachment and reports progress.
func TestProvisionFromAttachment(t *testing.T) {
	t.Parallel()
	rig, cfg := device(t, rigOpts{})
	run, out := drivertest.NewRun(t, cfg, job(events.Data{"use_attachment": "noble.img.xz"}))
	dir := filepath.Join(run.Dir, "attachments", "provision")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "noble.img.xz"), drivertest.Compress(t, "xz", testImage.Bytes()), 0o644); err != nil {
		t.Fatal(err)
	}
	var last atomic.Int64
	run.Progress = func(p image.Progress) { last.Store(p.BytesOut) }
	start := time.Now()
	if err := newDriver(t, cfg).Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	t.Logf("provisioned from an xz attachment in %s", time.Since(start))
	checkBooted(muxpisim.MediaSD, testImage)(t, cfg, out.String(), nil)
	if last.Load() != testImage.Size {
		t.Errorf("last progress report: %d bytes written, want %d", last.Load(), testImage.Size)
	}
	if !strings.Contains(out.String(), "xz image") {
		t.Errorf("output does not name the format:\n%s", out)
	}
	if rig.Disk(muxpisim.MediaUSB).Writes() != 0 {
		t.Error("the USB stick was written")
	}
}

// TestSharedCacheDownloadsOnce provisions five devices with one URL and
// one image cache: the image is downloaded once.
func TestSharedCacheDownloadsOnce(t *testing.T) {
	t.Parallel()
	const n = 5
	images := drivertest.StartImageServer(t, nil)
	url := images.Add("/shared.img.zst", drivertest.Compress(t, "zst", testImage.Bytes()))
	cache, err := image.NewCache(t.TempDir(), 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]*drivertest.Output, n)
	cfgs := make([]*drivers.DeviceConfig, n)
	for i := range n {
		_, cfg := device(t, rigOpts{})
		run, out := drivertest.NewRun(t, cfg, job(events.Data{"url": url}))
		run.Images = cache
		cfgs[i], outs[i] = cfg, out
		d := newDriver(t, cfg)
		wg.Go(func() { errs[i] = d.Provision(t.Context(), run) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("device %d: %v\n%s", i, errs[i], outs[i])
			continue
		}
		checkBooted(muxpisim.MediaSD, testImage)(t, cfgs[i], "", nil)
	}
	if got := images.Gets("/shared.img.zst"); got != 1 {
		t.Errorf("the image was downloaded %d times for %d devices, want once", got, n)
	}
}

// TestCancelMidWrite cancels a provisioning while dd writes: the phase
// returns promptly with the context's error and the card is handed back.
func TestCancelMidWrite(t *testing.T) {
	t.Parallel()
	images := drivertest.StartImageServer(t, nil)
	big := sim.Image{OSRelease: testImage.OSRelease, Kind: "ubuntu", Size: 8 << 20, Seed: 11}
	url := images.Add("/big.img.zst", drivertest.Compress(t, "zst", big.Bytes()))
	rig, cfg := device(t, rigOpts{faults: muxpisim.Faults{WriteRate: 1 << 20}})
	run, out := drivertest.NewRun(t, cfg, job(events.Data{"url": url}))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- newDriver(t, cfg).Provision(ctx, run) }()
	if !out.WaitFor("Writing ", wait) {
		t.Fatalf("the write did not start:\n%s", out)
	}
	deadline := time.Now().Add(wait)
	for w := rig.Disk(muxpisim.MediaSD).Last(); w.Bytes == 0 || w.Complete; w = rig.Disk(muxpisim.MediaSD).Last() {
		if time.Now().After(deadline) {
			t.Fatalf("dd did not start writing:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	cancelled := time.Now()
	var err error
	select {
	case err = <-done:
	case <-time.After(wait):
		t.Fatalf("Provision did not return after its context was cancelled:\n%s", out)
	}
	took := time.Since(cancelled)
	t.Logf("returned %v, %s after cancellation", err, took)
	if took > drivertest.CancelDeadline {
		t.Errorf("Provision returned %s after cancellation, want within %s", took, drivertest.CancelDeadline)
	}
	if !errors.Is(err, context.Canceled) || drivers.IsRecovery(err) {
		t.Errorf("Provision = %v, want an error wrapping context.Canceled that is not a recovery failure", err)
	}
	if w := rig.Disk(muxpisim.MediaSD).Last(); w.Complete && w.Bytes == big.Size {
		t.Error("the write completed")
	}
	checkHandedBack(t, cfg, out.String(), err)
}

// TestImageTypes provisions an image of each type Testflinger tells apart
// and checks the files that create the test user.
func TestImageTypes(t *testing.T) {
	t.Parallel()
	images := drivertest.StartImageServer(t, nil)
	release := func(v, c string) string { return sim.UbuntuRelease(v, c) }
	for _, tc := range []struct {
		kind, osRelease, detected string
		want                      []string // label:path that must exist
		gone                      []string // label:path that must not
		contains                  map[string]string
	}{
		{kind: "ubuntu", detected: muxpi.TypeUbuntu,
			want: []string{"writable:var/lib/cloud/seed/nocloud-net/user-data", "writable:var/lib/cloud/seed/nocloud-net/meta-data"},
			gone: []string{"writable:etc/cloud/cloud.cfg.d/99-fake_cloud.cfg", "writable:etc/sudoers.d/ubuntu"}},
		{kind: "core", detected: muxpi.TypeCore,
			want: []string{"writable:system-data/var/lib/cloud/seed/nocloud-net/user-data"}},
		{kind: "core20", detected: muxpi.TypeCore20,
			want: []string{"ubuntu-seed:data/etc/cloud/cloud.cfg.d/99_nocloud.cfg"}},
		{kind: "ubuntu-cpc", detected: muxpi.TypeUbuntuCPC,
			want: []string{"cloudimg-rootfs:var/lib/cloud/seed/nocloud-net/user-data"}},
		{kind: "ce-oem-iot", osRelease: release("22.04", "jammy"), detected: muxpi.TypeCEOEMIoTBefore24,
			want: []string{"system-boot:user-data", "writable:etc/sudoers.d/ubuntu", "writable:var/lib/cloud/seed/nocloud-net/user-data"}},
		{kind: "ce-oem-iot", osRelease: release("24.04", "noble"), detected: muxpi.TypeCEOEMIoT24,
			want: []string{"writable:var/lib/cloud/seed/nocloud/user-data", "writable:etc/sudoers.d/ubuntu"}},
		{kind: "tegra", detected: muxpi.TypeTegra,
			want:     []string{"writable:var/lib/cloud/seed/nocloud/user-data", "writable:etc/sudoers.d/ubuntu"},
			contains: map[string]string{"writable:boot/grub/grub.cfg": "timeout=0", "writable:etc/default/grub": "GRUB_TIMEOUT=0"}},
		{kind: "pi-desktop", osRelease: release("24.04", "noble"), detected: muxpi.TypePiDesktop,
			want: []string{"writable:etc/systemd/system/oem-config.service", "writable:preseed.cfg",
				"writable:etc/systemd/system/oem-config.target.wants/NetworkManager.service", "writable:etc/sudoers.d/ubuntu"}},
		{kind: "pi-desktop", osRelease: release("25.04", "plucky"), detected: muxpi.TypePiDesktop,
			want: []string{"writable:var/lib/cloud/seed/nocloud-net/user-data", "writable:etc/sudoers.d/ubuntu"},
			gone: []string{"writable:etc/cloud/cloud.cfg.d/99-fake_cloud.cfg", "writable:preseed.cfg"}},
		{kind: "iso", detected: muxpi.TypeUnknown},
	} {
		name := tc.kind
		if tc.osRelease != "" {
			name += " " + tc.osRelease[strings.Index(tc.osRelease, "VERSION_ID=")+12:][:5]
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			osr := tc.osRelease
			if osr == "" {
				osr = release("24.04", "noble")
			}
			im := sim.Image{OSRelease: osr, Kind: tc.kind, Size: 256 << 10, Seed: 1}
			url := images.Add("/"+strconv.Itoa(int(deviceSeq.Add(1)))+".img.zst", drivertest.Compress(t, "zst", im.Bytes()))
			rig, cfg := device(t, rigOpts{})
			run, out := drivertest.NewRun(t, cfg, job(events.Data{"url": url}))
			if err := newDriver(t, cfg).Provision(t.Context(), run); err != nil {
				t.Fatalf("Provision: %v\n%s", err, out)
			}
			if !strings.Contains(out.String(), "Image type detected: "+tc.detected+"\n") {
				t.Errorf("output does not say the image type is %s:\n%s", tc.detected, out)
			}
			file := func(spec string) ([]byte, bool) {
				label, p, _ := strings.Cut(spec, ":")
				b, ok := rig.MediumFiles(muxpisim.MediaSD, label)[p]
				return b, ok
			}
			for _, w := range tc.want {
				if _, ok := file(w); !ok {
					t.Errorf("%s not written", w)
				}
			}
			for _, g := range tc.gone {
				if _, ok := file(g); ok {
					t.Errorf("%s is there", g)
				}
			}
			for spec, s := range tc.contains {
				if b, _ := file(spec); !bytes.Contains(b, []byte(s)) {
					t.Errorf("%s = %q, want it to contain %q", spec, b, s)
				}
			}
			if b, ok := file("writable:etc/sudoers.d/ubuntu"); ok && string(b) != "ubuntu ALL=(ALL) NOPASSWD:ALL\n" {
				t.Errorf("sudoers: %q", b)
			}
			if b, ok := file("writable:var/lib/cloud/seed/nocloud-net/meta-data"); ok && !bytes.Contains(b, []byte(cfg.Name)) {
				t.Errorf("meta-data: %q", b)
			}
		})
	}
}

// TestWriteOutput checks what the operator reads about the write.
func TestWriteOutput(t *testing.T) {
	t.Parallel()
	images := drivertest.StartImageServer(t, nil)
	raw := testImage.Bytes()
	compressed := drivertest.Compress(t, "zst", raw)
	sum := sha256.Sum256(compressed)
	url := images.Add("/out.img.zst", compressed)
	_, cfg := device(t, rigOpts{keys: events.Data{"post_provision_script": []any{"true", "false"}}})
	run, out := drivertest.NewRun(t, cfg, job(events.Data{"url": url, "sha256": hex.EncodeToString(sum[:])}))
	if err := newDriver(t, cfg).Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	for _, s := range []string{
		"Rebooting the control host", "The control host is back",
		"Switching the storage to the control host: stm -ts",
		"records out", "Wrote 2.0 MiB to /dev/sda",
		"post_provision_script[0] on the control host: true", "Warning: post_provision_script[1] failed",
		"Switching the storage back to the device: stm -dut", "The device booted the test image",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
}

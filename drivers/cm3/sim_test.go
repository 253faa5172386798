package cm3_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/cm3"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/cm3sim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// Images the tests write.
var (
	noble   = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "ubuntu", Size: 1 << 20, Seed: 24}
	core18  = sim.Image{OSRelease: sim.UbuntuRelease("18", "bionic"), Model: "pi3", Kind: "core", Size: 512 << 10, Seed: 18}
	core22  = sim.Image{OSRelease: sim.UbuntuRelease("22", "jammy"), Model: "pi3", Kind: "core22", Size: 512 << 10, Seed: 22}
	big     = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "ubuntu", Size: 3 << 20, Seed: 5}
	initial = sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Kind: "ubuntu", Size: 64 << 10, Seed: 1}
)

// startServer serves the images the tests write, compressed, by path.
func startServer(t testing.TB) *drivertest.ImageServer {
	t.Helper()
	corrupt := drivertest.Compress(t, "zst", noble.Bytes())
	return drivertest.StartImageServer(t, map[string][]byte{
		"/noble.img.zst":   drivertest.Compress(t, "zst", noble.Bytes()),
		"/core18.img.xz":   drivertest.Compress(t, "xz", core18.Bytes()),
		"/core22.img.zst":  drivertest.Compress(t, "zst", core22.Bytes()),
		"/big.img.zst":     drivertest.Compress(t, "zst", big.Bytes()),
		"/corrupt.img.zst": corrupt[:len(corrupt)/2],
		"/notadisk.img":    bytes.Repeat([]byte("not a disk image\n"), 4096),
	})
}

// fast are timings that keep the tests short.
var fast = events.Data{
	"boot_timeout": "20s", "boot_check_interval": "100ms", "usb_timeout": "5s", "control_timeout": "5s",
}

// rig starts a CM3 rig and returns it with a device configuration that
// reaches it (TOFU host keys, password logins) and extra keys.
func rig(t *testing.T, o cm3sim.Options, extra events.Data) (*cm3sim.Rig, *drivers.DeviceConfig) {
	t.Helper()
	o.Name = "cm3-1"
	o.Dir = t.TempDir()
	if o.BootTime == 0 {
		o.BootTime = 100 * time.Millisecond
	}
	o.USBDelay = 50 * time.Millisecond
	if o.Image == (sim.Image{}) {
		o.Image = initial
	}
	r, err := cm3sim.Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	raw := events.Data{}
	for k, v := range r.Config() {
		raw[k] = v
	}
	for k, v := range fast {
		raw[k] = v
	}
	for k, v := range extra {
		raw[k] = v
	}
	cfg := &drivers.DeviceConfig{
		Name: "cm3-1", Type: cm3.Type, Queues: []string{"cm3"},
		DeviceIP: raw["device_ip"].(string), SSHPort: raw["ssh_port"].(int),
		ControlHost: raw["control_host"].(string), ControlUser: raw["control_user"].(string),
		RebootScript: raw["reboot_script"].([]string),
		Raw:          raw,
		SSH:          drivertest.TOFU(t),
	}
	return r, cfg
}

func job(url string) *events.Job {
	return &events.Job{JobID: "j-cm3", JobQueue: "cm3", ProvisionData: events.Data{"url": url}, TestData: &events.TestData{}}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		_, cfg := rig(t, cm3sim.Options{}, nil)
		d, err := cm3.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return d, cfg
	})
}

func TestScenarios(t *testing.T) {
	srv := startServer(t)
	// The rig of each device configuration a scenario set up.
	var rigs drivertest.Rigs[*cm3sim.Rig]
	device := func(o cm3sim.Options, extra events.Data, prepare ...func(*testing.T, *cm3sim.Rig, *drivers.DeviceConfig)) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig {
			r, cfg := rig(t, o, extra)
			for _, p := range prepare {
				p(t, r, cfg)
			}
			rigs.Add(t, cfg, r)
			return cfg
		}
	}
	url := func(path string) func(*drivers.DeviceConfig) *events.Job {
		return func(*drivers.DeviceConfig) *events.Job { return job(srv.URL + path) }
	}
	// booted checks that the eMMC holds im and the CM3 runs it, with the
	// seed where the image type wants it.
	booted := func(im sim.Image, part int, seed string) func(*testing.T, *drivers.DeviceConfig, string, error) {
		return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
			r := rigs.Of(t, cfg)
			if last := r.Last(); !last.Complete || last.SHA256 != im.SHA256() {
				t.Errorf("eMMC: %d bytes, complete %v, sha256 %s; want the image (%s)", last.Bytes, last.Complete, last.SHA256, im.SHA256())
			}
			if got := r.Booted(); got != im {
				t.Errorf("the CM3 runs %+v, want %+v", got, im)
			}
			if got := osRelease(t, r.Addr()); got != im.OSRelease {
				t.Errorf("the device reports os-release %q, want the image's %q", got, im.OSRelease)
			}
			if r.CM3.State() != sim.Up || r.GPIO() || r.Sidecar.Disk(r.TestDevice()) != nil {
				t.Errorf("CM3 %s, GPIO 16 high %v, eMMC on the sidecar %v; want up, low, detached",
					r.CM3.State(), r.GPIO(), r.Sidecar.Disk(r.TestDevice()) != nil)
			}
			files := r.PartitionFiles(part)
			if !strings.Contains(string(files[seed]), "ubuntu:ubuntu") {
				t.Errorf("partition %d: %s = %q, want the cloud-init seed; files %q", part, seed, files[seed], keys(files))
			}
			if _, ok := files[cm3sim.FakeCloudConfig]; ok {
				t.Errorf("partition %d still holds %s", part, cm3sim.FakeCloudConfig)
			}
		}
	}
	notBooted := func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		r := rigs.Of(t, cfg)
		if _, err := sim.Bootable(r.Last()); err == nil {
			t.Errorf("the eMMC holds a bootable image after a failed write")
		}
	}
	untouched := func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		r := rigs.Of(t, cfg)
		if r.EMMC.Writes() != 0 || r.GPIO() || r.Resets() != 0 {
			t.Errorf("the rig was touched: %d writes, GPIO high %v, %d resets", r.EMMC.Writes(), r.GPIO(), r.Resets())
		}
	}
	classicSeed := "var/lib/cloud/seed/nocloud-net/user-data"
	failFast := events.Data{"boot_timeout": "1s", "usb_timeout": "1s"}

	drivertest.RunScenarios(t, []drivertest.Scenario{
		{Name: "happy path", Setup: device(cm3sim.Options{}, nil), Job: url("/noble.img.zst"), Want: drivertest.Succeeds,
			Output: "running Ubuntu 24.04", Check: booted(noble, 2, classicSeed)},
		{Name: "ubuntu core", Setup: device(cm3sim.Options{}, nil), Job: url("/core18.img.xz"), Want: drivertest.Succeeds,
			Output: "Image type core", Check: booted(core18, 2, "system-data/"+classicSeed)},
		{Name: "ubuntu core 22", Setup: device(cm3sim.Options{}, nil), Job: url("/core22.img.zst"), Want: drivertest.Succeeds,
			Output: "Image type core20", Check: booted(core22, 1, "data/etc/cloud/cloud.cfg.d/99_nocloud.cfg")},
		{Name: "bogus device file", Setup: device(cm3sim.Options{Faults: cm3sim.Faults{BogusDeviceFile: true}}, nil),
			Job: url("/noble.img.zst"), Want: drivertest.Succeeds, Output: "it is a regular file", Check: booted(noble, 2, classicSeed)},
		{Name: "slow link", Setup: device(cm3sim.Options{Faults: cm3sim.Faults{SlowLink: 2 * time.Millisecond}}, nil),
			Job: url("/noble.img.zst"), Want: drivertest.Succeeds, Check: booted(noble, 2, classicSeed)},
		{Name: "new image new host key", Want: drivertest.Succeeds, Job: url("/noble.img.zst"), Check: booted(noble, 2, classicSeed),
			Setup: device(cm3sim.Options{Faults: cm3sim.Faults{HostKeyChangesOnBoot: true}}, nil, func(t *testing.T, r *cm3sim.Rig, cfg *drivers.DeviceConfig) {
				drivertest.RecordHostKey(t, cfg, cfg.Name, r.Addr(), r.CM3.HostKey())
			})},
		{Name: "404", Setup: device(cm3sim.Options{}, nil), Job: url("/missing.img.zst"), Want: drivertest.ProvisioningFails, Output: "404"},
		{Name: "corrupt image", Setup: device(cm3sim.Options{}, nil), Job: url("/corrupt.img.zst"), Want: drivertest.ProvisioningFails,
			Output: "corrupt", Check: notBooted},
		{Name: "not a disk image", Setup: device(cm3sim.Options{}, nil), Job: url("/notadisk.img"), Want: drivertest.ProvisioningFails,
			Output: "no partitions"},
		{Name: "no url", Setup: device(cm3sim.Options{}, nil), Want: drivertest.ProvisioningFails, Output: "provision_data.url", Check: untouched,
			Job: func(*drivers.DeviceConfig) *events.Job { return job("") }},
		{Name: "write fails half way", Setup: device(cm3sim.Options{Faults: cm3sim.Faults{WriteFailsAfter: 256 << 10}}, nil),
			Job: url("/noble.img.zst"), Want: drivertest.ProvisioningFails, Output: "Input/output error", Check: notBooted},
		{Name: "link drops during the write", Job: url("/big.img.zst"), Want: drivertest.ProvisioningFails, Check: notBooted,
			Setup: device(cm3sim.Options{DiskRate: 1 << 20, Faults: cm3sim.Faults{DropAfter: time.Second}}, nil)},
		{Name: "never boots", Setup: device(cm3sim.Options{Faults: cm3sim.Faults{NeverBoots: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.ProvisioningFails, Output: "did not boot"},
		{Name: "boots a stale image", Setup: device(cm3sim.Options{Faults: cm3sim.Faults{StaleImage: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "not the image written"},
		{Name: "reset script fails", Setup: device(cm3sim.Options{Faults: cm3sim.Faults{ResetFails: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "reboot_script[0]"},
		{Name: "eMMC never appears", Setup: device(cm3sim.Options{Faults: cm3sim.Faults{USBNeverAppears: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "did not appear"},
		{Name: "sidecar host key changed", Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "host key", Check: untouched,
			Setup: device(cm3sim.Options{}, nil, func(t *testing.T, r *cm3sim.Rig, cfg *drivers.DeviceConfig) {
				drivertest.RecordHostKey(t, cfg, cfg.Name+"-control", r.Sidecar.Addr(), drivertest.RandomHostKey(t))
			})},
		{Name: "sidecar unreachable", Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "cannot reach the sidecar", Check: untouched,
			Setup: device(cm3sim.Options{}, events.Data{"control_timeout": "1s"}, func(t *testing.T, r *cm3sim.Rig, _ *drivers.DeviceConfig) {
				r.Sidecar.PowerOff()
			})},
	})
}

// osRelease logs in to the device at addr as ubuntu and returns its
// /etc/os-release.
func osRelease(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := sshx.Dial(ctx, sshx.Config{Addr: addr, User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir())}, "check")
	if err != nil {
		t.Errorf("logging in to the device: %v", err)
		return ""
	}
	defer c.Close()
	var out bytes.Buffer
	if _, err := c.Run(ctx, []string{"cat", "/etc/os-release"}, &out, nil); err != nil {
		t.Errorf("cat /etc/os-release: %v", err)
	}
	return out.String()
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestProvisionCancelledMidWrite(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	r, cfg := rig(t, cm3sim.Options{}, nil)
	d, err := cm3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, out := drivertest.NewRun(t, cfg, job(srv.URL+"/slow/big.img.zst"))
	var got atomic.Int64
	run.Progress = func(p image.Progress) { got.Store(p.BytesIn) }
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Provision(ctx, run) }()
	deadline := time.Now().Add(20 * time.Second)
	for got.Load() < 64<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("the write did not start; output:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	cancelled := time.Now()
	select {
	case err := <-done:
		if took := time.Since(cancelled); took > drivertest.CancelDeadline {
			t.Errorf("Provision returned %s after cancellation", took)
		}
		if !errors.Is(err, context.Canceled) || drivers.IsRecovery(err) {
			t.Errorf("Provision cancelled = %v, want context.Canceled and no recovery failure", err)
		}
	case <-time.After(drivertest.CancelDeadline):
		t.Fatalf("Provision did not return within %s of cancellation; output:\n%s", drivertest.CancelDeadline, out)
	}
	if _, err := sim.Bootable(r.Last()); err == nil {
		t.Error("the eMMC holds a bootable image after a cancelled write")
	}
}

func TestProvisionSharesTheImageCache(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	cache, err := image.NewCache(t.TempDir(), 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	for i := range 2 {
		r, cfg := rig(t, cm3sim.Options{}, nil)
		d, err := cm3.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		run, out := drivertest.NewRun(t, cfg, job(srv.URL+"/noble.img.zst"))
		run.Images = cache
		var progress atomic.Int64
		run.Progress = func(p image.Progress) { progress.Store(p.BytesOut) }
		if err := d.Provision(t.Context(), run); err != nil {
			t.Fatalf("device %d: %v\n%s", i, err, out)
		}
		if r.Booted() != noble {
			t.Errorf("device %d runs %+v", i, r.Booted())
		}
		if i == 1 && !strings.Contains(out.String(), "from the image cache") {
			t.Errorf("the second device did not use the cache:\n%s", out)
		}
		if progress.Load() == 0 {
			t.Errorf("device %d: no progress reported", i)
		}
	}
	if n := srv.Requests(); n != 1 {
		t.Errorf("the server got %d requests for one image, want 1", n)
	}
}

// TestLabDevice provisions the device `flinger lab` starts, configured
// only with the keys the simulator's Config gives, from the lab's image
// server.
func TestLabDevice(t *testing.T) {
	t.Parallel()
	images, err := sim.StartImageServer(t.Context(), "127.0.0.1:0", 2<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(images.Close)
	lab, err := sim.StartLab(t.Context(), cm3.Type, sim.LabOptions{Name: "lab-cm3", Dir: t.TempDir(), Settings: map[string]any{"boot_time": "100ms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	raw := events.Data{"boot_check_interval": "100ms"}
	for k, v := range lab.Config() {
		raw[k] = v
	}
	cfg := &drivers.DeviceConfig{
		Name: "lab-cm3", Type: cm3.Type, DeviceIP: raw["device_ip"].(string), SSHPort: raw["ssh_port"].(int),
		ControlHost: raw["control_host"].(string), ControlUser: raw["control_user"].(string),
		RebootScript: raw["reboot_script"].([]string), Raw: raw,
		SSH: drivertest.TOFU(t),
	}
	d, err := drivers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, out := drivertest.NewRun(t, cfg, job(images.URL()+"/ubuntu-24.04-server.img.xz"))
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	want, err := images.ImageFor("ubuntu-24.04-server.img.xz")
	if err != nil {
		t.Fatal(err)
	}
	if got := lab.(*cm3sim.Rig).Booted(); got != want {
		t.Errorf("the CM3 runs %+v, want %+v", got, want)
	}
}

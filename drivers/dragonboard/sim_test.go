package dragonboard_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/dragonboard"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/dragonboardsim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// Images the tests write.
var (
	noble   = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "ubuntu", Size: 1 << 20, Seed: 24}
	core18  = sim.Image{OSRelease: sim.UbuntuRelease("18", "bionic"), Model: "pi3", Kind: "core", Size: 512 << 10, Seed: 18}
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
		"/big.img.zst":     drivertest.Compress(t, "zst", big.Bytes()),
		"/corrupt.img.zst": corrupt[:len(corrupt)/2],
		"/notadisk.img":    bytes.Repeat([]byte("not a disk image\n"), 4096),
	})
}

// fast are timings that keep the tests short.
var fast = events.Data{
	"master_boot_timeout": "20s", "boot_timeout": "20s", "boot_check_interval": "100ms", "control_timeout": "5s",
}

// failFast are the timings of scenarios that wait for what never comes.
var failFast = events.Data{"master_boot_timeout": "1s", "boot_timeout": "1s"}

// rig starts a Dragonboard rig and returns it with a device configuration
// that reaches it (TOFU host keys, password logins) and extra keys.
func rig(t *testing.T, o dragonboardsim.Options, extra events.Data) (*dragonboardsim.Rig, *drivers.DeviceConfig) {
	t.Helper()
	o.Name = "db-1"
	o.Dir = t.TempDir()
	o.BootTime = 100 * time.Millisecond
	if o.Image == (sim.Image{}) {
		o.Image = initial
	}
	r, err := dragonboardsim.Start(t.Context(), o)
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
		Name: "db-1", Type: dragonboard.Type, Queues: []string{"dragonboard"},
		DeviceIP: raw["device_ip"].(string), SSHPort: raw["ssh_port"].(int),
		RebootScript: raw["reboot_script"].([]string),
		Raw:          raw,
		SSH:          drivertest.TOFU(t),
	}
	return r, cfg
}

func job(url string) *events.Job {
	return &events.Job{JobID: "j-db", JobQueue: "dragonboard", ProvisionData: events.Data{"url": url}, TestData: &events.TestData{}}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		_, cfg := rig(t, dragonboardsim.Options{}, nil)
		d, err := dragonboard.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return d, cfg
	})
}

func TestScenarios(t *testing.T) {
	srv := startServer(t)
	// The rig of each device configuration a scenario set up.
	var rigs drivertest.Rigs[*dragonboardsim.Rig]
	device := func(o dragonboardsim.Options, extra events.Data, prepare ...func(*testing.T, *dragonboardsim.Rig, *drivers.DeviceConfig)) func(t *testing.T) *drivers.DeviceConfig {
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
	// booted checks that the card holds im and the board runs it, with
	// the seed and sudoers file on partition 2 under base.
	booted := func(im sim.Image, base string) func(*testing.T, *drivers.DeviceConfig, string, error) {
		return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
			r := rigs.Of(t, cfg)
			if last := r.Disk.Last(); !last.Complete || last.SHA256 != im.SHA256() {
				t.Errorf("card: %d bytes, complete %v, sha256 %s; want the image (%s)", last.Bytes, last.Complete, last.SHA256, im.SHA256())
			}
			if got := r.Booted(); got != im || r.InMaster() || r.Test.State() != sim.Up {
				t.Errorf("the board runs %+v (master %v, test image %s); want %+v up", got, r.InMaster(), r.Test.State(), im)
			}
			if got := osRelease(t, r.Addr()); got != im.OSRelease {
				t.Errorf("the device reports os-release %q, want the image's %q", got, im.OSRelease)
			}
			files := r.PartitionFiles(2)
			if seed := files[base+"var/lib/cloud/seed/nocloud-net/user-data"]; !strings.Contains(string(seed), "ubuntu:ubuntu") {
				t.Errorf("user-data = %q; files %q", seed, keys(files))
			}
			if s := files[base+"etc/sudoers.d/ubuntu"]; !strings.Contains(string(s), "NOPASSWD") {
				t.Errorf("sudoers = %q", s)
			}
		}
	}
	wiped := func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		r := rigs.Of(t, cfg)
		if last := r.Disk.Last(); r.Disk.Writes() == 0 || last.Bytes != 0 {
			t.Errorf("card not wiped: %d writes, last %d bytes", r.Disk.Writes(), last.Bytes)
		}
	}
	untouched := func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		r := rigs.Of(t, cfg)
		if r.Disk.Writes() != 0 {
			t.Errorf("the card was written %d times", r.Disk.Writes())
		}
	}
	inMasterNoReset := func(t *testing.T, cfg *drivers.DeviceConfig, out string, err error) {
		booted(noble, "")(t, cfg, out, err)
		if n := rigs.Of(t, cfg).Resets(); n != 0 {
			t.Errorf("%d resets for a board already in its master image", n)
		}
	}

	drivertest.RunScenarios(t, []drivertest.Scenario{
		{Name: "happy path", Setup: device(dragonboardsim.Options{}, nil), Job: url("/noble.img.zst"), Want: drivertest.Succeeds,
			Output: "running Ubuntu 24.04", Check: booted(noble, "")},
		{Name: "already in master", Setup: device(dragonboardsim.Options{StartInMaster: true}, nil), Job: url("/noble.img.zst"),
			Want: drivertest.Succeeds, Output: "The master image is up", Check: inMasterNoReset},
		{Name: "ubuntu core", Setup: device(dragonboardsim.Options{}, nil), Job: url("/core18.img.xz"), Want: drivertest.Succeeds,
			Check: booted(core18, "system-data/")},
		{Name: "slow link", Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{SlowLink: 2 * time.Millisecond}}, nil),
			Job: url("/noble.img.zst"), Want: drivertest.Succeeds, Check: booted(noble, "")},
		{Name: "new image new host key", Want: drivertest.Succeeds, Job: url("/noble.img.zst"), Check: booted(noble, ""),
			Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{HostKeyChangesOnBoot: true}}, nil,
				func(t *testing.T, r *dragonboardsim.Rig, cfg *drivers.DeviceConfig) {
					drivertest.RecordHostKey(t, cfg, cfg.Name, r.Addr(), r.Test.HostKey())
				})},
		{Name: "404", Setup: device(dragonboardsim.Options{}, nil), Job: url("/missing.img.zst"), Want: drivertest.ProvisioningFails,
			Output: "404", Check: wiped},
		{Name: "corrupt image", Setup: device(dragonboardsim.Options{}, nil), Job: url("/corrupt.img.zst"), Want: drivertest.ProvisioningFails,
			Output: "corrupt", Check: wiped},
		{Name: "not a disk image", Setup: device(dragonboardsim.Options{}, nil), Job: url("/notadisk.img"), Want: drivertest.ProvisioningFails,
			Output: "snappy_writable_partition", Check: wiped},
		{Name: "no url", Setup: device(dragonboardsim.Options{}, nil), Want: drivertest.ProvisioningFails, Output: "provision_data.url",
			Job: func(*drivers.DeviceConfig) *events.Job { return job("") }, Check: untouched},
		{Name: "write fails half way", Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{WriteFailsAfter: 256 << 10}}, nil),
			Job: url("/noble.img.zst"), Want: drivertest.ProvisioningFails, Output: "Input/output error", Check: wiped},
		{Name: "link drops during the write", Job: url("/big.img.zst"), Want: drivertest.ProvisioningFails, Check: wiped,
			Setup: device(dragonboardsim.Options{DiskRate: 1 << 20, Faults: dragonboardsim.Faults{DropAfter: time.Second}}, nil)},
		{Name: "test image never boots", Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{NeverBoots: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.ProvisioningFails, Output: "did not boot the test image"},
		{Name: "boots a stale image", Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{StaleImage: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "not the image written"},
		{Name: "master never comes up", Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{MasterNeverBoots: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "master image did not come up", Check: untouched},
		{Name: "master host key changed", Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "host key", Check: untouched,
			Setup: device(dragonboardsim.Options{}, nil, func(t *testing.T, r *dragonboardsim.Rig, cfg *drivers.DeviceConfig) {
				drivertest.RecordHostKey(t, cfg, cfg.Name+"-master", r.Addr(), drivertest.RandomHostKey(t))
			})},
		{Name: "reset script fails", Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{ResetFails: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "reboot_script[0]", Check: untouched},
		{Name: "select script fails", Setup: device(dragonboardsim.Options{Faults: dragonboardsim.Faults{SelectFails: true}}, failFast),
			Job: url("/noble.img.zst"), Want: drivertest.RecoveryFails, Output: "select_master_script[0]", Check: untouched},
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
	r, cfg := rig(t, dragonboardsim.Options{StartInMaster: true}, nil)
	d, err := dragonboard.New(cfg)
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
	if _, err := sim.Bootable(r.Disk.Last()); err == nil {
		t.Error("the card holds a bootable image after a cancelled write")
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
	lab, err := sim.StartLab(t.Context(), dragonboard.Type, sim.LabOptions{Name: "lab-db", Dir: t.TempDir(), Settings: map[string]any{"boot_time": "100ms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	raw := events.Data{"boot_check_interval": "100ms"}
	for k, v := range lab.Config() {
		raw[k] = v
	}
	cfg := &drivers.DeviceConfig{
		Name: "lab-db", Type: dragonboard.Type, DeviceIP: raw["device_ip"].(string), SSHPort: raw["ssh_port"].(int),
		RebootScript: raw["reboot_script"].([]string), Raw: raw,
		SSH: drivertest.TOFU(t),
	}
	d, err := drivers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, out := drivertest.NewRun(t, cfg, job(images.URL()+"/ubuntu-24.04-core.img.zst"))
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	want, err := images.ImageFor("ubuntu-24.04-core.img.zst")
	if err != nil {
		t.Fatal(err)
	}
	if got := lab.(*dragonboardsim.Rig).Booted(); got != want {
		t.Errorf("the board runs %+v, want %+v", got, want)
	}
}

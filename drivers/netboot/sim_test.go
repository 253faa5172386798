package netboot_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/netbootsim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		_, cfg := startRig(t, netbootsim.Options{Image: &oldImage}, nil)
		return newDriver(t, cfg), cfg
	})
}

// wrote checks that the device's disk holds im and that the test image
// booted from it.
func wrote(im sim.Image) func(t *testing.T, cfg *drivers.DeviceConfig) {
	return func(t *testing.T, cfg *drivers.DeviceConfig) {
		t.Helper()
		r := rigOf(t, cfg)
		if last := r.Disk().Last(); !last.Complete || last.SHA256 != im.SHA256() {
			t.Errorf("the disk holds %d bytes (complete %v, sha256 %s), want the image (%d bytes, sha256 %s)",
				last.Bytes, last.Complete, last.SHA256, im.Size, im.SHA256())
		}
		if target, up := r.Running(); target != netbootsim.Test || !up {
			t.Errorf("the device runs %s (up %v), want the test image up", target, up)
		}
		if got := osRelease(t, r); got != im.OSRelease {
			t.Errorf("the test image reports os-release %q, want the image's %q", got, im.OSRelease)
		}
	}
}

// leftInImager checks that a failed write left the device in the imager,
// with a disk that does not boot.
func leftInImager(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	r := rigOf(t, cfg)
	if target, up := r.Running(); target != netbootsim.Master || !up {
		t.Errorf("the device runs %s (up %v), want the imager up for the next attempt", target, up)
	}
	if im, err := sim.Bootable(r.Disk().Last()); err == nil {
		t.Errorf("a failed write left a bootable disk (%s)", im.OSRelease)
	}
}

// TestScenarios runs netboot's outcomes through the driver and the
// connector command line.
func TestScenarios(t *testing.T) {
	srv := startImageServer(t)
	job := func(path string) func(*drivers.DeviceConfig) *events.Job {
		return func(*drivers.DeviceConfig) *events.Job { return jobFor(srv.URL + path) }
	}
	device := func(opts netbootsim.Options, raw events.Data) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig {
			_, cfg := startRig(t, opts, raw)
			return cfg
		}
	}
	inTest := netbootsim.Options{Image: &oldImage}
	inMaster := netbootsim.Options{Image: &oldImage, Start: netbootsim.Master}
	withFaults := func(o netbootsim.Options, f netbootsim.Faults) netbootsim.Options {
		o.Faults = f
		return o
	}
	drivertest.RunScenarios(t, []drivertest.Scenario{
		{
			Name: "xz image, master brought up by select_master_script", Setup: device(inTest, nil), Job: job("/new.img.xz"),
			Want: drivertest.Succeeds, Output: "The test image is up: Ubuntu 24.04",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, output string, _ error) {
				wrote(newImage)(t, cfg)
				r := rigOf(t, cfg)
				if n := r.Calls(netbootsim.SelectMasterScript); n != 1 {
					t.Errorf("select_master_script ran %d times, want 1", n)
				}
				if n := r.Calls(netbootsim.SelectTestScript); n != 1 {
					t.Errorf("select_test_script ran %d times, want 1", n)
				}
				for _, s := range []string{"The master image is not up", "The master image is up", "Image written to /dev/mmcblk0", "recompressed from xz"} {
					if !strings.Contains(output, s) {
						t.Errorf("output lacks %q", s)
					}
				}
			},
		},
		{
			Name: "zstd image recompressed, master already up", Setup: device(inMaster, events.Data{"post_flash_cmds": []any{"echo post-flash-ran"}}),
			Job: job("/new.img.zst"), Want: drivertest.Succeeds, Output: "recompressed from zstd",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, output string, _ error) {
				wrote(newImage)(t, cfg)
				r := rigOf(t, cfg)
				if n := r.Calls(netbootsim.SelectMasterScript) + r.Calls(netbootsim.RebootScript); n != 0 {
					t.Errorf("the device was reset (%d script runs) although its master image was up", n)
				}
				if !strings.Contains(output, "post-flash-ran") {
					t.Error("post_flash_cmds did not run")
				}
			},
		},
		{Name: "raw image", Setup: device(inMaster, nil), Job: job("/new.img"), Want: drivertest.Succeeds, Output: "recompressed from raw",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) { wrote(newImage)(t, cfg) }},
		{Name: "slow link", Setup: device(withFaults(inMaster, netbootsim.Faults{SlowLink: 1 << 20}), nil), Job: job("/new.img.xz"),
			Want: drivertest.Succeeds, Check: func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) { wrote(newImage)(t, cfg) }},
		{
			Name: "host key changes with the new image", Want: drivertest.Succeeds, Job: job("/new.img.xz"),
			Setup: func(t *testing.T) *drivers.DeviceConfig {
				r, cfg := startRig(t, withFaults(inTest, netbootsim.Faults{HostKeyChangesOnBoot: true}), nil)
				// The old image's key is on record.
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				c, err := sshx.WaitForSSH(ctx, sshx.Config{Addr: r.DUT().Addr(), User: "admin", Password: "admin",
					HostKeys: cfg.SSH.Policy(), KeepAlive: -1}, cfg.Name, 50*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.Close()
				return cfg
			},
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				wrote(newImage)(t, cfg)
				rec, err := cfg.SSH.Policy().(*sshx.TOFUStore).Recorded(cfg.Name)
				if err != nil || !bytes.Equal(rec.Marshal(), rigOf(t, cfg).DUT().HostKey().Marshal()) {
					t.Errorf("the recorded host key is not the new image's (%v)", err)
				}
			},
		},
		{Name: "missing url", Setup: device(inTest, nil), Want: drivertest.ProvisioningFails, Output: "provision_data.url",
			Job: func(*drivers.DeviceConfig) *events.Job { return jobFor("") }},
		{Name: "404", Setup: device(inMaster, nil), Job: job("/missing.img.xz"), Want: drivertest.ProvisioningFails, Output: "404", Check: leftInImager},
		{Name: "corrupt image", Setup: device(inMaster, nil), Job: job("/corrupt.xz"), Want: drivertest.ProvisioningFails, Output: "corrupt", Check: leftInImager},
		{Name: "qcow2 image", Setup: device(inMaster, nil), Job: job("/disk.qcow2"), Want: drivertest.ProvisioningFails, Output: "qcow2", Check: leftInImager},
		{Name: "write fails half way", Setup: device(withFaults(inMaster, netbootsim.Faults{WriteFailsAfter: 200 << 10}), nil), Job: job("/new.img.xz"),
			Want: drivertest.ProvisioningFails, Output: "Input/output error", Check: leftInImager},
		{Name: "link drops", Setup: device(withFaults(inMaster, netbootsim.Faults{LinkDropsAfter: 20 << 10}), nil), Job: job("/new.img.xz"),
			Want: drivertest.ProvisioningFails, Output: "Unexpected end of input", Check: leftInImager},
		{Name: "post_flash_cmds fail", Setup: device(inMaster, events.Data{"post_flash_cmds": []any{"false"}}), Job: job("/new.img.xz"),
			Want: drivertest.ProvisioningFails, Output: "post_flash_cmds[0] false failed"},
		{Name: "master never comes up", Setup: device(withFaults(inTest, netbootsim.Faults{ImagerNeverBoots: true}), events.Data{"master_boot_timeout": "1s"}),
			Job: job("/new.img.xz"), Want: drivertest.RecoveryFails, Output: "the master image did not come up within 1s"},
		{Name: "reboot_script fails", Setup: device(inTest, events.Data{"reboot_script": []any{"false"}}), Job: job("/new.img.xz"),
			Want: drivertest.RecoveryFails, Output: "reboot_script[0] false failed"},
		{Name: "select_master_script fails", Setup: device(inTest, events.Data{"select_master_script": []any{"false"}}), Job: job("/new.img.xz"),
			Want: drivertest.RecoveryFails, Output: "selecting the master image"},
		{Name: "select_test_script fails", Setup: device(inMaster, events.Data{"select_test_script": []any{"false"}}), Job: job("/new.img.xz"),
			Want: drivertest.RecoveryFails, Output: "selecting the test image"},
		{Name: "test image never boots", Setup: device(withFaults(inMaster, netbootsim.Faults{NeverBoots: true}), events.Data{"boot_timeout": "1s"}),
			Job: job("/new.img.xz"), Want: drivertest.ProvisioningFails, Output: "the test image did not accept ssh"},
	})
}

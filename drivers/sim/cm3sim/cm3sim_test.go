package cm3sim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/cm3sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func startRig(t *testing.T, f cm3sim.Faults) *cm3sim.Rig {
	t.Helper()
	r, err := cm3sim.Start(t.Context(), cm3sim.Options{
		Name: "cm3-test", Dir: t.TempDir(), BootTime: 100 * time.Millisecond, USBDelay: 50 * time.Millisecond, Faults: f,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func dial(t *testing.T, addr, name string) *sshx.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := sshx.WaitForSSH(ctx, sshx.Config{
		Addr: addr, User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()), DialTimeout: 3 * time.Second,
	}, name, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// run runs argv with stdin and returns its output and exit status.
func run(t *testing.T, c *sshx.Client, stdin []byte, argv ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	var in *bytes.Reader
	if stdin != nil {
		in = bytes.NewReader(stdin)
	}
	var code int
	var err error
	if in != nil {
		code, err = c.RunInput(ctx, argv, in, &out, &errb)
	} else {
		code, err = c.Run(ctx, argv, &out, &errb)
	}
	if err != nil && code < 0 {
		t.Fatalf("%q: %v", argv, err)
	}
	return out.String(), errb.String(), code
}

func must(t *testing.T, c *sshx.Client, stdin []byte, argv ...string) string {
	t.Helper()
	out, errs, code := run(t, c, stdin, argv...)
	if code != 0 {
		t.Fatalf("%q: exit %d: %s", argv, code, errs)
	}
	return out
}

func reset(t *testing.T, r *cm3sim.Rig) error {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), r.ResetScript).CombinedOutput()
	if err != nil {
		t.Logf("reset: %s", out)
	}
	return err
}

// waitFor polls cond until it holds or 10 s have passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestProvisioningCycle(t *testing.T) {
	t.Parallel()
	r := startRig(t, cm3sim.Faults{})
	side := dial(t, r.Sidecar.Addr(), "sidecar")

	if _, _, code := run(t, side, nil, "test", "-b", "/dev/sda"); code != 1 {
		t.Fatalf("test -b /dev/sda = %d before USB-boot mode, want 1", code)
	}
	if _, errs, code := run(t, side, nil, "pi3gpio", "set", "high", "16"); code == 0 || !strings.Contains(errs, "Permission denied") {
		t.Errorf("pi3gpio without sudo: %d %q", code, errs)
	}
	must(t, side, nil, "sudo", "pi3gpio", "set", "high", "16")
	if !r.GPIO() {
		t.Fatal("GPIO 16 low after set high")
	}
	if err := reset(t, r); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the eMMC appearing", func() bool { return r.Sidecar.Disk("/dev/sda") != nil })
	if !r.USBBoot() {
		t.Error("the CM3 is not in USB-boot mode after a reset with GPIO 16 high")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := sshx.Dial(ctx, sshx.Config{Addr: r.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir())}, "cm3"); err == nil {
		t.Error("the CM3 answers in USB-boot mode")
	}

	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "ubuntu", Size: 256 << 10, Seed: 9}
	must(t, side, im.Bytes(), "sudo", "dd", "of=/dev/sda", "bs=16M")
	var ls struct {
		Blockdevices []struct {
			Name     string
			Children []struct{ Name string }
		}
	}
	if err := json.Unmarshal([]byte(must(t, side, nil, "lsblk", "-J", "/dev/sda")), &ls); err != nil {
		t.Fatal(err)
	}
	if len(ls.Blockdevices) != 1 || len(ls.Blockdevices[0].Children) != 2 || ls.Blockdevices[0].Children[1].Name != "sda2" {
		t.Fatalf("lsblk: %+v", ls)
	}
	must(t, side, nil, "sudo", "mount", "/dev/sda2", "/mnt")
	if got := must(t, side, nil, "ls", "/mnt"); !strings.Contains(got, "etc\n") {
		t.Errorf("ls /mnt = %q, want a root file system", got)
	}
	if got := must(t, side, nil, "cat", "/mnt/etc/os-release"); got != im.OSRelease {
		t.Errorf("os-release = %q", got)
	}
	must(t, side, []byte("seed"), "sudo", "tee", "/mnt/var/lib/cloud/seed/nocloud-net/user-data")
	must(t, side, nil, "sudo", "rm", "-f", "/mnt/"+cm3sim.FakeCloudConfig)
	if _, errs, code := run(t, side, nil, "sudo", "udisksctl", "power-off", "-b", "/dev/sda"); code == 0 {
		t.Errorf("udisksctl power-off while mounted succeeded: %s", errs)
	}
	must(t, side, nil, "sudo", "umount", "/mnt")
	files := r.PartitionFiles(2)
	if string(files["var/lib/cloud/seed/nocloud-net/user-data"]) != "seed" {
		t.Errorf("partition 2 files after umount: %q", files)
	}
	if _, ok := files[cm3sim.FakeCloudConfig]; ok {
		t.Error("the removed file is still on the partition")
	}
	// Mounted again, the partition keeps what was written.
	must(t, side, nil, "sudo", "mount", "/dev/sda2", "/mnt")
	if got := must(t, side, nil, "cat", "/mnt/var/lib/cloud/seed/nocloud-net/user-data"); got != "seed" {
		t.Errorf("seed after remount = %q", got)
	}
	must(t, side, nil, "sudo", "umount", "/dev/sda2")

	must(t, side, nil, "sudo", "udisksctl", "power-off", "-b", "/dev/sda")
	if r.Sidecar.Disk("/dev/sda") != nil {
		t.Error("the eMMC is still attached after power-off")
	}
	must(t, side, nil, "sudo", "pi3gpio", "set", "low", "16")
	if err := reset(t, r); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := r.CM3.WaitState(ctx, sim.Up); err != nil {
		t.Fatal(err)
	}
	if got := r.Booted(); got != im {
		t.Errorf("booted %+v, want %+v", got, im)
	}
	cm3 := dial(t, r.Addr(), "cm3")
	if got := must(t, cm3, nil, "cat", "/etc/os-release"); got != im.OSRelease {
		t.Errorf("CM3 os-release = %q", got)
	}
	if r.Resets() != 2 {
		t.Errorf("resets = %d, want 2", r.Resets())
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	t.Run("reset fails", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, cm3sim.Faults{ResetFails: true})
		if err := reset(t, r); err == nil {
			t.Error("the reset script succeeded")
		}
	})
	t.Run("bogus device file", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, cm3sim.Faults{BogusDeviceFile: true})
		side := dial(t, r.Sidecar.Addr(), "sidecar")
		if _, _, code := run(t, side, nil, "test", "-f", "/dev/sda"); code != 0 {
			t.Error("test -f /dev/sda: no regular file")
		}
		if _, _, code := run(t, side, nil, "test", "-b", "/dev/sda"); code != 1 {
			t.Error("test -b /dev/sda: a regular file is a block device")
		}
	})
	t.Run("usb never appears", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, cm3sim.Faults{USBNeverAppears: true})
		side := dial(t, r.Sidecar.Addr(), "sidecar")
		must(t, side, nil, "sudo", "pi3gpio", "set", "high", "16")
		if err := reset(t, r); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		<-ctx.Done()
		if r.Sidecar.Disk("/dev/sda") != nil {
			t.Error("the eMMC appeared")
		}
	})
	t.Run("stale image", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, cm3sim.Faults{StaleImage: true})
		before := r.Booted()
		im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 64 << 10, Seed: 2}
		if _, err := r.EMMC.CopyTo(t.Context(), bytes.NewReader(im.Bytes()), 0); err != nil {
			t.Fatal(err)
		}
		if err := reset(t, r); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := r.CM3.WaitState(ctx, sim.Up); err != nil {
			t.Fatal(err)
		}
		cm3 := dial(t, r.Addr(), "cm3")
		if got := must(t, cm3, nil, "cat", "/etc/os-release"); got != before.OSRelease {
			t.Errorf("os-release = %q, want the old image's", got)
		}
	})
	t.Run("truncated image never boots", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, cm3sim.Faults{})
		im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 64 << 10, Seed: 2}
		if _, err := r.EMMC.CopyTo(t.Context(), bytes.NewReader(im.Bytes()[:10000]), 0); err != nil {
			t.Fatal(err)
		}
		if err := reset(t, r); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		if err := r.CM3.WaitState(ctx, sim.Up); err == nil {
			t.Error("the CM3 came up from a truncated image")
		}
	})
}

func TestLab(t *testing.T) {
	t.Parallel()
	d, err := sim.StartLab(t.Context(), "cm3", sim.LabOptions{Name: "lab-cm3", Dir: t.TempDir(), Settings: map[string]any{"boot_time": "100ms", "never_boots": true}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cfg := d.Config()
	for _, k := range []string{"device_ip", "ssh_port", "control_host", "control_port", "test_device", "reboot_script"} {
		if cfg[k] == nil || cfg[k] == "" || cfg[k] == 0 {
			t.Errorf("Config()[%s] = %v", k, cfg[k])
		}
	}
	if d.(*cm3sim.Rig).Faults() != (cm3sim.Faults{NeverBoots: true}) {
		t.Errorf("faults = %+v", d.(*cm3sim.Rig).Faults())
	}
	_, err = sim.StartLab(t.Context(), "cm3", sim.LabOptions{Name: "bad", Dir: t.TempDir(), Settings: map[string]any{"boot_tme": 1, "never_boots": "yes"}})
	if err == nil || !strings.Contains(err.Error(), "boot_tme") || !strings.Contains(err.Error(), "never_boots") {
		t.Errorf("bad settings: %v", err)
	}
}

package dragonboardsim_test

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/dragonboardsim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func startRig(t *testing.T, o dragonboardsim.Options) *dragonboardsim.Rig {
	t.Helper()
	o.Name, o.Dir, o.BootTime = "db-test", t.TempDir(), 100*time.Millisecond
	r, err := dragonboardsim.Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// dial logs in to the board as user, recording its host key under name.
func dial(t *testing.T, r *dragonboardsim.Rig, user, password, name string) (*sshx.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := sshx.WaitForSSH(ctx, sshx.Config{
		Addr: r.Addr(), User: user, Password: password, HostKeys: sshx.TOFU(t.TempDir()), DialTimeout: 3 * time.Second,
	}, name, 50*time.Millisecond)
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

func mustDial(t *testing.T, r *dragonboardsim.Rig, user, password string) *sshx.Client {
	t.Helper()
	c, err := dial(t, r, user, password, user)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, c *sshx.Client, stdin []byte, argv ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	var code int
	var err error
	if stdin != nil {
		code, err = c.RunInput(ctx, argv, bytes.NewReader(stdin), &out, &errb)
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

func script(t *testing.T, path string) error {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), path).CombinedOutput()
	if err != nil {
		t.Logf("%s: %s", path, out)
	}
	return err
}

func waitUp(t *testing.T, d *sim.DUT) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := d.WaitState(ctx, sim.Up); err != nil {
		t.Fatal(err)
	}
}

func TestProvisioningCycle(t *testing.T) {
	t.Parallel()
	r := startRig(t, dragonboardsim.Options{})
	if r.InMaster() {
		t.Fatal("the rig starts in its master image")
	}
	test := mustDial(t, r, "ubuntu", "ubuntu")
	must(t, test, nil, "snap", "-h")
	if _, _, code := run(t, test, nil, "cat", "/etc/issue"); code == 0 {
		t.Error("the test image has the master's /etc/issue")
	}

	if err := script(t, r.SelectMasterScript); err != nil {
		t.Fatal(err)
	}
	if r.InMaster() {
		t.Fatal("selecting the master image rebooted the board")
	}
	if err := script(t, r.ResetScript); err != nil {
		t.Fatal(err)
	}
	waitUp(t, r.Master)
	master := mustDial(t, r, "linaro", "linaro")
	if got := must(t, master, nil, "cat", "/etc/issue"); !strings.Contains(got, "Debian GNU") {
		t.Errorf("/etc/issue = %q", got)
	}
	if _, _, code := run(t, master, nil, "snap", "-h"); code == 0 {
		t.Error("snap -h works on the master image")
	}

	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "ubuntu", Size: 256 << 10, Seed: 4}
	must(t, master, im.Bytes(), "sudo", "dd", "of=/dev/mmcblk1", "bs=16M")
	must(t, master, nil, "sudo", "hdparm", "-z", "/dev/mmcblk1")
	must(t, master, nil, "sudo", "mount", "/dev/mmcblk1p2", "/mnt")
	if got := must(t, master, nil, "ls", "/mnt"); !strings.Contains(got, "etc\n") {
		t.Errorf("ls /mnt = %q", got)
	}
	must(t, master, []byte("seed"), "sudo", "tee", "/mnt/var/lib/cloud/seed/nocloud-net/user-data")
	must(t, master, nil, "sudo", "umount", "/mnt")
	if got := string(r.PartitionFiles(2)["var/lib/cloud/seed/nocloud-net/user-data"]); got != "seed" {
		t.Errorf("seed on the card = %q", got)
	}

	if err := script(t, r.SelectTestScript); err != nil {
		t.Fatal(err)
	}
	boots := r.Boots()
	must(t, master, nil, "sudo", "/sbin/reboot")
	deadline := time.Now().Add(10 * time.Second)
	for r.Boots() == boots {
		if time.Now().After(deadline) {
			t.Fatal("the board did not reboot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitUp(t, r.Test)
	if r.InMaster() || r.Booted() != im {
		t.Errorf("in master %v, booted %+v; want the new test image", r.InMaster(), r.Booted())
	}
	test = mustDial(t, r, "ubuntu", "ubuntu")
	if got := must(t, test, nil, "cat", "/etc/os-release"); got != im.OSRelease {
		t.Errorf("os-release = %q", got)
	}
}

func TestWipe(t *testing.T) {
	t.Parallel()
	r := startRig(t, dragonboardsim.Options{StartInMaster: true})
	master := mustDial(t, r, "linaro", "linaro")
	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 64 << 10, Seed: 4}
	must(t, master, im.Bytes(), "sudo", "dd", "of=/dev/mmcblk1")
	must(t, master, nil, "sudo", "sgdisk", "-o", "/dev/mmcblk1")
	if _, err := sim.Bootable(r.Disk.Last()); err == nil {
		t.Error("the card boots after sgdisk -o")
	}
	if err := script(t, r.SelectTestScript); err != nil {
		t.Fatal(err)
	}
	if err := script(t, r.ResetScript); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if err := r.Test.WaitState(ctx, sim.Up); err == nil {
		t.Error("the test image came up from a wiped card")
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		faults dragonboardsim.Faults
		check  func(t *testing.T, r *dragonboardsim.Rig)
	}{
		{"master never boots", dragonboardsim.Faults{MasterNeverBoots: true}, func(t *testing.T, r *dragonboardsim.Rig) {
			if err := script(t, r.SelectMasterScript); err != nil {
				t.Fatal(err)
			}
			if err := script(t, r.ResetScript); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			if err := r.Master.WaitState(ctx, sim.Up); err == nil {
				t.Error("the master image came up")
			}
		}},
		{"reset fails", dragonboardsim.Faults{ResetFails: true}, func(t *testing.T, r *dragonboardsim.Rig) {
			if err := script(t, r.ResetScript); err == nil {
				t.Error("the reset script succeeded")
			}
		}},
		{"select fails", dragonboardsim.Faults{SelectFails: true}, func(t *testing.T, r *dragonboardsim.Rig) {
			if err := script(t, r.SelectMasterScript); err == nil || r.SelectsMaster() {
				t.Errorf("select-master: %v, selects master %v", err, r.SelectsMaster())
			}
		}},
		{"master host key changes", dragonboardsim.Faults{MasterHostKeyChangesOnBoot: true}, func(t *testing.T, r *dragonboardsim.Rig) {
			before := r.Master.HostKey()
			if err := script(t, r.SelectMasterScript); err != nil {
				t.Fatal(err)
			}
			if err := script(t, r.ResetScript); err != nil {
				t.Fatal(err)
			}
			waitUp(t, r.Master)
			if bytes.Equal(before.Marshal(), r.Master.HostKey().Marshal()) {
				t.Error("the master's host key did not change")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.check(t, startRig(t, dragonboardsim.Options{Faults: tc.faults}))
		})
	}
}

func TestLab(t *testing.T) {
	t.Parallel()
	d, err := sim.StartLab(t.Context(), "dragonboard", sim.LabOptions{Name: "lab-db", Dir: t.TempDir(), Settings: map[string]any{"boot_time": 1, "start_in_master": true}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cfg := d.Config()
	for _, k := range []string{"device_ip", "ssh_port", "test_device", "snappy_writable_partition", "select_master_script", "select_test_script", "reboot_script", "master_user"} {
		if cfg[k] == nil || cfg[k] == "" || cfg[k] == 0 {
			t.Errorf("Config()[%s] = %v", k, cfg[k])
		}
	}
	if !d.(*dragonboardsim.Rig).InMaster() {
		t.Error("start_in_master ignored")
	}
	if _, err := sim.StartLab(t.Context(), "dragonboard", sim.LabOptions{Name: "bad", Dir: t.TempDir(), Settings: map[string]any{"nevr_boots": true}}); err == nil || !strings.Contains(err.Error(), "nevr_boots") {
		t.Errorf("bad settings: %v", err)
	}
}

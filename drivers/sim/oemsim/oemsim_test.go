package oemsim_test

import (
	"bytes"
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/oemsim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

var iso = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "iso", Size: 1 << 20, Seed: 3}

// rig starts a laptop accepting the returned client's key.
func rig(t *testing.T, o oemsim.Options) (*oemsim.Rig, func() *sshx.Client) {
	t.Helper()
	key, pub, err := oemsim.NewKeyFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	o.Dir = t.TempDir()
	o.AuthorizedKeys = []ssh.PublicKey{pub}
	o.Factory = sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Size: 1 << 20}
	if o.BootTime == 0 {
		o.BootTime = 50 * time.Millisecond
	}
	if o.ReinstallTime == 0 {
		o.ReinstallTime = 200 * time.Millisecond
	}
	if o.OEMConfigTime == 0 {
		o.OEMConfigTime = 200 * time.Millisecond
	}
	r, err := oemsim.Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	hostKeys := sshx.TOFU(t.TempDir())
	dial := func() *sshx.Client {
		t.Helper()
		_ = hostKeys.Reset("oem")
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		c, err := sshx.WaitForSSH(ctx, sshx.Config{Addr: r.Addr(), User: "ubuntu", KeyFiles: []string{key}, HostKeys: hostKeys, KeepAlive: -1}, "oem", 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	return r, dial
}

// run runs argv and returns its status and output.
func run(t *testing.T, c *sshx.Client, stdin []byte, argv ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	var in *bytes.Reader
	if stdin != nil {
		in = bytes.NewReader(stdin)
	}
	var code int
	var err error
	if in != nil {
		code, err = c.RunInput(t.Context(), argv, in, &out, &out)
	} else {
		code, err = c.Run(t.Context(), argv, &out, &out)
	}
	if err != nil && code < 0 {
		t.Fatalf("%q: %v", argv, err)
	}
	return code, out.String()
}

func mustRun(t *testing.T, c *sshx.Client, stdin []byte, argv ...string) string {
	t.Helper()
	code, out := run(t, c, stdin, argv...)
	if code != 0 {
		t.Fatalf("%q exited %d: %s", argv, code, out)
	}
	return out
}

func waitReinstalled(t *testing.T, r *oemsim.Rig, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.Reinstalls() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d reinstalls, want %d", r.Reinstalls(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBlockDevices(t *testing.T) {
	t.Parallel()
	_, dial := rig(t, oemsim.Options{Name: "oem", RecoverySize: 32 << 20})
	c := dial()
	out := mustRun(t, c, nil, "lsblk", "-l", "-n", "-o", "NAME,MOUNTPOINT")
	if !strings.Contains(out, "nvme0n1p1 /boot/efi") || !strings.Contains(out, "nvme0n1p2\n") {
		t.Errorf("lsblk:\n%s", out)
	}
	if out := mustRun(t, c, nil, "lsblk", "-b", "-n", "-o", "SIZE", oemsim.RecoveryPartition); strings.TrimSpace(out) != "33554432" {
		t.Errorf("recovery partition size %q", out)
	}
	if out := mustRun(t, c, nil, "sudo", "blkid", "-s", "UUID", "-o", "value", oemsim.RecoveryPartition); strings.TrimSpace(out) != oemsim.RecoveryUUID {
		t.Errorf("blkid %q", out)
	}
	if code, _ := run(t, c, nil, "lsblk", "-o", "NAME,COLOUR"); code == 0 {
		t.Error("lsblk accepted an unknown column")
	}
}

func TestCopyISOIntoRecovery(t *testing.T) {
	t.Parallel()
	r, dial := rig(t, oemsim.Options{Name: "oem", FreeSpace: 4 << 20})
	c := dial()
	if code, out := run(t, c, iso.Bytes(), "dd", "of=/var/tmp/x.iso"); code == 0 {
		t.Errorf("dd into /var/tmp without sudo succeeded: %s", out)
	}
	mustRun(t, c, iso.Bytes(), "sudo", "dd", "of=/var/tmp/x.iso", "bs=16M")
	if code, out := run(t, c, nil, "sudo", "rsync", "-a", "/mnt/", "/cdrom/"); code != 23 {
		t.Errorf("rsync with nothing mounted = %d %s, want 23", code, out)
	}
	mustRun(t, c, nil, "sudo", "mount", "-o", "loop,ro", "/var/tmp/x.iso", "/mnt")
	if out := mustRun(t, c, nil, "cat", "/mnt/.disk/info"); !strings.Contains(out, "Ubuntu 24.04") {
		t.Errorf(".disk/info %q", out)
	}
	mustRun(t, c, nil, "sudo", "mount", oemsim.RecoveryPartition, "/cdrom")
	if code, _ := run(t, c, nil, "sudo", "mount", oemsim.RecoveryPartition, "/cdrom"); code != 32 {
		t.Error("mounting twice succeeded")
	}
	mustRun(t, c, nil, "sudo", "rsync", "-a", "--delete", "--exclude=efi", "/mnt/", "/cdrom/")
	if r.RecoveryDisk().Last().SHA256 != iso.SHA256() {
		t.Error("the recovery partition does not hold the ISO")
	}
	mustRun(t, c, nil, "sudo", "umount", "/mnt", "/cdrom")
	if code, _ := run(t, c, nil, "sudo", "umount", "/mnt"); code != 32 {
		t.Error("unmounting twice succeeded")
	}
	mustRun(t, c, nil, "sudo", "rm", "-f", "/var/tmp/x.iso")
	if code, _ := run(t, c, nil, "test", "-e", "/var/tmp/x.iso"); code == 0 {
		t.Error("the ISO is still there after rm")
	}
	// An ISO larger than the free space does not fit.
	big := sim.Image{Kind: "iso", Size: 5 << 20}
	if code, out := run(t, c, big.Bytes(), "sudo", "dd", "of=/var/tmp/big.iso"); code == 0 || !strings.Contains(out, "No space left on device") {
		t.Errorf("dd of a 5 MiB file into 4 MiB = %d %s", code, out)
	}
	// Something that is not an ISO does not mount.
	mustRun(t, c, []byte("<html></html>"), "sudo", "dd", "of=/var/tmp/page.iso")
	if code, out := run(t, c, nil, "sudo", "mount", "-o", "loop", "/var/tmp/page.iso", "/mnt"); code != 32 {
		t.Errorf("mounting a web page = %d %s", code, out)
	}
}

func TestWriteFailsHalfWay(t *testing.T) {
	t.Parallel()
	r, dial := rig(t, oemsim.Options{Name: "oem", Faults: oemsim.Faults{WriteFailsAfter: 256 << 10}})
	c := dial()
	mustRun(t, c, iso.Bytes(), "sudo", "dd", "of=/var/tmp/x.iso")
	mustRun(t, c, nil, "sudo", "mount", "-o", "loop", "/var/tmp/x.iso", "/mnt")
	mustRun(t, c, nil, "sudo", "mount", oemsim.RecoveryPartition, "/cdrom")
	if code, out := run(t, c, nil, "sudo", "rsync", "-a", "/mnt/", "/cdrom/"); code != 11 || !strings.Contains(out, "Input/output error") {
		t.Errorf("rsync onto a failing partition = %d %s", code, out)
	}
	if w := r.RecoveryDisk().Last(); w.Complete || w.Bytes != 256<<10 {
		t.Errorf("recovery partition write %+v", w)
	}
	// With dell-recovery, the laptop refuses to restore from it.
	if code, _ := run(t, c, nil, "sudo", "dell-restore-system", "-y"); code == 0 {
		t.Error("dell-restore-system restored from a half-written partition")
	}
}

func TestDellRestore(t *testing.T) {
	t.Parallel()
	r, dial := rig(t, oemsim.Options{Name: "oem", RecoveryPassword: "u"})
	c := dial()
	before := mustRun(t, c, nil, "cat", oemsim.BootIDPath)
	if code, _ := run(t, c, nil, "dell-restore-system", "-y"); code == 0 {
		t.Error("dell-restore-system ran without sudo")
	}
	mustRun(t, c, nil, "sudo", "dell-restore-system", "-y")
	waitReinstalled(t, r, 1)
	c = dial()
	if after := mustRun(t, c, nil, "cat", oemsim.BootIDPath); after == before {
		t.Error("the boot identifier did not change")
	}
	if out := mustRun(t, c, nil, "systemctl", "is-active", "ubiquity"); strings.TrimSpace(out) != "active" {
		t.Errorf("ubiquity %q right after the reinstall, want active", out)
	}
	if code, _ := run(t, c, nil, "snap", "model"); code == 0 {
		t.Error("snap model answered during the OEM configuration")
	}
	mustRun(t, c, nil, "sudo", "apt-get", "-o", "DPkg::Lock::Timeout=-1", "purge", "-y", "ubiquity")
	if code, out := run(t, c, nil, "systemctl", "is-active", "ubiquity"); code != 3 || strings.TrimSpace(out) != "inactive" {
		t.Errorf("ubiquity %d %q after the OEM configuration", code, out)
	}
	if out := mustRun(t, c, nil, "snap", "model"); !strings.Contains(out, "model:     generic-classic") {
		t.Errorf("snap model:\n%s", out)
	}
	if out := mustRun(t, c, nil, "snap", "changes"); !strings.Contains(out, "Done    today at 09:58 UTC  today at 10:00 UTC  Initialize device") {
		t.Errorf("snap changes:\n%s", out)
	}
	if !r.UbiquityPurged() || r.OSRelease() != sim.UbuntuRelease("22.04", "jammy") {
		t.Errorf("purged %v, system %q", r.UbiquityPurged(), r.OSRelease())
	}
	b := r.RecoveryBoots()
	if len(b) != 1 || b[0].Via != oemsim.ViaDell {
		t.Errorf("recovery boots %+v", b)
	}
}

func TestUbuntuRecoveryNeedsItsPreseed(t *testing.T) {
	t.Parallel()
	r, dial := rig(t, oemsim.Options{Name: "oem", Recovery: oemsim.UbuntuRecovery, Label: "OS", ReinstallTime: 100 * time.Millisecond})
	c := dial()
	if code, _ := run(t, c, nil, "sudo", "dell-restore-system", "-y"); code != 127 {
		t.Error("an ubuntu-recovery laptop has dell-restore-system")
	}
	// A GRUB entry naming another partition does not boot the recovery.
	mustRun(t, c, []byte("menuentry \"ubuntu-recovery restore\" { search --fs-uuid 0000-0000 }\n"), "sudo", "tee", "/etc/grub.d/99_ubuntu_recovery")
	mustRun(t, c, []byte("GRUB_DEFAULT=\"ubuntu-recovery restore\"\n"), "sudo", "tee", "-a", "/etc/default/grub.d/automatic-oem-config.cfg")
	mustRun(t, c, nil, "sudo", "update-grub")
	mustRun(t, c, nil, "sudo", "reboot")
	c = dial()
	if len(r.RecoveryBoots()) != 0 {
		t.Fatalf("booted the recovery through a broken entry: %+v", r.RecoveryBoots())
	}
	// The right entry boots it, but without the PQSERVICE label and the
	// preseed the recovery never completes.
	mustRun(t, c, []byte("menuentry \"ubuntu-recovery restore\" { search --fs-uuid "+oemsim.RecoveryUUID+" }\n"), "sudo", "tee", "/etc/grub.d/99_ubuntu_recovery")
	mustRun(t, c, nil, "sudo", "update-grub")
	mustRun(t, c, nil, "sudo", "reboot")
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if err := r.DUT().WaitState(ctx, sim.Up); err == nil {
		t.Fatal("the laptop came up without ubuntu-recovery's preseed")
	}
	if b := r.RecoveryBoots(); len(b) != 1 || b[0].Via != oemsim.ViaGRUB || b[0].Label != "OS" {
		t.Errorf("recovery boots %+v", b)
	}
	// Power cycling restarts the recovery, which fails again.
	if out, err := exec.Command(r.RebootScript()).CombinedOutput(); err != nil {
		t.Fatalf("reboot_script: %v: %s", err, out)
	}
	if r.Reinstalls() != 0 {
		t.Error("reinstalled")
	}
}

func TestInstallerPowersOff(t *testing.T) {
	t.Parallel()
	r, dial := rig(t, oemsim.Options{Name: "oem", Recovery: oemsim.UbuntuRecovery, Label: "PQSERVICE"})
	c := dial()
	mustRun(t, c, []byte("ubiquity ubuntu-recovery/recovery_type string dev\n"), "sudo", "tee", "/cdrom/preseed/ubuntu-recovery.cfg")
	mustRun(t, c, nil, "sudo", "grub-editenv", "/boot/grub/grubenv", "set", "next_entry="+oemsim.RecoveryEntry)
	mustRun(t, c, nil, "sudo", "reboot")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := r.DUT().WaitState(ctx, sim.Off); err != nil {
		t.Fatalf("the stock project preseed did not power the laptop off: %v", err)
	}
	if r.Reinstalls() != 0 {
		t.Fatal("the new system booted by itself")
	}
	if out, err := exec.Command(r.RebootScript()).CombinedOutput(); err != nil {
		t.Fatalf("reboot_script: %v: %s", err, out)
	}
	waitReinstalled(t, r, 1)
	dial()
	if r.OSRelease() != sim.UbuntuRelease("22.04", "jammy") {
		t.Errorf("system %q after the power cycle", r.OSRelease())
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	t.Run("recovery never finishes", func(t *testing.T) {
		t.Parallel()
		r, dial := rig(t, oemsim.Options{Name: "oem", Faults: oemsim.Faults{RecoveryNeverFinishes: true}, ReinstallTime: 50 * time.Millisecond})
		mustRun(t, dial(), nil, "sudo", "dell-restore-system", "-y")
		ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
		defer cancel()
		if err := r.DUT().WaitState(ctx, sim.Up); err == nil || r.Reinstalls() != 0 {
			t.Error("the recovery finished")
		}
		r.SetFaults(oemsim.Faults{})
		if out, err := exec.Command(r.RebootScript()).CombinedOutput(); err != nil {
			t.Fatalf("reboot_script: %v: %s", err, out)
		}
		waitReinstalled(t, r, 1)
	})
	t.Run("wrong image", func(t *testing.T) {
		t.Parallel()
		r, dial := rig(t, oemsim.Options{Name: "oem", Faults: oemsim.Faults{WrongImage: true}})
		mustRun(t, dial(), nil, "sudo", "dell-restore-system", "-y")
		waitReinstalled(t, r, 1)
		if r.OSRelease() != oemsim.WrongOSRelease {
			t.Errorf("system %q", r.OSRelease())
		}
	})
	t.Run("host key changes on boot", func(t *testing.T) {
		t.Parallel()
		r, dial := rig(t, oemsim.Options{Name: "oem", Faults: oemsim.Faults{HostKeyChangesOnBoot: true}})
		before := r.DUT().HostKey().Marshal()
		mustRun(t, dial(), nil, "sudo", "reboot")
		dial()
		if bytes.Equal(before, r.DUT().HostKey().Marshal()) {
			t.Error("the host key did not change")
		}
	})
	t.Run("never boots", func(t *testing.T) {
		t.Parallel()
		r, _ := rig(t, oemsim.Options{Name: "oem", Faults: oemsim.Faults{NeverBoots: true}})
		if out, err := exec.Command(r.RebootScript()).CombinedOutput(); err != nil {
			t.Fatalf("reboot_script: %v: %s", err, out)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		if err := r.DUT().WaitState(ctx, sim.Up); err == nil {
			t.Error("the laptop came up")
		}
	})
}

func TestKeyInjection(t *testing.T) {
	t.Parallel()
	r, dial := rig(t, oemsim.Options{Name: "oem"})
	c := dial()
	_, other, err := oemsim.NewKeyFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(other))) + " worker"
	for range 2 {
		if _, err := sshx.InstallAuthorizedKeys(t.Context(), c, []string{line}); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.InjectedKeys(); len(got) != 1 || got[0] != line {
		t.Errorf("injected %q, want %q once", got, line)
	}
	if code, _ := c.RunScript(t.Context(), "echo hi\n", nil, nil, nil, nil); code == 0 {
		t.Error("a script other than the key installer ran")
	}
}

func TestLab(t *testing.T) {
	t.Parallel()
	types := sim.LabTypes()
	for _, typ := range []string{"oemrecovery", "oemscript", "dell_oemscript", "hp_oemscript", "lenovo_oemscript"} {
		if !slices.Contains(types, typ) {
			t.Errorf("no simulator registered for %s", typ)
		}
	}
	_, pub, err := oemsim.NewKeyFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dev, err := sim.StartLab(t.Context(), "oemrecovery", sim.LabOptions{Name: "lab-oem", Dir: t.TempDir(), AuthorizedKeys: []ssh.PublicKey{pub},
		Settings: map[string]any{"recovery": "ubuntu", "boot_time": "100ms", "reinstall_time": 1, "write_fails_after": 1024, "wrong_image": true}})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cfg := dev.Config()
	for _, k := range []string{"device_ip", "ssh_port", "reboot_script", "recovery_cmds"} {
		if cfg[k] == nil {
			t.Errorf("Config() lacks %s: %v", k, cfg)
		}
	}
	if cmds, _ := cfg["recovery_cmds"].([]string); len(cmds) != 2 || !strings.Contains(cmds[0], oemsim.RecoveryEntry) {
		t.Errorf("recovery_cmds of an ubuntu-recovery laptop: %q", cmds)
	}
	hp, err := sim.StartLab(t.Context(), "hp_oemscript", sim.LabOptions{Name: "lab-hp", Dir: t.TempDir(), AuthorizedKeys: []ssh.PublicKey{pub}})
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	if _, ok := hp.Config()["recovery_cmds"]; ok {
		t.Error("hp_oemscript's Config() gives recovery_cmds")
	}
	for _, bad := range []map[string]any{{"colour": "red"}, {"recovery": "acer"}, {"boot_time": "soon"}, {"never_boots": "yes"}} {
		if d, err := sim.StartLab(t.Context(), "dell_oemscript", sim.LabOptions{Name: "bad", Dir: t.TempDir(), AuthorizedKeys: []ssh.PublicKey{pub}, Settings: bad}); err == nil {
			d.Close()
			t.Errorf("settings %v accepted", bad)
		}
	}
}

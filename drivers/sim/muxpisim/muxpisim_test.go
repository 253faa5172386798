package muxpisim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/muxpisim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

const wait = 20 * time.Second

func startRig(t *testing.T, f muxpisim.Faults) *muxpisim.Rig {
	t.Helper()
	r, err := muxpisim.Start(t.Context(), muxpisim.Options{Dir: t.TempDir(), BootTime: 100 * time.Millisecond, ControlBootTime: 100 * time.Millisecond, Faults: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func dial(t *testing.T, d *sim.DUT, name string) *sshx.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	c, err := sshx.Dial(ctx, sshx.Config{Addr: d.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()), KeepAlive: -1}, name)
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// run runs argv with stdin and returns stdout, stderr and the status.
func run(t *testing.T, c *sshx.Client, stdin []byte, argv ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	var out, errb bytes.Buffer
	var in io.Reader
	if stdin != nil {
		in = bytes.NewReader(stdin)
	}
	code, err := c.RunInput(ctx, argv, in, &out, &errb)
	if err != nil && code < 0 {
		t.Fatalf("%q: %v", argv, err)
	}
	return out.String(), errb.String(), code
}

func mustRun(t *testing.T, c *sshx.Client, stdin []byte, argv ...string) string {
	t.Helper()
	out, errs, code := run(t, c, stdin, argv...)
	if code != 0 {
		t.Fatalf("%q: exit %d: %s", argv, code, errs)
	}
	return out
}

func waitUp(t *testing.T, d *sim.DUT) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if err := d.WaitState(ctx, sim.Up); err != nil {
		t.Fatal(err)
	}
}

// comesUp reports whether d is up within three of its boots: a host that
// must not boot is given that long to show it does not.
func comesUp(t *testing.T, d *sim.DUT, boot time.Duration) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*boot)
	defer cancel()
	return d.WaitState(ctx, sim.Up) == nil
}

func reset(t *testing.T, script string) error {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), script).CombinedOutput()
	if err != nil {
		t.Logf("%s: %s", script, out)
	}
	return err
}

func TestStartsRunningItsImage(t *testing.T) {
	t.Parallel()
	r := startRig(t, muxpisim.Faults{})
	c := dial(t, r.DUT, "dut")
	if got := mustRun(t, c, nil, "cat", "/etc/os-release"); got != muxpisim.DefaultImage().OSRelease {
		t.Errorf("os-release %q", got)
	}
	if r.Side(muxpisim.MediaSD) != muxpisim.DUTSide || r.Side(muxpisim.MediaUSB) != muxpisim.DUTSide {
		t.Error("media not switched to the DUT at the start")
	}
	for _, k := range []string{"device_ip", "ssh_port", "control_host", "control_port", "control_user", "control_password", "test_device", "reboot_script", "control_host_reboot_script"} {
		if _, ok := r.Config()[k]; !ok {
			t.Errorf("Config() lacks %s", k)
		}
	}
}

// TestWriteAndBoot writes an image through stm as a muxpi driver would
// and boots it.
func TestWriteAndBoot(t *testing.T) {
	t.Parallel()
	r := startRig(t, muxpisim.Faults{})
	ctl := dial(t, r.Control, "control")
	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "core20", Size: 1 << 20, Seed: 7}

	// Not switched: the card is not there.
	if _, errs, code := run(t, ctl, im.Bytes(), "sudo", "dd", "of=/dev/sda", "bs=16M"); code == 0 || !strings.Contains(errs, "No such file") {
		t.Fatalf("dd to a card switched to the DUT: exit %d, %s", code, errs)
	}
	mustRun(t, ctl, nil, "stm", "-ts")
	if r.Side(muxpisim.MediaSD) != muxpisim.HostSide {
		t.Fatal("stm -ts did not switch the card")
	}
	// The DUT cannot boot without its card.
	r.DUT.PowerCycle()
	if comesUp(t, r.DUT, 100*time.Millisecond) {
		t.Error("the DUT booted with its card on the control host")
	}
	if _, errs, code := run(t, ctl, im.Bytes(), "dd", "of=/dev/sda"); code == 0 || !strings.Contains(errs, "Permission denied") {
		t.Errorf("dd without sudo: exit %d, %s", code, errs)
	}
	mustRun(t, ctl, im.Bytes(), "sudo", "dd", "of=/dev/sda", "bs=16M")
	if got := r.Disk(muxpisim.MediaSD).Last(); got.SHA256 != im.SHA256() || !got.Complete {
		t.Fatalf("card holds %+v", got)
	}
	mustRun(t, ctl, nil, "sync")
	mustRun(t, ctl, nil, "sudo", "hdparm", "-z", "/dev/sda")

	// Partitions, mounts and files.
	var doc struct {
		BlockDevices []struct {
			Name     string `json:"name"`
			Children []struct {
				Name  string `json:"name"`
				Label string `json:"label"`
			} `json:"children"`
		} `json:"blockdevices"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, ctl, nil, "lsblk", "-J", "-o", "NAME,LABEL", "/dev/sda")), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.BlockDevices) != 1 || len(doc.BlockDevices[0].Children) != 4 || doc.BlockDevices[0].Children[0].Label != "ubuntu-seed" || doc.BlockDevices[0].Children[0].Name != "sda1" {
		t.Fatalf("lsblk: %+v", doc)
	}
	mustRun(t, ctl, nil, "sudo", "mkdir", "-p", "/mnt/x/ubuntu-seed")
	if _, _, code := run(t, ctl, nil, "mount", "/dev/sda1", "/mnt/x/ubuntu-seed"); code != 32 {
		t.Errorf("mount without sudo: exit %d", code)
	}
	mustRun(t, ctl, nil, "sudo", "mount", "/dev/sda1", "/mnt/x/ubuntu-seed")
	mustRun(t, ctl, nil, "test", "-e", "/mnt/x/ubuntu-seed/snaps")
	mustRun(t, ctl, nil, "test", "-d", "/mnt/x/ubuntu-seed/snaps")
	if _, _, code := run(t, ctl, nil, "test", "-e", "/mnt/x/writable/etc"); code != 1 {
		t.Errorf("test -e of a missing path: exit %d", code)
	}
	if got := mustRun(t, ctl, nil, "ls", "/mnt/x/ubuntu-seed"); got != "snaps\nsystems\n" {
		t.Errorf("ls: %q", got)
	}
	mustRun(t, ctl, []byte("seeded\n"), "sudo", "tee", "/mnt/x/ubuntu-seed/data/seed.cfg")
	mustRun(t, ctl, nil, "sudo", "chmod", "0440", "/mnt/x/ubuntu-seed/data/seed.cfg")
	mustRun(t, ctl, nil, "sudo", "cp", "-a", "/mnt/x/ubuntu-seed/data/seed.cfg", "/mnt/x/ubuntu-seed/snaps/")
	mustRun(t, ctl, nil, "sudo", "umount", "/mnt/x/ubuntu-seed")
	if _, _, code := run(t, ctl, nil, "sudo", "umount", "/mnt/x/ubuntu-seed"); code != 32 {
		t.Errorf("umount of what is not mounted: exit %d", code)
	}
	files := r.MediumFiles(muxpisim.MediaSD, "ubuntu-seed")
	if string(files["data/seed.cfg"]) != "seeded\n" || string(files["snaps/seed.cfg"]) != "seeded\n" {
		t.Errorf("files on the card after umount: %q", files)
	}

	mustRun(t, ctl, nil, "stm", "-dut")
	if err := reset(t, r.RebootScript()); err != nil {
		t.Fatal(err)
	}
	waitUp(t, r.DUT)
	if got := mustRun(t, dial(t, r.DUT, "dut"), nil, "cat", "/etc/os-release"); got != im.OSRelease {
		t.Errorf("the DUT runs %q, want the written image's", got)
	}
	if got := r.Switches(); strings.Join(got, ",") != "sd:host,sd:dut" {
		t.Errorf("switches: %q", got)
	}
}

func TestMuxCLI(t *testing.T) {
	t.Parallel()
	r := startRig(t, muxpisim.Faults{})
	ctl := dial(t, r.Control, "control")
	for _, tc := range []struct {
		mux   string
		media muxpisim.Media
		node  string
	}{{"sdwire", muxpisim.MediaSD, muxpisim.DefaultTestDevice}, {"typecmux", muxpisim.MediaUSB, muxpisim.DefaultUSBNode}} {
		if got := mustRun(t, ctl, nil, "sudo", "zapper", tc.mux, "plug_to_self"); got != tc.node+"\n" {
			t.Errorf("%s plug_to_self printed %q, want %s", tc.mux, got, tc.node)
		}
		if r.Side(tc.media) != muxpisim.HostSide {
			t.Errorf("%s not on the control host", tc.media)
		}
		mustRun(t, ctl, nil, "zapper", tc.mux, "set", "DUT")
		if r.Side(tc.media) != muxpisim.DUTSide {
			t.Errorf("%s not back on the DUT", tc.media)
		}
		mustRun(t, ctl, nil, "zapper", tc.mux, "set", "TS")
		mustRun(t, ctl, nil, "zapper", tc.mux, "plug_to_dut")
		if r.Side(tc.media) != muxpisim.DUTSide {
			t.Errorf("%s not back on the DUT after plug_to_dut", tc.media)
		}
	}
	if _, _, code := run(t, ctl, nil, "zapper", "hdmi", "plug_to_self"); code == 0 {
		t.Error("an unknown mux succeeded")
	}
	mustRun(t, ctl, nil, "zapper", "--help")
}

// TestBootsTheWrittenUSBStick checks that the DUT boots the medium last
// written, and not with every medium on the control host.
func TestBootsTheWrittenUSBStick(t *testing.T) {
	t.Parallel()
	r := startRig(t, muxpisim.Faults{})
	ctl := dial(t, r.Control, "control")
	im := sim.Image{OSRelease: sim.UbuntuRelease("25.10", "questing"), Kind: "ubuntu", Size: 256 << 10, Seed: 3}
	mustRun(t, ctl, nil, "zapper", "sdwire", "plug_to_self")
	node := strings.TrimSpace(mustRun(t, ctl, nil, "zapper", "typecmux", "plug_to_self"))
	mustRun(t, ctl, im.Bytes(), "sudo", "dd", "of="+node, "bs=4M")
	mustRun(t, ctl, nil, "zapper", "typecmux", "set", "DUT")
	if err := reset(t, r.RebootScript()); err != nil {
		t.Fatal(err)
	}
	waitUp(t, r.DUT)
	if got := mustRun(t, dial(t, r.DUT, "dut"), nil, "cat", "/etc/os-release"); got != im.OSRelease {
		t.Errorf("the DUT runs %q, want the USB stick's image", got)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	t.Run("write fails half way", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, muxpisim.Faults{WriteFailsAfter: 100 << 10})
		ctl := dial(t, r.Control, "control")
		mustRun(t, ctl, nil, "stm", "-ts")
		im := sim.Image{OSRelease: "x", Kind: "ubuntu", Size: 1 << 20}
		if _, errs, code := run(t, ctl, im.Bytes(), "sudo", "dd", "of=/dev/sda"); code != 1 || !strings.Contains(errs, "Input/output error") {
			t.Errorf("dd on a dying card: exit %d, %s", code, errs)
		}
		mustRun(t, ctl, nil, "stm", "-dut")
		r.DUT.PowerCycle()
		if comesUp(t, r.DUT, 100*time.Millisecond) {
			t.Error("the DUT booted a half-written card")
		}
	})
	t.Run("reboot script fails", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, muxpisim.Faults{RebootScriptFails: true})
		if err := reset(t, r.RebootScript()); err == nil {
			t.Error("the reboot script succeeded")
		}
		if r.DUT.State() != sim.Up {
			t.Error("a failing reboot script reset the DUT")
		}
	})
	t.Run("control host unreachable", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, muxpisim.Faults{ControlUnreachable: true})
		if r.Control.State() != sim.Off {
			t.Fatalf("control host %s", r.Control.State())
		}
		if err := reset(t, r.ControlRebootScript()); err != nil {
			t.Fatal(err)
		}
		if comesUp(t, r.Control, 100*time.Millisecond) {
			t.Error("an unreachable control host came back")
		}
	})
	t.Run("control host reboot changes boot_id", func(t *testing.T) {
		t.Parallel()
		r := startRig(t, muxpisim.Faults{})
		before := mustRun(t, dial(t, r.Control, "control"), nil, "cat", muxpisim.BootIDPath)
		if err := reset(t, r.ControlRebootScript()); err != nil {
			t.Fatal(err)
		}
		waitUp(t, r.Control)
		if after := mustRun(t, dial(t, r.Control, "control"), nil, "cat", muxpisim.BootIDPath); after == before || len(after) < 32 {
			t.Errorf("boot_id %q then %q", before, after)
		}
	})
}

func TestCancelledWriteStopsPromptly(t *testing.T) {
	t.Parallel()
	r := startRig(t, muxpisim.Faults{WriteRate: 512 << 10})
	ctl := dial(t, r.Control, "control")
	mustRun(t, ctl, nil, "stm", "-ts")
	im := sim.Image{OSRelease: "x", Kind: "ubuntu", Size: 8 << 20}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := ctl.RunInput(ctx, []string{"sudo", "dd", "of=/dev/sda", "bs=16M"}, im.Reader(), nil, nil)
		done <- err
	}()
	deadline := time.Now().Add(wait)
	for r.Disk(muxpisim.MediaSD).Last().Bytes == 0 || r.Disk(muxpisim.MediaSD).Last().Complete {
		if time.Now().After(deadline) {
			t.Fatal("the write did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("dd took %s to stop", took)
		}
		if err == nil {
			t.Error("a cancelled dd succeeded")
		}
	case <-time.After(wait):
		t.Fatal("dd did not stop")
	}
	if w := r.Disk(muxpisim.MediaSD).Last(); w.Complete && w.Bytes == im.Size {
		t.Error("the cancelled write completed")
	}
}

func TestLayouts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		kind   string
		labels string
		marker string
	}{
		{"ubuntu", "system-boot,writable", "writable:etc/os-release"},
		{"pi-desktop", "system-boot,writable", "writable:usr/bin/firefox"},
		{"core", "system-boot,writable", "writable:system-data/etc/os-release"},
		{"core20", "ubuntu-seed,ubuntu-boot,ubuntu-save,ubuntu-data", "ubuntu-seed:snaps/core20_1.snap"},
		{"ubuntu-cpc", "UEFI,cloudimg-rootfs", "cloudimg-rootfs:etc/cloud/cloud.cfg"},
		{"ce-oem-iot", "system-boot,writable", "writable:.disk/info"},
		{"tegra", "writable", "writable:lib/firmware/nv-tegra234/firmware.bin"},
		{"iso", "data", "data:README"},
	} {
		parts := muxpisim.Layout(sim.Image{Kind: tc.kind, OSRelease: sim.UbuntuRelease("22.04", "jammy")})
		var labels []string
		files := map[string]map[string][]byte{}
		for _, p := range parts {
			labels = append(labels, p.Label)
			files[p.Label] = p.Files
		}
		if got := strings.Join(labels, ","); got != tc.labels {
			t.Errorf("%s: labels %s, want %s", tc.kind, got, tc.labels)
		}
		label, file, _ := strings.Cut(tc.marker, ":")
		if _, ok := files[label][file]; !ok {
			t.Errorf("%s: no %s", tc.kind, tc.marker)
		}
	}
	info := muxpisim.Layout(sim.Image{Kind: "ce-oem-iot", OSRelease: sim.UbuntuRelease("22.04", "jammy")})[1].Files[".disk/info"]
	if !strings.Contains(string(info), "classic-server-2204-") {
		t.Errorf(".disk/info %q", info)
	}
}

func TestLab(t *testing.T) {
	t.Parallel()
	if _, err := muxpisim.LabOptions(sim.LabOptions{Settings: map[string]any{"boot_tim": 1}}); err == nil || !strings.Contains(err.Error(), "boot_tim") {
		t.Errorf("unknown setting: %v", err)
	}
	if _, err := muxpisim.LabOptions(sim.LabOptions{Settings: map[string]any{"never_boots": "yes"}}); err == nil || !strings.Contains(err.Error(), "never_boots") {
		t.Errorf("bad setting: %v", err)
	}
	o, err := muxpisim.LabOptions(sim.LabOptions{Name: "m1", Dir: "/d", Settings: map[string]any{
		"boot_time": "50ms", "control_boot_time": 2, "never_boots": true, "write_fails_after": 4096,
		"slow_link": "1ms", "test_device": "/dev/mmcblk0", "mux_cli": "muxctl",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if o.BootTime != 50*time.Millisecond || o.ControlBootTime != 2*time.Second || !o.Faults.NeverBoots ||
		o.Faults.WriteFailsAfter != 4096 || o.Faults.SlowLink != time.Millisecond || o.TestDevice != "/dev/mmcblk0" || o.MuxCLI != "muxctl" || o.Name != "m1" {
		t.Errorf("options %+v", o)
	}

	dev, err := sim.StartLab(t.Context(), muxpisim.LabType, sim.LabOptions{Name: "lab-muxpi", Dir: t.TempDir(), Settings: map[string]any{"test_device": "/dev/mmcblk0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cfg := dev.Config()
	if cfg["test_device"] != "/dev/mmcblk0" || cfg["control_port"] == 0 || cfg["ssh_port"] == 0 {
		t.Errorf("Config() = %v", cfg)
	}
}

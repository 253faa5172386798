package fwupdsim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/fwupdsim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

type pc struct {
	dut *sim.DUT
	fw  *fwupdsim.FWUPD
	cfg sshx.Config
}

func start(t *testing.T, opts fwupdsim.Options) *pc {
	t.Helper()
	dut, err := sim.StartDUT(t.Context(), sim.DUTOptions{Name: "pc", BootTime: 100 * time.Millisecond, Users: map[string]string{"u": "p"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dut.Close)
	fw, err := fwupdsim.Attach(dut, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &pc{dut: dut, fw: fw, cfg: sshx.Config{Addr: dut.Addr(), User: "u", Password: "p", HostKeys: sshx.TOFU(t.TempDir())}}
}

// run runs argv on the PC and returns its exit status and output.
func (p *pc) run(t *testing.T, argv ...string) (int, string, string) {
	t.Helper()
	c, err := sshx.Dial(t.Context(), p.cfg, "pc")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out, errOut bytes.Buffer
	code, err := c.Run(t.Context(), argv, &out, &errOut)
	if code < 0 {
		t.Fatalf("%q: %v", argv, err)
	}
	return code, out.String(), errOut.String()
}

type devices struct {
	Devices []struct {
		Name, DeviceID, Version string
		Flags                   []string
		Releases                []struct {
			Version string
			Flags   []string
			URI     string `json:"Uri"`
		}
	}
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, s)
	}
}

func TestInventory(t *testing.T) {
	t.Parallel()
	p := start(t, fwupdsim.Options{})
	for _, f := range []struct{ path, want string }{{fwupdsim.DMIChassisVendor, "Dell Inc.\n"}, {fwupdsim.DMIChassisType, "3\n"}} {
		if code, out, _ := p.run(t, "sudo", "cat", f.path); code != 0 || out != f.want {
			t.Errorf("cat %s = %d %q, want %q", f.path, code, out, f.want)
		}
	}
	_, out, _ := p.run(t, "fwupdmgr", "get-devices", "--json")
	var d devices
	decode(t, out, &d)
	if len(d.Devices) != len(fwupdsim.DefaultDevices()) {
		t.Fatalf("%d devices, want %d", len(d.Devices), len(fwupdsim.DefaultDevices()))
	}
	if len(d.Devices[0].Releases) != 0 {
		t.Errorf("releases known before a refresh: %+v", d.Devices[0].Releases)
	}
	if code, _, errOut := p.run(t, "fwupdmgr", "refresh"); code != 1 || !strings.Contains(errOut, "Not authorized") {
		t.Errorf("refresh without sudo = %d %q", code, errOut)
	}
	if code, out, _ := p.run(t, "sudo", "fwupdmgr", "refresh", "--force"); code != 0 || !strings.Contains(out, "Successfully downloaded new metadata") {
		t.Errorf("refresh = %d %q", code, out)
	}
	_, out, _ = p.run(t, "sudo", "fwupdmgr", "get-devices", "--json")
	d = devices{}
	decode(t, out, &d)
	bios := d.Devices[0]
	if bios.Name != "System Firmware" || len(bios.Releases) != 3 || bios.Releases[0].Version != "1.15.0" ||
		strings.Join(bios.Releases[0].Flags, ",") != "is-upgrade" || len(bios.Releases[1].Flags) != 0 ||
		strings.Join(bios.Releases[2].Flags, ",") != "is-downgrade" || !strings.Contains(strings.Join(bios.Flags, ","), "needs-reboot") {
		t.Errorf("system firmware: %+v", bios)
	}
	code, out, _ := p.run(t, "fwupdmgr", "get-updates", "--json")
	var u devices
	decode(t, out, &u)
	if code != 0 || len(u.Devices) != 2 {
		t.Errorf("get-updates = %d, %d devices, want 2 (system firmware and dock)", code, len(u.Devices))
	}
}

func TestUpgradeAppliesAtBoot(t *testing.T) {
	t.Parallel()
	booted := 0
	p := start(t, fwupdsim.Options{BootCheck: func() (sim.Image, bool, error) { booted++; return sim.Image{}, true, nil }})
	id := p.fw.DeviceID("System Firmware")
	p.run(t, "sudo", "fwupdmgr", "refresh")
	if code, _, errOut := p.run(t, "sudo", "fwupdmgr", "upgrade", id, "-y", "--no-reboot-check"); code != 0 {
		t.Fatalf("upgrade = %d %s", code, errOut)
	}
	if v, _ := p.fw.Version(id); v != "1.14.0" || p.fw.Pending(id) != "1.15.0" {
		t.Errorf("after upgrade: version %s, pending %q; want 1.14.0 with 1.15.0 staged", v, p.fw.Pending(id))
	}
	_, out, _ := p.run(t, "sudo", "fwupdmgr", "get-results", id, "--json")
	if !strings.Contains(out, `"UpdateState": 4`) {
		t.Errorf("get-results before the reboot:\n%s", out)
	}
	if code, _, _ := p.run(t, "sudo", "fwupdmgr", "upgrade", id, "-y", "--no-reboot-check"); code != 2 {
		t.Errorf("a second upgrade of a staged device = %d, want 2 (nothing to do)", code)
	}
	p.run(t, "sudo", "reboot")
	if err := p.dut.WaitState(t.Context(), sim.Booting); err != nil {
		t.Fatal(err)
	}
	if err := p.dut.WaitState(t.Context(), sim.Up); err != nil {
		t.Fatal(err)
	}
	if v, _ := p.fw.Version(id); v != "1.15.0" || p.fw.Pending(id) != "" || booted != 1 {
		t.Errorf("after the reboot: version %s, pending %q, inner boot checks %d", v, p.fw.Pending(id), booted)
	}
	_, out, _ = p.run(t, "sudo", "fwupdmgr", "get-results", id, "--json")
	var r struct {
		UpdateState int
		Releases    []struct{ Version string }
	}
	decode(t, out, &r)
	if r.UpdateState != fwupdsim.StateSuccess || len(r.Releases) != 1 || r.Releases[0].Version != "1.15.0" {
		t.Errorf("get-results after the reboot: %+v", r)
	}
}

func TestUpgradeRebootsWhenAsked(t *testing.T) {
	t.Parallel()
	p := start(t, fwupdsim.Options{})
	p.run(t, "sudo", "fwupdmgr", "refresh")
	code, out, _ := p.run(t, "sudo", "fwupdmgr", "upgrade", "-y")
	if code != 0 || !strings.Contains(out, "Restart now?") {
		t.Fatalf("upgrade -y = %d %q", code, out)
	}
	if err := p.dut.WaitState(t.Context(), sim.Booting); err != nil {
		t.Fatal(err)
	}
	if err := p.dut.WaitState(t.Context(), sim.Up); err != nil {
		t.Fatal(err)
	}
	if v, _ := p.fw.Version("System Firmware"); v != "1.15.0" {
		t.Errorf("system firmware %s after upgrade -y, want 1.15.0", v)
	}
	if v, _ := p.fw.Version("WD19TB Dock"); v != "01.00.32.01" {
		t.Errorf("dock %s, want 01.00.32.01 (a live update)", v)
	}
}

func TestInstall(t *testing.T) {
	t.Parallel()
	p := start(t, fwupdsim.Options{})
	p.run(t, "sudo", "fwupdmgr", "refresh")
	_, out, _ := p.run(t, "fwupdmgr", "get-devices", "--json")
	var d devices
	decode(t, out, &d)
	older := d.Devices[0].Releases[2]
	if code, _, errOut := p.run(t, "sudo", "fwupdmgr", "install", older.URI, "-y", "--no-reboot-check"); code != 1 || !strings.Contains(errOut, "--allow-older") {
		t.Errorf("install older = %d %q", code, errOut)
	}
	if code, _, errOut := p.run(t, "sudo", "fwupdmgr", "install", older.URI, "-y", "--no-reboot-check", "--allow-older"); code != 0 {
		t.Errorf("install --allow-older = %d %q", code, errOut)
	}
	if got := p.fw.Pending(d.Devices[0].DeviceID); got != older.Version {
		t.Errorf("staged %q, want %s", got, older.Version)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		faults fwupdsim.Faults
		check  func(t *testing.T, p *pc, id string)
	}{
		{"upgrade fails", fwupdsim.Faults{UpgradeFails: true}, func(t *testing.T, p *pc, id string) {
			if code, _, errOut := p.run(t, "sudo", "fwupdmgr", "upgrade", id, "-y", "--no-reboot-check"); code != 1 || !strings.Contains(errOut, "failed to write-firmware") {
				t.Errorf("upgrade = %d %q", code, errOut)
			}
		}},
		{"not applied", fwupdsim.Faults{NotApplied: true}, func(t *testing.T, p *pc, id string) {
			p.run(t, "sudo", "fwupdmgr", "upgrade", id, "-y", "--no-reboot-check")
			p.dut.PowerCycle()
			if err := p.dut.WaitState(t.Context(), sim.Up); err != nil {
				t.Fatal(err)
			}
			_, out, _ := p.run(t, "sudo", "fwupdmgr", "get-results", id, "--json")
			if !strings.Contains(out, `"UpdateState": 3`) || !strings.Contains(out, "failed to run update on reboot") {
				t.Errorf("get-results:\n%s", out)
			}
		}},
		{"never comes back", fwupdsim.Faults{NeverComesBack: true}, func(t *testing.T, p *pc, id string) {
			p.run(t, "sudo", "fwupdmgr", "upgrade", id, "-y", "--no-reboot-check")
			p.dut.PowerCycle()
			// Five boot times: it must still be booting.
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			if err := p.dut.WaitState(ctx, sim.Up); err == nil {
				t.Error("the device came back from the reboot that applies its firmware")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, fwupdsim.Options{Faults: tc.faults})
			p.run(t, "sudo", "fwupdmgr", "refresh")
			tc.check(t, p, p.fw.DeviceID("System Firmware"))
		})
	}
}

func TestNotInstalled(t *testing.T) {
	t.Parallel()
	p := start(t, fwupdsim.Options{NotInstalled: true})
	if code, _, _ := p.run(t, "fwupdmgr", "--version"); code != 127 {
		t.Errorf("fwupdmgr before install = %d, want 127", code)
	}
	if code, _, _ := p.run(t, "apt-get", "install", "-y", "fwupd"); code != 100 {
		t.Errorf("apt-get install without sudo = %d, want 100", code)
	}
	if code, _, errOut := p.run(t, "sudo", "apt-get", "install", "-y", "fwupd"); code != 0 || !p.fw.Installed() {
		t.Errorf("apt-get install = %d %q", code, errOut)
	}
	if code, out, _ := p.run(t, "fwupdmgr", "--version"); code != 0 || !strings.Contains(out, fwupdsim.DefaultFwupdVersion) {
		t.Errorf("fwupdmgr --version = %d %q", code, out)
	}
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{{"1.15.0", "1.9.9", 1}, {"1.2", "1.2.0", -1}, {"01.00.32.01", "01.00.30.01", 1}, {"a1", "a1", 0}, {"2.90", "2.91", -1}} {
		if got := fwupdsim.CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

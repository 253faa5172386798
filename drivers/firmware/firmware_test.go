package firmware_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/firmware"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/fwupdsim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// device starts a simulated PC with fwupd and returns it with the options
// that reach it, with short waits.
func device(t *testing.T, f sim.Faults, opts fwupdsim.Options) (*sim.DUT, *fwupdsim.FWUPD, firmware.Options, *drivertest.Output) {
	t.Helper()
	dut, err := sim.StartDUT(t.Context(), sim.DUTOptions{Name: "pc-sim", BootTime: 200 * time.Millisecond,
		Users: map[string]string{"ubuntu": "ubuntu"}, Faults: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dut.Close)
	fw, err := fwupdsim.Attach(dut, opts)
	if err != nil {
		t.Fatal(err)
	}
	out := &drivertest.Output{}
	return dut, fw, firmware.Options{
		SSH:            sshx.Config{Addr: dut.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir())},
		Device:         "pc-sim",
		Version:        firmware.LatestVersion,
		CommandTimeout: 10 * time.Second, UpgradeTimeout: 10 * time.Second,
		RebootDelay: 2 * time.Second, RebootTimeout: 3 * time.Second, BootCheckInterval: 100 * time.Millisecond,
		Out: out,
	}, out
}

// upgradeCalls returns the fwupdmgr upgrade commands run.
func upgradeCalls(fw *fwupdsim.FWUPD) []string {
	var out []string
	for _, c := range fw.Calls() {
		if strings.Contains(c, "fwupdmgr upgrade") {
			out = append(out, c)
		}
	}
	return out
}

func TestUpdate(t *testing.T) {
	t.Parallel()
	bios := fwupdsim.Device{Name: "System Firmware", Vendor: "Dell Inc.", Version: "1.14.0", Updatable: true, NeedsReboot: true,
		Releases: []fwupdsim.Release{{Version: "1.13.1"}, {Version: "1.15.0"}, {Version: "1.14.0"}}}
	dock := fwupdsim.Device{Name: "WD19TB Dock", Plugin: "dell_dock", Version: "01.00.30.01", Updatable: true,
		Releases: []fwupdsim.Release{{Version: "01.00.32.01"}}}
	latest := fwupdsim.Device{Name: "NVMe", Plugin: "nvme", Version: "73110000", Updatable: true, NeedsReboot: true,
		Releases: []fwupdsim.Release{{Version: "73110000"}}}
	tpm := fwupdsim.Device{Name: "TPM", Plugin: "tpm", Version: "7.85"}
	type want struct {
		err      func(error) bool
		errText  string
		updated  map[string]string // device name -> version afterwards
		rebooted bool
		upgrades int
		output   []string
	}
	isA := func(target any) func(error) bool {
		return func(err error) bool {
			switch target.(type) {
			case *firmware.VersionError:
				var e *firmware.VersionError
				return errors.As(err, &e)
			case *firmware.UnsupportedError:
				var e *firmware.UnsupportedError
				return errors.As(err, &e)
			case *firmware.DeviceError:
				var e *firmware.DeviceError
				return errors.As(err, &e)
			case *firmware.NotBackError:
				var e *firmware.NotBackError
				return errors.As(err, &e)
			}
			return false
		}
	}
	anyErr := func(err error) bool { return err != nil }
	for _, tc := range []struct {
		name    string
		faults  sim.Faults
		opts    fwupdsim.Options
		fwf     fwupdsim.Faults
		version string
		devType string
		want    want
	}{
		{name: "latest available: upgraded and checked", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios, dock, latest, tpm}},
			want: want{updated: map[string]string{"System Firmware": "1.15.0", "WD19TB Dock": "01.00.32.01", "NVMe": "73110000"}, rebooted: true, upgrades: 2,
				output: []string{`DMI chassis vendor "Dell Inc.", chassis type 3 (Desktop)`, "[System Firmware] current version: 1.14.0 - LVFS upgradable version(s): 1.15.0 - LVFS downgradable version(s): 1.13.1",
					"[NVMe] already has the latest firmware", "Rebooting the device", "The device is back", "[System Firmware] firmware flashed 1.14.0 → 1.15.0",
					"[WD19TB Dock] firmware flashed 01.00.30.01 → 01.00.32.01", "Firmware update done: 2 device(s) updated"}}},
		{name: "live update needs no reboot", opts: fwupdsim.Options{Devices: []fwupdsim.Device{dock, tpm}},
			want: want{updated: map[string]string{"WD19TB Dock": "01.00.32.01"}, upgrades: 1, output: []string{"firmware 01.00.32.01 written"}}},
		{name: "already the latest", opts: fwupdsim.Options{Devices: []fwupdsim.Device{latest, tpm}},
			want: want{updated: map[string]string{"NVMe": "73110000"}, output: []string{"Nothing to update"}}},
		{name: "version not latest", version: "1.15.0", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios}},
			want: want{err: isA(&firmware.VersionError{}), errText: `firmware_update_data.version "1.15.0" is not supported`, updated: map[string]string{"System Firmware": "1.14.0"}}},
		{name: "version missing", version: "", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios}},
			want: want{err: isA(&firmware.VersionError{}), errText: "firmware_update_data.version is required"}},
		{name: "upgrade fails", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios, latest}}, fwf: fwupdsim.Faults{UpgradeFails: true},
			want: want{err: isA(&firmware.DeviceError{}), errText: "[System Firmware] upgrading to 1.15.0 failed", upgrades: 1,
				updated: map[string]string{"System Firmware": "1.14.0"}}},
		{name: "one upgrade fails, the other is applied", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios, {Name: "Broken", Version: "1", Updatable: true,
			FailsUpgrade: true, Releases: []fwupdsim.Release{{Version: "2"}}}}},
			want: want{err: isA(&firmware.DeviceError{}), errText: "[Broken] upgrading to 2 failed", upgrades: 2, updated: map[string]string{"System Firmware": "1.15.0", "Broken": "1"},
				output: []string{"[System Firmware] firmware flashed 1.14.0 → 1.15.0"}}},
		{name: "never comes back", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios}}, fwf: fwupdsim.Faults{NeverComesBack: true},
			want: want{err: isA(&firmware.NotBackError{}), errText: "did not come back within 3s", upgrades: 1}},
		{name: "firmware not applied", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios}}, fwf: fwupdsim.Faults{NotApplied: true},
			want: want{err: isA(&firmware.DeviceError{}), errText: "fwupd reports failed for version 1.15.0: failed to run update on reboot", rebooted: true, upgrades: 1,
				updated: map[string]string{"System Firmware": "1.14.0"}}},
		{name: "host key changes on reboot", faults: sim.Faults{HostKeyChangesOnBoot: true}, opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios}},
			want: want{err: func(err error) bool {
				var e *sshx.HostKeyChangedError
				return errors.As(err, &e) && !isA(&firmware.NotBackError{})(err)
			},
				errText: "host key that is not the one recorded", upgrades: 1}},
		{name: "refresh fails", opts: fwupdsim.Options{Devices: []fwupdsim.Device{bios}}, fwf: fwupdsim.Faults{RefreshFails: true},
			want: want{err: anyErr, errText: "fwupdmgr refresh failed (exit status 1): Failed to download"}},
		{name: "HPE server refused", opts: fwupdsim.Options{ChassisVendor: "HPE", ChassisType: 23, Devices: []fwupdsim.Device{bios}},
			want: want{err: isA(&firmware.UnsupportedError{}), errText: "iLO"}},
		{name: "HP rack server through LVFS", opts: fwupdsim.Options{ChassisVendor: "HP", ChassisType: 23, Devices: []fwupdsim.Device{dock}},
			want: want{upgrades: 1, updated: map[string]string{"WD19TB Dock": "01.00.32.01"}}},
		{name: "laptop out of scope", opts: fwupdsim.Options{ChassisVendor: "LENOVO", ChassisType: 10, Devices: []fwupdsim.Device{bios}},
			want: want{err: isA(&firmware.UnsupportedError{}), errText: "chassis type 10 (Notebook)): not in the supported scope"}},
		{name: "laptop with firmware_device_type lvfs", devType: firmware.DeviceTypeLVFS, opts: fwupdsim.Options{ChassisVendor: "LENOVO", ChassisType: 10,
			Devices: []fwupdsim.Device{bios}}, want: want{rebooted: true, upgrades: 1, updated: map[string]string{"System Firmware": "1.15.0"}}},
		{name: "no DMI", opts: fwupdsim.Options{NoDMI: true, Devices: []fwupdsim.Device{bios}},
			want: want{err: anyErr, errText: "it has no DMI information (set the device key firmware_device_type: lvfs"}},
		{name: "fwupd installed first", opts: fwupdsim.Options{NotInstalled: true, Devices: []fwupdsim.Device{dock}},
			want: want{upgrades: 1, updated: map[string]string{"WD19TB Dock": "01.00.32.01"}, output: []string{"fwupd is not installed: installing it", "fwupd: runtime org.freedesktop.fwupd 1.9.16"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, fw, o, out := device(t, tc.faults, tc.opts)
			fw.SetFaults(tc.fwf)
			if tc.version != "" || strings.HasPrefix(tc.name, "version") {
				o.Version = tc.version
			}
			o.DeviceType = tc.devType
			res, err := firmware.Update(t.Context(), o)
			switch {
			case tc.want.err == nil && err != nil:
				t.Errorf("Update: %v", err)
			case tc.want.err != nil && !tc.want.err(err):
				t.Errorf("Update = %v (%T), not the error expected", err, err)
			case err != nil && !strings.Contains(err.Error(), tc.want.errText):
				t.Errorf("Update = %v, want an error containing %q", err, tc.want.errText)
			}
			if err == nil && res.Rebooted != tc.want.rebooted {
				t.Errorf("Rebooted = %v, want %v", res.Rebooted, tc.want.rebooted)
			}
			for name, v := range tc.want.updated {
				if got, _ := fw.Version(name); got != v {
					t.Errorf("%s has firmware %s, want %s", name, got, v)
				}
			}
			if got := upgradeCalls(fw); len(got) != tc.want.upgrades {
				t.Errorf("upgrades run: %q, want %d", got, tc.want.upgrades)
			}
			for _, s := range tc.want.output {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q", s)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s\ncalls: %q", out, fw.Calls())
			}
		})
	}
}

func TestUpdateRefusesVersionBeforeContact(t *testing.T) {
	t.Parallel()
	dut, _, o, _ := device(t, sim.Faults{}, fwupdsim.Options{})
	o.Version = "2.0"
	if _, err := firmware.Update(t.Context(), o); err == nil {
		t.Fatal("Update to 2.0 succeeded")
	}
	if got := dut.Commands(); len(got) != 0 {
		t.Errorf("commands run for a refused version: %q", got)
	}
}

func TestUpdateCancelled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fwf   fwupdsim.Faults
		until func(dut *sim.DUT, fw *fwupdsim.FWUPD) bool
	}{
		{"waiting for the device", fwupdsim.Faults{NeverComesBack: true}, func(dut *sim.DUT, _ *fwupdsim.FWUPD) bool { return dut.State() == sim.Booting }},
		{"before anything", fwupdsim.Faults{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dut, fw, o, out := device(t, sim.Faults{}, fwupdsim.Options{Devices: []fwupdsim.Device{{Name: "BIOS", Version: "1", Updatable: true, NeedsReboot: true,
				Releases: []fwupdsim.Release{{Version: "2"}}}}})
			fw.SetFaults(tc.fwf)
			o.RebootTimeout = time.Minute
			ctx, cancel := context.WithCancel(t.Context())
			if tc.until == nil {
				cancel()
			}
			done := make(chan error, 1)
			go func() {
				_, err := firmware.Update(ctx, o)
				done <- err
			}()
			if tc.until != nil {
				if err := dut.WaitState(t.Context(), sim.Booting); err != nil {
					t.Fatal(err)
				}
				cancel()
			}
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Update cancelled = %v, want an error wrapping context.Canceled", err)
				}
				var nb *firmware.NotBackError
				if errors.As(err, &nb) {
					t.Errorf("a cancelled update returned a *NotBackError: %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("Update did not return within 2s of its cancellation; output:\n%s", out)
			}
			cancel()
		})
	}
}

func TestParseOptions(t *testing.T) {
	t.Parallel()
	o, err := firmware.ParseOptions(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.CommandTimeout != firmware.DefaultCommandTimeout || o.RebootTimeout != firmware.DefaultRebootTimeout || o.DeviceType != "" {
		t.Errorf("defaults: %+v", o)
	}
	o, err = firmware.ParseOptions(events.Data{"firmware_reboot_timeout": "20m", "firmware_boot_check_interval": "500ms", "firmware_device_type": "lvfs"})
	if err != nil || o.RebootTimeout != 20*time.Minute || o.BootCheckInterval != 500*time.Millisecond || o.DeviceType != "lvfs" {
		t.Errorf("ParseOptions = %+v, %v", o, err)
	}
	_, err = firmware.ParseOptions(events.Data{"firmware_reboot_timeout": 0, "firmware_device_type": "ilo", "firmware_command_timeout": "3h"})
	for _, w := range []string{"firmware_reboot_timeout: 0s out of range", `firmware_device_type: "ilo" is not supported`, "firmware_command_timeout: 3h0m0s out of range"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("ParseOptions error %v lacks %q", err, w)
		}
	}
	if v, err := firmware.VersionFrom(events.Data{"version": 2}); err == nil || !strings.Contains(err.Error(), "firmware_update_data.version: must be a string") {
		t.Errorf("VersionFrom(2) = %q, %v", v, err)
	}
}

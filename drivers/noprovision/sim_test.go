package noprovision_test

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/noprovision"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/events"
)

// simDevice starts a simulated DUT and returns it with the noprovision
// driver of a device configuration reaching it (TOFU host keys, password
// login as ubuntu).
func simDevice(t *testing.T, f sim.Faults, raw events.Data, reboot ...string) (*sim.DUT, *noprovision.Driver, *drivers.DeviceConfig) {
	t.Helper()
	dut, err := sim.StartDUT(t.Context(), sim.DUTOptions{
		Name: "np-sim", BootTime: 300 * time.Millisecond,
		Users: map[string]string{drivers.DefaultTestUsername: drivers.DefaultTestPassword}, Faults: f,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dut.Close)
	_, portStr, _ := net.SplitHostPort(dut.Addr())
	port, _ := strconv.Atoi(portStr)
	cfg := &drivers.DeviceConfig{
		Name: "np-sim", Type: noprovision.Type, Queues: []string{"np"},
		DeviceIP: "127.0.0.1", SSHPort: port, RebootScript: reboot, Raw: raw,
		SSH: drivertest.TOFU(t),
	}
	d, err := noprovision.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return dut, d.(*noprovision.Driver), cfg
}

func simJob() *events.Job {
	return &events.Job{JobID: "j-sim", JobQueue: "np", ProvisionData: events.Data{}, TestData: &events.TestData{}}
}

// powerOnWhen is the test's power switch: it powers dut on once flag
// exists.
func powerOnWhen(t *testing.T, dut *sim.DUT, flag string) {
	go func() {
		for range 400 {
			if _, err := os.Stat(flag); err == nil {
				dut.PowerOn()
				return
			}
			select {
			case <-t.Context().Done():
				return
			case <-time.After(25 * time.Millisecond):
			}
		}
	}()
}

func TestSimProvisionUp(t *testing.T) {
	t.Parallel()
	flag := filepath.Join(t.TempDir(), "rebooted")
	dut, d, cfg := simDevice(t, sim.Faults{}, nil, "touch "+flag)
	run, out := drivertest.NewRun(t, cfg, simJob())
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "nothing to provision") {
		t.Errorf("output:\n%s", out)
	}
	if _, err := os.Stat(flag); err == nil {
		t.Error("reboot_script ran for a device that answers")
	}
	if got := dut.Commands(); len(got) != 1 || got[0] != "/bin/true" {
		t.Errorf("commands run on the device: %q", got)
	}
}

func TestSimProvisionRebootBringsBack(t *testing.T) {
	t.Parallel()
	flag := filepath.Join(t.TempDir(), "rebooted")
	dut, d, cfg := simDevice(t, sim.Faults{}, events.Data{"reboot_wait": 0, "boot_timeout": "10s", "boot_check_interval": "100ms"}, "touch "+flag)
	dut.PowerOff()
	powerOnWhen(t, dut, flag)
	run, out := drivertest.NewRun(t, cfg, simJob())
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	for _, s := range []string{"does not answer", "Running reboot_script[0]", "The device is back"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if dut.State() != sim.Up {
		t.Errorf("device %s after provisioning", dut.State())
	}
}

func TestSimProvisionNeverBoots(t *testing.T) {
	t.Parallel()
	flag := filepath.Join(t.TempDir(), "rebooted")
	dut, d, cfg := simDevice(t, sim.Faults{NeverBoots: true}, events.Data{"reboot_wait": "100ms", "boot_timeout": "1s", "boot_check_interval": "200ms"}, "touch "+flag)
	dut.PowerOff()
	powerOnWhen(t, dut, flag)
	run, out := drivertest.NewRun(t, cfg, simJob())
	start := time.Now()
	err := d.Provision(t.Context(), run)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Provision took %s with a 1s boot_timeout", took)
	}
	if !drivers.IsRecovery(err) || drivers.ExitCode(err) != drivers.ExitRecoveryFailed {
		t.Fatalf("Provision = %v, want a *drivers.RecoveryError\n%s", err, out)
	}
	if dut.State() != sim.Booting {
		t.Errorf("device %s, want booting forever (was the reboot_script run?)", dut.State())
	}
}

// TestScenarios runs noprovision's outcomes through the driver and the
// connector command line.
func TestScenarios(t *testing.T) {
	device := func(f sim.Faults, off bool, raw events.Data, reboot ...string) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig {
			dut, _, cfg := simDevice(t, f, raw, reboot...)
			if off {
				dut.PowerOff()
			}
			return cfg
		}
	}
	fast := events.Data{"reboot_wait": 0, "boot_timeout": "1s", "boot_check_interval": "100ms"}
	job := func(*drivers.DeviceConfig) *events.Job { return simJob() }
	drivertest.RunScenarios(t, []drivertest.Scenario{
		{Name: "up", Setup: device(sim.Faults{}, false, nil), Job: job, Want: drivertest.Succeeds, Output: "nothing to provision"},
		{Name: "down without reboot_script", Setup: device(sim.Faults{}, true, fast), Job: job, Want: drivertest.RecoveryFails},
		{Name: "reboot_script fails", Setup: device(sim.Faults{}, true, fast, "false"), Job: job, Want: drivertest.RecoveryFails, Output: "reboot_script[0]"},
		{Name: "wrong password", Setup: device(sim.Faults{}, false, nil), Want: drivertest.ProvisioningFails, Output: "refuses the login",
			Job: func(*drivers.DeviceConfig) *events.Job {
				j := simJob()
				j.TestData.TestPassword = "wrong"
				return j
			}},
	})
}

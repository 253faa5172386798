package drivers_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/controlhost"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/controlhostsim"
	"github.com/flingerlab/flinger/drivers/sim/fwupdsim"
	"github.com/flingerlab/flinger/events"
)

// Connector types whose driver is drivers.Base alone, so that its phases
// run through the connector command line too.
const (
	baseType     = "flinger_base_test"
	dutPowerType = "flinger_base_dut_power_test"
)

func init() {
	drivers.Register(baseType, func(*drivers.DeviceConfig) (drivers.Driver, error) { return drivers.Base{}, nil })
	drivers.Register(dutPowerType, func(*drivers.DeviceConfig) (drivers.Driver, error) {
		return drivers.Base{Hooks: drivers.HookOptions{ManageDUTPower: true}}, nil
	})
}

// rigs maps a scenario's device configuration to its simulators, for the
// scenario's Check.
var rigs sync.Map // *drivers.DeviceConfig -> *rig

type rig struct {
	dut *sim.DUT
	fw  *fwupdsim.FWUPD
	ch  *controlhostsim.Server
	sw  *sim.Switch
}

func rigOf(cfg *drivers.DeviceConfig) *rig {
	r, _ := rigs.Load(cfg)
	return r.(*rig)
}

// pcBIOS is a desktop's system firmware with an upgrade applied at reboot.
var pcBIOS = fwupdsim.Device{Name: "System Firmware", Vendor: "Dell Inc.", Version: "1.14.0", Updatable: true, NeedsReboot: true,
	Releases: []fwupdsim.Release{{Version: "1.15.0"}, {Version: "1.14.0"}}}

// pcDevice starts a simulated desktop with fwupd and returns the
// configuration of a device reaching it.
func pcDevice(t *testing.T, typ string, f sim.Faults, opts fwupdsim.Options, fwf fwupdsim.Faults) *drivers.DeviceConfig {
	t.Helper()
	dut, err := sim.StartDUT(t.Context(), sim.DUTOptions{Name: "pc-sim", BootTime: 200 * time.Millisecond,
		Users: map[string]string{drivers.DefaultTestUsername: drivers.DefaultTestPassword}, Faults: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dut.Close)
	if opts.Devices == nil {
		opts.Devices = []fwupdsim.Device{pcBIOS}
	}
	opts.Faults = fwf
	fw, err := fwupdsim.Attach(dut, opts)
	if err != nil {
		t.Fatal(err)
	}
	_, portStr, _ := net.SplitHostPort(dut.Addr())
	port, _ := strconv.Atoi(portStr)
	cfg := &drivers.DeviceConfig{
		Name: "pc-sim", Type: typ, Queues: []string{"q"}, DeviceIP: "127.0.0.1", SSHPort: port,
		Raw: events.Data{"firmware_reboot_delay": "2s", "firmware_reboot_timeout": "2s", "firmware_boot_check_interval": "100ms",
			"firmware_command_timeout": "10s", "firmware_upgrade_timeout": "10s"},
		SSH: &drivers.SSHSettings{HostKeys: drivers.HostKeysTOFU, HostKeyDir: t.TempDir()},
	}
	rigs.Store(cfg, &rig{dut: dut, fw: fw})
	t.Cleanup(func() { rigs.Delete(cfg) })
	return cfg
}

// controlHostDevice starts a simulated control host, and a switch whose
// scripts stand for its control_host_reboot_script and the DUT's
// poweroff_script and poweron_script, and returns the configuration of a
// device using them.
func controlHostDevice(t *testing.T, typ string, opts controlhostsim.Options, down, failReboot bool, raw events.Data) *drivers.DeviceConfig {
	t.Helper()
	if opts.BootTime == 0 {
		opts.BootTime = 100 * time.Millisecond
	}
	ch, err := controlhostsim.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	if down {
		ch.PowerOff()
	}
	sw, err := sim.StartSwitch(t.Context(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	script := func(name, event string, action func() error) string {
		p, err := sw.Script(name, func() error { ch.Record(event); return action() })
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	reboot := script("ch-reboot", "reboot script", func() error {
		if failReboot {
			return errors.New("the PDU does not answer")
		}
		ch.PowerOn()
		return nil
	})
	off := script("dut-off", "dut off", func() error { return nil })
	on := script("dut-on", "dut on", func() error { return nil })
	r := events.Data{
		"control_port": ch.SSHPort(), "control_host_api_port": ch.APIPort(),
		"control_host_reboot_script": []any{reboot}, "poweroff_script": []any{off}, "poweron_script": []any{on},
		"control_host_offline_timeout": "3s", "control_host_shutdown_wait": "50ms", "control_host_online_timeout": "3s",
		"control_host_check_interval": "50ms", "control_host_request_timeout": "2s", "control_host_script_timeout": "10s",
	}
	for k, v := range raw {
		r[k] = v
	}
	cfg := &drivers.DeviceConfig{Name: "ch-dev", Type: typ, Queues: []string{"q"}, ControlHost: "127.0.0.1", Raw: r,
		SSH: &drivers.SSHSettings{HostKeys: drivers.HostKeysTOFU, HostKeyDir: t.TempDir()}}
	rigs.Store(cfg, &rig{ch: ch, sw: sw})
	t.Cleanup(func() { rigs.Delete(cfg) })
	return cfg
}

func fwJob(data events.Data) func(*drivers.DeviceConfig) *events.Job {
	return func(*drivers.DeviceConfig) *events.Job {
		return &events.Job{JobQueue: "q", FirmwareUpdateData: data}
	}
}

func provisionJob(*drivers.DeviceConfig) *events.Job {
	return &events.Job{JobQueue: "q", ProvisionData: events.Data{}}
}

// firmwareIs checks the version of the simulated system firmware.
func firmwareIs(want string) func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		if got, _ := rigOf(cfg).fw.Version(pcBIOS.Name); got != want {
			t.Errorf("system firmware %s, want %s", got, want)
		}
	}
}

// eventsAre checks the control host's events (health checks squeezed).
func eventsAre(want ...string) func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		got := slices.Compact(rigOf(cfg).ch.Events())
		if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
			t.Errorf("control host events:\n%q\nwant\n%q", got, want)
		}
	}
}

// TestScenarios runs the firmware update and the control-host hooks of
// drivers.Base, with their faults, through the driver and the connector
// command line.
func TestScenarios(t *testing.T) {
	pc := func(f sim.Faults, opts fwupdsim.Options, fwf fwupdsim.Faults) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig { return pcDevice(t, baseType, f, opts, fwf) }
	}
	chDev := func(typ string, opts controlhostsim.Options, down, failReboot bool, raw events.Data) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig {
			return controlHostDevice(t, typ, opts, down, failReboot, raw)
		}
	}
	latest := events.Data{"version": "latest"}
	ignore := events.Data{"version": "latest", "ignore_failure": true}
	const (
		poweroff = "POST " + controlhostsim.PathPowerOff
		health   = "GET " + controlhostsim.PathHealth
		setup    = "POST " + controlhostsim.PathSetupProvisioning
	)
	fw := events.PhaseFirmwareUpdate
	drivertest.RunScenarios(t, []drivertest.Scenario{
		{Name: "firmware upgraded", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{}), Job: fwJob(latest),
			Want: drivertest.Succeeds, Output: "firmware flashed 1.14.0 → 1.15.0", Check: firmwareIs("1.15.0")},
		{Name: "firmware already latest", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{Devices: []fwupdsim.Device{{Name: pcBIOS.Name, Version: "1.15.0",
			Updatable: true, NeedsReboot: true, Releases: pcBIOS.Releases}}}, fwupdsim.Faults{}), Job: fwJob(latest),
			Want: drivertest.Succeeds, Output: "Nothing to update", Check: firmwareIs("1.15.0")},
		{Name: "firmware version not latest", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{}), Job: fwJob(events.Data{"version": "1.15.0"}),
			Want: drivertest.Fails, Output: `firmware_update_data.version "1.15.0" is not supported`, Check: firmwareIs("1.14.0")},
		{Name: "firmware upgrade fails", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{UpgradeFails: true}), Job: fwJob(latest),
			Want: drivertest.Fails, Output: "[System Firmware] upgrading to 1.15.0 failed", Check: firmwareIs("1.14.0")},
		{Name: "firmware upgrade fails, ignore_failure", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{UpgradeFails: true}), Job: fwJob(ignore),
			Want: drivertest.Succeeds, Output: "ignore_failure: true; continuing"},
		{Name: "firmware never comes back", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{NeverComesBack: true}), Job: fwJob(latest),
			Want: drivertest.RecoveryFails, Output: "did not come back within 2s"},
		{Name: "firmware never comes back, ignore_failure", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{NeverComesBack: true}), Job: fwJob(ignore),
			Want: drivertest.RecoveryFails, Output: "did not come back"},
		{Name: "firmware not applied", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{NotApplied: true}), Job: fwJob(latest),
			Want: drivertest.Fails, Output: "failed to run update on reboot", Check: firmwareIs("1.14.0")},
		{Name: "firmware host key changes", Phase: fw, Setup: pc(sim.Faults{HostKeyChangesOnBoot: true}, fwupdsim.Options{}, fwupdsim.Faults{}), Job: fwJob(latest),
			Want: drivertest.Fails, Output: "host key"},
		{Name: "firmware link drops", Phase: fw, Setup: pc(sim.Faults{SlowLink: 30 * time.Millisecond, DropAfter: 300 * time.Millisecond}, fwupdsim.Options{}, fwupdsim.Faults{}),
			Job: fwJob(latest), Want: drivertest.Fails, Check: firmwareIs("1.14.0")},
		{Name: "firmware slow link", Phase: fw, Setup: pc(sim.Faults{SlowLink: 2 * time.Millisecond}, fwupdsim.Options{}, fwupdsim.Faults{}), Job: fwJob(latest),
			Want: drivertest.Succeeds, Check: firmwareIs("1.15.0")},
		{Name: "firmware HPE server", Phase: fw, Setup: pc(sim.Faults{}, fwupdsim.Options{ChassisVendor: "HPE", ChassisType: 23}, fwupdsim.Faults{}), Job: fwJob(latest),
			Want: drivertest.Fails, Output: "iLO"},

		{Name: "no control host", Setup: func(t *testing.T) *drivers.DeviceConfig { c := *testDevice; c.Type = baseType; return &c },
			Job: provisionJob, Want: drivertest.Succeeds, Output: "No provisioning for " + baseType},
		{Name: "control host power-cycled", Setup: chDev(baseType, controlhostsim.Options{}, false, false, nil), Job: provisionJob,
			Want: drivertest.Succeeds, Output: "Control host 127.0.0.1 is back after",
			Check: eventsAre(poweroff, controlhostsim.EventDown, "reboot script", controlhostsim.EventPowerOn, controlhostsim.EventUp, health, setup)},
		{Name: "control host with the DUT powered off", Setup: chDev(dutPowerType, controlhostsim.Options{}, false, false, nil), Job: provisionJob,
			Want:  drivertest.Succeeds,
			Check: eventsAre("dut off", poweroff, controlhostsim.EventDown, "reboot script", controlhostsim.EventPowerOn, controlhostsim.EventUp, health, "dut on", setup)},
		{Name: "control host power cycle disabled", Setup: func(t *testing.T) *drivers.DeviceConfig {
			cfg := controlHostDevice(t, baseType, controlhostsim.Options{}, false, false, nil)
			cfg.Env = map[string]string{controlhost.DisablePowerCycleEnv: "1"}
			return cfg
		}, Job: provisionJob, Want: drivertest.Succeeds, Output: "DISABLE_CONTROL_HOST_POWERCYCLE is set", Check: eventsAre(setup)},
		{Name: "control host REST down, SSH fallback", Setup: chDev(baseType, controlhostsim.Options{Faults: controlhostsim.Faults{RESTDown: true}}, true, false, nil),
			Job: provisionJob, Want: drivertest.Succeeds, Output: "answers on its SSH port after",
			Check: eventsAre(controlhostsim.EventDown, "reboot script", controlhostsim.EventPowerOn, controlhostsim.EventUp)},
		{Name: "control host never comes back", Setup: chDev(baseType, controlhostsim.Options{Faults: controlhostsim.Faults{NeverComesBack: true}}, false, false,
			events.Data{"control_host_online_timeout": "1s"}), Job: provisionJob, Want: drivertest.RecoveryFails, Output: "did not come back"},
		{Name: "control host reset script fails", Setup: chDev(baseType, controlhostsim.Options{}, false, true, events.Data{"control_host_online_timeout": "1s"}),
			Job: provisionJob, Want: drivertest.RecoveryFails, Output: "control_host_reboot_script[0] failed"},
		{Name: "control host bad key", Setup: chDev(baseType, controlhostsim.Options{}, false, false, events.Data{"control_host_api_port": "eight thousand"}),
			Job: provisionJob, Want: drivertest.Fails, Output: "control_host_api_port"},
		{Name: "control host set up for the test phase", Phase: events.PhaseTest, Setup: chDev(baseType, controlhostsim.Options{}, false, false, nil),
			Job: func(*drivers.DeviceConfig) *events.Job {
				return &events.Job{JobQueue: "q", TestData: &events.TestData{TestCmds: events.ListCmds("echo tested")}}
			},
			Want: drivertest.Succeeds, Output: "tested", Check: func(t *testing.T, cfg *drivers.DeviceConfig, out string, _ error) {
				eventsAre("POST "+controlhostsim.PathSetupTest)(t, cfg, out, nil)
				if i, j := strings.Index(out, "for the test phase"), strings.Index(out, "tested"); i < 0 || j < i {
					t.Errorf("the control host was not set up before test_cmds ran:\n%s", out)
				}
			}},
	})
}

// TestBaseConformanceControlHost runs the conformance suite on Base with a
// simulated control host, which Provision power-cycles.
func TestBaseConformanceControlHost(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		return drivers.Base{}, controlHostDevice(t, baseType, controlhostsim.Options{}, false, false, nil)
	})
}

func TestBaseProvisionCancelled(t *testing.T) {
	t.Parallel()
	cfg := controlHostDevice(t, baseType, controlhostsim.Options{Faults: controlhostsim.Faults{NeverComesBack: true}}, false, false,
		events.Data{"control_host_online_timeout": "60s"})
	run, out := drivertest.NewRun(t, cfg, &events.Job{JobQueue: "q", ProvisionData: events.Data{}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- drivers.Base{}.Provision(ctx, run) }()
	if !out.WaitFor("Waiting up to 1m0s for the REST API", 10*time.Second) {
		t.Fatalf("the hook did not get to waiting for the control host:\n%s", out)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || drivers.IsRecovery(err) {
			t.Errorf("Provision cancelled = %v, want an error wrapping context.Canceled and no recovery failure", err)
		}
	case <-time.After(drivertest.CancelDeadline):
		t.Fatalf("Provision did not return within %s of its cancellation:\n%s", drivertest.CancelDeadline, out)
	}
}

func TestBaseFirmwareUpdateCancelled(t *testing.T) {
	t.Parallel()
	cfg := pcDevice(t, baseType, sim.Faults{}, fwupdsim.Options{}, fwupdsim.Faults{NeverComesBack: true})
	cfg.Raw["firmware_reboot_timeout"] = "60s"
	run, out := drivertest.NewRun(t, cfg, &events.Job{JobQueue: "q", FirmwareUpdateData: events.Data{"version": "latest", "ignore_failure": true}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- drivers.Base{}.FirmwareUpdate(ctx, run) }()
	if !out.WaitFor("Waiting up to 1m0s for the device to come back", 10*time.Second) {
		t.Fatalf("the update did not get to the reboot:\n%s", out)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || drivers.IsRecovery(err) {
			t.Errorf("FirmwareUpdate cancelled = %v, want an error wrapping context.Canceled (ignore_failure does not hide it) and no recovery failure", err)
		}
	case <-time.After(drivertest.CancelDeadline):
		t.Fatalf("FirmwareUpdate did not return within %s of its cancellation:\n%s", drivertest.CancelDeadline, out)
	}
}

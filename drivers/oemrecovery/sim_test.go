package oemrecovery_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/oemrecovery"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/oemsim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// fast are device keys scaled to the simulator.
func fast() events.Data {
	return events.Data{
		"boot_check_interval": "50ms", "recovery_poll_interval": "50ms", "boot_timeout": "5s",
		"recovery_timeout": "8s", "shutdown_timeout": "5s", "reboot_script_timeout": "5s",
	}
}

// start starts a laptop with recovery rec and faults f, and returns it
// with the configuration of an oemrecovery device reaching it, whose
// recovery_cmds start its recovery (unless raw gives others).
func start(t *testing.T, rec oemsim.Recovery, f oemsim.Faults, raw events.Data) (*oemsim.Rig, *drivers.DeviceConfig) {
	t.Helper()
	keyFile, pub, err := oemsim.NewKeyFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rig, err := oemsim.Start(t.Context(), oemsim.Options{
		Name: "oemrecovery-sim", Dir: t.TempDir(), Recovery: rec,
		Factory:  sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Size: 1 << 20},
		BootTime: 100 * time.Millisecond, ReinstallTime: 300 * time.Millisecond, OEMConfigTime: 200 * time.Millisecond,
		// The factory reset restores the lab's test user.
		RecoveryPassword: drivers.DefaultTestPassword,
		AuthorizedKeys:   []ssh.PublicKey{pub}, Faults: f,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rig.Close)
	keys := fast()
	keys["recovery_cmds"] = toAny(rig.RecoveryCmds())
	for k, v := range raw {
		keys[k] = v
	}
	return rig, &drivers.DeviceConfig{
		Name: "oemrecovery-sim", Type: oemrecovery.Type, Queues: []string{"oem"},
		DeviceIP: "127.0.0.1", SSHPort: rig.Port(), RebootScript: []string{rig.RebootScript()}, Raw: keys,
		SSH: &drivers.SSHSettings{HostKeys: drivers.HostKeysTOFU, HostKeyDir: t.TempDir(), KeyFile: keyFile},
	}
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func job(*drivers.DeviceConfig) *events.Job {
	return &events.Job{JobID: "job-oemrecovery", JobQueue: "oem", ProvisionData: events.Data{}, TestData: &events.TestData{}}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		_, cfg := start(t, oemsim.DellRecovery, oemsim.Faults{}, nil)
		d, err := drivers.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return d, cfg
	})
}

func TestScenarios(t *testing.T) {
	var rigs drivertest.Rigs[*oemsim.Rig]
	setup := func(rec oemsim.Recovery, f oemsim.Faults, raw events.Data, prep func(*testing.T, *oemsim.Rig, *drivers.DeviceConfig)) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig {
			rig, cfg := start(t, rec, f, raw)
			if prep != nil {
				prep(t, rig, cfg)
			}
			rigs.Add(t, cfg, rig)
			return cfg
		}
	}
	check := func(f func(t *testing.T, rig *oemsim.Rig)) func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
			f(t, rigs.Of(t, cfg))
		}
	}
	recovered := func(via string) func(t *testing.T, rig *oemsim.Rig) {
		return func(t *testing.T, rig *oemsim.Rig) {
			b := rig.RecoveryBoots()
			if len(b) != 1 || b[0].Via != via || rig.Reinstalls() != 1 {
				t.Errorf("recovery boots %+v, reinstalls %d; want one via %s", b, rig.Reinstalls(), via)
			}
			if rig.DUT().State() != sim.Up {
				t.Errorf("the laptop is %s after its recovery", rig.DUT().State())
			}
		}
	}
	notRecovered := check(func(t *testing.T, rig *oemsim.Rig) {
		if len(rig.RecoveryBoots()) > 0 {
			t.Errorf("a recovery was started: %+v", rig.RecoveryBoots())
		}
	})
	dell, ubuntu := oemsim.DellRecovery, oemsim.UbuntuRecovery
	none := oemsim.Faults{}
	off := func(_ *testing.T, r *oemsim.Rig, _ *drivers.DeviceConfig) { r.PowerOff() }
	failingScript := func(t *testing.T, rig *oemsim.Rig, cfg *drivers.DeviceConfig) {
		rig.PowerOff()
		script, err := rig.Switch().Script("broken-pdu", func() error { return errors.New("PDU outlet 7 does not answer") })
		if err != nil {
			t.Fatal(err)
		}
		cfg.RebootScript = []string{script}
	}
	drivertest.RunScenarios(t, []drivertest.Scenario{
		{Name: "dell-recovery", Setup: setup(dell, none, nil, nil), Job: job, Want: drivertest.Succeeds,
			Output: "The device is recovered", Check: check(recovered(oemsim.ViaDell))},
		{Name: "ubuntu-recovery through GRUB", Setup: setup(ubuntu, none, nil, nil), Job: job, Want: drivertest.Succeeds,
			Check: check(recovered(oemsim.ViaGRUB))},
		{Name: "recovery never finishes", Setup: setup(dell, oemsim.Faults{RecoveryNeverFinishes: true}, events.Data{"recovery_timeout": "1500ms"}, nil),
			Job: job, Want: drivertest.RecoveryFails, Output: "did not come back from its recovery"},
		{Name: "unreachable, reboot_script brings it back", Setup: setup(dell, none, nil, off),
			Job: job, Want: drivertest.Succeeds, Output: "Running reboot_script[0]", Check: check(recovered(oemsim.ViaDell))},
		{Name: "never boots", Setup: setup(dell, oemsim.Faults{NeverBoots: true}, events.Data{"boot_timeout": "1s"}, off),
			Job: job, Want: drivertest.RecoveryFails, Output: "did not answer ssh"},
		{Name: "reboot_script fails", Setup: setup(dell, none, nil, failingScript),
			Job: job, Want: drivertest.RecoveryFails, Output: "PDU outlet 7 does not answer"},
		{Name: "host key changes outside a reinstall", Setup: setup(dell, oemsim.Faults{HostKeyChangesOnBoot: true}, nil, func(t *testing.T, r *oemsim.Rig, cfg *drivers.DeviceConfig) {
			// Record the laptop's key, then reboot it: it comes back with another.
			recordHostKey(t, cfg)
			r.DUT().PowerCycle()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := r.DUT().WaitState(ctx, sim.Up); err != nil {
				t.Fatal(err)
			}
		}), Job: job, Want: drivertest.ProvisioningFails, Output: "refusing its host key", Check: notRecovered},
		{Name: "recovery command fails", Setup: setup(dell, none, events.Data{"recovery_cmds": []any{"true", "false"}}, nil),
			Job: job, Want: drivertest.ProvisioningFails, Output: "recovery_cmds[1] failed", Check: notRecovered},
		{Name: "recovery commands do not reboot", Setup: setup(dell, none, events.Data{"recovery_cmds": []any{"echo hello"}, "shutdown_timeout": "500ms"}, nil),
			Job: job, Want: drivertest.ProvisioningFails, Output: "did not go down", Check: notRecovered},
		{Name: "link drops", Setup: setup(dell, oemsim.Faults{DropAfter: 300 * time.Millisecond}, events.Data{"recovery_cmds": []any{"sleep 1", "sudo dell-restore-system -y"}}, nil),
			Job: job, Want: drivertest.ProvisioningFails, Output: "lost the connection", Check: notRecovered},
		{Name: "slow link", Setup: setup(ubuntu, oemsim.Faults{SlowLink: 2 * time.Millisecond}, nil, nil), Job: job, Want: drivertest.Succeeds,
			Check: check(recovered(oemsim.ViaGRUB))},
	})
}

// recordHostKey logs in to the device once, so that its host key is
// recorded.
func recordHostKey(t *testing.T, cfg *drivers.DeviceConfig) {
	t.Helper()
	login, err := cfg.SSHSettings().DeviceConfig(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sshx.Dial(t.Context(), login, cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
}

// TestRecoveryCommandsAsGiven checks that recovery_cmds reach the device's
// shell as written (quotes and all), and that the job's test_username only
// logs in.
func TestRecoveryCommandsAsGiven(t *testing.T) {
	t.Parallel()
	rig, cfg := start(t, oemsim.UbuntuRecovery, oemsim.Faults{}, nil)
	d, err := drivers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, out := drivertest.NewRun(t, cfg, job(cfg))
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	var ran []string
	for _, c := range rig.RecoveryBoots() {
		ran = append(ran, c.Via)
	}
	if len(ran) != 1 || ran[0] != oemsim.ViaGRUB {
		t.Errorf("recovery boots %q", ran)
	}
	for _, want := range []string{`Running recovery_cmds[0] on the device: sudo grub-editenv /boot/grub/grubenv set "next_entry=ubuntu-recovery restore"`, "The device is recovered"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

package drivertest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/connector"
	"github.com/flingerlab/flinger/events"
)

// Outcome is the typed outcome a phase must end with.
type Outcome int

// The outcomes a Scenario can expect.
const (
	// Succeeds: the phase returns nil, the connector exits 0.
	Succeeds Outcome = iota
	// Fails: the phase fails and the device stays in service: an error
	// that is not a *drivers.RecoveryError, connector exit 1.
	Fails
	// ProvisioningFails: as Fails, and the error is a
	// *drivers.ProvisioningError (the image or the job was at fault).
	ProvisioningFails
	// RecoveryFails: the device could not be recovered: a
	// *drivers.RecoveryError, connector exit 46.
	RecoveryFails
)

// String names the outcome.
func (o Outcome) String() string {
	switch o {
	case Succeeds:
		return "success"
	case Fails:
		return "failure"
	case ProvisioningFails:
		return "provisioning failure"
	case RecoveryFails:
		return "recovery failure"
	}
	return "Outcome(?)"
}

// Scenario is one run of one phase of a driver, on a device set up for
// it (with or without an injected fault), and the outcome it must have.
type Scenario struct {
	// Name names the scenario.
	Name string
	// Setup starts what the device needs (simulators, servers) with the
	// scenario's fault injected and returns the device's configuration.
	// It is called once for the direct run and once for the run through
	// the connector command line, so that each starts from a fresh device.
	// Use t.Cleanup to stop what it starts.
	Setup func(t *testing.T) *drivers.DeviceConfig
	// Job returns the job to run on that device.
	Job func(cfg *drivers.DeviceConfig) *events.Job
	// Phase is the phase to run (default provision).
	Phase events.Phase
	// Want is the outcome the phase must end with.
	Want Outcome
	// Output, if not empty, must appear in the phase's output or error.
	Output string
	// Check, if not nil, is called after the phase with its output and
	// error (nil through the connector, whose exit status was checked), to
	// check the device's state (bytes written, power state).
	Check func(t *testing.T, cfg *drivers.DeviceConfig, output string, err error)
	// Timeout bounds the phase (default 2 minutes).
	Timeout time.Duration
}

// RunScenarios runs each scenario twice: by calling the driver that
// drivers.New builds for the device, and through the connector command
// line (connector.Run, with device.yaml and job.json written from the
// device's configuration and the job), checking the phase's typed outcome,
// the connector's exit status, its device-connector-error.json and
// device-info.json. The scenarios run in parallel.
func RunScenarios(t *testing.T, scenarios []Scenario) {
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			t.Parallel()
			t.Run("driver", func(t *testing.T) { runDirect(t, sc) })
			t.Run("connector", func(t *testing.T) { runConnector(t, sc) })
		})
	}
}

func (sc Scenario) phase() events.Phase {
	if sc.Phase == "" {
		return events.PhaseProvision
	}
	return sc.Phase
}

func (sc Scenario) timeout() time.Duration {
	if sc.Timeout > 0 {
		return sc.Timeout
	}
	return 2 * time.Minute
}

func callPhase(ctx context.Context, p events.Phase, d drivers.Driver, run *drivers.Run) (int, error) {
	if p == events.PhaseTest {
		return d.RunTest(ctx, run)
	}
	for _, ph := range Phases {
		if ph.Name == p {
			return 0, ph.Call(ctx, d, run)
		}
	}
	return 0, errors.New("drivertest: unknown phase " + string(p))
}

// CheckOutcome fails t when err is not the outcome want.
func CheckOutcome(t testing.TB, what string, err error, want Outcome) {
	t.Helper()
	var pe *drivers.ProvisioningError
	ok := false
	switch want {
	case Succeeds:
		ok = err == nil
	case Fails:
		ok = err != nil && !drivers.IsRecovery(err)
	case ProvisioningFails:
		ok = err != nil && !drivers.IsRecovery(err) && errors.As(err, &pe)
	case RecoveryFails:
		ok = drivers.IsRecovery(err)
	}
	if !ok {
		t.Errorf("%s ended with %v (%T); want a %s", what, err, err, want)
	}
}

func runDirect(t *testing.T, sc Scenario) {
	cfg := sc.Setup(t)
	d, err := drivers.New(cfg)
	if err != nil {
		t.Fatalf("drivers.New: %v", err)
	}
	job := sc.Job(cfg)
	run, out := NewRun(t, cfg, job)
	ctx, cancel := context.WithTimeout(t.Context(), sc.timeout())
	defer cancel()
	_, err = callPhase(ctx, sc.phase(), d, run)
	output := out.String()
	t.Logf("%s: %v", sc.phase(), err)
	CheckOutcome(t, string(sc.phase()), err, sc.Want)
	if sc.Output != "" {
		msg := output
		if err != nil {
			msg += err.Error()
		}
		if !strings.Contains(msg, sc.Output) {
			t.Errorf("neither the output nor the error mentions %q; error %v, output:\n%s", sc.Output, err, tail(output, 3000))
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", tail(output, 3000))
	}
	if sc.Check != nil {
		sc.Check(t, cfg, output, err)
	}
}

// stageOf names phase p on the connector command line.
func stageOf(p events.Phase) string {
	if p == events.PhaseTest {
		return connector.StageRuntest
	}
	return string(p)
}

func runConnector(t *testing.T, sc Scenario) {
	cfg := sc.Setup(t)
	job := sc.Job(cfg)
	dir := t.TempDir()
	raw := map[string]any{}
	for k, v := range cfg.Raw {
		raw[k] = v
	}
	raw["agent_name"] = cfg.Name
	for k, v := range map[string]any{
		"device_ip": cfg.DeviceIP, "control_host": cfg.ControlHost, "control_user": cfg.ControlUser,
		"serial_host": cfg.SerialHost, "serial_port": cfg.SerialPort, "ssh_port": cfg.SSHPort,
	} {
		if v != "" && v != 0 {
			raw[k] = v
		}
	}
	if len(cfg.RebootScript) > 0 {
		raw["reboot_script"] = cfg.RebootScript
	}
	if len(cfg.Env) > 0 {
		raw["env"] = cfg.Env
	}
	y, err := yaml.Marshal(raw)
	if err != nil {
		t.Fatalf("device.yaml: %v", err)
	}
	j, err := json.Marshal(job)
	if err != nil {
		t.Fatalf("job.json: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "default.yaml"), y, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "testflinger.json"), j, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut := &Output{}, &Output{}
	ctx, cancel := context.WithTimeout(t.Context(), sc.timeout())
	defer cancel()
	rc := connector.Run(ctx, connector.Options{
		Type: cfg.Type, Stage: stageOf(sc.phase()), ConfigPath: "default.yaml", JobPath: "testflinger.json",
		Dir: dir, Stdout: out, Stderr: errOut, Env: os.Environ(), SSH: cfg.SSH,
	})
	t.Logf("connector %s %s: exit %d", cfg.Type, stageOf(sc.phase()), rc)
	want := map[Outcome]int{Succeeds: 0, Fails: 1, ProvisioningFails: 1, RecoveryFails: 46}[sc.Want]
	if rc != want {
		t.Errorf("connector exit %d, want %d (%s); stderr: %s\noutput:\n%s", rc, want, sc.Want, errOut, tail(out.String(), 3000))
	}
	if _, err := os.Stat(filepath.Join(dir, "device-info.json")); err != nil {
		t.Errorf("device-info.json: %v", err)
	}
	errFile := filepath.Join(dir, "device-connector-error.json")
	b, err := os.ReadFile(errFile)
	switch {
	case sc.Want == Succeeds && err == nil:
		t.Errorf("device-connector-error.json written on success: %s", b)
	case sc.Want != Succeeds && err != nil:
		t.Errorf("device-connector-error.json: %v", err)
	case sc.Want != Succeeds:
		var m map[string]map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Errorf("device-connector-error.json: %v: %s", err, b)
		} else if info := m[stageOf(sc.phase())+"_exception_info"]; info == nil {
			t.Errorf("device-connector-error.json lacks %s_exception_info: %s", stageOf(sc.phase()), b)
		} else if name, _ := info["exception_name"].(string); sc.Want == RecoveryFails && name != "RecoveryError" {
			t.Errorf("exception_name = %q, want RecoveryError", name)
		}
	}
	if sc.Output != "" && !strings.Contains(out.String()+errOut.String(), sc.Output) {
		t.Errorf("the connector's output does not mention %q; output:\n%s\nstderr: %s", sc.Output, tail(out.String(), 3000), errOut)
	}
	if sc.Check != nil {
		sc.Check(t, cfg, out.String(), nil)
	}
}

package lab_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	_ "github.com/flingerlab/flinger/drivers/all"
	"github.com/flingerlab/flinger/drivers/drivertest"
	_ "github.com/flingerlab/flinger/drivers/sim/dutsim"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
)

func TestStartSimulators(t *testing.T) {
	run := t.TempDir()
	host, err := drivers.ParseHost([]byte(`
run_dir: `+run+`
devices:
  - agent_name: np-1
    provision_type: noprovision
    job_queues: [np]
    sim: {boot_time: 100ms}
  - agent_name: fake-1
    provision_type: fake
    job_queues: [fake]
`), "lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sims, err := lab.StartSimulators(t.Context(), host, filepath.Join(run, "sim"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sims.Close()
	if sims.Len() != 1 {
		t.Fatalf("%d simulators, want 1", sims.Len())
	}
	np := host.Devices[0]
	if np.DeviceIP == "" || np.SSHPort == 0 || len(np.RebootScript) != 1 || host.SSH.KeyFile == "" {
		t.Fatalf("device not pointed at its simulator: %+v, key file %q", np, host.SSH.KeyFile)
	}
	if host.Devices[1].DeviceIP != "" {
		t.Errorf("the real device was changed: %+v", host.Devices[1])
	}
	d, err := drivers.New(np)
	if err != nil {
		t.Fatal(err)
	}
	r, out := drivertest.NewRun(t, np, &events.Job{JobID: "j", JobQueue: "np", ProvisionData: events.Data{}})
	ctx, cancel := context.WithTimeout(t.Context(), 30e9)
	defer cancel()
	if err := d.Provision(ctx, r); err != nil || !strings.Contains(out.String(), "nothing to provision") {
		t.Fatalf("Provision on the simulator (by the lab's key) = %v\n%s", err, out)
	}
}

func TestStartSimulatorsErrors(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{"sim: {boot_tme: 1s}", "device np-1: sim: starting a simulated noprovision device np-1: sim.boot_tme: unknown setting"},
		{"sim: false", "device np-1: sim: false"},
		{"sim: [1]", "must be true or a mapping"},
	} {
		host, err := drivers.ParseHost([]byte("devices:\n  - {agent_name: np-1, provision_type: noprovision, job_queues: [np]}\n"), "lab.yaml")
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch {
		case strings.Contains(tc.entry, "false"):
			v = false
		case strings.Contains(tc.entry, "["):
			v = []any{1}
		default:
			v = map[string]any{"boot_tme": "1s"}
		}
		host.Devices[0].Raw["sim"] = v
		_, err = lab.StartSimulators(t.Context(), host, t.TempDir(), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.entry, err, tc.want)
		}
	}
}

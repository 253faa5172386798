package sim_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers/sim"
)

func TestSwitchScripts(t *testing.T) {
	t.Parallel()
	sw, err := sim.StartSwitch(t.Context(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, sim.Faults{})
	cycle, err := sw.Script("power-cycle", func() error { d.PowerCycle(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	broken, err := sw.Script("broken", func() error { return errors.New("relay stuck") })
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), cycle).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", cycle, err, out)
	}
	if got := d.State(); got != sim.Booting {
		t.Errorf("after power-cycle the DUT is %s, want booting", got)
	}
	out, err := exec.CommandContext(t.Context(), broken).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "relay stuck") {
		t.Errorf("broken: %v, output %q; want exit 1 naming the error", err, out)
	}
	if sw.Calls("power-cycle") != 1 || sw.Calls("broken") != 1 {
		t.Errorf("calls: %d, %d", sw.Calls("power-cycle"), sw.Calls("broken"))
	}
	if _, err := sw.Script("../evil", func() error { return nil }); err == nil {
		t.Error("a script name with a slash was accepted")
	}
	sw.Close()
	if out, err := exec.CommandContext(t.Context(), cycle).CombinedOutput(); err == nil {
		t.Errorf("a closed switch's script succeeded: %s", out)
	}
}

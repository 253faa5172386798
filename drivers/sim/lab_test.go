package sim_test

import (
	"testing"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/maassim"
	"github.com/flingerlab/flinger/drivers/sim/muxpisim"
	"github.com/flingerlab/flinger/drivers/sim/netbootsim"
	"github.com/flingerlab/flinger/drivers/sim/oemsim"
)

// TestLabSettingsAreRead checks that the simulators whose LabSettings
// list their sim: keys read every key listed: given each one as null
// (its default), the device starts.
func TestLabSettingsAreRead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		typ  string
		keys []string
	}{
		{muxpisim.LabType, muxpisim.LabSettings},
		{"oemrecovery", oemsim.LabSettings},
		{netbootsim.Type, netbootsim.LabSettings},
		{maassim.Type, maassim.LabSettings},
	} {
		settings := map[string]any{}
		for _, k := range tc.keys {
			settings[k] = nil
		}
		d, err := sim.StartLab(t.Context(), tc.typ, sim.LabOptions{Name: "lab-keys", Dir: t.TempDir(), Settings: settings})
		if err != nil {
			t.Errorf("%s: %v", tc.typ, err)
			continue
		}
		d.Close()
	}
}

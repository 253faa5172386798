// Package all registers the simulator of every connector type that has
// one (sim.RegisterLab): commands that start simulated devices import it
// for its side effect.
package all

import (
	// noprovision: a plain SSH device.
	_ "github.com/flingerlab/flinger/drivers/sim/dutsim"
	// netboot: the Snappy Test Device Imager and the test image.
	_ "github.com/flingerlab/flinger/drivers/sim/netbootsim"
	// oemrecovery, oemscript and its variants: an OEM laptop with a recovery partition.
	_ "github.com/flingerlab/flinger/drivers/sim/oemsim"
)

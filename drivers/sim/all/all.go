// Package all registers the simulator of every connector type that has
// one (sim.RegisterLab): commands that start simulated devices import it
// for its side effect.
package all

import (
	// cm3: a CM3 and its GPIO sidecar.
	_ "github.com/flingerlab/flinger/drivers/sim/cm3sim"
	// dragonboard: a board with a master image and a test image.
	_ "github.com/flingerlab/flinger/drivers/sim/dragonboardsim"
	// noprovision: a plain SSH device.
	_ "github.com/flingerlab/flinger/drivers/sim/dutsim"
	// maas2: a MAAS region controller and a machine it deploys.
	_ "github.com/flingerlab/flinger/drivers/sim/maassim"
	// muxpi: a MuxPi/SDWire/Type-C mux control host and its DUT.
	_ "github.com/flingerlab/flinger/drivers/sim/muxpisim"
	// netboot: the Snappy Test Device Imager and the test image.
	_ "github.com/flingerlab/flinger/drivers/sim/netbootsim"
	// oemrecovery, oemscript and its variants: an OEM laptop with a recovery partition.
	_ "github.com/flingerlab/flinger/drivers/sim/oemsim"
)

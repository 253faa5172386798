// Package all registers the simulator of every connector type that has
// one (sim.RegisterLab): commands that start simulated devices import it
// for its side effect.
package all

import (
	// noprovision: a plain SSH device.
	_ "github.com/flingerlab/flinger/drivers/sim/dutsim"
)

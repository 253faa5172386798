// Package all registers every driver: commands and workers import it for
// its side effect so that drivers.New and drivers.ParseHost know every
// connector type.
package all

import (
	// cm3 (a Compute Module 3 behind a sidecar).
	_ "github.com/flingerlab/flinger/drivers/cm3"
	// dragonboard.
	_ "github.com/flingerlab/flinger/drivers/dragonboard"
	// fake_connector (alias fake).
	_ "github.com/flingerlab/flinger/drivers/fake"
	// maas2 (machines a MAAS region controller deploys).
	_ "github.com/flingerlab/flinger/drivers/maas2"
	// multi (multi-device jobs: child jobs on other devices).
	_ "github.com/flingerlab/flinger/drivers/multi"
	// muxpi (MuxPi stm, SDWire and Type-C mux).
	_ "github.com/flingerlab/flinger/drivers/muxpi"
	// netboot.
	_ "github.com/flingerlab/flinger/drivers/netboot"
	// noprovision.
	_ "github.com/flingerlab/flinger/drivers/noprovision"
	// oemrecovery.
	_ "github.com/flingerlab/flinger/drivers/oemrecovery"
	// oemscript, dell_oemscript, hp_oemscript, lenovo_oemscript.
	_ "github.com/flingerlab/flinger/drivers/oemscript"
)

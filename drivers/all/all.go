// Package all registers every driver: commands and workers import it for
// its side effect so that drivers.New and drivers.ParseHost know every
// connector type.
package all

import (
	// fake_connector (alias fake).
	_ "github.com/flingerlab/flinger/drivers/fake"
	// netboot.
	_ "github.com/flingerlab/flinger/drivers/netboot"
	// noprovision.
	_ "github.com/flingerlab/flinger/drivers/noprovision"
	// oemrecovery.
	_ "github.com/flingerlab/flinger/drivers/oemrecovery"
	// oemscript, dell_oemscript, hp_oemscript, lenovo_oemscript.
	_ "github.com/flingerlab/flinger/drivers/oemscript"
)

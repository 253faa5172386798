// Package all registers every driver: commands and workers import it for
// its side effect so that drivers.New and drivers.ParseHost know every
// connector type.
package all

import (
	// fake_connector (alias fake).
	_ "github.com/flingerlab/flinger/drivers/fake"
	// noprovision.
	_ "github.com/flingerlab/flinger/drivers/noprovision"
)

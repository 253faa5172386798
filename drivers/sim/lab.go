package sim

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"golang.org/x/crypto/ssh"
)

// LabOptions are what `flinger lab` and `flinger sim` give a simulated
// device of any connector type when they start it.
type LabOptions struct {
	// Name is the device's agent_name.
	Name string
	// Dir is a directory the simulator may keep files in (scripts it
	// generates for reboot_script, a served image); it exists.
	Dir string
	// AuthorizedKeys are the public keys the simulated hosts (DUT and
	// control host) accept for any user: the lab host's ssh.key_file.
	AuthorizedKeys []ssh.PublicKey
	// Settings are the sim: keys of the device's entry in the lab file
	// (such as boot_time, or a fault to inject), for the simulator to
	// read with a Settings (NewSettings); unknown keys are an error
	// naming them.
	Settings map[string]any
	// Console is the device's serial console (nil: none), which StartLab
	// starts unless the setting serial is false: the simulator prints its
	// DUT's boot logs to it (DUTOptions.Console), gives its address in
	// Config (AddConfig) and closes it on Close.
	Console *SerialConsole
	// Log receives the simulator's diagnostics.
	Log *slog.Logger
}

// LabDevice is a running simulated device.
type LabDevice interface {
	// Config returns the device configuration keys that reach the
	// simulated hardware (device_ip, ssh_port, control_host, control_port,
	// reboot_script, test_device, ...), to merge into the device's entry.
	Config() map[string]any
	// Close stops the simulator.
	Close()
}

// LabStarter starts a simulated device; it stops when ctx is done.
type LabStarter func(ctx context.Context, opts LabOptions) (LabDevice, error)

var (
	labMu       sync.Mutex
	labStarters = map[string]LabStarter{}
)

// RegisterLab registers the simulator of a connector type (its canonical
// name), for StartLab. Simulator packages call it from init.
func RegisterLab(typ string, start LabStarter) {
	labMu.Lock()
	defer labMu.Unlock()
	if _, dup := labStarters[typ]; dup {
		panic("sim: RegisterLab called twice for " + typ)
	}
	labStarters[typ] = start
}

// LabTypes returns the connector types that have a simulator, sorted.
func LabTypes() []string {
	labMu.Lock()
	defer labMu.Unlock()
	return slices.Sorted(maps.Keys(labStarters))
}

// StartLab starts the simulator of connector type typ, with a serial
// console (LabOptions.Console) unless its setting serial is false.
func StartLab(ctx context.Context, typ string, opts LabOptions) (LabDevice, error) {
	labMu.Lock()
	start := labStarters[typ]
	labMu.Unlock()
	if start == nil {
		return nil, fmt.Errorf("sim: no simulator for connector type %q (simulated types: %v)", typ, LabTypes())
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	var err error
	if opts.Settings, opts.Console, err = startLabConsole(ctx, opts.Settings); err != nil {
		return nil, fmt.Errorf("sim: starting a simulated %s device %s: %w", typ, opts.Name, err)
	}
	d, err := start(ctx, opts)
	if err != nil {
		_ = opts.Console.Close()
		return nil, fmt.Errorf("sim: starting a simulated %s device %s: %w", typ, opts.Name, err)
	}
	return d, nil
}

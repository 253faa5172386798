package muxpisim

import (
	"context"
	"fmt"

	"github.com/flingerlab/flinger/drivers/sim"
)

// LabType is the connector type this package simulates.
const LabType = "muxpi"

// LabSettings are the sim: keys a muxpi device's entry in a lab file may
// hold (read by sim.Settings: durations in seconds or as "500ms", "2s";
// sizes in bytes, or such as "64M"):
//
//	boot_time: 1s                  # the DUT's boot time (default 200ms)
//	control_boot_time: 1s          # the control host's (default 200ms)
//	test_device: /dev/mmcblk0      # the SD card's node (default /dev/sda)
//	usb_node: /dev/sdc             # the USB stick's node (default /dev/sdb)
//	mux_cli: zapper                # the control host's mux command
//	never_boots: true              # faults, as in Faults
//	host_key_changes_on_boot: true
//	write_fails_after: 1048576     # bytes
//	write_rate: 10485760           # bytes per second
//	control_drop_after: 2s
//	slow_link: 5ms
//	control_unreachable: true
//	control_api_down: true
//	reboot_script_fails: true
//	control_reboot_script_fails: true
//	serial: false                  # no serial console (see sim.StartLab)
var LabSettings = []string{
	"boot_time", "control_boot_time", "test_device", "usb_node", "mux_cli",
	"never_boots", "host_key_changes_on_boot", "write_fails_after", "write_rate",
	"control_drop_after", "slow_link", "control_unreachable", "control_api_down", "reboot_script_fails",
	"control_reboot_script_fails", sim.SerialSetting,
}

func init() {
	sim.RegisterLab(LabType, startLab)
}

// startLab starts a rig for `flinger lab` (see LabSettings).
func startLab(ctx context.Context, lo sim.LabOptions) (sim.LabDevice, error) {
	opts, err := LabOptions(lo)
	if err != nil {
		return nil, err
	}
	r, err := Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	r.DUT.SetConsole(lo.Console)
	return labDevice{r, lo.Console}, nil
}

// labDevice is a Rig started for a lab, and the DUT's serial console.
type labDevice struct {
	*Rig
	serial *sim.SerialConsole
}

// Close stops the Rig and the serial console.
func (d labDevice) Close() {
	d.Rig.Close()
	_ = d.serial.Close()
}

// Config returns the Rig's Config with waits and retries suited to the
// simulator's timings: it boots and answers in well under a second, so
// polling every 10 s (the drivers' defaults, made for hardware) would only
// slow a lab down; and serial_host and serial_port, when the DUT has a
// serial console.
func (d labDevice) Config() map[string]any {
	c := d.Rig.Config()
	d.serial.AddConfig(c)
	c["boot_check_interval"] = "500ms"
	c["control_retry_interval"] = "500ms"
	c["control_retry_timeout"] = "5s"
	c["control_host_check_interval"] = "200ms"
	c["control_host_offline_timeout"] = "5s"
	c["control_host_shutdown_wait"] = "0s"
	c["control_host_online_timeout"] = "20s"
	c["control_host_reboot_timeout"] = "20s"
	return c
}

// LabOptions turns the options `flinger lab` gives a simulated device into
// a rig's Options, reading the settings listed in LabSettings with
// sim.Settings; unknown settings and values of the wrong type are an
// error naming them.
func LabOptions(lo sim.LabOptions) (Options, error) {
	s := sim.NewSettings(lo.Settings)
	o := Options{
		Name:            lo.Name,
		Dir:             lo.Dir,
		AuthorizedKeys:  lo.AuthorizedKeys,
		Log:             lo.Log,
		BootTime:        s.Duration("boot_time", 0),
		ControlBootTime: s.Duration("control_boot_time", 0),
		TestDevice:      s.String("test_device", ""),
		USBNode:         s.String("usb_node", ""),
		MuxCLI:          s.String("mux_cli", ""),
		Faults: Faults{
			NeverBoots:               s.Bool("never_boots", false),
			HostKeyChangesOnBoot:     s.Bool("host_key_changes_on_boot", false),
			WriteFailsAfter:          s.Size("write_fails_after", 0),
			WriteRate:                s.Size("write_rate", 0),
			ControlDropAfter:         s.Duration("control_drop_after", 0),
			SlowLink:                 s.Duration("slow_link", 0),
			ControlUnreachable:       s.Bool("control_unreachable", false),
			ControlAPIDown:           s.Bool("control_api_down", false),
			RebootScriptFails:        s.Bool("reboot_script_fails", false),
			ControlRebootScriptFails: s.Bool("control_reboot_script_fails", false),
		},
	}
	if err := s.Err(); err != nil {
		return Options{}, fmt.Errorf("muxpi simulator: %w", err)
	}
	return o, nil
}

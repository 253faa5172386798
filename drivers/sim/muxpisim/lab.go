package muxpisim

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/events"
)

// LabType is the connector type this package simulates.
const LabType = "muxpi"

// LabSettings are the sim: keys a muxpi device's entry in a lab file may
// hold (durations in seconds or as "500ms", "2s"):
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
var LabSettings = []string{
	"boot_time", "control_boot_time", "test_device", "usb_node", "mux_cli",
	"never_boots", "host_key_changes_on_boot", "write_fails_after", "write_rate",
	"control_drop_after", "slow_link", "control_unreachable", "control_api_down", "reboot_script_fails",
	"control_reboot_script_fails",
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
	return labDevice{r}, nil
}

// labDevice is a Rig started for a lab.
type labDevice struct{ *Rig }

// Config returns the Rig's Config with waits and retries suited to the
// simulator's timings: it boots and answers in well under a second, so
// polling every 10 s (the drivers' defaults, made for hardware) would only
// slow a lab down.
func (d labDevice) Config() map[string]any {
	c := d.Rig.Config()
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
// a rig's Options, reading the settings listed in LabSettings; an unknown
// setting or a value of the wrong type is an error naming it.
func LabOptions(lo sim.LabOptions) (Options, error) {
	s := events.Data(lo.Settings)
	var unknown []string
	for _, k := range slices.Sorted(maps.Keys(lo.Settings)) {
		if !slices.Contains(LabSettings, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		return Options{}, fmt.Errorf("muxpi simulator: unknown settings %s (known: %s)", strings.Join(unknown, ", "), strings.Join(LabSettings, ", "))
	}
	o := Options{Name: lo.Name, Dir: lo.Dir, AuthorizedKeys: lo.AuthorizedKeys, Log: lo.Log}
	var errs []string
	dur := func(key string, dst *time.Duration) {
		v, err := duration(s, key)
		if err != nil {
			errs = append(errs, err.Error())
		}
		*dst = v
	}
	str := func(key string, dst *string) {
		v, err := s.String(key, "")
		if err != nil {
			errs = append(errs, err.Error())
		}
		*dst = v
	}
	flag := func(key string, dst *bool) {
		v, err := s.Bool(key, false)
		if err != nil {
			errs = append(errs, err.Error())
		}
		*dst = v
	}
	num := func(key string, dst *int64) {
		v, err := s.Int(key, 0)
		if err != nil {
			errs = append(errs, err.Error())
		}
		*dst = int64(v)
	}
	dur("boot_time", &o.BootTime)
	dur("control_boot_time", &o.ControlBootTime)
	str("test_device", &o.TestDevice)
	str("usb_node", &o.USBNode)
	str("mux_cli", &o.MuxCLI)
	flag("never_boots", &o.Faults.NeverBoots)
	flag("host_key_changes_on_boot", &o.Faults.HostKeyChangesOnBoot)
	num("write_fails_after", &o.Faults.WriteFailsAfter)
	num("write_rate", &o.Faults.WriteRate)
	dur("control_drop_after", &o.Faults.ControlDropAfter)
	dur("slow_link", &o.Faults.SlowLink)
	flag("control_unreachable", &o.Faults.ControlUnreachable)
	flag("control_api_down", &o.Faults.ControlAPIDown)
	flag("reboot_script_fails", &o.Faults.RebootScriptFails)
	flag("control_reboot_script_fails", &o.Faults.ControlRebootScriptFails)
	if len(errs) > 0 {
		return Options{}, fmt.Errorf("muxpi simulator: %s", strings.Join(errs, "; "))
	}
	if o.BootTime < 0 || o.ControlBootTime < 0 {
		return Options{}, fmt.Errorf("muxpi simulator: boot times must not be negative")
	}
	return o, nil
}

// duration reads a duration setting: whole seconds, or a Go or Flinger
// duration string.
func duration(d events.Data, key string) (time.Duration, error) {
	if s, ok := d[key].(string); ok {
		if v, err := time.ParseDuration(s); err == nil {
			return v, nil
		}
	}
	return d.Duration(key, 0)
}

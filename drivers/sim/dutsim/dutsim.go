// Package dutsim is the simulator of a plain SSH device, the hardware of
// the noprovision connector: a sim.DUT answering SSH as ubuntu (password
// ubuntu, or the lab's key), hard-reset by a reboot_script that power
// cycles it through a sim.Switch.
//
// Settings (the sim: mapping of a lab file's device entry):
//
//	boot_time: 2s        # how long a reset takes (default 1s)
//	os_release: ubuntu-24.04   # the installed system: ubuntu-22.04 or ubuntu-24.04 (default)
//	down: true           # powered off at start (default false)
//	fault: never_boots   # or host_key_changes, slow_link
//	serial: false        # no serial console (see sim.StartLab)
package dutsim

import (
	"context"
	"fmt"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
)

func init() {
	sim.RegisterLab("noprovision", Start)
}

// Device is a running simulated SSH device.
type Device struct {
	// DUT is the simulated device.
	DUT *sim.DUT
	// Switch drives its power.
	Switch *sim.Switch
	reboot string
	serial *sim.SerialConsole
}

// releases are the systems a simulated device can report.
var releases = map[string]string{
	"ubuntu-22.04": sim.UbuntuRelease("22.04", "jammy"),
	"ubuntu-24.04": sim.UbuntuRelease("24.04", "noble"),
}

// Start starts a simulated SSH device (see the package documentation).
func Start(ctx context.Context, opts sim.LabOptions) (sim.LabDevice, error) {
	boot := time.Second
	release := "ubuntu-24.04"
	var faults sim.Faults
	down := false
	for k, v := range opts.Settings {
		s := fmt.Sprint(v)
		switch k {
		case "boot_time":
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 {
				return nil, fmt.Errorf("sim.boot_time: %q is not a duration", s)
			}
			boot = d
		case "os_release":
			if releases[s] == "" {
				return nil, fmt.Errorf("sim.os_release: %q is not one of ubuntu-22.04, ubuntu-24.04", s)
			}
			release = s
		case "fault":
			switch s {
			case "never_boots":
				faults.NeverBoots = true
			case "host_key_changes":
				faults.HostKeyChangesOnBoot = true
			case "slow_link":
				faults.SlowLink = 20 * time.Millisecond
			default:
				return nil, fmt.Errorf("sim.fault: %q is not one of never_boots, host_key_changes, slow_link", s)
			}
		case "down":
			b, ok := v.(bool)
			if !ok {
				return nil, fmt.Errorf("sim.down: %q is not true or false", s)
			}
			down = b
		default:
			return nil, fmt.Errorf("sim.%s: unknown setting (known: boot_time, os_release, down, fault)", k)
		}
	}
	dut, err := sim.StartDUT(ctx, sim.DUTOptions{
		Name: opts.Name, BootTime: boot, Users: map[string]string{"ubuntu": "ubuntu"},
		AuthorizedKeys: opts.AuthorizedKeys, OSRelease: releases[release], Faults: faults, Log: opts.Log,
		Console: opts.Console,
	})
	if err != nil {
		return nil, err
	}
	sw, err := sim.StartSwitch(ctx, opts.Dir, opts.Log)
	if err != nil {
		dut.Close()
		return nil, err
	}
	reboot, err := sw.Script("power-cycle", func() error { dut.PowerCycle(); return nil })
	if err != nil {
		dut.Close()
		sw.Close()
		return nil, err
	}
	if down {
		dut.PowerOff()
	}
	return &Device{DUT: dut, Switch: sw, reboot: reboot, serial: opts.Console}, nil
}

// Config returns device_ip, ssh_port and reboot_script, and serial_host
// and serial_port when the device has a serial console.
func (d *Device) Config() map[string]any {
	host, port := sim.SplitAddr(d.DUT.Addr())
	c := map[string]any{"device_ip": host, "ssh_port": port, "reboot_script": []any{d.reboot}}
	d.serial.AddConfig(c)
	return c
}

// Close stops the device, its switch and its serial console.
func (d *Device) Close() {
	d.DUT.Close()
	d.Switch.Close()
	_ = d.serial.Close()
}

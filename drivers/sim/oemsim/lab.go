package oemsim

import (
	"context"
	"maps"
	"slices"

	"github.com/flingerlab/flinger/drivers/sim"
)

// The connector types simulated, and the recovery each one's laptop has.
var labTypes = map[string]Recovery{
	"oemrecovery":      DellRecovery,
	"oemscript":        DellRecovery,
	"dell_oemscript":   DellRecovery,
	"hp_oemscript":     UbuntuRecovery,
	"lenovo_oemscript": UbuntuRecovery,
}

func init() {
	for _, typ := range slices.Sorted(maps.Keys(labTypes)) {
		sim.RegisterLab(typ, func(ctx context.Context, opts sim.LabOptions) (sim.LabDevice, error) {
			return startLab(ctx, typ, opts)
		})
	}
}

// LabSettings lists the sim: keys of a lab file's entry for a simulated
// OEM laptop (read by sim.Settings: durations in seconds or as "500ms",
// "2s"; sizes in bytes, or such as "64M"):
//
//	recovery: dell                 # dell (dell-restore-system) or ubuntu (the GRUB entry);
//	                               # default: ubuntu for hp_oemscript and lenovo_oemscript
//	factory_version: "22.04"       # Ubuntu version of the image the recovery partition holds
//	boot_time: 300ms               # an ordinary boot
//	reinstall_time: 1s             # a reinstall from the recovery partition
//	oem_config_time: 500ms         # ubiquity's OEM configuration after a reinstall
//	recovery_size: 67108864        # the recovery partition's size in bytes
//	recovery_password: u           # the password of ubuntu on a reinstalled system
//	never_boots: false             # faults (see Faults)
//	recovery_never_finishes: false
//	write_fails_after: 0           # bytes
//	slow_link: 0
//	drop_after: 0
//	wrong_image: false
//	host_key_changes: false
//	serial: false                  # no serial console (see sim.StartLab)
var LabSettings = []string{
	"recovery", "factory_version", "boot_time", "reinstall_time", "oem_config_time", "recovery_size",
	"recovery_password", "never_boots", "recovery_never_finishes", "write_fails_after", "slow_link",
	"drop_after", "wrong_image", "host_key_changes", sim.SerialSetting,
}

// labDevice is a Rig started by `flinger lab`.
type labDevice struct {
	*Rig
	typ string
}

// Config returns device_ip, ssh_port and reboot_script; recovery_cmds for
// oemrecovery; poll intervals suited to the simulator's timings; and
// serial_host and serial_port when the laptop has a serial console.
func (l *labDevice) Config() map[string]any {
	c := l.Rig.Config()
	l.opts.Console.AddConfig(c)
	c["boot_check_interval"] = "200ms"
	c["recovery_poll_interval"] = "500ms"
	if l.typ == "oemrecovery" {
		c["recovery_cmds"] = l.RecoveryCmds()
	}
	return c
}

func startLab(ctx context.Context, typ string, lo sim.LabOptions) (sim.LabDevice, error) {
	o := Options{Name: lo.Name, Dir: lo.Dir, Recovery: labTypes[typ], AuthorizedKeys: lo.AuthorizedKeys, Console: lo.Console, Log: lo.Log}
	if err := applySettings(&o, lo.Settings); err != nil {
		return nil, err
	}
	r, err := Start(ctx, o)
	if err != nil {
		return nil, err
	}
	return &labDevice{Rig: r, typ: typ}, nil
}

// Close stops the Rig and the serial console.
func (l *labDevice) Close() {
	l.Rig.Close()
	_ = l.opts.Console.Close()
}

// applySettings reads a lab file's sim: keys (LabSettings) into o.
func applySettings(o *Options, settings map[string]any) error {
	s := sim.NewSettings(settings)
	switch rec := s.String("recovery", o.Recovery.String()); rec {
	case "ubuntu":
		o.Recovery = UbuntuRecovery
	case "dell":
		o.Recovery = DellRecovery
	default:
		s.Invalid("recovery", "%q is neither dell nor ubuntu", rec)
	}
	o.Factory = sim.Image{OSRelease: sim.UbuntuRelease(s.String("factory_version", "22.04"), "oem"), Size: 8 << 20}
	o.RecoveryPassword = s.String("recovery_password", "")
	o.RecoverySize = s.Size("recovery_size", 0)
	o.BootTime = s.Duration("boot_time", 0)
	o.ReinstallTime = s.Duration("reinstall_time", 0)
	o.OEMConfigTime = s.Duration("oem_config_time", 0)
	o.Faults = Faults{
		NeverBoots:            s.Bool("never_boots", false),
		RecoveryNeverFinishes: s.Bool("recovery_never_finishes", false),
		WriteFailsAfter:       s.Size("write_fails_after", 0),
		SlowLink:              s.Duration("slow_link", 0),
		DropAfter:             s.Duration("drop_after", 0),
		WrongImage:            s.Bool("wrong_image", false),
		HostKeyChangesOnBoot:  s.Bool("host_key_changes", false),
	}
	return s.Err()
}

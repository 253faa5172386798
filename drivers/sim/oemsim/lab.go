package oemsim

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
// OEM laptop (durations in seconds or as "500ms", "2s"):
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
var LabSettings = []string{
	"recovery", "factory_version", "boot_time", "reinstall_time", "oem_config_time", "recovery_size",
	"recovery_password", "never_boots", "recovery_never_finishes", "write_fails_after", "slow_link",
	"drop_after", "wrong_image", "host_key_changes",
}

// labDevice is a Rig started by `flinger lab`.
type labDevice struct {
	*Rig
	typ string
}

// Config returns device_ip, ssh_port and reboot_script; recovery_cmds for
// oemrecovery; and poll intervals suited to the simulator's timings.
func (l *labDevice) Config() map[string]any {
	c := l.Rig.Config()
	c["boot_check_interval"] = "200ms"
	c["recovery_poll_interval"] = "500ms"
	if l.typ == "oemrecovery" {
		c["recovery_cmds"] = l.RecoveryCmds()
	}
	return c
}

func startLab(ctx context.Context, typ string, lo sim.LabOptions) (sim.LabDevice, error) {
	o := Options{Name: lo.Name, Dir: lo.Dir, Recovery: labTypes[typ], AuthorizedKeys: lo.AuthorizedKeys, Log: lo.Log}
	if err := applySettings(&o, lo.Settings); err != nil {
		return nil, err
	}
	r, err := Start(ctx, o)
	if err != nil {
		return nil, err
	}
	return &labDevice{Rig: r, typ: typ}, nil
}

// applySettings reads a lab file's sim: keys into o.
func applySettings(o *Options, settings map[string]any) error {
	d := events.Data(settings)
	var unknown []string
	for k := range settings {
		if !slices.Contains(LabSettings, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("sim: unknown keys %s (known: %s)", strings.Join(unknown, ", "), strings.Join(LabSettings, ", "))
	}
	rec, err := d.String("recovery", o.Recovery.String())
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	switch rec {
	case "ubuntu":
		o.Recovery = UbuntuRecovery
	case "dell":
		o.Recovery = DellRecovery
	default:
		return fmt.Errorf("sim: recovery: %q is neither dell nor ubuntu", rec)
	}
	version, err := d.String("factory_version", "22.04")
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	o.Factory = sim.Image{OSRelease: sim.UbuntuRelease(version, "oem"), Size: 8 << 20}
	if o.RecoveryPassword, err = d.String("recovery_password", ""); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	size, err := d.Int("recovery_size", 0)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	o.RecoverySize = int64(size)
	for _, k := range []struct {
		key string
		dst *time.Duration
	}{
		{"boot_time", &o.BootTime}, {"reinstall_time", &o.ReinstallTime}, {"oem_config_time", &o.OEMConfigTime},
		{"slow_link", &o.Faults.SlowLink}, {"drop_after", &o.Faults.DropAfter},
	} {
		if *k.dst, err = duration(d, k.key); err != nil {
			return err
		}
	}
	for _, k := range []struct {
		key string
		dst *bool
	}{
		{"never_boots", &o.Faults.NeverBoots}, {"recovery_never_finishes", &o.Faults.RecoveryNeverFinishes},
		{"wrong_image", &o.Faults.WrongImage}, {"host_key_changes", &o.Faults.HostKeyChangesOnBoot},
	} {
		if *k.dst, err = d.Bool(k.key, false); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
	}
	n, err := d.Int("write_fails_after", 0)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	o.Faults.WriteFailsAfter = int64(n)
	return nil
}

// duration reads a duration setting: seconds, or a Go duration.
func duration(d events.Data, key string) (time.Duration, error) {
	if s, ok := d[key].(string); ok {
		if v, err := time.ParseDuration(s); err == nil {
			return v, nil
		}
	}
	v, err := d.Duration(key, 0)
	if err != nil {
		return 0, fmt.Errorf("sim: %w", err)
	}
	return v, nil
}

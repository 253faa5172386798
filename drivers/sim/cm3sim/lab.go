package cm3sim

import (
	"context"

	"github.com/flingerlab/flinger/drivers/sim"
)

func init() {
	sim.RegisterLab("cm3", StartLab)
}

// StartLab starts a rig for `flinger lab`: the CM3 and its sidecar accept
// opts.AuthorizedKeys for any user (and the password ubuntu for ubuntu),
// and the reset script goes into opts.Dir. The rig's Config gives the
// device's keys. opts.Settings accepts (read by sim.Settings: durations as
// seconds or as "500ms", "2s"; sizes in bytes, or such as "64M"):
//
//	boot_time: 2s            # how long the CM3 takes to boot (default 1s)
//	usb_delay: 200ms         # how long its eMMC takes to appear on the sidecar
//	test_device: /dev/sda    # where the eMMC appears on the sidecar
//	disk_rate: 20000000      # eMMC write speed in bytes per second (0: unlimited)
//	never_boots: true        # faults, see Faults
//	host_key_changes: true
//	stale_image: true
//	write_fails_after: 1048576
//	slow_link: 5ms
//	drop_after: 10s
//	reset_fails: true
//	usb_never_appears: true
//	bogus_device_file: true
//	serial: false            # no serial console (see sim.StartLab)
func StartLab(ctx context.Context, opts sim.LabOptions) (sim.LabDevice, error) {
	s := sim.NewSettings(opts.Settings)
	o := Options{
		Name:           opts.Name,
		Dir:            opts.Dir,
		BootTime:       s.Duration("boot_time", 0),
		USBDelay:       s.Duration("usb_delay", 0),
		TestDevice:     s.String("test_device", ""),
		DiskRate:       s.Size("disk_rate", 0),
		AuthorizedKeys: opts.AuthorizedKeys,
		Console:        opts.Console,
		Log:            opts.Log,
		Faults: Faults{
			NeverBoots:           s.Bool("never_boots", false),
			HostKeyChangesOnBoot: s.Bool("host_key_changes", false),
			StaleImage:           s.Bool("stale_image", false),
			WriteFailsAfter:      s.Size("write_fails_after", 0),
			SlowLink:             s.Duration("slow_link", 0),
			DropAfter:            s.Duration("drop_after", 0),
			ResetFails:           s.Bool("reset_fails", false),
			USBNeverAppears:      s.Bool("usb_never_appears", false),
			BogusDeviceFile:      s.Bool("bogus_device_file", false),
		},
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	return Start(ctx, o)
}

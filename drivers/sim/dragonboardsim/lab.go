package dragonboardsim

import (
	"context"

	"github.com/flingerlab/flinger/drivers/sim"
)

func init() {
	sim.RegisterLab("dragonboard", StartLab)
}

// StartLab starts a rig for `flinger lab`: both images accept
// opts.AuthorizedKeys for any user (and their passwords: linaro/linaro on
// the master image, ubuntu/ubuntu on the test image), and the scripts go
// into opts.Dir. The rig's Config gives the device's keys. opts.Settings
// accepts (read by sim.Settings: durations as seconds or as "500ms", "2s";
// sizes in bytes, or such as "64M"):
//
//	boot_time: 2s                   # how long either image takes to boot (default 1s)
//	test_device: /dev/mmcblk1       # the card's device node on the master image
//	writable_partition: /dev/mmcblk1p2
//	start_in_master: true           # start in the master image (default: the test image)
//	disk_rate: 20000000             # card write speed in bytes per second (0: unlimited)
//	master_never_boots: true        # faults, see Faults
//	never_boots: true
//	host_key_changes: true
//	master_host_key_changes: true
//	stale_image: true
//	write_fails_after: 1048576
//	slow_link: 5ms
//	drop_after: 10s
//	reset_fails: true
//	select_fails: true
//	serial: false                   # no serial console (see sim.StartLab)
func StartLab(ctx context.Context, opts sim.LabOptions) (sim.LabDevice, error) {
	s := sim.NewSettings(opts.Settings)
	o := Options{
		Name:              opts.Name,
		Dir:               opts.Dir,
		BootTime:          s.Duration("boot_time", 0),
		TestDevice:        s.String("test_device", ""),
		WritablePartition: s.String("writable_partition", ""),
		StartInMaster:     s.Bool("start_in_master", false),
		DiskRate:          s.Size("disk_rate", 0),
		AuthorizedKeys:    opts.AuthorizedKeys,
		Console:           opts.Console,
		Log:               opts.Log,
		Faults: Faults{
			MasterNeverBoots:           s.Bool("master_never_boots", false),
			NeverBoots:                 s.Bool("never_boots", false),
			HostKeyChangesOnBoot:       s.Bool("host_key_changes", false),
			MasterHostKeyChangesOnBoot: s.Bool("master_host_key_changes", false),
			StaleImage:                 s.Bool("stale_image", false),
			WriteFailsAfter:            s.Size("write_fails_after", 0),
			SlowLink:                   s.Duration("slow_link", 0),
			DropAfter:                  s.Duration("drop_after", 0),
			ResetFails:                 s.Bool("reset_fails", false),
			SelectFails:                s.Bool("select_fails", false),
		},
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	return Start(ctx, o)
}

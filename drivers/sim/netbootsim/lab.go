package netbootsim

import (
	"context"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
)

// Type is the connector type this package simulates.
const Type = "netboot"

func init() {
	sim.RegisterLab(Type, startLab)
}

// LabSettings documents the sim: keys of a netboot device's entry in a lab
// file, read by the lab starter with sim.Settings (durations as Go
// durations such as "2s" or "500ms", or whole seconds; sizes in bytes, or
// such as "64M"):
//
//	boot_time: 2s                # the test image's boot time (default 2s)
//	master_boot_time: 2s         # the master image's (default boot_time)
//	start: test                  # the target running at start: test or master
//	test_device: /dev/mmcblk0    # the disk's device node
//	disk_size: 0                 # the disk's size (0: no limit)
//	os_release: "..."            # what the test image reports before any write
//	never_boots: false           # the test image never comes up
//	imager_never_boots: false    # the master image never comes up
//	host_key_changes: false      # new SSH host key on every boot
//	write_fails_after: 0         # the disk fails after this many bytes
//	link_drops_after: 0          # the imager's download is cut after this many bytes
//	slow_link: 0                 # the imager downloads at most this many bytes/s
//	serial: false                # no serial console (see sim.StartLab)
//
// The test image accepts admin/admin and ubuntu/ubuntu, and the lab
// host's keys.
var LabSettings = []string{
	"boot_time", "master_boot_time", "start", "test_device", "disk_size", "os_release",
	"never_boots", "imager_never_boots", "host_key_changes", "write_fails_after", "link_drops_after", "slow_link",
	sim.SerialSetting,
}

// labBootTime is a lab device's default boot time: short, yet long enough
// to watch the device boot.
const labBootTime = 2 * time.Second

// labDevice is a Rig started for a lab, and its serial console.
type labDevice struct {
	r      *Rig
	serial *sim.SerialConsole
}

// Config returns the Rig's Config and boot_check_interval: 1s, so that a
// lab's device is polled as fast as it boots; and serial_host and
// serial_port, when the device has a serial console.
func (d labDevice) Config() map[string]any {
	c := d.r.Config()
	c["boot_check_interval"] = "1s"
	d.serial.AddConfig(c)
	return c
}

// Close stops the Rig and the serial console.
func (d labDevice) Close() {
	d.r.Close()
	_ = d.serial.Close()
}

func startLab(ctx context.Context, lo sim.LabOptions) (sim.LabDevice, error) {
	s := sim.NewSettings(lo.Settings)
	opts := Options{
		Name: lo.Name, Dir: lo.Dir, AuthorizedKeys: lo.AuthorizedKeys, Log: lo.Log,
		Users:      map[string]string{DefaultUser: DefaultPassword, "ubuntu": "ubuntu"},
		BootTime:   bootTime(s, "boot_time", labBootTime),
		TestDevice: s.String("test_device", DefaultTestDevice),
		OSRelease:  s.String("os_release", sim.UbuntuRelease("24.04", "noble")),
		DiskSize:   s.Size("disk_size", 0),
		Faults: Faults{
			NeverBoots:           s.Bool("never_boots", false),
			ImagerNeverBoots:     s.Bool("imager_never_boots", false),
			HostKeyChangesOnBoot: s.Bool("host_key_changes", false),
			WriteFailsAfter:      s.Size("write_fails_after", 0),
			LinkDropsAfter:       s.Size("link_drops_after", 0),
			SlowLink:             s.Size("slow_link", 0),
		},
	}
	opts.MasterBootTime = bootTime(s, "master_boot_time", opts.BootTime)
	switch start := s.String("start", "test"); start {
	case "test":
	case "master":
		opts.Start = Master
	default:
		s.Invalid("start", "%q is neither test nor master", start)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	r, err := Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	r.DUT().SetConsole(lo.Console)
	return labDevice{r, lo.Console}, nil
}

// maxLabBootTime bounds a lab device's boot times.
const maxLabBootTime = time.Hour

// bootTime reads a boot time: more than 0s, at most maxLabBootTime.
func bootTime(s *sim.Settings, key string, def time.Duration) time.Duration {
	d := s.Duration(key, def)
	if d <= 0 || d > maxLabBootTime {
		s.Invalid(key, "%s out of range (more than 0s, at most %s)", d, maxLabBootTime)
		return def
	}
	return d
}

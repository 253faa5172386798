package netbootsim

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
)

// Type is the connector type this package simulates.
const Type = "netboot"

func init() {
	sim.RegisterLab(Type, startLab)
}

// LabSettings documents the sim: keys of a netboot device's entry in a lab
// file, read by the lab starter (durations as Go durations such as "2s"
// or "500ms", or whole seconds; sizes in bytes):
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
//
// The test image accepts admin/admin and ubuntu/ubuntu, and the lab
// host's keys.
var LabSettings = []string{
	"boot_time", "master_boot_time", "start", "test_device", "disk_size", "os_release",
	"never_boots", "imager_never_boots", "host_key_changes", "write_fails_after", "link_drops_after", "slow_link",
}

// labBootTime is a lab device's default boot time: short, yet long enough
// to watch the device boot.
const labBootTime = 2 * time.Second

// labDevice is a Rig started for a lab.
type labDevice struct{ r *Rig }

// Config returns the Rig's Config and boot_check_interval: 1s, so that a
// lab's device is polled as fast as it boots.
func (d labDevice) Config() map[string]any {
	c := d.r.Config()
	c["boot_check_interval"] = "1s"
	return c
}

// Close stops the Rig.
func (d labDevice) Close() { d.r.Close() }

func startLab(ctx context.Context, lo sim.LabOptions) (sim.LabDevice, error) {
	opts := Options{
		Name: lo.Name, Dir: lo.Dir, AuthorizedKeys: lo.AuthorizedKeys, Log: lo.Log,
		Users:    map[string]string{DefaultUser: DefaultPassword, "ubuntu": "ubuntu"},
		BootTime: labBootTime,
	}
	s := settings(lo.Settings)
	for _, k := range slices.Sorted(maps.Keys(lo.Settings)) {
		if !slices.Contains(LabSettings, k) {
			return nil, fmt.Errorf("sim.%s: unknown key (known: %s)", k, strings.Join(LabSettings, ", "))
		}
	}
	var err error
	if opts.BootTime, err = s.duration("boot_time", labBootTime); err != nil {
		return nil, err
	}
	if opts.MasterBootTime, err = s.duration("master_boot_time", opts.BootTime); err != nil {
		return nil, err
	}
	start, err := s.str("start", "test")
	if err != nil {
		return nil, err
	}
	switch start {
	case "test":
	case "master":
		opts.Start = Master
	default:
		return nil, fmt.Errorf("sim.start: %q is neither test nor master", start)
	}
	if opts.TestDevice, err = s.str("test_device", DefaultTestDevice); err != nil {
		return nil, err
	}
	if opts.OSRelease, err = s.str("os_release", sim.UbuntuRelease("24.04", "noble")); err != nil {
		return nil, err
	}
	if opts.DiskSize, err = s.size("disk_size"); err != nil {
		return nil, err
	}
	f := &opts.Faults
	for _, b := range []struct {
		key string
		dst *bool
	}{{"never_boots", &f.NeverBoots}, {"imager_never_boots", &f.ImagerNeverBoots}, {"host_key_changes", &f.HostKeyChangesOnBoot}} {
		if *b.dst, err = s.boolean(b.key); err != nil {
			return nil, err
		}
	}
	for _, n := range []struct {
		key string
		dst *int64
	}{{"write_fails_after", &f.WriteFailsAfter}, {"link_drops_after", &f.LinkDropsAfter}, {"slow_link", &f.SlowLink}} {
		if *n.dst, err = s.size(n.key); err != nil {
			return nil, err
		}
	}
	r, err := Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	return labDevice{r}, nil
}

// settings reads a lab entry's sim: keys.
type settings map[string]any

func (s settings) str(key, def string) (string, error) {
	switch v := s[key].(type) {
	case nil:
		return def, nil
	case string:
		return v, nil
	default:
		return "", fmt.Errorf("sim.%s: must be a string, got %T", key, v)
	}
}

func (s settings) boolean(key string) (bool, error) {
	switch v := s[key].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	default:
		return false, fmt.Errorf("sim.%s: must be true or false, got %T", key, v)
	}
}

func (s settings) size(key string) (int64, error) {
	var n int64
	switch v := s[key].(type) {
	case nil:
		return 0, nil
	case int:
		n = int64(v)
	case int64:
		n = v
	case uint64:
		n = int64(min(v, 1<<62))
	case float64:
		n = int64(v)
		if float64(n) != v {
			return 0, fmt.Errorf("sim.%s: must be a whole number of bytes, got %v", key, v)
		}
	case string:
		var err error
		if n, err = strconv.ParseInt(v, 10, 64); err != nil {
			return 0, fmt.Errorf("sim.%s: must be a number of bytes, got %q", key, v)
		}
	default:
		return 0, fmt.Errorf("sim.%s: must be a number of bytes, got %T", key, v)
	}
	if n < 0 {
		return 0, fmt.Errorf("sim.%s: must not be negative, got %d", key, n)
	}
	return n, nil
}

func (s settings) duration(key string, def time.Duration) (time.Duration, error) {
	var d time.Duration
	switch v := s[key].(type) {
	case nil:
		return def, nil
	case int:
		d = time.Duration(v) * time.Second
	case float64:
		d = time.Duration(v * float64(time.Second))
	case string:
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			n, nerr := strconv.Atoi(v)
			if nerr != nil {
				return 0, fmt.Errorf("sim.%s: %q is not a duration such as 2s or 500ms", key, v)
			}
			d = time.Duration(n) * time.Second
		}
	default:
		return 0, fmt.Errorf("sim.%s: must be a duration such as 2s, got %T", key, v)
	}
	if d <= 0 || d > time.Hour {
		return 0, fmt.Errorf("sim.%s: %s out of range (more than 0s, at most 1h)", key, d)
	}
	return d, nil
}

package cm3sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/events"
)

func init() {
	sim.RegisterLab("cm3", StartLab)
}

// StartLab starts a rig for `flinger lab`: the CM3 and its sidecar accept
// opts.AuthorizedKeys for any user (and the password ubuntu for ubuntu),
// and the reset script goes into opts.Dir. The rig's Config gives the
// device's keys. opts.Settings accepts (durations as seconds or as "500ms",
// "2s"):
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
func StartLab(ctx context.Context, opts sim.LabOptions) (sim.LabDevice, error) {
	s := settings{m: opts.Settings}
	o := Options{
		Name:           opts.Name,
		Dir:            opts.Dir,
		BootTime:       s.duration("boot_time"),
		USBDelay:       s.duration("usb_delay"),
		TestDevice:     s.str("test_device"),
		DiskRate:       int64(s.integer("disk_rate")),
		AuthorizedKeys: opts.AuthorizedKeys,
		Log:            opts.Log,
		Faults: Faults{
			NeverBoots:           s.boolean("never_boots"),
			HostKeyChangesOnBoot: s.boolean("host_key_changes"),
			StaleImage:           s.boolean("stale_image"),
			WriteFailsAfter:      int64(s.integer("write_fails_after")),
			SlowLink:             s.duration("slow_link"),
			DropAfter:            s.duration("drop_after"),
			ResetFails:           s.boolean("reset_fails"),
			USBNeverAppears:      s.boolean("usb_never_appears"),
			BogusDeviceFile:      s.boolean("bogus_device_file"),
		},
	}
	if err := s.err(); err != nil {
		return nil, err
	}
	return Start(ctx, o)
}

// settings reads a lab entry's sim: keys, remembering which were read and
// what was wrong with them.
type settings struct {
	m    map[string]any
	used []string
	errs []error
}

func (s *settings) get(key string) (any, bool) {
	s.used = append(s.used, key)
	v, ok := s.m[key]
	return v, ok && v != nil
}

func (s *settings) duration(key string) time.Duration {
	v, ok := s.get(key)
	if !ok {
		return 0
	}
	if str, isStr := v.(string); isStr {
		if d, err := time.ParseDuration(str); err == nil && d >= 0 {
			return d
		}
	}
	d, err := events.Data{key: v}.Duration(key, 0)
	if err == nil && d < 0 {
		err = fmt.Errorf("%s: must not be negative", key)
	}
	if err != nil {
		s.errs = append(s.errs, err)
	}
	return d
}

func (s *settings) boolean(key string) bool {
	v, ok := s.get(key)
	if !ok {
		return false
	}
	b, isBool := v.(bool)
	if !isBool {
		s.errs = append(s.errs, fmt.Errorf("%s: must be true or false, got %s", key, events.TypeName(v)))
	}
	return b
}

func (s *settings) integer(key string) int {
	v, ok := s.get(key)
	if !ok {
		return 0
	}
	n, isInt := events.AsInt(v)
	if !isInt || n < 0 {
		s.errs = append(s.errs, fmt.Errorf("%s: must be a whole number of at least 0, got %v", key, v))
	}
	return n
}

func (s *settings) str(key string) string {
	v, ok := s.get(key)
	if !ok {
		return ""
	}
	str, isStr := v.(string)
	if !isStr {
		s.errs = append(s.errs, fmt.Errorf("%s: must be a string, got %s", key, events.TypeName(v)))
	}
	return str
}

// err returns the errors met and one naming the keys that were not read.
func (s *settings) err() error {
	var unknown []string
	for k := range s.m {
		if !slices.Contains(s.used, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		known := slices.Clone(s.used)
		slices.Sort(known)
		s.errs = append(s.errs, fmt.Errorf("unknown settings %s (known: %s)", strings.Join(unknown, ", "), strings.Join(known, ", ")))
	}
	return errors.Join(s.errs...)
}

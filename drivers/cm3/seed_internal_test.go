package cm3

import (
	"slices"
	"testing"
)

func TestPartitionsOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, out string
		want      []string
		err       bool
	}{
		{"two partitions", `{"blockdevices":[{"name":"sda","children":[{"name":"sda1"},{"name":"sda2"}]}]}`, []string{"/dev/sda1", "/dev/sda2"}, false},
		{"eMMC names", `{"blockdevices":[{"name":"mmcblk0","children":[{"name":"mmcblk0p1"}]}]}`, []string{"/dev/mmcblk0p1"}, false},
		{"no partitions", `{"blockdevices":[{"name":"sda"}]}`, nil, false},
		{"a name with a slash is skipped", `{"blockdevices":[{"name":"sda","children":[{"name":"../etc"},{"name":"sda1"}]}]}`, []string{"/dev/sda1"}, false},
		{"not JSON", `lsblk: /dev/sda: not a block device`, nil, true},
		{"two disks", `{"blockdevices":[{"name":"sda"},{"name":"sdb"}]}`, nil, true},
	} {
		got, err := partitionsOf(tc.out)
		if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
			t.Errorf("%s: partitionsOf = %q, %v; want %q (error %v)", tc.name, got, err, tc.want, tc.err)
		}
	}
}

func TestKindOf(t *testing.T) {
	t.Parallel()
	for ls, want := range map[string]string{
		"bin\nboot\netc\nusr\n":      kindUbuntu,
		"system-data\nuser-data\n":   kindCore,
		"EFI\nsnaps\nsystems\n":      kindCore20,
		"bootcode.bin\nconfig.txt\n": "",
		"etc\nsnaps\n":               kindUbuntu, // Testflinger's order: etc first
		"":                           "",
	} {
		if got := kindOf(ls); got != want {
			t.Errorf("kindOf(%q) = %q, want %q", ls, got, want)
		}
	}
}

func TestSeedFiles(t *testing.T) {
	t.Parallel()
	for kind, want := range map[string]string{
		kindUbuntu:  "var/lib/cloud/seed/nocloud-net/user-data",
		kindUnknown: "var/lib/cloud/seed/nocloud-net/user-data",
		kindCore:    "system-data/var/lib/cloud/seed/nocloud-net/user-data",
		kindCore20:  "data/etc/cloud/cloud.cfg.d/99_nocloud.cfg",
	} {
		files := seedFiles(kind)
		if files[len(files)-1].path != want {
			t.Errorf("%s: seed files %v, want the last at %s", kind, files, want)
		}
	}
}

package dragonboardsim

import (
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/flingerlab/flinger/drivers/sim"
)

// partition is one partition of a simulated image: the top-level entries
// of its file system and the files in it a provisioning path reads.
type partition struct {
	entries []string
	files   map[string]string
}

// layoutOf returns the partitions of a simulated image, in order, as
// Ubuntu lays out an image of its Kind for an arm64 board: classic images
// have a boot partition and a root file system holding /etc/os-release
// (partition 2); Ubuntu Core 16/18 (core) a boot partition and writable
// with system-data (partition 2); Ubuntu Core 20 and later ubuntu-seed,
// ubuntu-boot, ubuntu-save and ubuntu-data (partition 4).
func layoutOf(im sim.Image) []partition {
	boot := partition{entries: []string{"EFI", "boot"}}
	switch im.Kind {
	case "core":
		return []partition{boot, {entries: []string{"system-data", "user-data"}}}
	case "core20", "core22", "core24":
		return []partition{
			{entries: []string{"EFI", "snaps", "systems"}},
			{entries: []string{"EFI", "grub"}},
			{entries: []string{"device"}},
			{entries: []string{"system-data", "user-data"}},
		}
	}
	return []partition{boot, {
		entries: []string{"bin", "boot", "dev", "etc", "home", "lib", "media", "mnt", "opt", "proc", "root", "run", "sbin", "snap", "srv", "sys", "tmp", "usr", "var"},
		files:   map[string]string{"etc/os-release": im.OSRelease},
	}}
}

// PartitionName returns the device node of partition n (from 1) of the
// disk at dev: /dev/mmcblk1p2 for /dev/mmcblk1, /dev/sda2 for /dev/sda.
func PartitionName(dev string, n int) string {
	if dev != "" && dev[len(dev)-1] >= '0' && dev[len(dev)-1] <= '9' {
		return dev + "p" + strconv.Itoa(n)
	}
	return dev + strconv.Itoa(n)
}

// entriesUnder returns the names directly under dir among paths (files
// of a DUT), merged with base, sorted and without duplicates.
func entriesUnder(dir string, paths []string, base []string) []string {
	prefix := path.Clean(dir) + "/"
	out := slices.Clone(base)
	for _, p := range paths {
		rest, ok := strings.CutPrefix(p, prefix)
		if !ok || rest == "" {
			continue
		}
		first, _, _ := strings.Cut(rest, "/")
		out = append(out, first)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

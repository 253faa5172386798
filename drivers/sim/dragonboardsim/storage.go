package dragonboardsim

import (
	"github.com/flingerlab/flinger/drivers/sim"
)

// layoutOf returns the partitions of a simulated image, in order, as
// Ubuntu lays out an image of its Kind for an arm64 board: classic images
// have a boot partition and a root file system holding /etc/os-release
// (partition 2); Ubuntu Core 16/18 (core) a boot partition and writable
// with system-data (partition 2); Ubuntu Core 20 and later ubuntu-seed,
// ubuntu-boot, ubuntu-save and ubuntu-data (partition 4).
func layoutOf(im sim.Image) []sim.Partition {
	boot := sim.Partition{Dirs: []string{"EFI", "boot"}}
	switch im.Kind {
	case "core":
		return []sim.Partition{boot, {Dirs: []string{"system-data", "user-data"}}}
	case "core20", "core22", "core24":
		return []sim.Partition{
			{Dirs: []string{"EFI", "snaps", "systems"}},
			{Dirs: []string{"EFI", "grub"}},
			{Dirs: []string{"device"}},
			{Dirs: []string{"system-data", "user-data"}},
		}
	}
	return []sim.Partition{boot, {
		Dirs:  sim.RootDirs,
		Files: map[string][]byte{"etc/os-release": []byte(im.OSRelease)},
	}}
}

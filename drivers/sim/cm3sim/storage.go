package cm3sim

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/flingerlab/flinger/drivers/sim"
)

// FakeCloudConfig is the file of Ubuntu's classic Raspberry Pi images that
// keeps cloud-init from reading a NoCloud seed; provisioning removes it.
const FakeCloudConfig = "etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"

// layoutOf returns the partitions of a simulated image, in order, as
// Ubuntu lays them out for a Raspberry Pi: classic images (ubuntu,
// pi-desktop and the rest) have a boot partition and a root file system
// holding /etc/os-release; Ubuntu Core 16/18 (core) a boot partition and
// a writable one with system-data; Ubuntu Core 20 and later (core20,
// core22, core24) ubuntu-seed (with snaps), ubuntu-boot, ubuntu-save and
// ubuntu-data.
func layoutOf(im sim.Image) []sim.Partition {
	boot := sim.Partition{Label: "system-boot", Dirs: []string{"bootcode.bin", "cmdline.txt", "config.txt", "overlays", "start.elf"}}
	switch im.Kind {
	case "core":
		return []sim.Partition{boot, {Label: "writable", Dirs: []string{"system-data", "user-data"}}}
	case "core20", "core22", "core24":
		return []sim.Partition{
			{Label: "ubuntu-seed", Dirs: []string{"EFI", "snaps", "systems"}},
			{Label: "ubuntu-boot", Dirs: []string{"EFI", "grub"}},
			{Label: "ubuntu-save", Dirs: []string{"device"}},
			{Label: "ubuntu-data", Dirs: []string{"system-data", "user-data"}},
		}
	}
	return []sim.Partition{boot, {
		Label: "writable",
		Dirs:  sim.RootDirs,
		Files: map[string][]byte{
			"etc/os-release": []byte(im.OSRelease),
			FakeCloudConfig:  []byte("datasource_list: [ None ]\n"),
		},
	}}
}

// lsblkDevice is one entry of lsblk --json.
type lsblkDevice struct {
	Name        string        `json:"name"`
	MajMin      string        `json:"maj:min"`
	RM          bool          `json:"rm"`
	Size        string        `json:"size"`
	RO          bool          `json:"ro"`
	Type        string        `json:"type"`
	Mountpoints []*string     `json:"mountpoints"`
	Children    []lsblkDevice `json:"children,omitempty"`
}

// lsblkJSON returns what `lsblk -J dev` prints for a disk of size bytes
// holding parts partitions; mounted maps partition numbers to their
// mount points.
func lsblkJSON(dev string, size int64, parts int, mounted map[int]string) []byte {
	disk := lsblkDevice{Name: path.Base(dev), MajMin: "8:0", RM: true, Size: humanSize(size), Type: "disk", Mountpoints: []*string{nil}}
	for n := 1; n <= parts; n++ {
		var mp *string
		if m, ok := mounted[n]; ok {
			mp = &m
		}
		disk.Children = append(disk.Children, lsblkDevice{
			Name: path.Base(sim.PartitionNode(dev, n)), MajMin: fmt.Sprintf("8:%d", n), RM: true,
			Size: humanSize(size / int64(parts)), Type: "part", Mountpoints: []*string{mp},
		})
	}
	b, err := json.MarshalIndent(map[string][]lsblkDevice{"blockdevices": {disk}}, "", "   ")
	if err != nil {
		panic(err) // only strings, booleans and slices
	}
	return append(b, '\n')
}

// humanSize prints a size as lsblk does (7.3G).
func humanSize(n int64) string {
	const units = "BKMGT"
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + string(units[i])
}

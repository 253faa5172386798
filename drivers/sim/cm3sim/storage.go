package cm3sim

import (
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/flingerlab/flinger/drivers/sim"
)

// partition is one partition of a simulated image: its label, the
// top-level entries of its file system and the files in it that a
// provisioning path reads or changes.
type partition struct {
	label   string
	entries []string
	files   map[string]string
}

// classicRootEntries are the top-level directories of a classic Ubuntu
// root file system.
var classicRootEntries = []string{"bin", "boot", "dev", "etc", "home", "lib", "media", "mnt", "opt", "proc", "root", "run", "sbin", "snap", "srv", "sys", "tmp", "usr", "var"}

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
func layoutOf(im sim.Image) []partition {
	boot := partition{label: "system-boot", entries: []string{"bootcode.bin", "cmdline.txt", "config.txt", "overlays", "start.elf"}}
	switch im.Kind {
	case "core":
		return []partition{boot, {label: "writable", entries: []string{"system-data", "user-data"}}}
	case "core20", "core22", "core24":
		return []partition{
			{label: "ubuntu-seed", entries: []string{"EFI", "snaps", "systems"}},
			{label: "ubuntu-boot", entries: []string{"EFI", "grub"}},
			{label: "ubuntu-save", entries: []string{"device"}},
			{label: "ubuntu-data", entries: []string{"system-data", "user-data"}},
		}
	}
	return []partition{boot, {
		label:   "writable",
		entries: classicRootEntries,
		files: map[string]string{
			"etc/os-release": im.OSRelease,
			FakeCloudConfig:  "datasource_list: [ None ]\n",
		},
	}}
}

// PartitionName returns the kernel's name of partition n (from 1) of the
// disk at dev: sda1 for /dev/sda, mmcblk0p1 for /dev/mmcblk0.
func PartitionName(dev string, n int) string {
	base := path.Base(dev)
	if base != "" && base[len(base)-1] >= '0' && base[len(base)-1] <= '9' {
		return base + "p" + strconv.Itoa(n)
	}
	return base + strconv.Itoa(n)
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

// lsblkJSON returns what `lsblk -J dev` prints for a disk holding parts,
// mounted maps partition numbers to their mount points.
func lsblkJSON(dev string, size int64, parts []partition, mounted map[int]string) []byte {
	disk := lsblkDevice{Name: path.Base(dev), MajMin: "8:0", RM: true, Size: humanSize(size), Type: "disk", Mountpoints: []*string{nil}}
	for i := range parts {
		n := i + 1
		var mp *string
		if m, ok := mounted[n]; ok {
			mp = &m
		}
		disk.Children = append(disk.Children, lsblkDevice{
			Name: PartitionName(dev, n), MajMin: fmt.Sprintf("8:%d", n), RM: true,
			Size: humanSize(size / int64(len(parts))), Type: "part", Mountpoints: []*string{mp},
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

// entriesUnder returns the names directly under dir among paths (files
// of a DUT), merged with base, sorted and without duplicates.
func entriesUnder(dir string, paths []string, base []string) []string {
	prefix := strings.TrimSuffix(dir, "/") + "/"
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

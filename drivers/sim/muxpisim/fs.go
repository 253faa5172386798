package muxpisim

import (
	"fmt"
	"regexp"

	"github.com/flingerlab/flinger/drivers/sim"
)

// medium is one of the rig's boot media.
type medium struct {
	name    Media
	node    string
	disk    *sim.Disk
	vol     *sim.Volume // the partitions of what disk holds
	side    Side
	written int // disk.Writes() when it was last switched to the control host
}

// Layout returns the partitions an image of im's kind has, with the files
// that tell the kinds apart (Testflinger's muxpi connector looks for them
// under the mounted partitions):
//
//	ubuntu      system-boot, writable (etc/, etc/cloud/cloud.cfg.d/99-fake_cloud.cfg)
//	server      the same
//	pi-desktop  system-boot, writable (usr/bin/firefox, etc/os-release, NetworkManager enabled)
//	desktop     the same
//	core        system-boot, writable (system-data/)
//	core20      ubuntu-seed (snaps/), ubuntu-boot, ubuntu-save, ubuntu-data
//	ubuntu-cpc  UEFI, cloudimg-rootfs (etc/cloud/cloud.cfg)
//	ce-oem-iot  system-boot, writable (.disk/info with an iot build stamp)
//	tegra       writable (lib/firmware/nv-tegra234/, boot/grub/grub.cfg, etc/default/grub)
//
// Any other kind has a single partition labelled data holding nothing
// that identifies it. writable partitions also hold etc/os-release.
func Layout(im sim.Image) []sim.Partition {
	osr := []byte(im.OSRelease)
	boot := sim.Partition{Label: "system-boot", Files: map[string][]byte{"config.txt": []byte("[all]\nkernel=vmlinuz\n"), "cmdline.txt": []byte("console=serial0,115200 root=LABEL=writable\n")}}
	switch im.Kind {
	case "ubuntu", "server":
		return []sim.Partition{boot, {Label: "writable", Files: map[string][]byte{
			"etc/os-release": osr,
			"etc/cloud/cloud.cfg.d/99-fake_cloud.cfg": []byte("datasource_list: [ NoCloud, None ]\n"),
		}}}
	case "pi-desktop", "desktop":
		return []sim.Partition{boot, {Label: "writable", Files: map[string][]byte{
			"etc/os-release":  osr,
			"usr/bin/firefox": []byte("#!/bin/sh\n"),
			"etc/systemd/system/multi-user.target.wants/NetworkManager.service": []byte("[Unit]\nDescription=Network Manager\n"),
			"etc/cloud/cloud.cfg.d/99-fake_cloud.cfg":                           []byte("datasource_list: [ NoCloud, None ]\n"),
		}}}
	case "core":
		return []sim.Partition{boot, {Label: "writable", Files: map[string][]byte{
			"system-data/etc/os-release": osr,
		}}}
	case "core20":
		return []sim.Partition{
			{Label: "ubuntu-seed", Files: map[string][]byte{"snaps/core20_1.snap": []byte("snap"), "systems/20240101/model": []byte("model\n")}},
			{Label: "ubuntu-boot", Files: map[string][]byte{}},
			{Label: "ubuntu-save", Files: map[string][]byte{}},
			{Label: "ubuntu-data", Files: map[string][]byte{}},
		}
	case "ubuntu-cpc":
		return []sim.Partition{
			{Label: "UEFI", Files: map[string][]byte{"EFI/BOOT/BOOTX64.EFI": []byte("efi")}},
			{Label: "cloudimg-rootfs", Files: map[string][]byte{"etc/os-release": osr, "etc/cloud/cloud.cfg": []byte("users:\n - default\n")}},
		}
	case "ce-oem-iot":
		return []sim.Partition{boot, {Label: "writable", Files: map[string][]byte{
			"etc/os-release": osr,
			".disk/info":     []byte(fmt.Sprintf("iot-sim-board-classic-server-%s-20240101-1\n", seriesOf(im.OSRelease))),
		}}}
	case "tegra":
		return []sim.Partition{{Label: "writable", Files: map[string][]byte{
			"etc/os-release":                        osr,
			"lib/firmware/nv-tegra234/firmware.bin": []byte("fw"),
			"boot/grub/grub.cfg":                    []byte("set default=0\nset timeout=5\n"),
			"etc/default/grub":                      []byte("GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n"),
		}}}
	}
	return []sim.Partition{{Label: "data", Files: map[string][]byte{"README": []byte("data\n")}}}
}

var versionID = regexp.MustCompile(`(?m)^VERSION_ID="?([0-9]+)\.([0-9]+)`)

// seriesOf returns the series of an os-release as an iot build stamp
// gives it ("2404"), or 2404.
func seriesOf(osRelease string) string {
	if m := versionID.FindStringSubmatch(osRelease); m != nil {
		return m[1] + m[2]
	}
	return "2404"
}

// partition returns the medium switched to the control host and the
// partition a device node such as /dev/sda2 names: mount's resolver.
func (r *Rig) partition(node string) (*sim.Volume, int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.media {
		if m.side != HostSide {
			continue
		}
		for n := 1; n <= len(m.vol.Partitions()); n++ {
			if sim.PartitionNode(m.node, n) == node {
				return m.vol, n, true
			}
		}
	}
	return nil, 0, false
}

// Mounts returns the mount points in use on the control host, sorted.
func (r *Rig) Mounts() []string {
	var dirs []string
	for _, m := range r.mounts.List() {
		dirs = append(dirs, m.Dir)
	}
	return dirs
}

// MediumFiles returns the files of the partition labelled label on medium
// m, as the last write and the changes made through mounts left them, or
// nil when there is no such partition. Files under a partition still
// mounted are those of the last unmount.
func (r *Rig) MediumFiles(m Media, label string) map[string][]byte {
	md := r.medium(m)
	if md == nil {
		return nil
	}
	for _, p := range md.vol.Partitions() {
		if p.Label == label {
			return p.Files
		}
	}
	return nil
}

// Labels returns the labels of medium m's partitions, in order.
func (r *Rig) Labels(m Media) []string {
	md := r.medium(m)
	if md == nil {
		return nil
	}
	var out []string
	for _, p := range md.vol.Partitions() {
		out = append(out, p.Label)
	}
	return out
}

// medium returns medium m, or nil.
func (r *Rig) medium(m Media) *medium {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.media[m]
}

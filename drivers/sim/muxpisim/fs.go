package muxpisim

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/flingerlab/flinger/drivers/sim"
)

// medium is one of the rig's boot media.
type medium struct {
	name    Media
	node    string
	disk    *sim.Disk
	side    Side
	written int // disk.Writes() when it was last switched to the control host

	fsKey string      // the write the partitions below were made from
	parts []Partition // nil: no partition table
}

// mount is a partition mounted on the control host.
type mount struct {
	m     *medium
	index int    // into m.parts
	key   string // m.fsKey when mounted
	dev   string
}

// Partition is one partition of a simulated image: its label and files
// (paths relative to the partition's root; a directory exists when a file
// is under it).
type Partition struct {
	Label string
	Files map[string][]byte
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
func Layout(im sim.Image) []Partition {
	osr := []byte(im.OSRelease)
	boot := Partition{Label: "system-boot", Files: map[string][]byte{"config.txt": []byte("[all]\nkernel=vmlinuz\n"), "cmdline.txt": []byte("console=serial0,115200 root=LABEL=writable\n")}}
	switch im.Kind {
	case "ubuntu", "server":
		return []Partition{boot, {Label: "writable", Files: map[string][]byte{
			"etc/os-release": osr,
			"etc/cloud/cloud.cfg.d/99-fake_cloud.cfg": []byte("datasource_list: [ NoCloud, None ]\n"),
		}}}
	case "pi-desktop", "desktop":
		return []Partition{boot, {Label: "writable", Files: map[string][]byte{
			"etc/os-release":  osr,
			"usr/bin/firefox": []byte("#!/bin/sh\n"),
			"etc/systemd/system/multi-user.target.wants/NetworkManager.service": []byte("[Unit]\nDescription=Network Manager\n"),
			"etc/cloud/cloud.cfg.d/99-fake_cloud.cfg":                           []byte("datasource_list: [ NoCloud, None ]\n"),
		}}}
	case "core":
		return []Partition{boot, {Label: "writable", Files: map[string][]byte{
			"system-data/etc/os-release": osr,
		}}}
	case "core20":
		return []Partition{
			{Label: "ubuntu-seed", Files: map[string][]byte{"snaps/core20_1.snap": []byte("snap"), "systems/20240101/model": []byte("model\n")}},
			{Label: "ubuntu-boot", Files: map[string][]byte{}},
			{Label: "ubuntu-save", Files: map[string][]byte{}},
			{Label: "ubuntu-data", Files: map[string][]byte{}},
		}
	case "ubuntu-cpc":
		return []Partition{
			{Label: "UEFI", Files: map[string][]byte{"EFI/BOOT/BOOTX64.EFI": []byte("efi")}},
			{Label: "cloudimg-rootfs", Files: map[string][]byte{"etc/os-release": osr, "etc/cloud/cloud.cfg": []byte("users:\n - default\n")}},
		}
	case "ce-oem-iot":
		return []Partition{boot, {Label: "writable", Files: map[string][]byte{
			"etc/os-release": osr,
			".disk/info":     []byte(fmt.Sprintf("iot-sim-board-classic-server-%s-20240101-1\n", seriesOf(im.OSRelease))),
		}}}
	case "tegra":
		return []Partition{{Label: "writable", Files: map[string][]byte{
			"etc/os-release":                        osr,
			"lib/firmware/nv-tegra234/firmware.bin": []byte("fw"),
			"boot/grub/grub.cfg":                    []byte("set default=0\nset timeout=5\n"),
			"etc/default/grub":                      []byte("GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n"),
		}}}
	}
	return []Partition{{Label: "data", Files: map[string][]byte{"README": []byte("data\n")}}}
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

// writeKey identifies a disk's last write.
func writeKey(d *sim.Disk) string {
	w := d.Last()
	return fmt.Sprintf("%d/%d/%t/%s", d.Writes(), w.Bytes, w.Complete, w.SHA256)
}

// partsLocked returns m's partitions, made anew from what the disk holds
// when it was written since they were last made.
func (m *medium) partsLocked() []Partition {
	key := writeKey(m.disk)
	if key == m.fsKey {
		return m.parts
	}
	m.fsKey, m.parts = key, nil
	if im, err := sim.Bootable(m.disk.Last()); err == nil {
		m.parts = Layout(im)
	}
	return m.parts
}

// partName returns the name of partition i (from 0) of the block device
// node, as the kernel names it: sda1, mmcblk0p1.
func partName(node string, i int) string {
	base := strings.TrimPrefix(node, "/dev/")
	if base != "" && base[len(base)-1] >= '0' && base[len(base)-1] <= '9' {
		return fmt.Sprintf("%sp%d", base, i+1)
	}
	return fmt.Sprintf("%s%d", base, i+1)
}

// partitionLocked finds the medium and partition of a device node such as
// /dev/sda2, switched to the control host.
func (r *Rig) partitionLocked(dev string) (*medium, int, bool) {
	for _, m := range r.media {
		if m.side != HostSide {
			continue
		}
		for i := range m.partsLocked() {
			if "/dev/"+partName(m.node, i) == dev {
				return m, i, true
			}
		}
	}
	return nil, 0, false
}

// mountLocked mounts partition i of m on dir: its files appear under dir.
func (r *Rig) mountLocked(m *medium, i int, dev, dir string) {
	for p, b := range m.parts[i].Files {
		r.Control.WriteFile(dir+"/"+p, b)
	}
	r.mounts[dir] = &mount{m: m, index: i, key: m.fsKey, dev: dev}
}

// unmountLocked unmounts dir: what is under it goes back to the partition
// (unless the medium was written since) and disappears from the control host.
func (r *Rig) unmountLocked(dir string) {
	mt := r.mounts[dir]
	delete(r.mounts, dir)
	files := map[string][]byte{}
	prefix := dir + "/"
	for _, p := range r.Control.Files() {
		if rel, ok := strings.CutPrefix(p, prefix); ok {
			b, _ := r.Control.ReadFile(p)
			files[rel] = b
			r.Control.RemoveFile(p)
		}
	}
	if mt != nil && mt.key == mt.m.fsKey && mt.index < len(mt.m.parts) {
		mt.m.parts[mt.index].Files = files
	}
}

// unmountMediumLocked unmounts every partition of m.
func (r *Rig) unmountMediumLocked(m *medium) {
	for _, dir := range slices.Sorted(maps.Keys(r.mounts)) {
		if r.mounts[dir].m == m {
			r.unmountLocked(dir)
		}
	}
}

// unmountAllLocked unmounts everything (the control host reboots).
func (r *Rig) unmountAllLocked() {
	for _, dir := range slices.Sorted(maps.Keys(r.mounts)) {
		r.unmountLocked(dir)
	}
}

// Mounts returns the mount points in use on the control host, sorted.
func (r *Rig) Mounts() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.mounts))
}

// MediumFiles returns the files of the partition labelled label on medium
// m, as the last write and the changes made through mounts left them, or
// nil when there is no such partition. Files under a partition still
// mounted are those of the last unmount.
func (r *Rig) MediumFiles(m Media, label string) map[string][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	md := r.media[m]
	if md == nil {
		return nil
	}
	for _, p := range md.partsLocked() {
		if p.Label == label {
			return maps.Clone(p.Files)
		}
	}
	return nil
}

// Labels returns the labels of medium m's partitions, in order.
func (r *Rig) Labels(m Media) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	md := r.media[m]
	if md == nil {
		return nil
	}
	var out []string
	for _, p := range md.partsLocked() {
		out = append(out, p.Label)
	}
	return out
}

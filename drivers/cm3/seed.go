package cm3

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/flingerlab/flinger/drivers/cloudinit"
	"github.com/flingerlab/flinger/drivers/remote"
)

// Image types, as Testflinger's cm3 connector names them.
const (
	kindUbuntu  = "ubuntu"  // classic Ubuntu: the root file system has etc
	kindCore    = "core"    // Ubuntu Core 16/18: writable has system-data
	kindCore20  = "core20"  // Ubuntu Core 20 and later: ubuntu-seed has snaps
	kindUnknown = "unknown" // none of those: the seed goes to the last partition
)

// imageMarkers are the top-level entries that identify an image type,
// checked in this order on each partition (Testflinger's IMAGE_PATH_IDS).
var imageMarkers = []struct{ entry, kind string }{
	{"etc", kindUbuntu},
	{"system-data", kindCore},
	{"snaps", kindCore20},
}

// fakeCloudConfigs are the files of Ubuntu's classic Raspberry Pi images
// that keep cloud-init from reading the seed (Testflinger removes
// 99-fake?cloud.cfg with a shell glob; Flinger names both spellings).
var fakeCloudConfigs = []string{"etc/cloud/cloud.cfg.d/99-fake_cloud.cfg", "etc/cloud/cloud.cfg.d/99-fake-cloud.cfg"}

// lsblkOutput is the part of `lsblk -J` that is read.
type lsblkOutput struct {
	Blockdevices []struct {
		Name     string `json:"name"`
		Children []struct {
			Name string `json:"name"`
		} `json:"children"`
	} `json:"blockdevices"`
}

// partitionsOf returns the device nodes of the partitions `lsblk -J` lists
// for one disk.
func partitionsOf(out string) ([]string, error) {
	var ls lsblkOutput
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		return nil, fmt.Errorf("reading lsblk's output: %w", err)
	}
	if len(ls.Blockdevices) != 1 {
		return nil, fmt.Errorf("lsblk listed %d devices, want 1", len(ls.Blockdevices))
	}
	var nodes []string
	for _, c := range ls.Blockdevices[0].Children {
		if c.Name == "" || strings.ContainsAny(c.Name, "/\x00") {
			continue
		}
		nodes = append(nodes, "/dev/"+c.Name)
	}
	return nodes, nil
}

// kindOf returns the image type a partition whose top-level entries are
// those (one a line, as ls prints them) identifies, or "".
func kindOf(ls string) string {
	entries := strings.Fields(ls)
	for _, m := range imageMarkers {
		for _, e := range entries {
			if e == m.entry {
				return m.kind
			}
		}
	}
	return ""
}

// seedFile is a file the seed writes, relative to the partition's root.
type seedFile struct {
	path    string
	content string
}

// seedFiles returns what the seed of an image of type kind writes, as
// Testflinger's cm3 connector does.
func seedFiles(kind string) []seedFile {
	switch kind {
	case kindCore20:
		return []seedFile{{"data/etc/cloud/cloud.cfg.d/99_nocloud.cfg", cloudinit.Core20Config}}
	case kindCore:
		return []seedFile{
			{path.Join("system-data", cloudinit.SeedDir, "meta-data"), cloudinit.MetaData},
			{path.Join("system-data", cloudinit.SeedDir, "user-data"), cloudinit.UserData},
		}
	}
	return []seedFile{
		{path.Join(cloudinit.SeedDir, "meta-data"), cloudinit.MetaData},
		{path.Join(cloudinit.SeedDir, "user-data"), cloudinit.UserData},
	}
}

// seedResult is what seeding found out about the image written.
type seedResult struct {
	kind      string
	partition string
	// osRelease is the image's /etc/os-release, when its root file system
	// was found (classic images), for checking what the device boots.
	osRelease string
}

// seed finds the image type written to the test device and writes the
// cloud-init seed into it (see the package documentation). Errors other
// than cancellation are the image's: provisioning failures.
func (p *provision) seed(ctx context.Context) (seedResult, error) {
	mnt := p.d.opts.mountPoint
	// A mount left behind by an interrupted run would make every mount fail.
	if _, err := p.side.Run(ctx, []string{"sudo", "umount", mnt}, remote.RunOptions{}); err != nil && !remote.IsExit(err) {
		return seedResult{}, err
	}
	out, err := p.side.Run(ctx, []string{"lsblk", "-J", p.d.opts.testDevice}, remote.RunOptions{})
	if err != nil {
		return seedResult{}, fmt.Errorf("listing the partitions of %s: %w", p.d.opts.testDevice, err)
	}
	parts, err := partitionsOf(out)
	if err != nil {
		return seedResult{}, err
	}
	if len(parts) == 0 {
		return seedResult{}, fmt.Errorf("the image written to %s has no partitions: it is not a disk image", p.d.opts.testDevice)
	}
	res := seedResult{kind: kindUnknown, partition: parts[len(parts)-1]}
	found := false
	for _, node := range parts {
		if _, err := p.side.Run(ctx, []string{"sudo", "mount", node, mnt}, remote.RunOptions{}); err != nil {
			if !remote.IsExit(err) {
				return seedResult{}, err
			}
			p.log.Info("cm3: partition not mountable; trying the next", "partition", node, "err", err)
			continue
		}
		ls, err := p.side.Run(ctx, []string{"ls", mnt}, remote.RunOptions{})
		if err == nil {
			if k := kindOf(ls); k != "" {
				res.kind, res.partition, found = k, node, true
				break
			}
		}
		if uerr := p.umount(ctx); uerr != nil {
			return seedResult{}, uerr
		}
		if err != nil && !remote.IsExit(err) {
			return seedResult{}, err
		}
	}
	if !found {
		fmt.Fprintf(p.w, "Could not tell the image type; writing the cloud-init seed to %s\n", res.partition)
		if _, err := p.side.Run(ctx, []string{"sudo", "mount", res.partition, mnt}, remote.RunOptions{}); err != nil {
			return seedResult{}, fmt.Errorf("mounting %s: %w", res.partition, err)
		}
	}
	fmt.Fprintf(p.w, "Image type %s; creating the test user on %s\n", res.kind, res.partition)
	err = p.writeSeed(ctx, mnt, &res)
	if uerr := p.umount(ctx); err == nil {
		err = uerr
	}
	return res, err
}

// writeSeed writes the seed files under the mount point mnt and, for a
// classic image, reads its os-release and removes the files that would
// keep cloud-init from reading the seed.
func (p *provision) writeSeed(ctx context.Context, mnt string, res *seedResult) error {
	for _, f := range seedFiles(res.kind) {
		if err := p.side.WriteFile(ctx, path.Join(mnt, f.path), []byte(f.content), 0); err != nil {
			return fmt.Errorf("creating the user files: %w", err)
		}
	}
	if res.kind != kindUbuntu {
		return nil
	}
	rm := []string{"sudo", "rm", "-f"}
	for _, f := range fakeCloudConfigs {
		rm = append(rm, path.Join(mnt, f))
	}
	if _, err := p.side.Run(ctx, rm, remote.RunOptions{}); err != nil {
		return fmt.Errorf("creating the user files: %w", err)
	}
	osr, err := p.side.Run(ctx, []string{"cat", path.Join(mnt, "etc/os-release")}, remote.RunOptions{})
	switch {
	case err == nil:
		res.osRelease = osr
	case !remote.IsExit(err):
		return err
	}
	return nil
}

// umount unmounts the mount point.
func (p *provision) umount(ctx context.Context) error {
	if _, err := p.side.Run(ctx, []string{"sudo", "umount", p.d.opts.mountPoint}, remote.RunOptions{}); err != nil {
		return fmt.Errorf("unmounting %s: %w", p.d.opts.mountPoint, err)
	}
	return nil
}

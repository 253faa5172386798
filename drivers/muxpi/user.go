package muxpi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/remote"
)

// The image types Testflinger's muxpi connector tells apart.
const (
	TypeCEOEMIoTBefore24 = "ce-oem-iot-before-24"
	TypeCEOEMIoT24       = "ce-oem-iot-24-and-beyond"
	TypeTegra            = "tegra"
	TypePiDesktop        = "pi-desktop"
	TypeUbuntu           = "ubuntu"
	TypeCore             = "core"
	TypeCore20           = "core20"
	TypeUbuntuCPC        = "ubuntu-cpc"
	TypeUnknown          = "unknown"
)

// imagePathIDs are the paths (under the mount root) whose presence tells
// the image type, checked in this order (Testflinger's IMAGE_PATH_IDS).
var imagePathIDs = []struct{ path, kind string }{
	{"writable/usr/bin/firefox", TypePiDesktop},
	{"writable/etc", TypeUbuntu},
	{"writable/system-data", TypeCore},
	{"ubuntu-seed/snaps", TypeCore20},
	{"cloudimg-rootfs/etc/cloud/cloud.cfg", TypeUbuntuCPC},
}

// iotBuildStamp finds the release in a ce-oem-iot image's .disk/info:
// iot-<project>-<series>-classic-(server|desktop)-<release>... or
// ...-core-<release>.
var iotBuildStamp = regexp.MustCompile(`iot-[a-z]+-[a-z-]*(?:classic-(?:server|desktop)-([0-9]+)|core-([0-9]+))`)

// mountRoot is where the image's partitions are mounted on the control
// host: /mnt/<agent_name>, as in Testflinger.
func (p *provisioning) mountRoot() string { return path.Join("/mnt", p.dev.Name) }

// partition is a labelled partition of the written image.
type partition struct{ name, label string }

// labelledPartitions lists the target's partitions that have a label,
// waiting up to partition_wait for them to show (the kernel may not have
// read the new partition table yet).
func (p *provisioning) labelledPartitions(ctx context.Context) ([]partition, error) {
	deadline := time.Now().Add(p.opts.partitionWait)
	poll := min(time.Second, p.opts.partitionWait)
	for {
		dev, err := p.lsblk(ctx)
		if err != nil {
			return nil, err
		}
		var parts []partition
		for _, c := range dev.Children {
			if c.Label == nil || !kernelName.MatchString(c.Name) {
				continue
			}
			if !goodLabel(*c.Label) {
				p.printf("Warning: skipping partition %s: its label %q cannot name a mount point", c.Name, *c.Label)
				continue
			}
			parts = append(parts, partition{name: c.Name, label: *c.Label})
		}
		if len(parts) > 0 || time.Now().After(deadline) {
			return parts, nil
		}
		p.printf("No labelled partitions on %s yet; looking again", p.target)
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for the partitions of %s: %w", p.target, ctx.Err())
		case <-t.C:
		}
	}
}

// goodLabel reports whether a partition label (from the image: the job's)
// can name a directory under the mount root.
func goodLabel(l string) bool {
	return l != "" && l != "." && l != ".." && len(l) <= 255 && !strings.ContainsRune(l, '/') &&
		!strings.ContainsFunc(l, unicode.IsControl)
}

// createUser mounts the image's partitions, detects its type and installs
// the files that create the test user.
func (p *provisioning) createUser(ctx context.Context) error {
	parts, err := p.labelledPartitions(ctx)
	if err != nil {
		return p.controlFailure("listing the partitions of the new image", err)
	}
	if len(parts) == 0 {
		return &drivers.ProvisioningError{Err: fmt.Errorf("the image written to %s has no labelled partition to create the test user in: is it a disk image for this device? (set provision_data.create_user: false for an image that needs no user)", p.target)}
	}
	root := p.mountRoot()
	for _, part := range parts {
		mp := root + "/" + part.label
		node := "/dev/" + part.name
		if _, err := p.ctl.Run(ctx, []string{"sudo", "mkdir", "-p", mp}, remote.RunOptions{}); err != nil {
			if e := p.fatal(ctx, err); e != nil {
				return e
			}
			p.printf("Warning: cannot create the mount point %s: %v", display.Printable(mp), err)
			continue
		}
		if _, err := p.ctl.Run(ctx, []string{"sudo", "mount", node, mp}, remote.RunOptions{}); err != nil {
			if e := p.fatal(ctx, err); e != nil {
				return e
			}
			p.printf("Warning: cannot mount %s (%s): %v", node, display.Printable(part.label), err)
			continue
		}
		p.mounts = append(p.mounts, mp)
	}
	if len(p.mounts) == 0 {
		return &drivers.ProvisioningError{Err: fmt.Errorf("none of the partitions of the image written to %s could be mounted", p.target)}
	}
	kind, err := p.detect(ctx)
	if err != nil {
		return p.controlFailure("detecting the image type", err)
	}
	p.printf("Image type detected: %s", kind)
	p.printf("Creating the test user %s", testUser)
	if err := p.install(ctx, kind); err != nil {
		return p.controlFailure("creating the test user's files", err)
	}
	if err := p.unmountAll(ctx); err != nil {
		return p.controlFailure("unmounting the new image", err)
	}
	return nil
}

// fatal returns the error to stop at when err, from a step that may fail,
// means the control host is gone or the phase was cancelled.
func (p *provisioning) fatal(ctx context.Context, err error) error {
	if ctx.Err() != nil || remote.IsUnreachable(err) {
		return p.controlFailure("preparing the new image", err)
	}
	return nil
}

// unmountAll unmounts what createUser mounted, last first.
func (p *provisioning) unmountAll(ctx context.Context) error {
	var errs []error
	for len(p.mounts) > 0 {
		mp := p.mounts[len(p.mounts)-1]
		p.mounts = p.mounts[:len(p.mounts)-1]
		if _, err := p.ctl.Run(ctx, []string{"sudo", "umount", mp}, remote.RunOptions{RetryExit: ctx.Err() == nil}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// detect tells the image type from the mounted partitions, as
// Testflinger's get_image_type does.
func (p *provisioning) detect(ctx context.Context) (string, error) {
	root := p.mountRoot()
	info, err := p.readFile(ctx, root+"/writable/.disk/info")
	if err != nil {
		return "", err
	}
	if kind := ceOEMIoT(info); kind != "" {
		return kind, nil
	}
	names, err := p.list(ctx, root+"/writable/lib/firmware")
	if err != nil {
		return "", err
	}
	for _, n := range names {
		if ok, _ := path.Match("*-tegra*", n); ok {
			return TypeTegra, nil
		}
	}
	for _, id := range imagePathIDs {
		ok, err := p.exists(ctx, root+"/"+id.path)
		if err != nil {
			return "", err
		}
		if ok {
			return id.kind, nil
		}
	}
	return TypeUnknown, nil
}

// ceOEMIoT returns the ce-oem-iot type a .disk/info names, or "".
// Releases are given as 2404 or as 24.
func ceOEMIoT(info string) string {
	m := iotBuildStamp.FindStringSubmatch(info)
	if m == nil {
		return ""
	}
	digits := m[1] + m[2]
	release, err := strconv.Atoi(digits)
	if err != nil {
		return ""
	}
	if (release > 2000 && release >= 2404) || (release <= 2000 && release >= 24) {
		return TypeCEOEMIoT24
	}
	return TypeCEOEMIoTBefore24
}

// readFile returns a file of the control host, or "" when it cannot be
// read (it does not exist).
func (p *provisioning) readFile(ctx context.Context, file string) (string, error) {
	out, err := p.ctl.Run(ctx, []string{"sudo", "cat", file}, remote.RunOptions{})
	if remote.IsExit(err) {
		return "", nil
	}
	return out, err
}

// list returns the entries of a directory of the control host, none when
// it cannot be listed.
func (p *provisioning) list(ctx context.Context, dir string) ([]string, error) {
	out, err := p.ctl.Run(ctx, []string{"sudo", "ls", "-1", dir}, remote.RunOptions{})
	if remote.IsExit(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			names = append(names, l)
		}
	}
	return names, nil
}

// exists reports whether a path exists on the control host.
func (p *provisioning) exists(ctx context.Context, file string) (bool, error) {
	_, err := p.ctl.Run(ctx, []string{"sudo", "test", "-e", file}, remote.RunOptions{})
	if remote.IsExit(err) {
		return false, nil
	}
	return err == nil, err
}

// putFile writes content to a file of the control host with sudo tee,
// the content on standard input, and sets its mode.
func (p *provisioning) putFile(ctx context.Context, file string, content []byte, mode os.FileMode) error {
	if _, err := p.ctl.Run(ctx, []string{"sudo", "tee", file}, remote.RunOptions{Stdin: content}); err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	if _, err := p.ctl.Run(ctx, []string{"sudo", "chmod", fmt.Sprintf("%04o", mode.Perm()), file}, remote.RunOptions{}); err != nil {
		return fmt.Errorf("setting the mode of %s: %w", file, err)
	}
	return nil
}

// mkdir creates a directory of the control host and its parents.
func (p *provisioning) mkdir(ctx context.Context, dir string) error {
	if _, err := p.ctl.Run(ctx, []string{"sudo", "mkdir", "-p", dir}, remote.RunOptions{}); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	return nil
}

// removeMatching removes the files of dir whose names match pattern (a
// shell pattern, matched here: no shell expands it).
func (p *provisioning) removeMatching(ctx context.Context, dir, pattern string) error {
	names, err := p.list(ctx, dir)
	if err != nil {
		return err
	}
	for _, n := range names {
		if ok, _ := path.Match(pattern, n); !ok {
			continue
		}
		if _, err := p.ctl.Run(ctx, []string{"sudo", "rm", "-f", dir + "/" + n}, remote.RunOptions{}); err != nil {
			return fmt.Errorf("removing %s/%s: %w", dir, n, err)
		}
	}
	return nil
}

// editFile replaces what re matches in a file of the control host with
// repl; a file that does not exist is left alone.
func (p *provisioning) editFile(ctx context.Context, file string, re *regexp.Regexp, repl string) error {
	content, err := p.readFile(ctx, file)
	if err != nil {
		return err
	}
	if content == "" {
		p.printf("Warning: %s is missing or empty; not changed", file)
		return nil
	}
	edited := re.ReplaceAllString(content, repl)
	if edited == content {
		return nil
	}
	return p.putFile(ctx, file, []byte(edited), 0o644)
}

// install writes the files that create the test user on an image of type
// kind, as Testflinger's create_user does.
func (p *provisioning) install(ctx context.Context, kind string) error {
	root := p.mountRoot()
	writable := root + "/writable"
	switch kind {
	case TypeCEOEMIoTBefore24:
		if err := p.putFile(ctx, root+"/system-boot/user-data", userData(), 0o644); err != nil {
			return err
		}
		if err := p.configureSudo(ctx); err != nil {
			return err
		}
	case TypeCEOEMIoT24:
		seed := writable + "/var/lib/cloud/seed/nocloud"
		if err := p.mkdir(ctx, seed); err != nil {
			return err
		}
		if err := p.putFile(ctx, seed+"/user-data", userData(), 0o644); err != nil {
			return err
		}
		if err := p.configureSudo(ctx); err != nil {
			return err
		}
	}
	switch kind {
	case TypeTegra:
		return p.installTegra(ctx, writable)
	case TypePiDesktop:
		return p.installPiDesktop(ctx, writable)
	case TypeCore20:
		dir := root + "/ubuntu-seed/data/etc/cloud/cloud.cfg.d"
		if err := p.mkdir(ctx, dir); err != nil {
			return err
		}
		return p.putFile(ctx, dir+"/99_nocloud.cfg", core20CloudConfig(), 0o644)
	}
	// Classic and core images, and (as in Testflinger) ce-oem-iot and
	// images of an unknown type.
	base := writable
	switch kind {
	case TypeCore:
		base = writable + "/system-data"
	case TypeUbuntuCPC:
		base = root + "/cloudimg-rootfs"
	}
	if err := p.nocloudSeed(ctx, base); err != nil {
		return err
	}
	if kind == TypeUbuntu {
		// Raspberry Pi classic images ship a datasource override that
		// keeps cloud-init from reading the seed.
		return p.removeMatching(ctx, base+"/etc/cloud/cloud.cfg.d", "99-fake?cloud.cfg")
	}
	return nil
}

// nocloudSeed writes a NoCloud seed (meta-data and user-data) under base.
func (p *provisioning) nocloudSeed(ctx context.Context, base string) error {
	seed := base + "/var/lib/cloud/seed/nocloud-net"
	if err := p.mkdir(ctx, seed); err != nil {
		return err
	}
	if err := p.putFile(ctx, seed+"/meta-data", metaData(p.dev.Name), 0o644); err != nil {
		return err
	}
	return p.putFile(ctx, seed+"/user-data", userData(), 0o644)
}

var (
	grubTimeout        = regexp.MustCompile(`timeout=[0-9]*`)
	grubDefaultTimeout = regexp.MustCompile(`GRUB_TIMEOUT=[0-9]*`)
)

// installTegra seeds cloud-init and sets GRUB's timeouts to 0, so that
// spurious input on the serial console does not stop the boot.
func (p *provisioning) installTegra(ctx context.Context, writable string) error {
	seed := writable + "/var/lib/cloud/seed/nocloud"
	if err := p.mkdir(ctx, seed); err != nil {
		return err
	}
	if err := p.putFile(ctx, seed+"/user-data", userData(), 0o644); err != nil {
		return err
	}
	if err := p.editFile(ctx, writable+"/boot/grub/grub.cfg", grubTimeout, "timeout=0"); err != nil {
		return err
	}
	names, err := p.list(ctx, writable+"/etc/default")
	if err != nil {
		return err
	}
	for _, n := range names {
		file := writable + "/etc/default/" + n
		content, err := p.readFile(ctx, file)
		if err != nil {
			return err
		}
		if strings.Contains(content, "GRUB_TIMEOUT=") {
			if err := p.editFile(ctx, file, grubDefaultTimeout, "GRUB_TIMEOUT=0"); err != nil {
				return err
			}
		}
	}
	return p.configureSudo(ctx)
}

var versionID = regexp.MustCompile(`(?m)^VERSION_ID="?([0-9]+)`)

// installPiDesktop creates the user of a Raspberry Pi desktop image: with
// cloud-init from 25.04, with a preseeded oem-config before.
func (p *provisioning) installPiDesktop(ctx context.Context, writable string) error {
	osRelease, err := p.readFile(ctx, writable+"/etc/os-release")
	if err != nil {
		return err
	}
	major := 0
	if m := versionID.FindStringSubmatch(osRelease); m != nil {
		major, _ = strconv.Atoi(m[1])
	}
	if major >= 25 {
		if err := p.nocloudSeed(ctx, writable); err != nil {
			return err
		}
		if err := p.removeMatching(ctx, writable+"/etc/cloud/cloud.cfg.d", "99-fake?cloud.cfg"); err != nil {
			return err
		}
	} else {
		if err := p.putFile(ctx, writable+"/etc/systemd/system/oem-config.service", oemConfigService(), 0o644); err != nil {
			return err
		}
		if err := p.putFile(ctx, writable+"/preseed.cfg", oemConfigPreseed(), 0o644); err != nil {
			return err
		}
	}
	// NetworkManager must also run while oem-config does.
	wants := writable + "/etc/systemd/system/oem-config.target.wants"
	if err := p.mkdir(ctx, wants); err != nil {
		return err
	}
	nm := writable + "/etc/systemd/system/multi-user.target.wants/NetworkManager.service"
	if _, err := p.ctl.Run(ctx, []string{"sudo", "cp", "-a", nm, wants + "/"}, remote.RunOptions{}); err != nil {
		return fmt.Errorf("enabling NetworkManager for oem-config: %w", err)
	}
	return p.configureSudo(ctx)
}

// configureSudo gives the test user passwordless sudo.
func (p *provisioning) configureSudo(ctx context.Context) error {
	dir := p.mountRoot() + "/writable/etc/sudoers.d"
	if err := p.mkdir(ctx, dir); err != nil {
		return err
	}
	return p.putFile(ctx, dir+"/"+testUser, sudoers(), 0o440)
}

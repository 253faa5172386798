package oemscript

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/oemrecovery/oemdut"
	"github.com/flingerlab/flinger/drivers/osrelease"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// Mount points the recovery steps use, as recovery-from-iso.sh.
const (
	isoMount      = "/mnt"
	recoveryMount = "/cdrom"
	rsyncTemp     = "/var/tmp/rsync"
)

// shortTimeout bounds the steps that are quick by nature (reboot, rm).
const shortTimeout = 60 * time.Second

// devicePath is what a partition's device node may look like.
var devicePath = regexp.MustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9_./-]*$`)

// provisioning is one run of Provision.
type provisioning struct {
	d   *Driver
	t   *oemdut.Target
	job *drivers.Run
	dev *drivers.DeviceConfig
	src image.Source
	ubr bool

	partition string // the recovery partition
	isoInfo   string // the ISO's .disk/info
	bootID    string // the boot the recovery was started from ("": unknown)
}

// out returns where the job's output goes.
func (p *provisioning) out() io.Writer { return p.t.Out }

// say writes a line of the job's output.
func (p *provisioning) say(format string, args ...any) {
	fmt.Fprintf(p.t.Out, format+"\n", args...)
}

// cancelled returns the error for a cancelled phase.
func (p *provisioning) cancelled(ctx context.Context) error {
	return fmt.Errorf("%s provision: %w", p.d.cfg.Type, ctx.Err())
}

// failed returns a *drivers.ProvisioningError for err, or the
// cancellation when ctx is done.
func (p *provisioning) failed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return p.cancelled(ctx)
	}
	return &drivers.ProvisioningError{Err: err}
}

func (p *provisioning) provision(ctx context.Context) error {
	recovery := "dell-recovery"
	if p.ubr {
		recovery = "ubuntu-recovery"
	}
	p.say("Installing %s on %s laptop %s with %s", display.Printable(p.src.URL), p.d.vendor.Name, display.Printable(p.dev.Name), recovery)
	c, err := p.t.Reach(ctx)
	if err != nil {
		return err
	}
	if c, err = p.rebootFirst(ctx, c); err != nil {
		return err
	}
	err = p.prepare(ctx, c)
	if err == nil {
		p.bootID = oemdut.BootID(ctx, c)
		err = p.startRecovery(ctx, c)
	}
	if err != nil {
		_ = c.Close()
		return err
	}
	return p.awaitRecovery(ctx)
}

// runIn runs argv on the device within timeout, its standard error (and
// standard output, unless stdout is given) going to the job's output; the
// error says what failed in words, with the end of the command's output.
func (p *provisioning) runIn(ctx context.Context, c *sshx.Client, timeout time.Duration, stdin io.Reader, stdout io.Writer, argv ...string) error {
	return p.exec(ctx, c, timeout, stdin, stdout, p.out(), argv...)
}

// quietly runs argv within shortTimeout, its output discarded: for a
// command whose failure is expected and harmless.
func (p *provisioning) quietly(ctx context.Context, c *sshx.Client, argv ...string) error {
	return p.exec(ctx, c, shortTimeout, nil, io.Discard, io.Discard, argv...)
}

// exec runs argv within timeout, standard error going to errOut.
func (p *provisioning) exec(ctx context.Context, c *sshx.Client, timeout time.Duration, stdin io.Reader, stdout, errOut io.Writer, argv ...string) error {
	tail := &oemdut.Tail{W: errOut}
	if stdout == nil {
		stdout = tail
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := c.RunInput(cctx, argv, stdin, stdout, tail)
	cmd := display.Printable(strings.Join(argv, " "))
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", cmd, ctx.Err())
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s did not finish within %s", cmd, timeout)
	}
	if s := tail.String(); s != "" {
		return fmt.Errorf("%s: %w: %s", cmd, err, s)
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// run is runIn with command_timeout and no input.
func (p *provisioning) run(ctx context.Context, c *sshx.Client, argv ...string) error {
	return p.runIn(ctx, c, p.d.opts.commandTimeout, nil, nil, argv...)
}

// output runs argv and returns its standard output.
func (p *provisioning) output(ctx context.Context, c *sshx.Client, argv ...string) (string, error) {
	var b bytes.Buffer
	err := p.runIn(ctx, c, p.d.opts.commandTimeout, nil, &b, argv...)
	return b.String(), err
}

// writeFile writes data to file on the device with sudo tee (-a:
// appending).
func (p *provisioning) writeFile(ctx context.Context, c *sshx.Client, file string, data []byte, appending bool) error {
	argv := []string{"sudo", "tee"}
	if appending {
		argv = append(argv, "-a")
	}
	if err := p.run(ctx, c, "sudo", "mkdir", "-p", path.Dir(file)); err != nil {
		return err
	}
	return p.runIn(ctx, c, p.d.opts.commandTimeout, bytes.NewReader(data), io.Discard, append(argv, file)...)
}

// rebootFirst reboots the device with sudo reboot and waits for it, as
// Testflinger does before running the script, so that the recovery starts
// from a freshly booted system. It returns the new connection.
func (p *provisioning) rebootFirst(ctx context.Context, c *sshx.Client) (*sshx.Client, error) {
	p.say("Rebooting the device first")
	if err := p.reboot(ctx, c, "rebooting the device", []string{"sudo", "reboot"}); err != nil {
		return nil, err
	}
	return p.t.WaitUp(ctx, p.t.Login, p.d.dut.BootTimeout, "sudo reboot")
}

// reboot runs argv, which reboots the device (what says how, for
// messages), and waits for it to go down. The connection may end before
// the command's status arrives.
func (p *provisioning) reboot(ctx context.Context, c *sshx.Client, what string, argv []string) error {
	err := p.runIn(ctx, c, shortTimeout, nil, nil, argv...)
	switch {
	case ctx.Err() != nil:
		_ = c.Close()
		return p.cancelled(ctx)
	case err != nil && remote.IsExit(err):
		_ = c.Close()
		return &drivers.ProvisioningError{Err: fmt.Errorf("%s: %w", what, err)}
	case err != nil:
		p.t.Log.Info("oemscript: the connection ended as the device rebooted", "err", err)
	}
	if err := oemdut.WaitDown(ctx, c, p.d.dut.ShutdownTimeout); err != nil {
		if ctx.Err() != nil {
			return p.cancelled(ctx)
		}
		return &drivers.ProvisioningError{Err: fmt.Errorf("device %s: %s: %w", display.Printable(p.dev.Name), strings.Join(argv, " "), err)}
	}
	return nil
}

// prepare puts the ISO into the recovery partition, with what the vendor's
// recovery needs.
func (p *provisioning) prepare(ctx context.Context, c *sshx.Client) error {
	p.say("Freeing journal space on the device")
	if err := p.run(ctx, c, "sudo", "journalctl", "--rotate", "--vacuum-size=100M"); err != nil {
		if ctx.Err() != nil {
			return p.cancelled(ctx)
		}
		p.say("Could not free journal space (continuing): %v", err)
	}
	size, err := p.findPartition(ctx, c)
	if err != nil {
		return p.failed(ctx, err)
	}
	// Nothing may be mounted there from an earlier run; either may not be.
	_ = p.quietly(ctx, c, "sudo", "umount", recoveryMount, isoMount)
	if ctx.Err() != nil {
		return p.cancelled(ctx)
	}
	if err := p.copyISO(ctx, c, size); err != nil {
		return err
	}
	if err := p.fillPartition(ctx, c); err != nil {
		return err
	}
	if p.d.opts.preseedDir != "" {
		if err := p.copyPreseedDir(ctx, c); err != nil {
			return p.failed(ctx, fmt.Errorf("copying preseed_dir into the recovery partition: %w", err))
		}
	}
	if p.ubr {
		if err := p.ubuntuRecovery(ctx, c); err != nil {
			return p.failed(ctx, fmt.Errorf("preparing ubuntu-recovery: %w", err))
		}
	}
	if err := p.run(ctx, c, "sudo", "umount", isoMount); err != nil && ctx.Err() == nil {
		p.say("Could not unmount the ISO (continuing): %v", err)
	}
	p.removeISO(ctx, c)
	if err := p.run(ctx, c, "sync"); err != nil {
		return p.failed(ctx, err)
	}
	return nil
}

// findPartition finds the recovery partition and returns its size.
func (p *provisioning) findPartition(ctx context.Context, c *sshx.Client) (int64, error) {
	part := p.d.opts.partition
	if part == "" {
		out, err := p.output(ctx, c, "lsblk", "-l", "-n", "-o", "NAME,MOUNTPOINT")
		if err != nil {
			return 0, fmt.Errorf("listing the device's partitions: %w", err)
		}
		if part, err = RecoveryPartition(out); err != nil {
			return 0, err
		}
	}
	out, err := p.output(ctx, c, "lsblk", "-b", "-n", "-o", "SIZE", part)
	if err != nil {
		return 0, fmt.Errorf("the recovery partition %s: %w", part, err)
	}
	size, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the recovery partition %s: unexpected size %q", part, strings.TrimSpace(out))
	}
	p.partition = part
	p.say("The recovery partition is %s (%d MiB)", part, size>>20)
	return size, nil
}

// partName is what a partition's name in lsblk may look like.
var partName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)

// RecoveryPartition finds the recovery partition in the output of
// lsblk -l -n -o NAME,MOUNTPOINT: the partition mounted on /boot/efi with
// its last character replaced by 2 (nvme0n1p1 gives /dev/nvme0n1p2), as
// recovery-from-iso.sh finds it.
func RecoveryPartition(lsblk string) (string, error) {
	sc := bufio.NewScanner(strings.NewReader(lsblk))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && (f[1] == "/boot/efi" || strings.HasSuffix(f[1], "/efi")) && partName.MatchString(f[0]) {
			return "/dev/" + f[0][:len(f[0])-1] + "2", nil
		}
	}
	return "", errors.New("no EFI system partition mounted on /boot/efi, so no recovery partition beside it (set recovery_partition)")
}

// copyISO streams the ISO into iso_path on the device, checks that it fits
// the recovery partition and mounts it on /mnt.
func (p *provisioning) copyISO(ctx context.Context, c *sshx.Client, room int64) error {
	iso := p.d.opts.isoPath
	p.say("Copying the ISO to the device (%s)", iso)
	wctx, cancel := context.WithTimeout(ctx, p.d.opts.isoTimeout)
	// Decompressed here, so that the ISO's size is known for the check
	// below whatever the far side's dd prints.
	res, err := flash.Write(wctx, c, p.src, flash.Options{
		Device: iso, Sudo: true, Cache: p.job.Images, Progress: p.job.ReportProgress,
		Decompress: flash.Local, Out: p.out(), Log: p.t.Log,
	})
	timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded)
	cancel()
	switch {
	case ctx.Err() != nil:
		return p.cancelled(ctx)
	case timedOut:
		p.removeISO(ctx, c)
		return &drivers.ProvisioningError{Err: fmt.Errorf("copying the ISO to the device did not finish within %s", p.d.opts.isoTimeout)}
	case err != nil:
		p.removeISO(ctx, c)
		return &drivers.ProvisioningError{Err: fmt.Errorf("copying the ISO to the device: %w", err)}
	}
	from := ""
	if res.FromCache {
		from = " from the lab host's cache"
	}
	p.say("Copied the ISO (%d MiB)%s in %s", res.BytesOut>>20, from, res.Elapsed.Round(100*time.Millisecond))
	if res.BytesOut > room {
		p.removeISO(ctx, c)
		return &drivers.ProvisioningError{Err: fmt.Errorf("the ISO (%d bytes) does not fit the recovery partition %s (%d bytes)", res.BytesOut, p.partition, room)}
	}
	if err := p.run(ctx, c, "sudo", "mount", "-o", "loop,ro", iso, isoMount); err != nil {
		p.removeISO(ctx, c)
		return p.failed(ctx, fmt.Errorf("the device cannot mount the image as an ISO (is %s an ISO?): %w", display.Printable(p.src.URL), err))
	}
	if info, err := p.output(ctx, c, "cat", isoMount+"/.disk/info"); err == nil {
		p.isoInfo = strings.TrimSpace(info)
		p.say("The ISO is %s", display.Printable(p.isoInfo))
	}
	return nil
}

// removeISO removes iso_path from the device, best effort; not once the
// phase is cancelled, so that cancelling stays prompt.
func (p *provisioning) removeISO(ctx context.Context, c *sshx.Client) {
	if ctx.Err() != nil {
		return
	}
	if err := p.runIn(ctx, c, shortTimeout, nil, nil, "sudo", "rm", "-f", p.d.opts.isoPath); err != nil {
		p.t.Log.Warn("oemscript: could not remove the ISO from the device", "err", err)
	}
}

// fillPartition mounts the recovery partition on /cdrom and copies the
// ISO into it.
func (p *provisioning) fillPartition(ctx context.Context, c *sshx.Client) error {
	if err := p.run(ctx, c, "sudo", "mount", p.partition, recoveryMount); err != nil {
		_ = p.run(ctx, c, "sudo", "umount", isoMount)
		p.removeISO(ctx, c)
		return p.failed(ctx, fmt.Errorf("mounting the recovery partition: %w", err))
	}
	p.say("Copying the ISO into the recovery partition")
	if err := p.run(ctx, c, "sudo", "mkdir", "-p", rsyncTemp); err != nil {
		return p.failed(ctx, err)
	}
	if err := p.run(ctx, c, "sudo", "rsync", "-a", "--delete", "--exclude=efi", "--temp-dir="+rsyncTemp, isoMount+"/", recoveryMount+"/"); err != nil {
		_ = p.run(ctx, c, "sudo", "umount", isoMount)
		p.removeISO(ctx, c)
		return p.failed(ctx, fmt.Errorf("copying the ISO into the recovery partition failed; the device keeps its current system, but its recovery partition is incomplete until it is provisioned again: %w", err))
	}
	if err := p.run(ctx, c, "sudo", "cp", isoMount+"/.disk/ubuntu_dist_channel", recoveryMount+"/.disk/"); err != nil {
		return p.failed(ctx, fmt.Errorf("copying the ISO into the recovery partition: %w", err))
	}
	return nil
}

// copyPreseedDir copies the files of preseed_dir into the recovery
// partition, keeping their paths.
func (p *provisioning) copyPreseedDir(ctx context.Context, c *sshx.Client) error {
	root := p.d.opts.preseedDir
	p.say("Copying %s into the recovery partition", root)
	return filepath.WalkDir(root, func(file string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, file)
		if err != nil {
			return err
		}
		if strings.ContainsAny(rel, "\x00\n") {
			return fmt.Errorf("%q: unusable file name", rel)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		return p.writeFile(ctx, c, path.Join(recoveryMount, filepath.ToSlash(rel)), data, false)
	})
}

// uuid is what a FAT or ext file system UUID looks like.
var uuid = regexp.MustCompile(`^[0-9A-Fa-f][0-9A-Fa-f-]*$`)

// ubuntuRecovery writes what ubuntu-recovery needs: its preseed, the
// install's project preseed set to reboot at the end, the local package
// source scripts, the GRUB entry that boots it and the partition label.
func (p *provisioning) ubuntuRecovery(ctx context.Context, c *sshx.Client) error {
	p.say("Preparing ubuntu-recovery")
	if err := p.writeFile(ctx, c, recoveryMount+"/preseed/ubuntu-recovery.cfg", []byte(ubuntuRecoveryCfg), false); err != nil {
		return err
	}
	project := recoveryMount + "/preseed/project.cfg"
	if err := p.quietly(ctx, c, "test", "-e", project); err == nil {
		cfg, err := p.output(ctx, c, "cat", project)
		if err != nil {
			return err
		}
		if err := p.writeFile(ctx, c, project, []byte(RebootAtEnd(cfg)), false); err != nil {
			return err
		}
	} else if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, file := range slices.Sorted(maps.Keys(localRepoScripts)) {
		content := localRepoScripts[file]
		if err := p.writeFile(ctx, c, recoveryMount+file, []byte(content), false); err != nil {
			return err
		}
		if err := p.run(ctx, c, "sudo", "chmod", "755", recoveryMount+file); err != nil {
			return err
		}
	}
	out, err := p.output(ctx, c, "sudo", "blkid", "-s", "UUID", "-o", "value", p.partition)
	if err != nil {
		return fmt.Errorf("reading the recovery partition's UUID: %w", err)
	}
	id := strings.TrimSpace(out)
	if !uuid.MatchString(id) {
		return fmt.Errorf("the recovery partition %s has no usable UUID (%q)", p.partition, id)
	}
	if err := p.writeFile(ctx, c, grubEntryFile, []byte(GrubEntry(id)), false); err != nil {
		return err
	}
	if err := p.run(ctx, c, "sudo", "chmod", "755", grubEntryFile); err != nil {
		return err
	}
	if err := p.run(ctx, c, "sudo", "rm", "-f", dellGrubEntryFile); err != nil {
		return err
	}
	return p.run(ctx, c, "sudo", "fatlabel", p.partition, recoveryLabel)
}

// startRecovery reboots the device into its recovery, as the vendor's
// recovery starts, waits for it to go down and forgets its host key.
func (p *provisioning) startRecovery(ctx context.Context, c *sshx.Client) error {
	var what string
	var argv []string
	if p.ubr {
		p.say("Making GRUB boot %q", recoveryEntry)
		if err := p.writeFile(ctx, c, grubDefaultsFile, []byte(grubDefaults), true); err != nil {
			return p.failed(ctx, fmt.Errorf("selecting the recovery: %w", err))
		}
		if err := p.run(ctx, c, "sudo", "update-grub"); err != nil {
			return p.failed(ctx, fmt.Errorf("selecting the recovery: %w", err))
		}
		what, argv = "rebooting into ubuntu-recovery", []string{"sudo", "reboot"}
	} else {
		what, argv = "starting dell-recovery", []string{"sudo", "dell-restore-system", "-y"}
	}
	p.say("%s%s", strings.ToUpper(what[:1]), what[1:])
	if err := p.reboot(ctx, c, what, argv); err != nil {
		return err
	}
	// The reinstalled system has new host keys.
	if err := p.t.Policy.Reset(p.dev.Name); err != nil {
		return fmt.Errorf("%s provision: %w", p.d.cfg.Type, err)
	}
	return nil
}

// awaitRecovery waits for the reinstalled system, installs the lab host's
// key in it, waits for its OEM configuration to end, and checks that the
// job can log in and that the system is the ISO's.
func (p *provisioning) awaitRecovery(ctx context.Context) error {
	o := p.d.opts
	p.say("The device is reinstalling from its recovery partition; waiting up to %s for it, checking every %s", o.recoveryTimeout, o.pollInterval)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, o.recoveryTimeout)
	defer cancel()
	notBack := func(err error) error {
		if ctx.Err() != nil {
			return p.cancelled(ctx)
		}
		if sshx.IsHostKeyError(err) {
			return &drivers.ProvisioningError{Err: fmt.Errorf("device %s: refusing the host key of the reinstalled system (it changed again after the reinstall, or ssh.host_keys pins the old one and must be updated): %w", display.Printable(p.dev.Name), err)}
		}
		return drivers.Recovery("device %s did not come back from its recovery within %s: %w", display.Printable(p.dev.Name), o.recoveryTimeout, err)
	}
	rl := p.t.Login
	rl.User, rl.Password = o.recoveryUser, o.recoveryPassword
	c, err := p.t.Poll(wctx, rl, o.recoveryTimeout, o.pollInterval)
	if err != nil {
		return notBack(err)
	}
	p.say("The reinstalled system answers (after %s)", time.Since(start).Round(100*time.Millisecond))
	p.injectKey(wctx, c)
	if c, err = p.awaitOEMConfig(wctx, c, rl); err != nil {
		return notBack(err)
	}
	p.say("Removing ubiquity")
	if err := p.run(wctx, c, "sudo", "apt-get", "-o", "DPkg::Lock::Timeout=-1", "purge", "-y", "ubiquity"); err != nil && ctx.Err() == nil {
		p.say("Could not remove ubiquity (continuing): %v", err)
	}
	_ = c.Close()
	if ctx.Err() != nil {
		return p.cancelled(ctx)
	}
	p.say("Checking that the device answers ssh as %s", oemdut.Who(p.t.Login))
	c, err = p.t.Poll(wctx, p.t.Login, o.recoveryTimeout, o.pollInterval)
	if err != nil {
		if errors.Is(err, sshx.ErrAuth) && ctx.Err() == nil {
			return &drivers.ProvisioningError{Err: fmt.Errorf("the reinstalled system refuses the login as %s (check test_username and test_password): %w", oemdut.Who(p.t.Login), err)}
		}
		return notBack(err)
	}
	defer c.Close()
	return p.checkSystem(wctx, c, time.Since(start))
}

// injectKey installs the lab host's public key in the reinstalled system,
// as the script's --inject-ssh-key does. A failure is reported, not
// fatal: the job's password may still let it in.
func (p *provisioning) injectKey(ctx context.Context, c *sshx.Client) {
	key, err := workerKey(p.dev.SSHSettings().KeyFile)
	switch {
	case err != nil:
		p.say("Not installing the lab host's ssh key: %v", err)
		return
	case key == "":
		p.say("The lab host has no ssh key file: logins will use the job's password")
		return
	}
	added, err := sshx.InstallAuthorizedKeys(ctx, c, []string{key})
	if err != nil {
		p.say("Could not install the lab host's ssh key (continuing): %v", err)
		return
	}
	if added > 0 {
		p.say("Installed the lab host's ssh key")
	}
}

// awaitOEMConfig waits until ubiquity's OEM configuration has ended,
// logging in again when the system reboots meanwhile. It returns the
// connection to use next.
func (p *provisioning) awaitOEMConfig(ctx context.Context, c *sshx.Client, login sshx.Config) (*sshx.Client, error) {
	p.say("Waiting for the OEM configuration (ubiquity) to end")
	for {
		var out bytes.Buffer
		qctx, cancel := context.WithTimeout(ctx, shortTimeout)
		_, err := c.Run(qctx, []string{"systemctl", "is-active", "ubiquity"}, &out, io.Discard)
		cancel()
		if strings.TrimSpace(out.String()) == "inactive" {
			return c, nil
		}
		if err != nil && !remote.IsExit(err) {
			// The connection ended: the system may be rebooting.
			_ = c.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if c, err = p.t.Poll(ctx, login, p.d.opts.recoveryTimeout, p.d.opts.pollInterval); err != nil {
				return nil, err
			}
			continue
		}
		if err := oemdut.Sleep(ctx, p.d.opts.pollInterval); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("ubiquity was still running: %w", err)
		}
	}
}

// checkSystem reads the reinstalled system's os-release and checks it
// against the ISO's .disk/info.
func (p *provisioning) checkSystem(ctx context.Context, c *sshx.Client, took time.Duration) error {
	osr, err := p.output(ctx, c, "cat", "/etc/os-release")
	if err != nil {
		if ctx.Err() != nil {
			return p.cancelled(ctx)
		}
		return drivers.Recovery("reading the reinstalled system's /etc/os-release: %w", err)
	}
	if p.bootID != "" && oemdut.BootID(ctx, c) == p.bootID {
		return &drivers.ProvisioningError{Err: fmt.Errorf("device %s did not reboot into its recovery: it is still in the boot the recovery was started from", display.Printable(p.dev.Name))}
	}
	rel := osrelease.Parse(osr)
	name := rel["PRETTY_NAME"]
	if name == "" {
		name = rel["NAME"] + " " + rel["VERSION_ID"]
	}
	if ok, checked := SameRelease(p.isoInfo, rel["VERSION_ID"]); checked && !ok {
		return &drivers.ProvisioningError{Err: fmt.Errorf("the device came back with %s, which is not the ISO's system (%s): the recovery did not install the ISO",
			display.Printable(name), display.Printable(p.isoInfo))}
	}
	p.say("The device is back with %s (after %s)", display.Printable(name), took.Round(100*time.Millisecond))
	return nil
}

// version matches an Ubuntu version in an ISO's .disk/info.
var version = regexp.MustCompile(`\b(\d{2}\.\d{2})(\.\d+)?\b`)

// SameRelease reports whether the ISO whose .disk/info is info holds the
// release versionID (such as "24.04"), and whether that could be checked:
// it cannot when info names no version or versionID is empty.
func SameRelease(info, versionID string) (same, checked bool) {
	found := version.FindAllStringSubmatch(info, -1)
	if len(found) == 0 || versionID == "" {
		return false, false
	}
	for _, m := range found {
		if m[1] == versionID || m[1]+m[2] == versionID {
			return true, true
		}
	}
	return false, true
}

// Package dragonboard is the dragonboard driver: a board with two boot
// media, a "master" image (Debian, on the board's own storage) used to
// write test images, and the test image on test_device (an SD card), one
// of which a local boot selector picks for the next boot. As
// Testflinger's dragonboard connector (devices/dragonboard/dragonboard.py
// in canonical/testflinger), provisioning:
//
//  1. makes sure the board runs its master image: if it does not answer
//     as master_user with a Debian /etc/issue, runs select_master_script
//     and reboot_script (on this machine) and waits for it, for up to
//     master_boot_timeout;
//  2. writes provision_data.url to test_device with dd on the master
//     image, then sync and hdparm -z;
//  3. mounts snappy_writable_partition on mount_point and writes the
//     cloud-init NoCloud seed that creates the user ubuntu with the
//     password ubuntu, and a sudoers file giving it sudo without a
//     password (under system-data on Ubuntu Core);
//  4. runs select_test_script, reboots the board (sudo reboot on the
//     master image, or reboot_script when that fails) and waits, for up to boot_timeout, for the test image
//     to accept a login as test_username (default ubuntu, password
//     test_password, default ubuntu) and run `snap -h`.
//
// Before these steps the job's provision_data is checked, then the
// control-host pre-provision hook of drivers.Base runs, as Testflinger's
// pre_provision_hook does for every connector (it does nothing for a
// device without control_host, the usual dragonboard).
//
// When writing or preparing the image fails, test_device is wiped with
// sgdisk -o, as Testflinger does, so that the board does not boot a
// half-written image.
//
// provision_data keys: url (required: an http or https URL of a raw or
// xz, gzip, zstd or bzip2 compressed disk image) and sha256 (optional:
// the sha256 of the file the URL serves, checked once it is written).
// Other URL schemes, file URLs included, are refused: a job must not read
// the lab host's files.
//
// Device configuration keys: device_ip, ssh_port, test_device,
// snappy_writable_partition, select_master_script, select_test_script
// and reboot_script (all required; the scripts are lists of commands run
// on this machine, each split on white space) and, beyond Testflinger's
// (durations in seconds or as "90s", "500ms"):
//
//	master_user: linaro          # the master image's login
//	master_password: linaro      # its password (the agent's key is offered too)
//	master_boot_timeout: 300     # wait for the master image
//	boot_timeout: 600            # wait for the test image
//	boot_check_interval: 10      # between login attempts meanwhile
//	control_timeout: 60          # each command on the master image; retries of a broken link
//	write_timeout: 1800          # writing the image
//	reboot_script_timeout: 120   # each reboot_script command
//	select_script_timeout: 60    # each select_*_script command
//	mount_point: /mnt            # where the master image mounts the writable partition
//	decompress: auto             # auto, local or remote (see package flash)
//
// Where Flinger differs from Testflinger, and why:
//
//   - The image is streamed from this machine (through the host's image
//     cache, with progress reports) into dd on the master image over the
//     SSH connection, instead of being downloaded, recompressed to xz and
//     served on a one-shot TCP socket for nc on the board: no local copy,
//     no recompression, no port open to the lab network, and a corrupt or
//     truncated image is reported as such.
//   - Testflinger logs in to the master image as linaro with the agent's
//     key only; Flinger offers the password too (master_password; Linaro's
//     Debian images ship linaro/linaro) and makes the user configurable.
//   - The master image is always selected before a reset that should
//     bring it up (Testflinger resets without selecting it when the board
//     answers as neither image).
//   - Files are written with `sudo tee PATH`, their content on standard
//     input: no job or configuration value is ever part of a remote shell
//     line. The sudoers file goes beside the seed (Testflinger always
//     writes it under system-data, which classic images lack), with mode
//     0440, and the writable partition is unmounted afterwards
//     (Testflinger leaves it mounted, and unmounts test_device* with a
//     shell glob before the next write).
//   - Host keys: the master image's key is recorded under
//     <agent_name>-master, the test image's under <agent_name>, which is
//     forgotten once a new image is written; a master image whose key
//     changed is refused.
//   - When the new image's /etc/os-release could be read from the
//     writable partition (classic images), the test image the board boots
//     must match it.
//   - The fixed sleeps of Testflinger (60 s after the reboot, 60 s after
//     the test image booted) are replaced by waiting for what they were
//     for.
//
// Outcomes: a job without a usable url, an image that cannot be fetched
// or is corrupt, a write that fails half way (an I/O error, the link to
// the master image dropping) and a writable partition that cannot be
// prepared are provisioning failures (after the sgdisk -o wipe): the
// device can be provisioned again. A master image that does not come up
// (or presents another host key) and a failing or timed-out reboot_script
// or select script are recovery failures (exit 46). A test image that
// does not boot within boot_timeout (as in Testflinger: the image is the
// likely culprit, and the next provisioning starts from the master image)
// and one that boots but refuses the login are provisioning failures. Cancellation stops at once (the write included),
// without the wipe, and is never a recovery failure.
package dragonboard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/cloudinit"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/localcmd"
	"github.com/flingerlab/flinger/drivers/osrelease"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "dragonboard"

// Defaults of the device keys.
const (
	DefaultMasterUser          = "linaro"
	DefaultMasterPassword      = "linaro"
	DefaultMountPoint          = "/mnt"
	DefaultMasterBootTimeout   = 300 * time.Second
	DefaultBootTimeout         = 600 * time.Second
	DefaultBootCheckInterval   = 10 * time.Second
	DefaultControlTimeout      = 60 * time.Second
	DefaultWriteTimeout        = 1800 * time.Second
	DefaultRebootScriptTimeout = 120 * time.Second
	DefaultSelectScriptTimeout = 60 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 6 * time.Hour

// masterMarker is what the master image's /etc/issue holds.
const masterMarker = "Debian GNU"

// checkTimeout bounds one login attempt and one check command.
const checkTimeout = 30 * time.Second

// cleanupTimeout bounds the wipe after a failure.
const cleanupTimeout = 60 * time.Second

func init() {
	drivers.Register(Type, New)
}

// Driver is the dragonboard driver.
type Driver struct {
	drivers.Base
	cfg  *drivers.DeviceConfig
	opts options
}

var _ drivers.Driver = (*Driver)(nil)

type options struct {
	testDevice, writable, mountPoint string
	masterUser, masterPassword       string
	reset, selectMaster, selectTest  localcmd.Script
	masterBootTimeout, bootTimeout   time.Duration
	bootInterval, controlTimeout     time.Duration
	writeTimeout                     time.Duration
	decompress                       flash.Mode
}

// New returns the dragonboard driver of the device cfg describes. Missing
// required keys, and keys that cannot mean what they are for, are errors
// naming the key.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("dragonboard: no device configuration")
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var o options
	if _, err := cfg.DeviceAddr(); err != nil {
		add(errors.New("device_ip: required (the board's address, in either image)"))
	}
	var rebootTimeout, selectTimeout time.Duration
	add(devconf.Durations(cfg.Raw, MaxDuration,
		devconf.DurationKey{Key: "master_boot_timeout", Default: DefaultMasterBootTimeout, Dst: &o.masterBootTimeout},
		devconf.DurationKey{Key: "boot_timeout", Default: DefaultBootTimeout, Dst: &o.bootTimeout},
		devconf.DurationKey{Key: "boot_check_interval", Default: DefaultBootCheckInterval, Dst: &o.bootInterval},
		devconf.DurationKey{Key: "control_timeout", Default: DefaultControlTimeout, Dst: &o.controlTimeout},
		devconf.DurationKey{Key: "write_timeout", Default: DefaultWriteTimeout, Dst: &o.writeTimeout},
		devconf.DurationKey{Key: "reboot_script_timeout", Default: DefaultRebootScriptTimeout, Dst: &rebootTimeout},
		devconf.DurationKey{Key: "select_script_timeout", Default: DefaultSelectScriptTimeout, Dst: &selectTimeout},
	))
	var err error
	for _, s := range []struct {
		key     string
		cmds    []string
		timeout time.Duration
		dst     *localcmd.Script
	}{
		{"reboot_script", cfg.RebootScript, rebootTimeout, &o.reset},
		{"select_master_script", nil, selectTimeout, &o.selectMaster},
		{"select_test_script", nil, selectTimeout, &o.selectTest},
	} {
		cmds := s.cmds
		if cmds == nil {
			if cmds, err = devconf.Strings(cfg.Raw, s.key); err != nil {
				add(err)
				continue
			}
		}
		if len(cmds) == 0 {
			add(fmt.Errorf("%s: required", s.key))
			continue
		}
		*s.dst, err = localcmd.New(s.key, cmds, s.timeout)
		add(err)
	}
	if o.testDevice, err = devconf.RemotePath(cfg.Raw, "test_device", ""); err == nil && o.testDevice == "" {
		err = errors.New("test_device: required (the card's device node on the master image)")
	}
	add(err)
	if o.writable, err = devconf.RemotePath(cfg.Raw, "snappy_writable_partition", ""); err == nil && o.writable == "" {
		err = errors.New("snappy_writable_partition: required (the partition of test_device that gets the test user)")
	}
	add(err)
	if o.mountPoint, err = devconf.RemotePath(cfg.Raw, "mount_point", DefaultMountPoint); err == nil && o.mountPoint == "/" {
		err = errors.New("mount_point: must not be /")
	}
	add(err)
	o.masterUser, err = cfg.Raw.String("master_user", DefaultMasterUser)
	add(err)
	if o.masterUser == "" {
		o.masterUser = DefaultMasterUser
	}
	o.masterPassword, err = cfg.Raw.String("master_password", DefaultMasterPassword)
	add(err)
	mode, err := cfg.Raw.String("decompress", "")
	if err == nil {
		o.decompress, err = flash.ParseMode(mode)
	}
	add(err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("dragonboard device %s: %w", display.Printable(cfg.Name), err)
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// provision is one run of Provision.
type provision struct {
	d      *Driver
	run    *drivers.Run
	dev    *drivers.DeviceConfig
	w      io.Writer
	log    *slog.Logger
	master *remote.Host
	keys   *confirmingPolicy
	src    image.Source
}

// Provision writes provision_data.url to the board's card from its master
// image and boots it (see the package documentation).
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dragonboard provision: %w", err)
	}
	dev := run.Device
	if dev == nil {
		dev = d.cfg
	}
	src, err := drivers.ImageSource(run.Job, "provision_data.url is required: the URL of the image to write to the board")
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	// Testflinger's pre_provision_hook, which every connector runs first
	// (the job's data is checked before: a bad job touches no hardware).
	if err := d.PreProvision(ctx, run); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("dragonboard provision: %w", ctx.Err())
		}
		return err
	}
	log := run.Logger().With("device", dev.Name)
	addr, err := dev.DeviceAddr()
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	settings := dev.SSHSettings()
	keys := newConfirmingPolicy(settings.Policy())
	cfg := sshx.Config{
		Addr: addr, User: d.opts.masterUser, Password: d.opts.masterPassword,
		HostKeys: keys, DialTimeout: min(checkTimeout, d.opts.controlTimeout), Log: log,
	}
	if settings.KeyFile != "" {
		cfg.KeyFiles = []string{settings.KeyFile}
	}
	p := &provision{
		d: d, run: run, dev: dev, w: run.Output(), log: log, src: src, keys: keys,
		master: &remote.Host{
			Config: cfg, Name: dev.Name + "-master", What: fmt.Sprintf("the master image %s@%s", display.Printable(cfg.User), addr),
			Timeout: d.opts.controlTimeout, RetryFor: d.opts.controlTimeout, Log: log,
		},
	}
	defer p.master.Close()
	start := time.Now()
	err = p.do(ctx)
	if ctx.Err() != nil {
		if err == nil {
			err = ctx.Err()
		}
		return fmt.Errorf("dragonboard provision: %w (%v)", ctx.Err(), err)
	}
	if err != nil {
		log.Warn("dragonboard: provisioning failed", "err", err, "recovery", drivers.IsRecovery(err))
		return err
	}
	fmt.Fprintf(p.w, "Provisioning done in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// do runs the steps of Provision.
func (p *provision) do(ctx context.Context) error {
	if err := p.ensureMaster(ctx); err != nil {
		return err
	}
	res, err := p.install(ctx)
	if err != nil {
		var pe *drivers.ProvisioningError
		if errors.As(err, &pe) && ctx.Err() == nil {
			p.wipe(ctx)
		}
		return err
	}
	fmt.Fprintln(p.w, "Selecting the test image")
	if err := p.script(ctx, p.d.opts.selectTest); err != nil {
		return err
	}
	fmt.Fprintln(p.w, "Rebooting into the test image")
	if _, err := p.master.Run(ctx, []string{"sudo", "reboot"}, remote.RunOptions{Once: true}); err != nil {
		if ctx.Err() != nil {
			return err
		}
		fmt.Fprintf(p.w, "The master image did not reboot (%v); resetting the board\n", err)
		p.master.Close()
		if err := p.script(ctx, p.d.opts.reset); err != nil {
			return err
		}
	}
	p.master.Close()
	booted, err := p.waitTest(ctx)
	if err != nil {
		return err
	}
	if res.osRelease != "" && booted != "" && !osrelease.Same(res.osRelease, booted) {
		return drivers.Recovery("the board booted %s, not the image written (%s): it does not boot test_device",
			display.Printable(osrelease.PrettyName(booted)), display.Printable(osrelease.PrettyName(res.osRelease)))
	}
	if name := osrelease.PrettyName(booted); name != "" {
		fmt.Fprintf(p.w, "The test image is up, running %s\n", display.Printable(name))
	} else {
		fmt.Fprintln(p.w, "The test image is up")
	}
	return nil
}

// script runs a local script (reboot_script, select_*_script); a command
// that fails or times out is a recovery failure.
func (p *provision) script(ctx context.Context, s localcmd.Script) error {
	err := localcmd.Runner{Dir: p.run.Dir, Env: p.run.Env, Out: p.w}.Run(ctx, s)
	var se *localcmd.Error
	if errors.As(err, &se) {
		return drivers.Recovery("%w", err)
	}
	return err
}

// ensureMaster makes sure the board runs its master image.
func (p *provision) ensureMaster(ctx context.Context) error {
	o := p.d.opts
	fmt.Fprintf(p.w, "Checking whether the board runs its master image (%s)\n", p.master.What)
	err := p.probeMaster(ctx)
	if err == nil {
		fmt.Fprintln(p.w, "The master image is up")
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	why := err.Error()
	if sshx.IsHostKeyError(err) {
		// Expected while the test image runs: both answer at one address.
		why = "the host key presented is not the master image's"
	}
	fmt.Fprintf(p.w, "It does not (%s): selecting the master image and resetting the board\n", why)
	if err := p.script(ctx, o.selectMaster); err != nil {
		return err
	}
	if err := p.script(ctx, o.reset); err != nil {
		return err
	}
	fmt.Fprintf(p.w, "Waiting up to %s for the master image\n", o.masterBootTimeout)
	wctx, cancel := context.WithTimeout(ctx, o.masterBootTimeout)
	defer cancel()
	b := sshx.Backoff{Initial: o.bootInterval, Max: o.bootInterval, Multiplier: 1, Jitter: 0.1}
	var last error // the last failure not cut short by the deadline
	err = sshx.Retry(wctx, b, func(ctx context.Context) error {
		err := p.probeMaster(ctx)
		if err != nil {
			if sshx.IsHostKeyError(err) {
				return sshx.Permanent(err)
			}
			if ctx.Err() == nil {
				last = err
			}
			return err
		}
		return nil
	})
	switch {
	case err == nil:
		fmt.Fprintln(p.w, "The master image is up")
		return nil
	case ctx.Err() != nil:
		return err
	case sshx.IsHostKeyError(err):
		return drivers.Recovery("the board does not present the master image's recorded host key: %w", err)
	}
	if last != nil {
		err = last
	}
	return drivers.Recovery("the master image did not come up within %s (master_boot_timeout): %w", o.masterBootTimeout, err)
}

// probeMaster connects to the board once (no retries) and checks
// /etc/issue; once the master image is identified, its host key is
// recorded if it was not, and the connection becomes p.master's.
func (p *provision) probeMaster(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, min(checkTimeout, p.d.opts.masterBootTimeout))
	defer cancel()
	c, err := sshx.Dial(cctx, p.master.Config, p.master.Name)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("checking the master image: %w", ctx.Err())
		}
		return err
	}
	issue, err := remote.Output(cctx, c, []string{"cat", "/etc/issue"})
	switch {
	case err != nil && ctx.Err() != nil:
		err = fmt.Errorf("checking the master image: %w", ctx.Err())
	case err != nil:
		err = fmt.Errorf("reading /etc/issue: %w", err)
	case !strings.Contains(issue, masterMarker):
		err = fmt.Errorf("/etc/issue does not say %q: another image answers", masterMarker)
	default:
		err = p.keys.confirm(p.master.Name)
	}
	if err != nil {
		_ = c.Close()
		return err
	}
	p.master.Use(c)
	return nil
}

// installed is what install found out about the image written.
type installed struct {
	// osRelease is the image's /etc/os-release, when the writable
	// partition is its root file system (classic images).
	osRelease string
}

// install writes the image to test_device and prepares it. Its failures
// other than the master image becoming unreachable are provisioning
// failures.
func (p *provision) install(ctx context.Context) (installed, error) {
	o := p.d.opts
	// A partition left mounted would be written under the file system's feet.
	for _, target := range []string{o.mountPoint, o.writable} {
		if _, err := p.master.Run(ctx, []string{"sudo", "umount", target}, remote.RunOptions{}); err != nil && !remote.IsExit(err) {
			return installed{}, p.unreachable(err)
		}
	}
	if err := p.write(ctx); err != nil {
		return installed{}, err
	}
	if err := p.keys.Reset(p.dev.Name); err != nil {
		return installed{}, &drivers.ProvisioningError{Err: fmt.Errorf("forgetting the host key of the image replaced: %w", err)}
	}
	if _, err := p.master.Run(ctx, []string{"sync"}, remote.RunOptions{}); err != nil {
		if !remote.IsExit(err) {
			return installed{}, p.unreachable(err)
		}
		fmt.Fprintf(p.w, "Warning: sync failed: %v\n", err)
	}
	if _, err := p.master.Run(ctx, []string{"sudo", "hdparm", "-z", o.testDevice}, remote.RunOptions{}); err != nil {
		return installed{}, p.failed("re-reading the partition table of "+o.testDevice, err)
	}
	fmt.Fprintf(p.w, "Creating the test user on %s\n", o.writable)
	if _, err := p.master.Run(ctx, []string{"sudo", "mount", o.writable, o.mountPoint}, remote.RunOptions{}); err != nil {
		return installed{}, p.failed(fmt.Sprintf("mounting the writable partition %s (check snappy_writable_partition)", o.writable), err)
	}
	res, err := p.seed(ctx)
	if _, uerr := p.master.Run(ctx, []string{"sudo", "umount", o.mountPoint}, remote.RunOptions{}); uerr != nil && err == nil {
		err = fmt.Errorf("unmounting %s: %w", o.mountPoint, uerr)
	}
	if err != nil {
		return installed{}, p.failed("creating the test user", err)
	}
	if _, err := p.master.Run(ctx, []string{"sync"}, remote.RunOptions{}); err != nil && !remote.IsExit(err) {
		return installed{}, p.unreachable(err)
	}
	return res, nil
}

// failed reports a step of install as failed: a provisioning failure,
// unless the master image became unreachable or ctx is done.
func (p *provision) failed(what string, err error) error {
	if remote.IsUnreachable(err) {
		return p.unreachable(err)
	}
	return &drivers.ProvisioningError{Err: fmt.Errorf("%s: %w", what, err)}
}

// unreachable reports the master image as lost: a recovery failure (or
// an error wrapping ctx.Err() when the phase was cancelled; Provision
// returns that instead).
func (p *provision) unreachable(err error) error {
	return drivers.Recovery("lost the master image: %w", err)
}

// seed writes the cloud-init seed and the sudoers file on the writable
// partition mounted on mount_point.
func (p *provision) seed(ctx context.Context) (installed, error) {
	mnt := p.d.opts.mountPoint
	ls, err := p.master.Run(ctx, []string{"ls", mnt}, remote.RunOptions{})
	if err != nil {
		return installed{}, fmt.Errorf("listing %s: %w", mnt, err)
	}
	base := mnt
	if hasEntry(ls, "system-data") {
		base = path.Join(mnt, "system-data")
	}
	files := []struct {
		path, content string
		perm          os.FileMode
	}{
		{path.Join(cloudinit.SeedDir, "meta-data"), cloudinit.MetaData, 0},
		{path.Join(cloudinit.SeedDir, "user-data"), cloudinit.UserData, 0},
		{"etc/sudoers.d/ubuntu", cloudinit.Sudoers, 0o440},
	}
	for _, f := range files {
		if err := p.master.WriteFile(ctx, path.Join(base, f.path), []byte(f.content), f.perm); err != nil {
			return installed{}, err
		}
	}
	var res installed
	if base == mnt && hasEntry(ls, "etc") {
		osr, err := p.master.Run(ctx, []string{"cat", path.Join(mnt, "etc/os-release")}, remote.RunOptions{})
		switch {
		case err == nil:
			res.osRelease = osr
		case !remote.IsExit(err):
			return installed{}, err
		}
	}
	return res, nil
}

func hasEntry(ls, name string) bool {
	for _, e := range strings.Fields(ls) {
		if e == name {
			return true
		}
	}
	return false
}

// write streams the image into test_device on the master image.
func (p *provision) write(ctx context.Context) error {
	o := p.d.opts
	_, err := p.master.WriteImage(ctx, remote.ImageWrite{
		Source: p.src,
		Flash: flash.Options{
			Device:     o.testDevice,
			Sudo:       true,
			Decompress: o.decompress,
			Cache:      p.run.Images,
			Progress:   p.run.ReportProgress,
			Out:        p.w,
			Log:        p.log,
		},
		Timeout: o.writeTimeout, TimeoutKey: "write_timeout",
	})
	if remote.IsUnreachable(err) {
		return p.unreachable(err)
	}
	return err
}

// wipe clears test_device's partition table after a failure, so that the
// board does not boot a half-written image (best effort).
func (p *provision) wipe(ctx context.Context) {
	o := p.d.opts
	fmt.Fprintf(p.w, "Wiping %s so that the board does not boot a partial image\n", o.testDevice)
	wctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	if _, err := p.master.Run(wctx, []string{"sudo", "sgdisk", "-o", o.testDevice}, remote.RunOptions{}); err != nil {
		fmt.Fprintf(p.w, "Warning: could not wipe %s: %v\n", o.testDevice, err)
		p.log.Warn("dragonboard: wiping the test device failed", "err", err)
	}
}

// waitTest waits for the test image to accept a login as the test user
// and run `snap -h`, and returns its /etc/os-release ("" when it cannot
// be read).
func (p *provision) waitTest(ctx context.Context) (string, error) {
	o := p.d.opts
	cfg, err := p.dev.SSHSettings().DeviceConfig(p.dev, p.run.Job, p.log)
	if err != nil {
		return "", &drivers.ProvisioningError{Err: err}
	}
	cfg.DialTimeout = min(checkTimeout, o.bootTimeout)
	cfg.HostKeys = p.keys
	who := fmt.Sprintf("%s@%s", display.Printable(cfg.User), cfg.Addr)
	fmt.Fprintf(p.w, "Waiting up to %s for the test image to boot and accept a login as %s\n", o.bootTimeout, who)
	wctx, cancel := context.WithTimeout(ctx, o.bootTimeout)
	defer cancel()
	var osRelease string
	var last error // the last failure not cut short by the deadline
	b := sshx.Backoff{Initial: o.bootInterval, Max: o.bootInterval, Multiplier: 1, Jitter: 0.1}
	err = sshx.Retry(wctx, b, func(ctx context.Context) error {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		c, err := sshx.Dial(cctx, cfg, p.dev.Name)
		if err != nil {
			if sshx.IsHostKeyError(err) {
				return sshx.Permanent(err)
			}
			if ctx.Err() == nil {
				last = err
			}
			return err
		}
		defer c.Close()
		if _, err := c.Run(cctx, []string{"snap", "-h"}, nil, nil); err != nil {
			err = fmt.Errorf("snap -h: %w (not the test image)", err)
			if ctx.Err() == nil {
				last = err
			}
			return err
		}
		if err := p.keys.confirm(p.dev.Name); err != nil {
			return sshx.Permanent(err)
		}
		if osr, err := remote.Output(cctx, c, []string{"cat", "/etc/os-release"}); err == nil {
			osRelease = osr
		}
		return nil
	})
	switch {
	case err == nil:
		return osRelease, nil
	case ctx.Err() != nil:
		return "", err
	case sshx.IsHostKeyError(err):
		return "", &drivers.ProvisioningError{Err: fmt.Errorf("the test image changed its host key while booting: %w", err)}
	}
	if last != nil {
		err = last
	}
	if errors.Is(err, sshx.ErrAuth) {
		return "", &drivers.ProvisioningError{Err: fmt.Errorf("the test image booted but refuses the login as %s (was the test user created?): %w", who, err)}
	}
	// The image was written in full: one that does not boot is the image's
	// fault as far as anyone can tell, and the next provisioning starts
	// again from the master image.
	return "", &drivers.ProvisioningError{Err: fmt.Errorf("the image was written, but the board did not boot the test image within %s (boot_timeout; is it a bootable image for this board?): %w", o.bootTimeout, err)}
}

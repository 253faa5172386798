// Package cm3 is the cm3 driver: a Raspberry Pi Compute Module 3 whose
// eMMC is written through a "sidecar" Raspberry Pi (the control host),
// whose GPIO 16 drives the CM3's USB-boot pin. As Testflinger's cm3
// connector (devices/cm3/cm3.py in canonical/testflinger), provisioning
// runs these steps over SSH to control_user@control_host:
//
//  1. remove a regular file at test_device on the sidecar, which a dd run
//     while no eMMC was attached leaves behind;
//  2. sudo pi3gpio set high 16 (USB-boot mode), then a hard reset
//     (reboot_script, run on this machine): the CM3's eMMC appears on the
//     sidecar as a USB disk at test_device;
//  3. write provision_data.url to it, then sudo sync and
//     sudo hdparm -z test_device (so that the sidecar sees the new
//     partitions; cm3-installer does that in Testflinger);
//  4. find the image type (lsblk -J test_device, then each partition
//     mounted on mount_point and its top-level entries listed: etc means
//     classic Ubuntu, system-data Ubuntu Core, snaps Ubuntu Core 20+) and
//     write the cloud-init NoCloud seed that creates the user ubuntu with
//     the password ubuntu (and, on classic images, remove
//     etc/cloud/cloud.cfg.d/99-fake_cloud.cfg, which would hide it);
//  5. sudo sync, sudo udisksctl power-off -b test_device,
//     sudo pi3gpio set low 16, and a hard reset: the CM3 boots its eMMC;
//  6. wait for the CM3 to accept an SSH login as test_username (default
//     ubuntu, password test_password, default ubuntu) at device_ip.
//
// Before these steps the job's provision_data is checked, then the
// control-host pre-provision hook of drivers.Base runs, as Testflinger's
// pre_provision_hook does for every connector (see package controlhost:
// for the sidecar, the power cycle needs control_host_reboot_script; the
// setup/provisioning request is best effort). The test phase runs the
// pre-test hook.
//
// provision_data keys: url (required: an http or https URL of a raw or
// xz, gzip, zstd or bzip2 compressed disk image) and sha256 (optional:
// the sha256 of the file the URL serves, checked once it is written).
// Other URL schemes, file URLs included, are refused: a job must not read
// the lab host's files.
//
// Device configuration keys: control_host (required; may carry a port as
// host:port), control_port, control_user (default ubuntu),
// control_password, device_ip, ssh_port, test_device (default /dev/sda),
// reboot_script (required), the control-host hook keys of package
// controlhost and, beyond Testflinger's (durations in seconds or as "90s",
// "500ms"):
//
//	boot_timeout: 600          # wait for the new image to accept a login
//	boot_check_interval: 10    # between login attempts meanwhile
//	usb_timeout: 60            # wait for the eMMC to appear on the sidecar
//	control_timeout: 60        # each sidecar command; retries of a broken link
//	write_timeout: 1800        # writing the image
//	reboot_script_timeout: 120 # each reboot_script command
//	mount_point: /mnt          # where the sidecar mounts the image's partitions
//	decompress: auto           # auto, local or remote (see package flash)
//
// Where Flinger differs from Testflinger, and why:
//
//   - The image is streamed from this machine (through the host's image
//     cache, with progress reports) into dd on the sidecar over the SSH
//     connection, instead of `sudo cm3-installer <url>` downloading it on
//     the sidecar: the sidecar needs no Internet access nor the installer,
//     devices provisioned with the same image download it once, and a
//     corrupt or truncated image is reported as such.
//   - test_device is used throughout; Testflinger uses it for lsblk only
//     and names /dev/sda elsewhere.
//   - Seed files are written with `sudo tee PATH`, their content on
//     standard input: no job or configuration value is ever part of a
//     remote shell line. Both spellings of 99-fake?cloud.cfg are removed
//     (Testflinger relies on a shell glob).
//   - Sidecar commands are retried on a new connection when the link
//     breaks; the image write itself is not.
//   - The device's recorded SSH host key is forgotten once the new image
//     is written (a new image has a new key); a key that changes at any
//     other time, the sidecar's included, is refused.
//   - When the new image's /etc/os-release could be read from the eMMC
//     (classic images), the one the CM3 boots must match it: a CM3 that
//     boots something else (a stale boot medium) is a recovery failure
//     where Testflinger would report success.
//   - The fixed sleeps of Testflinger (5 s between steps) are replaced by
//     waiting for what the step is for.
//
// Outcomes: a job without a usable url, an image that cannot be fetched
// or is corrupt, a write that fails half way (an I/O error, the link to
// the sidecar dropping) and an image the test user cannot be created on
// (one without partitions) are provisioning failures: the device can be
// provisioned again. A sidecar that cannot be reached (or whose host key
// changed) or whose commands fail, a failing or timed-out reboot_script
// and an eMMC that does not appear are recovery failures (exit 46). A CM3
// that does not boot the image written within boot_timeout (as in
// Testflinger: the image is the likely culprit, and the eMMC can be
// written again through the sidecar) and one that boots but refuses the
// login are provisioning failures. Cancellation stops at once (the write
// included) and is never a recovery failure.
package cm3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/flingerlab/flinger/drivers"
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
const Type = "cm3"

// Defaults of the device keys.
const (
	DefaultTestDevice          = "/dev/sda"
	DefaultMountPoint          = "/mnt"
	DefaultBootTimeout         = 600 * time.Second
	DefaultBootCheckInterval   = 10 * time.Second
	DefaultUSBTimeout          = 60 * time.Second
	DefaultControlTimeout      = 60 * time.Second
	DefaultWriteTimeout        = 1800 * time.Second
	DefaultRebootScriptTimeout = 120 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 6 * time.Hour

// usbPollInterval is how often the sidecar is asked whether the eMMC has
// appeared.
const usbPollInterval = 250 * time.Millisecond

// checkTimeout bounds one login attempt while waiting for the CM3.
const checkTimeout = 30 * time.Second

func init() {
	drivers.Register(Type, New)
}

// Driver is the cm3 driver.
type Driver struct {
	drivers.Base
	cfg  *drivers.DeviceConfig
	opts options
}

var _ drivers.Driver = (*Driver)(nil)

type options struct {
	testDevice, mountPoint string
	reset                  localcmd.Script
	bootTimeout            time.Duration
	bootInterval           time.Duration
	usbTimeout             time.Duration
	controlTimeout         time.Duration
	writeTimeout           time.Duration
	decompress             flash.Mode
}

// New returns the cm3 driver of the device cfg describes. A device
// without control_host or reboot_script, and keys that cannot mean what
// they are for, are errors naming the key.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("cm3: no device configuration")
	}
	var errs []error
	if cfg.ControlHost == "" {
		errs = append(errs, errors.New("control_host: required (the sidecar that writes the CM3's eMMC)"))
	} else if _, _, err := cfg.SSHSettings().ControlHostConfig(cfg, nil); err != nil {
		errs = append(errs, err)
	}
	if len(cfg.RebootScript) == 0 {
		errs = append(errs, errors.New("reboot_script: required (the commands that hard-reset the CM3)"))
	}
	var o options
	var scriptTimeout time.Duration
	if err := devconf.Durations(cfg.Raw, MaxDuration,
		devconf.DurationKey{Key: "boot_timeout", Default: DefaultBootTimeout, Dst: &o.bootTimeout},
		devconf.DurationKey{Key: "boot_check_interval", Default: DefaultBootCheckInterval, Dst: &o.bootInterval},
		devconf.DurationKey{Key: "usb_timeout", Default: DefaultUSBTimeout, Dst: &o.usbTimeout},
		devconf.DurationKey{Key: "control_timeout", Default: DefaultControlTimeout, Dst: &o.controlTimeout},
		devconf.DurationKey{Key: "write_timeout", Default: DefaultWriteTimeout, Dst: &o.writeTimeout},
		devconf.DurationKey{Key: "reboot_script_timeout", Default: DefaultRebootScriptTimeout, Dst: &scriptTimeout},
	); err != nil {
		errs = append(errs, err)
	}
	var err error
	if o.reset, err = localcmd.New("reboot_script", cfg.RebootScript, scriptTimeout); err != nil {
		errs = append(errs, err)
	}
	if o.testDevice, err = devconf.RemotePath(cfg.Raw, "test_device", DefaultTestDevice); err != nil {
		errs = append(errs, err)
	}
	if o.mountPoint, err = devconf.RemotePath(cfg.Raw, "mount_point", DefaultMountPoint); err != nil {
		errs = append(errs, err)
	} else if o.mountPoint == "/" {
		errs = append(errs, errors.New("mount_point: must not be /"))
	}
	mode, err := cfg.Raw.String("decompress", "")
	if err == nil {
		o.decompress, err = flash.ParseMode(mode)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("cm3 device %s: %w", display.Printable(cfg.Name), err)
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// provision is one run of Provision.
type provision struct {
	d    *Driver
	run  *drivers.Run
	dev  *drivers.DeviceConfig
	w    io.Writer
	log  *slog.Logger
	side *remote.Host
	src  image.Source
}

// Provision writes provision_data.url to the CM3's eMMC and boots it (see
// the package documentation).
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cm3 provision: %w", err)
	}
	dev := run.Device
	if dev == nil {
		dev = d.cfg
	}
	src, err := drivers.ImageSource(run.Job, "provision_data.url is required: the URL of the image to write to the CM3")
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	// Testflinger's pre_provision_hook, which every connector runs first
	// (the job's data is checked before: a bad job touches no hardware).
	if err := d.PreProvision(ctx, run); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("cm3 provision: %w", ctx.Err())
		}
		return err
	}
	log := run.Logger().With("device", dev.Name)
	cfg, keyName, err := dev.SSHSettings().ControlHostConfig(dev, log)
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	cfg.DialTimeout = min(checkTimeout, d.opts.controlTimeout)
	p := &provision{
		d: d, run: run, dev: dev, w: run.Output(), log: log, src: src,
		side: &remote.Host{
			Config: cfg, Name: keyName, What: fmt.Sprintf("the sidecar %s@%s", display.Printable(cfg.User), display.Printable(cfg.Addr)),
			Timeout: d.opts.controlTimeout, RetryFor: d.opts.controlTimeout, Log: log,
		},
	}
	defer p.side.Close()
	start := time.Now()
	err = p.do(ctx)
	if ctx.Err() != nil {
		if err == nil {
			err = ctx.Err()
		}
		return fmt.Errorf("cm3 provision: %w (%v)", ctx.Err(), err)
	}
	if err != nil {
		log.Warn("cm3: provisioning failed", "err", err, "recovery", drivers.IsRecovery(err))
		return err
	}
	fmt.Fprintf(p.w, "Provisioning done in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// do runs the steps of Provision.
func (p *provision) do(ctx context.Context) error {
	o := p.d.opts
	fmt.Fprintf(p.w, "Connecting to %s\n", p.side.What)
	if _, err := p.side.Connect(ctx); err != nil {
		return p.hardware("connecting to the sidecar", err)
	}
	if _, err := p.side.Run(ctx, []string{"test", "-f", o.testDevice}, remote.RunOptions{}); err == nil {
		fmt.Fprintf(p.w, "Removing %s on the sidecar: it is a regular file, not the CM3's eMMC\n", o.testDevice)
		if _, err := p.side.Run(ctx, []string{"sudo", "rm", "-f", o.testDevice}, remote.RunOptions{}); err != nil {
			return p.hardware("removing the regular file at "+o.testDevice, err)
		}
	} else if !remote.IsExit(err) {
		return p.hardware("checking "+o.testDevice, err)
	}
	fmt.Fprintln(p.w, "Selecting USB-boot mode (GPIO 16 high)")
	if _, err := p.side.Run(ctx, []string{"sudo", "pi3gpio", "set", "high", "16"}, remote.RunOptions{}); err != nil {
		return p.hardware("setting GPIO 16 high", err)
	}
	if err := p.hardReset(ctx); err != nil {
		return err
	}
	if err := p.waitTestDevice(ctx); err != nil {
		return err
	}
	if err := p.write(ctx); err != nil {
		return err
	}
	if err := p.dev.SSHSettings().Policy().Reset(p.dev.Name); err != nil {
		return &drivers.ProvisioningError{Err: fmt.Errorf("forgetting the host key of the image replaced: %w", err)}
	}
	if _, err := p.side.Run(ctx, []string{"sudo", "sync"}, remote.RunOptions{}); err != nil {
		return p.hardware("sync after writing the image", err)
	}
	if _, err := p.side.Run(ctx, []string{"sudo", "hdparm", "-z", o.testDevice}, remote.RunOptions{}); err != nil {
		if !remote.IsExit(err) {
			return p.hardware("re-reading the partition table", err)
		}
		fmt.Fprintf(p.w, "Warning: could not re-read the partition table of %s: %v\n", o.testDevice, err)
	}
	res, err := p.seed(ctx)
	if err != nil {
		if remote.IsUnreachable(err) || ctx.Err() != nil {
			return p.hardware("creating the test user", err)
		}
		return &drivers.ProvisioningError{Err: fmt.Errorf("creating the test user on the image: %w", err)}
	}
	if _, err := p.side.Run(ctx, []string{"sudo", "sync"}, remote.RunOptions{}); err != nil {
		return p.hardware("sync after creating the test user", err)
	}
	if _, err := p.side.Run(ctx, []string{"sudo", "udisksctl", "power-off", "-b", o.testDevice}, remote.RunOptions{}); err != nil {
		if !remote.IsExit(err) {
			return p.hardware("powering off the eMMC on the sidecar", err)
		}
		// The reset below takes the eMMC away from the sidecar anyway.
		fmt.Fprintf(p.w, "Warning: could not power off %s on the sidecar: %v\n", o.testDevice, err)
	}
	fmt.Fprintln(p.w, "Selecting eMMC boot (GPIO 16 low)")
	if _, err := p.side.Run(ctx, []string{"sudo", "pi3gpio", "set", "low", "16"}, remote.RunOptions{}); err != nil {
		return p.hardware("setting GPIO 16 low", err)
	}
	p.side.Close()
	if err := p.hardReset(ctx); err != nil {
		return err
	}
	booted, err := p.waitBoot(ctx)
	if err != nil {
		return err
	}
	if res.osRelease != "" && booted != "" && !osrelease.Same(res.osRelease, booted) {
		return drivers.Recovery("the CM3 booted %s, not the image written (%s): it does not boot its eMMC",
			display.Printable(osrelease.PrettyName(booted)), display.Printable(osrelease.PrettyName(res.osRelease)))
	}
	if name := osrelease.PrettyName(booted); name != "" {
		fmt.Fprintf(p.w, "The CM3 is up, running %s\n", display.Printable(name))
	} else {
		fmt.Fprintln(p.w, "The CM3 is up")
	}
	return nil
}

// hardware reports a step that controls the rig as failed: the device
// cannot be brought back until someone looks (a recovery failure).
func (p *provision) hardware(what string, err error) error {
	return drivers.Recovery("%s: %w", what, err)
}

// hardReset runs reboot_script; a command that fails or times out is a
// recovery failure.
func (p *provision) hardReset(ctx context.Context) error {
	fmt.Fprintln(p.w, "Resetting the CM3")
	err := localcmd.Runner{Dir: p.run.Dir, Env: p.run.Env, Out: p.w}.Run(ctx, p.d.opts.reset)
	var se *localcmd.Error
	if errors.As(err, &se) {
		return drivers.Recovery("hard reset: %w", err)
	}
	return err
}

// waitTestDevice waits for the eMMC to appear on the sidecar.
func (p *provision) waitTestDevice(ctx context.Context) error {
	o := p.d.opts
	fmt.Fprintf(p.w, "Waiting up to %s for the CM3's eMMC to appear as %s on the sidecar\n", o.usbTimeout, o.testDevice)
	wctx, cancel := context.WithTimeout(ctx, o.usbTimeout)
	defer cancel()
	t := time.NewTicker(usbPollInterval)
	defer t.Stop()
	for {
		_, err := p.side.Run(wctx, []string{"test", "-b", o.testDevice}, remote.RunOptions{})
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return err
		case wctx.Err() != nil:
			return drivers.Recovery("the CM3's eMMC did not appear as %s on the sidecar within %s of the reset in USB-boot mode", o.testDevice, o.usbTimeout)
		case !remote.IsExit(err):
			return p.hardware("waiting for the eMMC", err)
		}
		select {
		case <-wctx.Done():
		case <-t.C:
		}
	}
}

// write streams the image into the eMMC.
func (p *provision) write(ctx context.Context) error {
	o := p.d.opts
	_, err := p.side.WriteImage(ctx, remote.ImageWrite{
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
		return p.hardware("connecting to the sidecar", err)
	}
	return err
}

// waitBoot waits for the CM3 to accept a login as the test user and
// returns its /etc/os-release ("" when it cannot be read).
func (p *provision) waitBoot(ctx context.Context) (string, error) {
	o := p.d.opts
	cfg, err := p.dev.SSHSettings().DeviceConfig(p.dev, p.run.Job, p.log)
	if err != nil {
		return "", &drivers.ProvisioningError{Err: err}
	}
	cfg.DialTimeout = min(checkTimeout, o.bootTimeout)
	who := fmt.Sprintf("%s@%s", display.Printable(cfg.User), cfg.Addr)
	fmt.Fprintf(p.w, "Waiting up to %s for the CM3 to boot and accept a login as %s\n", o.bootTimeout, who)
	wctx, cancel := context.WithTimeout(ctx, o.bootTimeout)
	defer cancel()
	c, err := sshx.WaitForSSH(wctx, cfg, p.dev.Name, o.bootInterval)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return "", err
	case sshx.IsHostKeyError(err):
		return "", &drivers.ProvisioningError{Err: fmt.Errorf("the CM3 changed its host key while booting the new image: %w", err)}
	case errors.Is(err, sshx.ErrAuth):
		return "", &drivers.ProvisioningError{Err: fmt.Errorf("the CM3 booted but refuses the login as %s (was the test user created?): %w", who, err)}
	default:
		// The image was written in full: one that does not boot is the
		// image's fault as far as anyone can tell, and the eMMC can be
		// written again through the sidecar.
		return "", &drivers.ProvisioningError{Err: fmt.Errorf("the image was written, but the CM3 did not boot it within %s (boot_timeout; is it a bootable image for a CM3?): %w", o.bootTimeout, err)}
	}
	defer c.Close()
	rctx, rcancel := context.WithTimeout(ctx, checkTimeout)
	defer rcancel()
	osr, err := remote.Output(rctx, c, []string{"cat", "/etc/os-release"})
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("reading the booted image's os-release: %w", ctx.Err())
		}
		p.log.Warn("cm3: cannot read the booted image's os-release", "err", err)
		return "", nil
	}
	return osr, nil
}

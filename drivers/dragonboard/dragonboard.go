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
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
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

// sudoers gives the test user sudo without a password.
const sudoers = "ubuntu ALL=(ALL) NOPASSWD:ALL\n"

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
	reset, selectMaster, selectTest  script
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
	for _, k := range []struct {
		key string
		def time.Duration
		dst *time.Duration
	}{
		{"master_boot_timeout", DefaultMasterBootTimeout, &o.masterBootTimeout},
		{"boot_timeout", DefaultBootTimeout, &o.bootTimeout},
		{"boot_check_interval", DefaultBootCheckInterval, &o.bootInterval},
		{"control_timeout", DefaultControlTimeout, &o.controlTimeout},
		{"write_timeout", DefaultWriteTimeout, &o.writeTimeout},
	} {
		v, err := durationKey(cfg.Raw, k.key, k.def)
		add(err)
		*k.dst = v
	}
	rebootTimeout, err := durationKey(cfg.Raw, "reboot_script_timeout", DefaultRebootScriptTimeout)
	add(err)
	selectTimeout, err := durationKey(cfg.Raw, "select_script_timeout", DefaultSelectScriptTimeout)
	add(err)
	for _, s := range []struct {
		key     string
		cmds    []string
		timeout time.Duration
		dst     *script
	}{
		{"reboot_script", cfg.RebootScript, rebootTimeout, &o.reset},
		{"select_master_script", nil, selectTimeout, &o.selectMaster},
		{"select_test_script", nil, selectTimeout, &o.selectTest},
	} {
		cmds := s.cmds
		if cmds == nil {
			if cmds, err = stringsKey(cfg.Raw, s.key); err != nil {
				add(err)
				continue
			}
		}
		if len(cmds) == 0 {
			add(fmt.Errorf("%s: required", s.key))
			continue
		}
		*s.dst, err = parseScript(s.key, cmds, s.timeout)
		add(err)
	}
	if o.testDevice, err = pathKey(cfg.Raw, "test_device", ""); err == nil && o.testDevice == "" {
		err = errors.New("test_device: required (the card's device node on the master image)")
	}
	add(err)
	if o.writable, err = pathKey(cfg.Raw, "snappy_writable_partition", ""); err == nil && o.writable == "" {
		err = errors.New("snappy_writable_partition: required (the partition of test_device that gets the test user)")
	}
	add(err)
	if o.mountPoint, err = pathKey(cfg.Raw, "mount_point", DefaultMountPoint); err == nil && o.mountPoint == "/" {
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
		return nil, fmt.Errorf("dragonboard device %s: %w", quote(cfg.Name), err)
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// stringsKey reads a key holding a list of strings (or one string).
func stringsKey(d events.Data, key string) ([]string, error) {
	switch v := d[key].(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []string:
		return v, nil
	case []any:
		out := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s[%d]: must be a string, got %s", key, i, events.TypeName(e))
			}
			out[i] = s
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%s: must be a list of commands, got %s", key, events.TypeName(v))
	}
}

// durationKey reads a duration key: whole seconds, a Go duration ("500ms",
// "1m30s") or a Flinger duration ("2h30m"), more than 0 and at most
// MaxDuration.
func durationKey(d events.Data, key string, def time.Duration) (time.Duration, error) {
	var v time.Duration
	var err error
	if s, ok := d[key].(string); ok {
		if v, err = time.ParseDuration(s); err != nil {
			v, err = d.Duration(key, def)
		}
	} else {
		v, err = d.Duration(key, def)
	}
	if err != nil {
		return def, err
	}
	if v <= 0 || v > MaxDuration {
		return def, fmt.Errorf("%s: %s out of range (more than 0s, at most %s)", key, v, MaxDuration)
	}
	return v, nil
}

// pathKey reads a key holding an absolute path on the master image.
func pathKey(d events.Data, key, def string) (string, error) {
	p, err := d.String(key, def)
	if err != nil {
		return def, err
	}
	if p == "" {
		return def, nil
	}
	if !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return def, fmt.Errorf("%s: %q must be a clean absolute path without spaces", key, p)
	}
	return p, nil
}

// source reads the image to write from provision_data: url (http or
// https) and an optional sha256.
func source(job *events.Job) (image.Source, error) {
	var pd events.Data
	if job != nil {
		pd = job.ProvisionData
	}
	u, err := pd.String("url", "")
	if err != nil {
		return image.Source{}, fmt.Errorf("provision_data.%w", err)
	}
	if u == "" {
		return image.Source{}, errors.New("provision_data.url is required: the URL of the image to write to the board")
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return image.Source{}, fmt.Errorf("provision_data.url: not a valid URL: %w", err)
	}
	if (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		return image.Source{}, fmt.Errorf("provision_data.url: %s is not an http or https URL", quote(u))
	}
	sum, err := pd.String("sha256", "")
	if err != nil {
		return image.Source{}, fmt.Errorf("provision_data.%w", err)
	}
	return image.Source{URL: u, SHA256: sum}, nil
}

func out(run *drivers.Run) io.Writer {
	if run.Out == nil {
		return io.Discard
	}
	return run.Out
}

// provision is one run of Provision.
type provision struct {
	d      *Driver
	run    *drivers.Run
	dev    *drivers.DeviceConfig
	w      io.Writer
	log    *slog.Logger
	master *remote
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
	src, err := source(run.Job)
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
		d: d, run: run, dev: dev, w: out(run), log: log, src: src, keys: keys,
		master: &remote{
			cfg: cfg, name: dev.Name + "-master", what: fmt.Sprintf("the master image %s@%s", quote(cfg.User), addr),
			timeout: d.opts.controlTimeout, log: log,
		},
	}
	defer p.master.close()
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
	if err := p.master.runOnce(ctx, []string{"sudo", "reboot"}); err != nil {
		if ctx.Err() != nil {
			return err
		}
		fmt.Fprintf(p.w, "The master image did not reboot (%v); resetting the board\n", err)
		p.master.close()
		if err := p.script(ctx, p.d.opts.reset); err != nil {
			return err
		}
	}
	p.master.close()
	booted, err := p.waitTest(ctx)
	if err != nil {
		return err
	}
	if res.osRelease != "" && booted != "" && !sameRelease(res.osRelease, booted) {
		return drivers.Recovery("the board booted %s, not the image written (%s): it does not boot test_device",
			quote(releaseName(booted)), quote(releaseName(res.osRelease)))
	}
	if name := releaseName(booted); name != "" {
		fmt.Fprintf(p.w, "The test image is up, running %s\n", quote(name))
	} else {
		fmt.Fprintln(p.w, "The test image is up")
	}
	return nil
}

// script runs a local script (reboot_script, select_*_script); a command
// that fails or times out is a recovery failure.
func (p *provision) script(ctx context.Context, s script) error {
	err := s.run(ctx, p.run, p.w)
	var se *scriptError
	if errors.As(err, &se) {
		return drivers.Recovery("%w", err)
	}
	return err
}

// ensureMaster makes sure the board runs its master image.
func (p *provision) ensureMaster(ctx context.Context) error {
	o := p.d.opts
	fmt.Fprintf(p.w, "Checking whether the board runs its master image (%s)\n", p.master.what)
	probe := *p.master
	probe.timeout = min(checkTimeout, o.masterBootTimeout)
	err := p.probeMaster(ctx, &probe)
	if err == nil {
		p.master.c, probe.c = probe.c, nil
		fmt.Fprintln(p.w, "The master image is up")
		return nil
	}
	probe.close()
	if ctx.Err() != nil {
		return err
	}
	why := err.Error()
	if isHostKeyError(err) {
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
		try := *p.master
		try.timeout = min(checkTimeout, o.masterBootTimeout)
		err := p.probeMaster(ctx, &try)
		if err != nil {
			try.close()
			if isHostKeyError(err) {
				return sshx.Permanent(err)
			}
			if ctx.Err() == nil {
				last = err
			}
			return err
		}
		p.master.c = try.c
		return nil
	})
	switch {
	case err == nil:
		fmt.Fprintln(p.w, "The master image is up")
		return nil
	case ctx.Err() != nil:
		return err
	case isHostKeyError(err):
		return drivers.Recovery("the board does not present the master image's recorded host key: %w", err)
	}
	if last != nil {
		err = last
	}
	return drivers.Recovery("the master image did not come up within %s (master_boot_timeout): %w", o.masterBootTimeout, err)
}

// probeMaster connects r once (no retries) and checks /etc/issue; once
// the master image is identified, its host key is recorded if it was not.
func (p *provision) probeMaster(ctx context.Context, r *remote) error {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c, err := sshx.Dial(cctx, r.cfg, r.name)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("checking the master image: %w", ctx.Err())
		}
		return err
	}
	r.c = c
	var issue limitedBuffer
	if _, err := c.Run(cctx, []string{"cat", "/etc/issue"}, &issue, nil); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("checking the master image: %w", ctx.Err())
		}
		return fmt.Errorf("reading /etc/issue: %w", err)
	}
	if !strings.Contains(issue.String(), masterMarker) {
		return fmt.Errorf("/etc/issue does not say %q: another image answers", masterMarker)
	}
	return p.keys.confirm(r.name)
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
		if _, err := p.master.run(ctx, []string{"sudo", "umount", target}, nil); err != nil && !isExit(err) {
			return installed{}, p.unreachable(err)
		}
	}
	if err := p.write(ctx); err != nil {
		return installed{}, err
	}
	if err := p.keys.Reset(p.dev.Name); err != nil {
		return installed{}, &drivers.ProvisioningError{Err: fmt.Errorf("forgetting the host key of the image replaced: %w", err)}
	}
	if _, err := p.master.run(ctx, []string{"sync"}, nil); err != nil {
		if !isExit(err) {
			return installed{}, p.unreachable(err)
		}
		fmt.Fprintf(p.w, "Warning: sync failed: %v\n", err)
	}
	if _, err := p.master.run(ctx, []string{"sudo", "hdparm", "-z", o.testDevice}, nil); err != nil {
		return installed{}, p.failed("re-reading the partition table of "+o.testDevice, err)
	}
	fmt.Fprintf(p.w, "Creating the test user on %s\n", o.writable)
	if _, err := p.master.run(ctx, []string{"sudo", "mount", o.writable, o.mountPoint}, nil); err != nil {
		return installed{}, p.failed(fmt.Sprintf("mounting the writable partition %s (check snappy_writable_partition)", o.writable), err)
	}
	res, err := p.seed(ctx)
	if _, uerr := p.master.run(ctx, []string{"sudo", "umount", o.mountPoint}, nil); uerr != nil && err == nil {
		err = fmt.Errorf("unmounting %s: %w", o.mountPoint, uerr)
	}
	if err != nil {
		return installed{}, p.failed("creating the test user", err)
	}
	if _, err := p.master.run(ctx, []string{"sync"}, nil); err != nil && !isExit(err) {
		return installed{}, p.unreachable(err)
	}
	return res, nil
}

// failed reports a step of install as failed: a provisioning failure,
// unless the master image became unreachable or ctx is done.
func (p *provision) failed(what string, err error) error {
	var ue *unreachableError
	if errors.As(err, &ue) {
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
	ls, err := p.master.run(ctx, []string{"ls", mnt}, nil)
	if err != nil {
		return installed{}, fmt.Errorf("listing %s: %w", mnt, err)
	}
	base := mnt
	if hasEntry(ls, "system-data") {
		base = path.Join(mnt, "system-data")
	}
	files := []struct {
		path, content, mode string
	}{
		{"var/lib/cloud/seed/nocloud-net/meta-data", seedMetaData, ""},
		{"var/lib/cloud/seed/nocloud-net/user-data", seedUserData, ""},
		{"etc/sudoers.d/ubuntu", sudoers, "0440"},
	}
	for _, f := range files {
		full := path.Join(base, f.path)
		if _, err := p.master.run(ctx, []string{"sudo", "mkdir", "-p", path.Dir(full)}, nil); err != nil {
			return installed{}, err
		}
		if _, err := p.master.run(ctx, []string{"sudo", "tee", full}, []byte(f.content)); err != nil {
			return installed{}, fmt.Errorf("writing %s: %w", full, err)
		}
		if f.mode != "" {
			if _, err := p.master.run(ctx, []string{"sudo", "chmod", f.mode, full}, nil); err != nil {
				return installed{}, err
			}
		}
	}
	var res installed
	if base == mnt && hasEntry(ls, "etc") {
		osr, err := p.master.run(ctx, []string{"cat", path.Join(mnt, "etc/os-release")}, nil)
		switch {
		case err == nil:
			res.osRelease = osr
		case !isExit(err):
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
	c, err := p.master.connect(ctx)
	if err != nil {
		return p.unreachable(err)
	}
	fmt.Fprintf(p.w, "Writing %s to %s on the master image\n", quote(p.src.String()), o.testDevice)
	wctx, cancel := context.WithTimeout(ctx, o.writeTimeout)
	defer cancel()
	res, err := flash.Write(wctx, c, p.src, flash.Options{
		Device:     o.testDevice,
		Sudo:       true,
		Decompress: o.decompress,
		Cache:      p.run.Images,
		Progress:   p.run.ReportProgress,
		Out:        p.w,
		Log:        p.log,
	})
	if err != nil {
		var we *flash.WriteError
		var ie *image.Error
		if !errors.As(err, &we) && !errors.As(err, &ie) {
			// The link broke, or the write was cut short: never reuse it.
			p.master.drop()
		}
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("writing the image: %w", err)
		case wctx.Err() != nil:
			return &drivers.ProvisioningError{Err: fmt.Errorf("writing the image to %s did not finish within %s (write_timeout)", o.testDevice, o.writeTimeout)}
		case we == nil && ie == nil:
			return &drivers.ProvisioningError{Err: fmt.Errorf("the connection to the master image broke while writing the image to %s: %w", o.testDevice, err)}
		}
		// The image's or dd's error, which names the image or the device.
		return &drivers.ProvisioningError{Err: err}
	}
	cached := ""
	if res.FromCache {
		cached = ", from the image cache"
	}
	fmt.Fprintf(p.w, "Wrote %s (%s%s) in %s\n", humanBytes(res.BytesOut), res.Format, cached, res.Elapsed.Round(time.Millisecond))
	return nil
}

// wipe clears test_device's partition table after a failure, so that the
// board does not boot a half-written image (best effort).
func (p *provision) wipe(ctx context.Context) {
	o := p.d.opts
	fmt.Fprintf(p.w, "Wiping %s so that the board does not boot a partial image\n", o.testDevice)
	wctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	if _, err := p.master.run(wctx, []string{"sudo", "sgdisk", "-o", o.testDevice}, nil); err != nil {
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
	who := fmt.Sprintf("%s@%s", quote(cfg.User), cfg.Addr)
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
			if isHostKeyError(err) {
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
		var osr limitedBuffer
		if _, err := c.Run(cctx, []string{"cat", "/etc/os-release"}, &osr, nil); err == nil {
			osRelease = osr.String()
		}
		return nil
	})
	switch {
	case err == nil:
		return osRelease, nil
	case ctx.Err() != nil:
		return "", err
	case isHostKeyError(err):
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

// humanBytes prints a byte count for an operator: 3.2 GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

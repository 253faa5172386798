// Package noprovision is the noprovision driver: a device that keeps the
// system it has. As Testflinger's noprovision connector
// (devices/noprovision/noprovision.py in canonical/testflinger),
// provisioning only makes sure the device is up: it checks that
// test_username@device_ip accepts an SSH login and runs /bin/true; if not,
// it runs the device's reboot_script on this machine, waits, and checks
// again until a deadline. Like every connector's, provisioning starts with
// the control-host hook (drivers.Base.PreProvision) for a device with a
// control_host. The other phases are drivers.Base's.
//
// Device configuration keys, beyond Testflinger's (durations in seconds or
// as "90s", "1m30s", "500ms"):
//
//	reboot_wait: 60            # wait after reboot_script before checking again
//	boot_timeout: 300          # then keep checking for this long
//	boot_check_interval: 10    # between checks
//	reboot_script_timeout: 120 # each reboot_script command's limit
//
// Where Flinger differs: a device that does not come back is a recovery
// failure (exit 46; Testflinger raises a ProvisioningError, exit 1), so
// that it is taken out of service, as a failing or timed-out reboot_script
// command is in both; and a device with no reboot_script that does not
// answer is a recovery failure at once. A device whose SSH server answers
// but refuses the login (a wrong test_username or key) is not reset: the
// phase fails and the device stays in service.
package noprovision

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/localcmd"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "noprovision"

// Defaults of the device keys, Testflinger's values.
const (
	DefaultRebootWait          = 60 * time.Second
	DefaultBootTimeout         = 300 * time.Second
	DefaultBootCheckInterval   = 10 * time.Second
	DefaultRebootScriptTimeout = 120 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 2 * time.Hour

// checkTimeout bounds one SSH check (connecting, logging in, /bin/true).
const checkTimeout = 30 * time.Second

func init() {
	drivers.Register(Type, New)
}

// Driver is the noprovision driver.
type Driver struct {
	drivers.Base
	cfg  *drivers.DeviceConfig
	opts options
}

var _ drivers.Driver = (*Driver)(nil)

type options struct {
	rebootWait, bootTimeout, interval time.Duration
	reset                             localcmd.Script
}

// New returns the noprovision driver of the device cfg describes. Bad
// duration keys and empty reboot_script commands are errors.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("noprovision: no device configuration")
	}
	var o options
	var scriptTimeout time.Duration
	if err := devconf.Durations(cfg.Raw, MaxDuration,
		devconf.DurationKey{Key: "reboot_wait", Default: DefaultRebootWait, Dst: &o.rebootWait, ZeroOK: true},
		devconf.DurationKey{Key: "boot_timeout", Default: DefaultBootTimeout, Dst: &o.bootTimeout},
		devconf.DurationKey{Key: "boot_check_interval", Default: DefaultBootCheckInterval, Dst: &o.interval},
		devconf.DurationKey{Key: "reboot_script_timeout", Default: DefaultRebootScriptTimeout, Dst: &scriptTimeout},
	); err != nil {
		return nil, err
	}
	var err error
	if o.reset, err = localcmd.New("reboot_script", cfg.RebootScript, scriptTimeout); err != nil {
		return nil, err
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// Provision makes sure the device answers SSH, resetting it with
// reboot_script when it does not (see the package documentation). A
// device that cannot be brought back gives a *drivers.RecoveryError.
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("noprovision provision: %w", err)
	}
	if err := d.PreProvision(ctx, run); err != nil {
		return err
	}
	dev := run.Device
	if dev == nil {
		dev = d.cfg
	}
	w := run.Output()
	cfg, err := dev.SSHSettings().DeviceConfig(dev, run.Job, run.Logger())
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	cfg.DialTimeout = min(checkTimeout, d.opts.bootTimeout)
	who := fmt.Sprintf("%s@%s", display.Printable(cfg.User), cfg.Addr)

	fmt.Fprintf(w, "Checking that the device answers ssh as %s\n", who)
	err = check(ctx, cfg, dev.Name)
	if err == nil {
		fmt.Fprintln(w, "The device answers: nothing to provision")
		return nil
	}
	if e := fatal(ctx, err); e != nil {
		return e
	}
	if errors.Is(err, sshx.ErrAuth) {
		// The device is up: resetting it would not help, and a job with a
		// wrong test_username must not take it out of service.
		return &drivers.ProvisioningError{Err: fmt.Errorf("device %s answers ssh but refuses the login as %s (check test_username, test_password and ssh.key_file): %w", dev.Name, who, err)}
	}
	fmt.Fprintf(w, "The device does not answer (%v)\n", err)
	if d.opts.reset.Empty() {
		return drivers.Recovery("device %s does not answer ssh as %s and has no reboot_script to reset it: %w", dev.Name, who, err)
	}
	if err := d.hardReset(ctx, run); err != nil {
		return err
	}
	if d.opts.rebootWait > 0 {
		fmt.Fprintf(w, "Waiting %s for the device to reboot\n", d.opts.rebootWait)
		t := time.NewTimer(d.opts.rebootWait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("noprovision provision: waiting for the reboot: %w", ctx.Err())
		case <-t.C:
		}
	}
	fmt.Fprintf(w, "Checking for up to %s that the device answers ssh as %s\n", d.opts.bootTimeout, who)
	wctx, cancel := context.WithTimeout(ctx, d.opts.bootTimeout)
	defer cancel()
	err = sshx.Retry(wctx, sshx.Backoff{Initial: d.opts.interval, Max: d.opts.interval, Multiplier: 1, Jitter: 0.1},
		func(ctx context.Context) error {
			err := check(ctx, cfg, dev.Name)
			if err != nil && sshx.IsHostKeyError(err) {
				return sshx.Permanent(err)
			}
			return err
		})
	if err == nil {
		fmt.Fprintln(w, "The device is back")
		return nil
	}
	if e := fatal(ctx, err); e != nil {
		return e
	}
	if errors.Is(err, sshx.ErrAuth) {
		return &drivers.ProvisioningError{Err: fmt.Errorf("device %s came back but refuses the login as %s: %w", dev.Name, who, err)}
	}
	return drivers.Recovery("device %s did not answer ssh as %s within %s of its reboot_script: %w", dev.Name, who, d.opts.rebootWait+d.opts.bootTimeout, err)
}

// fatal returns the error Provision ends with when err, from a check,
// means something other than "the device does not answer": the phase was
// cancelled, or the device's host key is not the one expected (an operator
// must look: resetting the device does not help).
func fatal(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("noprovision provision: %w", ctx.Err())
	}
	if sshx.IsHostKeyError(err) {
		return &drivers.ProvisioningError{Err: fmt.Errorf("checking the device: %w", err)}
	}
	return nil
}

// check logs in to the device and runs /bin/true.
func check(ctx context.Context, cfg sshx.Config, device string) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	c, err := sshx.Dial(ctx, cfg, device)
	if err != nil {
		return err
	}
	defer c.Close()
	code, err := c.Run(ctx, []string{"/bin/true"}, nil, nil)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("/bin/true exited with status %d", code)
	}
	return nil
}

// hardReset runs the reboot_script commands on this machine (see package
// localcmd), each within reboot_script_timeout. A command that fails or
// times out is a recovery failure.
func (d *Driver) hardReset(ctx context.Context, run *drivers.Run) error {
	err := localcmd.Runner{Dir: run.Dir, Env: run.Env, Out: run.Output()}.Run(ctx, d.opts.reset)
	var le *localcmd.Error
	switch {
	case errors.As(err, &le):
		return drivers.Recovery("%w", err)
	case err != nil:
		return fmt.Errorf("noprovision provision: %w", err)
	}
	return nil
}

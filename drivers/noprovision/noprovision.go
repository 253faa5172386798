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
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
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

// waitDelay is how long a reboot_script command's output may stay open
// after it was killed or has exited (a child holding it).
const waitDelay = 5 * time.Second

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
	rebootWait, bootTimeout, interval, scriptTimeout time.Duration
	script                                           [][]string
}

// New returns the noprovision driver of the device cfg describes. Bad
// duration keys and empty reboot_script commands are errors.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("noprovision: no device configuration")
	}
	var o options
	for _, k := range []struct {
		key  string
		def  time.Duration
		dst  *time.Duration
		zero bool // zero allowed
	}{
		{"reboot_wait", DefaultRebootWait, &o.rebootWait, true},
		{"boot_timeout", DefaultBootTimeout, &o.bootTimeout, false},
		{"boot_check_interval", DefaultBootCheckInterval, &o.interval, false},
		{"reboot_script_timeout", DefaultRebootScriptTimeout, &o.scriptTimeout, false},
	} {
		v, err := duration(cfg.Raw, k.key, k.def)
		if err != nil {
			return nil, err
		}
		if v < 0 || (v == 0 && !k.zero) || v > MaxDuration {
			lowest := "more than 0s"
			if k.zero {
				lowest = "0s"
			}
			return nil, fmt.Errorf("%s: %s out of range (%s to %s)", k.key, v, lowest, MaxDuration)
		}
		*k.dst = v
	}
	for i, c := range cfg.RebootScript {
		argv := strings.Fields(c)
		if len(argv) == 0 {
			return nil, fmt.Errorf("reboot_script[%d]: empty command", i)
		}
		o.script = append(o.script, argv)
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// duration reads a duration key: whole seconds, a Go duration ("500ms",
// "1m30s") or a Flinger duration ("2h30m", "1d").
func duration(d events.Data, key string, def time.Duration) (time.Duration, error) {
	if s, ok := d[key].(string); ok {
		if v, err := time.ParseDuration(s); err == nil {
			return v, nil
		}
	}
	return d.Duration(key, def)
}

func out(run *drivers.Run) io.Writer {
	if run.Out == nil {
		return io.Discard
	}
	return run.Out
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
	w := out(run)
	cfg, err := dev.SSHSettings().DeviceConfig(dev, run.Job, run.Logger())
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	cfg.DialTimeout = min(checkTimeout, d.opts.bootTimeout)
	who := fmt.Sprintf("%s@%s", quote(cfg.User), cfg.Addr)

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
	if len(d.opts.script) == 0 {
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
			if err != nil && isHostKeyError(err) {
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
	if isHostKeyError(err) {
		return &drivers.ProvisioningError{Err: fmt.Errorf("checking the device: %w", err)}
	}
	return nil
}

func isHostKeyError(err error) bool {
	var changed *sshx.HostKeyChangedError
	return errors.As(err, &changed) || errors.Is(err, sshx.ErrUnknownHost)
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

// hardReset runs the reboot_script commands on this machine, each split on
// white space and run without a shell (as Testflinger's cmd.split()), in
// the run directory with the run's environment, each within the
// reboot_script_timeout. A command that fails or times out is a recovery
// failure.
func (d *Driver) hardReset(ctx context.Context, run *drivers.Run) error {
	w := out(run)
	for i, argv := range d.opts.script {
		fmt.Fprintf(w, "Running reboot_script[%d]: %s\n", i, quote(strings.Join(argv, " ")))
		cctx, cancel := context.WithTimeout(ctx, d.opts.scriptTimeout)
		cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
		cmd.Dir = run.Dir
		cmd.Env = run.Env
		cmd.Stdout, cmd.Stderr = w, w
		cmd.WaitDelay = waitDelay
		err := cmd.Run()
		timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("noprovision provision: reboot_script[%d]: %w", i, ctx.Err())
		case timedOut:
			return drivers.Recovery("reboot_script[%d] %s timed out after %s", i, quote(argv[0]), d.opts.scriptTimeout)
		case err != nil:
			return drivers.Recovery("reboot_script[%d] %s failed: %w", i, quote(argv[0]), err)
		}
	}
	return nil
}

// quote quotes s when it holds control characters, so that a configured or
// job value cannot forge lines of output.
func quote(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}

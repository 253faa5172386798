// Package oemdut is how the OEM drivers (oemrecovery, and oemscript with
// its dell, hp and lenovo variants) reach the laptop or desktop they
// provision: logging in over SSH as Testflinger's copy_ssh_id does,
// hard-resetting it with its reboot_script when it does not answer,
// waiting for it to go down when it was told to reboot, and waiting for it
// to come back.
//
// Device configuration keys read here (durations in seconds, or as "90s",
// "1m30s", "500ms"):
//
//	reboot_script                # Testflinger's: commands that hard-reset the device
//	reboot_script_timeout: 120   # each reboot_script command's limit (Testflinger's 120 s)
//	boot_timeout: 3600           # wait for a login after a reset or a reboot (Testflinger's 3600 s)
//	boot_check_interval: 10      # between login attempts meanwhile
//	shutdown_timeout: 300        # wait for the device to go down once told to reboot
//
// Where Flinger differs from Testflinger: a login is tried every
// boot_check_interval (10 s) instead of every 90 s, since an attempt costs
// nothing and the job goes on as soon as the device is up; a device whose
// SSH server answers but refuses the login, or presents a host key other
// than the one recorded, is not reset (resetting does not help; the phase
// fails and the device stays in service); a device that was told to reboot
// must be seen going down (its connection ends) before anything waits for
// it to come back, so that the old system is never mistaken for the new one.
package oemdut

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/localcmd"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// Defaults of the device keys.
const (
	// DefaultRebootScriptTimeout bounds each reboot_script command
	// (Testflinger's 120 s).
	DefaultRebootScriptTimeout = 120 * time.Second
	// DefaultBootTimeout bounds the wait for a login after a reset or a
	// reboot (Testflinger's check_device_booted: 3600 s).
	DefaultBootTimeout = time.Hour
	// DefaultBootCheckInterval is the time between two login attempts.
	DefaultBootCheckInterval = 10 * time.Second
	// DefaultShutdownTimeout bounds the wait for a device told to reboot
	// to go down (recovery-from-iso.sh sleeps 300 s for it).
	DefaultShutdownTimeout = 300 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 12 * time.Hour

// CheckTimeout bounds one login attempt (connecting, logging in and
// running true).
const CheckTimeout = 30 * time.Second

// Strings reads a key holding a list of commands, or a single one, each
// run as given (see devconf.Strings). Empty commands are errors naming the
// key and the index.
func Strings(d events.Data, key string) ([]string, error) {
	out, err := devconf.Strings(d, key)
	if err != nil {
		return nil, err
	}
	for i, s := range out {
		if strings.TrimSpace(s) == "" {
			return nil, fmt.Errorf("%s[%d]: empty command", key, i)
		}
	}
	return out, nil
}

// Settings are the device keys of this package, read by ParseSettings.
type Settings struct {
	// RebootScript is reboot_script, each command split on white space as
	// Testflinger's cmd.split().
	RebootScript [][]string
	// RebootScriptTimeout is reboot_script_timeout.
	RebootScriptTimeout time.Duration
	// BootTimeout is boot_timeout.
	BootTimeout time.Duration
	// BootCheckInterval is boot_check_interval.
	BootCheckInterval time.Duration
	// ShutdownTimeout is shutdown_timeout.
	ShutdownTimeout time.Duration
}

// ParseSettings reads the keys of this package from cfg.
func ParseSettings(cfg *drivers.DeviceConfig) (Settings, error) {
	var s Settings
	if err := devconf.Durations(cfg.Raw, MaxDuration,
		devconf.DurationKey{Key: "reboot_script_timeout", Default: DefaultRebootScriptTimeout, Dst: &s.RebootScriptTimeout},
		devconf.DurationKey{Key: "boot_timeout", Default: DefaultBootTimeout, Dst: &s.BootTimeout},
		devconf.DurationKey{Key: "boot_check_interval", Default: DefaultBootCheckInterval, Dst: &s.BootCheckInterval},
		devconf.DurationKey{Key: "shutdown_timeout", Default: DefaultShutdownTimeout, Dst: &s.ShutdownTimeout},
	); err != nil {
		return s, err
	}
	var err error
	s.RebootScript, err = devconf.Split("reboot_script", cfg.RebootScript)
	return s, err
}

// Target is one phase's access to a device.
type Target struct {
	// Name is the device's agent_name: the identity its host key is
	// recorded under.
	Name string
	// Login is how the job logs in: test_username@device_ip with
	// test_password and the host's key file.
	Login sshx.Config
	// Policy is the host's host key policy.
	Policy sshx.HostKeyPolicy
	// Settings are the device's keys.
	Settings Settings
	// Dir and Env are where and with what environment reboot_script runs.
	Dir string
	Env []string
	// Out receives what the phase does, for the job's output (nil:
	// discarded).
	Out io.Writer
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
}

// out returns Out, or a writer that discards.
func (t *Target) out() io.Writer {
	if t.Out == nil {
		return io.Discard
	}
	return t.Out
}

// log returns Log, or a logger that discards.
func (t *Target) log() *slog.Logger {
	if t.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Log
}

// NewTarget returns the Target of run's device, with settings s.
func NewTarget(run *drivers.Run, dev *drivers.DeviceConfig, s Settings) (*Target, error) {
	login, err := dev.SSHSettings().DeviceConfig(dev, run.Job, run.Logger())
	if err != nil {
		return nil, err
	}
	out := run.Out
	if out == nil {
		out = io.Discard
	}
	return &Target{
		Name:     dev.Name,
		Login:    login,
		Policy:   dev.SSHSettings().Policy(),
		Settings: s,
		Dir:      run.Dir,
		Env:      run.Env,
		Out:      out,
		Log:      run.Logger().With("device", dev.Name),
	}, nil
}

// Who names the login user and address for messages.
func Who(cfg sshx.Config) string { return display.Printable(cfg.User) + "@" + cfg.Addr }

// Check logs in with cfg and runs true, within CheckTimeout and the
// boot check interval, returning the client on success.
func (t *Target) Check(ctx context.Context, cfg sshx.Config) (*sshx.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = min(CheckTimeout, max(t.Settings.BootCheckInterval, 2*time.Second))
	}
	c, err := sshx.Dial(ctx, cfg, t.Name)
	if err != nil {
		return nil, err
	}
	if _, err := c.Run(ctx, []string{"true"}, nil, nil); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// Reach logs in to the device as the job does; when the device does not
// answer, it hard-resets it with reboot_script and waits up to
// boot_timeout for the login (Testflinger's copy_ssh_id, else hardreset
// and check_device_booted). The device not coming back is a
// *drivers.RecoveryError; a refused login or host key a
// *drivers.ProvisioningError (a reset would not help).
func (t *Target) Reach(ctx context.Context) (*sshx.Client, error) {
	fmt.Fprintf(t.out(), "Checking that the device answers ssh as %s\n", Who(t.Login))
	c, err := t.Check(ctx, t.Login)
	if err == nil {
		fmt.Fprintln(t.out(), "The device answers")
		return c, nil
	}
	if e := t.refused(ctx, err, "the device answers ssh but"); e != nil {
		return nil, e
	}
	fmt.Fprintf(t.out(), "The device does not answer: %v\n", err)
	if len(t.Settings.RebootScript) == 0 {
		return nil, drivers.Recovery("device %s does not answer ssh as %s and has no reboot_script to reset it: %w", display.Printable(t.Name), Who(t.Login), err)
	}
	if err := t.HardReset(ctx); err != nil {
		return nil, err
	}
	return t.WaitUp(ctx, t.Login, t.Settings.BootTimeout, "its reboot_script")
}

// refused returns the error a phase ends with when err, from a login
// attempt, means something other than "the device does not answer".
func (t *Target) refused(ctx context.Context, err error, prefix string) error {
	if ctx.Err() != nil {
		return fmt.Errorf("reaching device %s: %w", display.Printable(t.Name), ctx.Err())
	}
	if sshx.IsHostKeyError(err) {
		return &drivers.ProvisioningError{Err: fmt.Errorf("device %s: refusing its host key (a host key only changes when the device is reinstalled; an operator must check it): %w", display.Printable(t.Name), err)}
	}
	if errors.Is(err, sshx.ErrAuth) {
		return &drivers.ProvisioningError{Err: fmt.Errorf("%s refuses the login as %s (check test_username, test_password and ssh.key_file): %w", prefix, Who(t.Login), err)}
	}
	return nil
}

// WaitUp waits up to timeout for a login with cfg, trying every
// boot_check_interval; after is what the device is waited for after, for
// messages. A device that does not come back is a *drivers.RecoveryError.
func (t *Target) WaitUp(ctx context.Context, cfg sshx.Config, timeout time.Duration, after string) (*sshx.Client, error) {
	fmt.Fprintf(t.out(), "Waiting up to %s for the device to answer ssh as %s\n", timeout, Who(cfg))
	start := time.Now()
	c, err := t.Poll(ctx, cfg, timeout, t.Settings.BootCheckInterval)
	if err == nil {
		fmt.Fprintf(t.out(), "The device is up (after %s)\n", time.Since(start).Round(100*time.Millisecond))
		return c, nil
	}
	if e := t.refused(ctx, err, "the device came back but"); e != nil {
		return nil, e
	}
	return nil, drivers.Recovery("device %s did not answer ssh as %s within %s of %s: %w", display.Printable(t.Name), Who(cfg), timeout, after, err)
}

// Poll tries to log in with cfg every interval for up to timeout, and
// returns the first client that got in. A refused host key ends it at
// once; a refused login is retried (a booting system may not have its
// users yet).
func (t *Target) Poll(ctx context.Context, cfg sshx.Config, timeout, interval time.Duration) (*sshx.Client, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	iv := interval
	var c *sshx.Client
	err := sshx.Retry(wctx, sshx.Backoff{Initial: iv, Max: iv, Multiplier: 1, Jitter: 0.1}, func(ctx context.Context) error {
		cl, err := t.Check(ctx, cfg)
		if err != nil {
			if sshx.IsHostKeyError(err) {
				return sshx.Permanent(err)
			}
			t.log().Debug("oem: device not answering yet", "err", err)
			return err
		}
		c = cl
		return nil
	})
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, fmt.Errorf("waiting for device %s: %w", display.Printable(t.Name), ctx.Err())
		}
		return nil, err
	}
	return c, nil
}

// HardReset runs the reboot_script commands on this machine, each split
// on white space and run without a shell, in the run directory with the
// run's environment, each within reboot_script_timeout. A command that
// fails or times out is a *drivers.RecoveryError.
func (t *Target) HardReset(ctx context.Context) error {
	s := localcmd.Script{Key: "reboot_script", Cmds: t.Settings.RebootScript, Timeout: t.Settings.RebootScriptTimeout}
	err := localcmd.Runner{Dir: t.Dir, Env: t.Env, Out: t.out()}.Run(ctx, s)
	var le *localcmd.Error
	if errors.As(err, &le) {
		return drivers.Recovery("%w", err)
	}
	return err
}

// ErrStillUp reports that a device told to reboot did not go down.
var ErrStillUp = errors.New("the device did not go down")

// WaitDown waits up to timeout for the connection of c to end, which is
// how a device told to reboot is seen going down; it closes c in any case.
// It returns an error wrapping ErrStillUp when the connection is still
// open after timeout, or wrapping ctx.Err().
func WaitDown(ctx context.Context, c *sshx.Client, timeout time.Duration) error {
	defer c.Close()
	ended := make(chan struct{})
	go func() {
		_ = c.SSH().Wait()
		close(ended)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ended:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the device to go down: %w", ctx.Err())
	case <-t.C:
		return fmt.Errorf("%w within %s", ErrStillUp, timeout)
	}
}

// Sleep waits for d or until ctx is done.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Tail is an io.Writer that passes what it is given on to W (when not
// nil) and keeps the last bytes of it, for an error message. It is safe
// for concurrent use.
type Tail struct {
	// W receives everything written.
	W  io.Writer
	mu sync.Mutex
	b  []byte
}

// tailMax is how much a Tail keeps.
const tailMax = 2048

// Write passes p on and keeps its end.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	t.b = append(t.b, p...)
	if len(t.b) > tailMax {
		t.b = t.b[len(t.b)-tailMax:]
	}
	t.mu.Unlock()
	if t.W != nil {
		_, _ = t.W.Write(p)
	}
	return len(p), nil
}

// String returns the kept bytes, trimmed, with control characters other
// than newlines and tabs quoted away.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.b))
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= 0x20 && r != 0x7f) {
			return r
		}
		return '?'
	}, s)
}

// BootIDPath is the Linux kernel's identifier of the current boot.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// BootID returns the device's boot identifier, or "" when it cannot be
// read (the caller then cannot tell a reboot from the connection it
// lost, and does not try).
func BootID(ctx context.Context, c *sshx.Client) string {
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	var b strings.Builder
	if _, err := c.Run(ctx, []string{"cat", BootIDPath}, &b, io.Discard); err != nil {
		return ""
	}
	id := strings.TrimSpace(b.String())
	if len(id) > 64 || strings.ContainsAny(id, " \n") {
		return ""
	}
	return id
}

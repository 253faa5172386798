// Package oemrecovery is the oemrecovery driver: an OEM laptop or desktop
// that is brought back to its factory image by commands run on it, as
// Testflinger's oemrecovery connector
// (devices/oemrecovery/oemrecovery.py in canonical/testflinger) does.
//
// Provisioning runs the control-host hook every connector runs first
// (drivers.Base.PreProvision; for a device with a control_host, its
// setup/provisioning request carries {"usb": "DUT"}, as Testflinger's
// oemrecovery sends), logs in to the device as the job's test_username
// (see package oemdut: when it does not answer, reboot_script resets it
// and the login is waited for), runs each recovery_cmds entry on it over SSH, each
// within recovery_cmd_timeout, then waits until the reinstalled system is
// ready: `snap model` reports the generic-classic model, or `snap changes`
// lists the "Initialize device" change as Done (Testflinger's
// check_generic_classic and check_device_initialized). The other phases
// are drivers.Base's. provision_data is not read: the device is always
// recovered to the image its recovery partition holds.
//
// Device configuration keys (durations in seconds, or as "90s", "500ms"),
// beyond those of package oemdut (reboot_script, reboot_script_timeout,
// boot_timeout, boot_check_interval, shutdown_timeout):
//
//	recovery_cmds:               # Testflinger's; required: the commands that start the recovery
//	  - sudo dell-restore-system -y
//	recovery_cmd_timeout: 600    # each command's limit (Testflinger's 600 s)
//	recovery_timeout: 3600       # wait for the recovered system (Testflinger's 3600 s)
//	recovery_poll_interval: 90   # between readiness checks (Testflinger's 90 s)
//
// recovery_cmds are the operator's command lines: each is run by the
// device's shell as given (sh -c '<command>'), as Testflinger runs them
// through ssh; nothing from the job is ever put into them.
//
// Where Flinger differs from Testflinger: a device that does not come back
// within recovery_timeout is a recovery failure (exit 46; Testflinger
// raises a ProvisioningError, exit 1), so that it is taken out of service;
// the device must be seen going down (its connection ends, within
// shutdown_timeout) after the last command, and the recovered system must
// be in another boot than the one the commands ran in (the kernel's
// boot_id), so that a system that did not reboot is never taken for a
// recovered one (Testflinger's first check, 90 s later, would accept it);
// a command that loses its connection as the device reboots is not a
// failure when it is the last one; the host
// key the device had is forgotten once it has gone down, since a
// reinstalled system has new keys (Testflinger does not check host keys at
// all), and a host key that changes outside a reinstall is refused (with
// keys pinned in ssh.host_keys, the reinstalled system's keys must be
// pinned there); both
// readiness checks are made on each poll (in Testflinger a failed snap
// model skips the snap changes check).
package oemrecovery

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/oemrecovery/oemdut"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "oemrecovery"

// Defaults of the device keys, Testflinger's values.
const (
	DefaultRecoveryCmdTimeout   = 600 * time.Second
	DefaultRecoveryTimeout      = time.Hour
	DefaultRecoveryPollInterval = 90 * time.Second
)

// GenericClassic is the model a recovered classic Ubuntu system reports.
const GenericClassic = "generic-classic"

// queryTimeout bounds one readiness query (snap model, snap changes).
const queryTimeout = 60 * time.Second

func init() {
	drivers.Register(Type, New)
}

// Driver is the oemrecovery driver.
type Driver struct {
	drivers.Base
	cfg          *drivers.DeviceConfig
	dut          oemdut.Settings
	cmds         []string
	cmdTimeout   time.Duration
	timeout      time.Duration
	pollInterval time.Duration
}

var _ drivers.Driver = (*Driver)(nil)

// New returns the oemrecovery driver of the device cfg describes. A
// missing recovery_cmds and bad duration keys are errors.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("oemrecovery: no device configuration")
	}
	// Testflinger's oemrecovery asks a control host, when the device has
	// one, to switch its USB to the device for provisioning.
	d := &Driver{Base: drivers.Base{Hooks: drivers.HookOptions{SetupProvisioningData: map[string]any{"usb": "DUT"}}}, cfg: cfg}
	var err error
	if d.dut, err = oemdut.ParseSettings(cfg); err != nil {
		return nil, err
	}
	if d.cmds, err = oemdut.Strings(cfg.Raw, "recovery_cmds"); err != nil {
		return nil, err
	}
	if len(d.cmds) == 0 {
		return nil, errors.New("recovery_cmds: required (the commands that start the device's recovery)")
	}
	if err := devconf.Durations(cfg.Raw, oemdut.MaxDuration,
		devconf.DurationKey{Key: "recovery_cmd_timeout", Default: DefaultRecoveryCmdTimeout, Dst: &d.cmdTimeout},
		devconf.DurationKey{Key: "recovery_timeout", Default: DefaultRecoveryTimeout, Dst: &d.timeout},
		devconf.DurationKey{Key: "recovery_poll_interval", Default: DefaultRecoveryPollInterval, Dst: &d.pollInterval},
	); err != nil {
		return nil, err
	}
	return d, nil
}

// Provision recovers the device to its factory image (see the package
// documentation).
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("oemrecovery provision: %w", err)
	}
	dev := run.Device
	if dev == nil {
		dev = d.cfg
	}
	t, err := oemdut.NewTarget(run, dev, d.dut)
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	if err := d.PreProvision(ctx, run); err != nil {
		return err
	}
	c, err := t.Reach(ctx)
	if err != nil {
		return err
	}
	bootID := oemdut.BootID(ctx, c)
	fmt.Fprintln(t.Out, "Recovering the OEM image")
	if err := d.runCommands(ctx, t, c); err != nil {
		_ = c.Close()
		return err
	}
	fmt.Fprintf(t.Out, "Waiting up to %s for the device to reboot\n", d.dut.ShutdownTimeout)
	if err := oemdut.WaitDown(ctx, c, d.dut.ShutdownTimeout); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("oemrecovery provision: %w", ctx.Err())
		}
		return &drivers.ProvisioningError{Err: fmt.Errorf("device %s: recovery_cmds ran but %w (the last command should reboot it into its recovery)", display.Printable(dev.Name), err)}
	}
	// A reinstalled system has new host keys.
	if err := t.Policy.Reset(dev.Name); err != nil {
		return fmt.Errorf("oemrecovery provision: %w", err)
	}
	return d.waitReady(ctx, t, bootID)
}

// runCommands runs recovery_cmds on the device, each through sh -c as the
// operator wrote it, streaming its output.
func (d *Driver) runCommands(ctx context.Context, t *oemdut.Target, c *sshx.Client) error {
	for i, cmd := range d.cmds {
		fmt.Fprintf(t.Out, "Running recovery_cmds[%d] on the device: %s\n", i, display.Printable(cmd))
		tail := &oemdut.Tail{W: t.Out}
		cctx, cancel := context.WithTimeout(ctx, d.cmdTimeout)
		_, err := c.Run(cctx, []string{"sh", "-c", cmd}, tail, tail)
		timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded)
		cancel()
		last := i == len(d.cmds)-1
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return fmt.Errorf("oemrecovery provision: recovery_cmds[%d]: %w", i, ctx.Err())
		case timedOut:
			return &drivers.ProvisioningError{Err: fmt.Errorf("recovery_cmds[%d] did not finish within %s", i, d.cmdTimeout)}
		case remote.IsExit(err):
			return &drivers.ProvisioningError{Err: fmt.Errorf("recovery_cmds[%d] failed: %w; output: %s", i, err, tail)}
		case last:
			// The device went down as the command rebooted it.
			fmt.Fprintf(t.Out, "The connection ended while recovery_cmds[%d] ran: the device is rebooting\n", i)
			t.Log.Info("oemrecovery: connection ended by the last recovery command", "err", err)
		default:
			return &drivers.ProvisioningError{Err: fmt.Errorf("lost the connection to the device while running recovery_cmds[%d]: %w", i, err)}
		}
	}
	return nil
}

// waitReady polls the device until the recovered system is ready or
// recovery_timeout has passed; bootID is the boot the commands ran in
// ("": unknown), which the ready system must not be in.
func (d *Driver) waitReady(ctx context.Context, t *oemdut.Target, bootID string) error {
	fmt.Fprintf(t.Out, "The device is recovering; waiting up to %s for snap model to report %s or the snap change \"Initialize device\" to be Done, checking every %s\n",
		d.timeout, GenericClassic, d.pollInterval)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	var last error
	for {
		how, now, err := d.ready(wctx, t)
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("oemrecovery provision: waiting for the recovery: %w", ctx.Err())
		case err == nil && bootID != "" && now == bootID:
			return &drivers.ProvisioningError{Err: fmt.Errorf("device %s did not reboot: it is still in the boot recovery_cmds ran in (the connection was lost, not ended by a reboot)", display.Printable(t.Name))}
		case err == nil:
			fmt.Fprintf(t.Out, "The device is recovered (after %s): %s\n", time.Since(start).Round(100*time.Millisecond), how)
			return nil
		case sshx.IsHostKeyError(err):
			return &drivers.ProvisioningError{Err: fmt.Errorf("device %s: refusing the host key of the reinstalled system (it changed again after the reinstall, or ssh.host_keys pins the old one and must be updated): %w", display.Printable(t.Name), err)}
		}
		if last == nil || err.Error() != last.Error() {
			fmt.Fprintf(t.Out, "Not ready yet: %v\n", err)
		}
		last = err
		if oemdut.Sleep(wctx, d.pollInterval) != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("oemrecovery provision: waiting for the recovery: %w", ctx.Err())
			}
			return drivers.Recovery("device %s did not come back from its recovery within %s: %w", display.Printable(t.Name), d.timeout, last)
		}
	}
}

// errNotReady says the device answers but its system is not ready.
var errNotReady = errors.New("the system is not initialized yet")

// ready logs in as the job and checks whether the recovered system is
// ready, returning how it knows and the device's boot identifier.
func (d *Driver) ready(ctx context.Context, t *oemdut.Target) (how, bootID string, err error) {
	c, err := t.Check(ctx, t.Login)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var out bytes.Buffer
	if _, err := c.Run(qctx, []string{"snap", "model"}, &out, io.Discard); err == nil {
		if m := field(out.String(), "model"); strings.Contains(m, GenericClassic) {
			how = "snap model reports " + GenericClassic
		}
	} else if !remote.IsExit(err) {
		return "", "", err
	}
	if how == "" {
		out.Reset()
		if _, err := c.Run(qctx, []string{"snap", "changes"}, &out, io.Discard); err != nil && !remote.IsExit(err) {
			return "", "", err
		}
		if !InitializeDone(out.String()) {
			return "", "", errNotReady
		}
		how = "the snap change \"Initialize device\" is Done"
	}
	return how, oemdut.BootID(qctx, c), nil
}

// field returns the value of the "key:" line of snap's YAML-like output.
func field(s, key string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// InitializeDone reports whether the output of `snap changes` lists an
// "Initialize device" change whose status is Done.
func InitializeDone(changes string) bool {
	sc := bufio.NewScanner(strings.NewReader(changes))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "Initialize device") {
			continue
		}
		if f := strings.Fields(line); len(f) > 1 && f[1] == "Done" {
			return true
		}
	}
	return false
}

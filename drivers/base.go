package drivers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/controlhost"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/firmware"
	"github.com/flingerlab/flinger/drivers/sshkeys"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// DefaultTestUsername is the user tests and reservations log in to the
// device as when test_data.test_username is not given.
const DefaultTestUsername = "ubuntu"

// Base gives a driver Testflinger's DefaultDevice behaviour for the phases
// it does not implement itself (DC/devices/__init__.py in
// canonical/testflinger). Drivers embed it; its zero value is ready to use
// and it reads everything from the Run it is given.
//
// Provision runs PreProvision, the control-host hook every connector's
// provision runs first, and a driver that implements Provision must call
// PreProvision first too; RunTest runs PreTest before test_cmds.
// FirmwareUpdate is Testflinger's LVFS update (package
// drivers/firmware). Hooks holds the connector type's choices for the
// control-host hooks (package drivers/controlhost): set it in the
// driver's constructor, for example
//
//	&Driver{Base: drivers.Base{Hooks: drivers.HookOptions{SetupProvisioningData: map[string]any{"usb": "DUT"}}}}
//
// Every method returns at once, with an error wrapping ctx.Err(), when ctx
// is already done.
type Base struct {
	// Hooks are the connector type's choices for the control-host hooks.
	Hooks HookOptions
}

// HookOptions are a connector type's choices for the control-host hooks,
// which the device keys control_host_manage_dut_power and
// control_host_setup_provisioning_data override.
type HookOptions struct {
	// ManageDUTPower runs the device's poweroff_script before the control
	// host is power-cycled and its poweron_script after (Testflinger's
	// MANAGE_DUT_POWER_DURING_REBOOT, which muxpi and control_host_iot set).
	ManageDUTPower bool
	// SetupProvisioningData is the JSON body of the control host's
	// setup/provisioning request (Testflinger's SETUP_PROVISIONING_DATA,
	// such as oemrecovery's {"usb": "DUT"}; nil: no body).
	SetupProvisioningData map[string]any
}

// outOf returns run.Out, or a writer that discards when it is nil.
func outOf(run *Run) io.Writer {
	if run.Out == nil {
		return io.Discard
	}
	return run.Out
}

// typeOf names the run's connector type for messages.
func typeOf(run *Run) string {
	if run.Device == nil || run.Device.Type == "" {
		return "this device"
	}
	return run.Device.Type
}

// Provision runs PreProvision and then does nothing more: the device is
// used as it is.
func (b Base) Provision(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	if err := b.PreProvision(ctx, run); err != nil {
		return err
	}
	fmt.Fprintf(outOf(run), "No provisioning for %s: the device is used as it is\n", typeOf(run))
	return nil
}

// controlHostHooks returns the control-host hooks of run's device, or nil
// when it has no control_host. A malformed control-host key is an error
// naming it.
func (b Base) controlHostHooks(run *Run) (*controlhost.Hooks, error) {
	dev := run.Device
	if dev == nil || dev.ControlHost == "" {
		return nil, nil
	}
	s, err := controlhost.ParseSettings(dev.ControlHost, dev.Raw, controlhost.Defaults{
		ManageDUTPower:        b.Hooks.ManageDUTPower,
		SetupProvisioningData: b.Hooks.SetupProvisioningData,
	})
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", display.Printable(dev.Name), err)
	}
	log := run.Logger().With("device", dev.Name, "control_host", s.Host)
	return controlhost.New(s, run.Dir, run.Env, outOf(run), log), nil
}

// PreProvision is Testflinger's pre_provision_hook, which every
// connector's provision runs first: for a device with a control_host it
// power-cycles the control host through its REST API (unless the
// environment sets DISABLE_CONTROL_HOST_POWERCYCLE or the device has no
// control_host_reboot_script) and asks it to ready its hardware for
// provisioning, as package drivers/controlhost describes. A device without
// control_host is left alone, silently.
//
// A control host that does not come back is a *RecoveryError; a
// malformed control-host key fails the phase; the best-effort requests
// only report their failures.
func (b Base) PreProvision(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pre-provision hook: %w", err)
	}
	h, err := b.controlHostHooks(run)
	if err != nil {
		return fmt.Errorf("pre-provision hook: %w", err)
	}
	if h == nil {
		return nil
	}
	err = h.PreProvision(ctx)
	var notBack *controlhost.NotBackError
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("pre-provision hook: %w", ctx.Err())
	case errors.As(err, &notBack):
		return Recovery("pre-provision hook: %w", err)
	}
	return fmt.Errorf("pre-provision hook: %w", err)
}

// PreTest is Testflinger's pre_test_hook, which the test phase runs
// first: for a device with a control_host it asks the control host to
// ready its hardware for the test phase. Its failure is reported in the
// output and ignored; the error is for the end of ctx or a malformed
// control-host key.
func (b Base) PreTest(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pre-test hook: %w", err)
	}
	h, err := b.controlHostHooks(run)
	if err != nil {
		return fmt.Errorf("pre-test hook: %w", err)
	}
	if h == nil {
		return nil
	}
	if err := h.PreTest(ctx); err != nil {
		return fmt.Errorf("pre-test hook: %w", err)
	}
	return nil
}

// FirmwareUpdate updates the device's firmware from LVFS as Testflinger
// does (UpdateFirmware, package drivers/firmware). With
// firmware_update_data.ignore_failure: true a failure is printed and the
// phase succeeds, as in Testflinger; a device that does not come back
// from the firmware reboot is a *RecoveryError all the same, and a
// cancelled phase returns an error wrapping ctx.Err().
func (Base) FirmwareUpdate(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("firmware_update: %w", err)
	}
	out := outOf(run)
	var data events.Data
	if run.Job != nil {
		data = run.Job.FirmwareUpdateData
	}
	ignore, err := data.Bool("ignore_failure", false)
	if err != nil {
		return fmt.Errorf("firmware_update_data: %w", err)
	}
	err = UpdateFirmware(ctx, run)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("firmware_update: %w", ctx.Err())
	case IsRecovery(err):
		return err
	}
	fmt.Fprintf(out, "Firmware update failed: %v\n", err)
	if ignore {
		fmt.Fprintln(out, "firmware_update_data says ignore_failure: true; continuing")
		return nil
	}
	return err
}

// UpdateFirmware updates the firmware of run's device to
// firmware_update_data.version from LVFS over SSH as the job's
// test_username (firmware.Update, with the device keys of package
// drivers/firmware), writing what it does to run.Out. A version other than
// "latest" is refused before the device is contacted; a device that does
// not come back after the firmware reboot is a *RecoveryError; every other
// failure is a plain error (ignore_failure is FirmwareUpdate's).
func UpdateFirmware(ctx context.Context, run *Run) error {
	var data events.Data
	if run.Job != nil {
		data = run.Job.FirmwareUpdateData
	}
	version, err := firmware.VersionFrom(data)
	if err != nil {
		return err
	}
	if version != firmware.LatestVersion {
		return &firmware.VersionError{Version: version}
	}
	dev := run.Device
	if dev == nil {
		return errors.New("firmware_update: no device configuration")
	}
	opts, err := firmware.ParseOptions(dev.Raw)
	if err != nil {
		return fmt.Errorf("device %s: %w", display.Printable(dev.Name), err)
	}
	log := run.Logger().With("device", dev.Name)
	cfg, err := dev.SSHSettings().DeviceConfig(dev, run.Job, log)
	if err != nil {
		return err
	}
	opts.SSH, opts.Device, opts.Version, opts.Out, opts.Log = cfg, dev.Name, version, outOf(run), log
	_, err = firmware.Update(ctx, opts)
	var notBack *firmware.NotBackError
	if errors.As(err, &notBack) {
		return Recovery("%w", err)
	}
	return err
}

// RunTest runs PreTest, then test_data.test_cmds with RunTestCmds.
func (b Base) RunTest(ctx context.Context, run *Run) (int, error) {
	if err := b.PreTest(ctx, run); err != nil && ctx.Err() == nil {
		return ExitFailed, err
	}
	return RunTestCmds(ctx, run)
}

// Allocate returns the device information of the device's configuration
// (device_ip and agent_name), which is what Testflinger's agent posts for
// an allocated device.
func (Base) Allocate(ctx context.Context, run *Run) (map[string]any, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("allocate: %w", err)
	}
	if run.Device == nil {
		return nil, errors.New("allocate: no device configuration")
	}
	info, _ := run.Device.DeviceInfo()["device_info"].(map[string]any)
	fmt.Fprintf(outOf(run), "Device %s allocated\n", display.Printable(run.Device.Name))
	return info, nil
}

// Reservation defaults.
const (
	// DefaultReserveSSHTimeout bounds how long Reserve waits for the device
	// to accept an SSH login to install the reservation's keys (Testflinger
	// tries ssh-copy-id 10 times, 60 s apart). The device key
	// reserve_ssh_timeout overrides it.
	DefaultReserveSSHTimeout = 10 * time.Minute
	// reserveSSHInterval is how often Reserve tries to log in meanwhile.
	reserveSSHInterval = 10 * time.Second
)

// Reserve gives the job's users access to the device, as Testflinger's
// DefaultDevice.reserve: it fetches the public keys of every
// reserve_data.ssh_keys entry (lp:<user>, gh:<user>) from the key servers
// of the host's SSH settings, logs in to the device as test_username
// (default ubuntu) and adds them to its authorized_keys, then prints the
// access instructions (see ReservationNotice). It returns then: the worker
// holds the device for the reservation's length.
//
// Every entry is checked before anything is fetched: a malformed one, a
// user the key server does not know and a device that does not accept a
// login within reserve_ssh_timeout (default DefaultReserveSSHTimeout) fail
// the phase, naming the entry or the device; none of them is a recovery
// failure. With no ssh_keys, nothing is installed and the device is not
// contacted.
func (Base) Reserve(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reserve: %w", err)
	}
	if run.Job == nil || run.Device == nil {
		return errors.New("reserve: no job or no device configuration")
	}
	var keys []string
	if rd := run.Job.ReserveData; rd != nil {
		keys = rd.SSHKeys
	}
	if len(keys) > 0 {
		if err := InstallReserveKeys(ctx, run); err != nil {
			return err
		}
	}
	return writeNotice(run, "")
}

// InstallReserveKeys fetches the keys of reserve_data.ssh_keys and installs
// them on the device, as Reserve does, printing what it does to run.Out.
func InstallReserveKeys(ctx context.Context, run *Run) error {
	if run.Job == nil || run.Device == nil {
		return errors.New("reserve: no job or no device configuration")
	}
	var ids []string
	if rd := run.Job.ReserveData; rd != nil {
		ids = rd.SSHKeys
	}
	for i, id := range ids {
		if _, _, err := sshkeys.ParseID(id); err != nil {
			return fmt.Errorf("reserve: reserve_data.ssh_keys[%d]: %w", i, err)
		}
	}
	dev := run.Device
	timeout, err := dev.Raw.Duration("reserve_ssh_timeout", DefaultReserveSSHTimeout)
	if err != nil {
		return fmt.Errorf("reserve: device %s: %w", display.Printable(dev.Name), err)
	}
	if timeout <= 0 {
		timeout = DefaultReserveSSHTimeout
	}
	settings := dev.SSHSettings()
	cfg, err := settings.DeviceConfig(dev, run.Job, run.Logger())
	if err != nil {
		return fmt.Errorf("reserve: %w", err)
	}
	out := outOf(run)
	fetcher := settings.Fetcher(run.Logger())
	var lines []string
	for _, id := range ids {
		fmt.Fprintf(out, "Importing the ssh keys of %s\n", id)
		got, err := fetcher.Fetch(ctx, id)
		if err != nil {
			if errors.Is(err, sshkeys.ErrUserNotFound) {
				return fmt.Errorf("reserve: ssh key %s: the key server does not know this user: %w", id, err)
			}
			return fmt.Errorf("reserve: ssh key %s: %w", id, err)
		}
		lines = append(lines, got...)
	}

	fmt.Fprintf(out, "Installing %d ssh keys for %s@%s\n", len(lines), display.Printable(cfg.User), cfg.Addr)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := sshx.WaitForSSH(wctx, cfg, dev.Name, reserveSSHInterval)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("reserve: %w", err)
		}
		return fmt.Errorf("reserve: installing the ssh keys: device %s did not accept a login as %s within %s: %w",
			display.Printable(dev.Name), display.Printable(cfg.User), timeout, err)
	}
	defer c.Close()
	var opts []sshx.InstallOption
	if settings.AuthorizedKeysHome != "" {
		opts = append(opts, sshx.WithHome(settings.AuthorizedKeysHome))
	}
	added, err := sshx.InstallAuthorizedKeys(ctx, c, lines, opts...)
	if err != nil {
		return fmt.Errorf("reserve: installing the ssh keys on %s: %w", display.Printable(dev.Name), err)
	}
	fmt.Fprintf(out, "Installed %d ssh keys (%d already present)\n", added, len(lines)-added)
	return nil
}

// writeNotice writes ReservationNotice to run.Out.
func writeNotice(run *Run, keysNote string) error {
	if _, err := io.WriteString(outOf(run), ReservationNotice(run, keysNote)); err != nil {
		return fmt.Errorf("reserve: writing output: %w", err)
	}
	return nil
}

// ReservationNotice returns the access instructions Testflinger prints for
// a reservation: the ssh command (ssh [-p <ssh_port>]
// <test_username|ubuntu>@<device_ip>), the serial console when serial_host
// and serial_port are configured, the ssh keys of reserve_data (followed
// by keysNote, when not empty), the length and expiry of the reservation,
// and how to end it early (flinger cancel <job_id>). run.Job and
// run.Device must not be nil.
func ReservationNotice(run *Run, keysNote string) string {
	user, _ := TestCredentials(run.Job)
	timeout := events.DefaultReserveTimeout
	var keys []string
	if rd := run.Job.ReserveData; rd != nil {
		keys = rd.SSHKeys
		if rd.Timeout > 0 {
			timeout = time.Duration(rd.Timeout) * time.Second
		}
	}
	dev := run.Device
	ip := dev.DeviceIP
	if ip == "" {
		ip = "<device_ip not configured>"
	}
	port := ""
	if dev.SSHPort != 0 && dev.SSHPort != 22 {
		port = fmt.Sprintf("-p %d ", dev.SSHPort)
	}
	jobID := run.Job.JobID
	if jobID == "" {
		jobID = "<job_id>"
	}
	now := time.Now()

	var b strings.Builder
	b.WriteString("*** TESTFLINGER SYSTEM RESERVED ***\n")
	fmt.Fprintf(&b, "You can now connect to %s@%s\n", display.Printable(user), display.Printable(ip))
	fmt.Fprintf(&b, "  ssh %s%s@%s\n", port, display.Printable(user), display.Printable(ip))
	if dev.SerialHost != "" && dev.SerialPort != 0 {
		fmt.Fprintf(&b, "Serial access is available via: telnet %s %d\n", display.Printable(dev.SerialHost), dev.SerialPort)
	}
	if len(keys) > 0 {
		quoted := make([]string, len(keys))
		for i, k := range keys {
			quoted[i] = display.Printable(k)
		}
		fmt.Fprintf(&b, "SSH keys for this reservation: %s\n", strings.Join(quoted, ", "))
		if keysNote != "" {
			b.WriteString(keysNote + "\n")
		}
	}
	fmt.Fprintf(&b, "Current time:           [%s]\n", now.Format(time.RFC3339))
	fmt.Fprintf(&b, "Reservation expires at: [%s]\n", now.Add(timeout).Format(time.RFC3339))
	fmt.Fprintf(&b, "Reservation will automatically timeout in %d seconds\n", int(timeout/time.Second))
	fmt.Fprintf(&b, "To end the reservation sooner use: flinger cancel %s\n", display.Printable(jobID))
	return b.String()
}

// Cleanup does nothing, as Testflinger's default cleanup.
func (Base) Cleanup(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	return nil
}

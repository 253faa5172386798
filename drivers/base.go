package drivers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"

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
// Every method returns at once, with an error wrapping ctx.Err(), when ctx
// is already done.
type Base struct{}

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

// Provision does nothing: the device is used as it is. (Testflinger's
// default provision power-cycles a configured control_host first; Flinger
// does not do that yet.)
func (Base) Provision(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	fmt.Fprintf(outOf(run), "No provisioning for %s: the device is used as it is\n", typeOf(run))
	return nil
}

// FirmwareUpdate reports that the connector cannot update firmware. The
// phase fails (with an error wrapping errors.ErrUnsupported; the device
// stays in service) unless firmware_update_data says ignore_failure: true,
// as Testflinger's firmware_update does for any failure.
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
	fmt.Fprintf(out, "firmware_update is not supported by the %s connector\n", typeOf(run))
	if ignore {
		fmt.Fprintln(out, "firmware_update_data says ignore_failure: true; continuing")
		return nil
	}
	return fmt.Errorf("firmware_update not supported for %s: %w", typeOf(run), errors.ErrUnsupported)
}

// RunTest runs test_data.test_cmds with RunTestCmds.
func (Base) RunTest(ctx context.Context, run *Run) (int, error) {
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
	fmt.Fprintf(outOf(run), "Device %s allocated\n", printable(run.Device.Name))
	return info, nil
}

// Reserve prints the access instructions Testflinger prints for a
// reservation: the ssh command (ssh <test_username|ubuntu>@<device_ip>),
// the serial console when serial_host and serial_port are configured, the
// ssh keys of reserve_data, the length and expiry of the reservation, and
// how to end it early (flinger cancel <job_id>). It returns at once: the
// worker holds the device for the reservation's length.
//
// It does not install the ssh keys on the device yet (Testflinger runs
// ssh-import-id and ssh-copy-id for each key): key installation belongs to
// a later change, and until then the keys are only listed.
func (Base) Reserve(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reserve: %w", err)
	}
	if run.Job == nil || run.Device == nil {
		return errors.New("reserve: no job or no device configuration")
	}
	out := outOf(run)
	user := DefaultTestUsername
	if td := run.Job.TestData; td != nil && td.TestUsername != "" {
		user = td.TestUsername
	}
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
	jobID := run.Job.JobID
	if jobID == "" {
		jobID = "<job_id>"
	}
	now := time.Now()

	var b strings.Builder
	b.WriteString("*** TESTFLINGER SYSTEM RESERVED ***\n")
	fmt.Fprintf(&b, "You can now connect to %s@%s\n", printable(user), printable(ip))
	fmt.Fprintf(&b, "  ssh %s@%s\n", printable(user), printable(ip))
	if dev.SerialHost != "" && dev.SerialPort != 0 {
		fmt.Fprintf(&b, "Serial access is available via: telnet %s %d\n", printable(dev.SerialHost), dev.SerialPort)
	}
	if len(keys) > 0 {
		quoted := make([]string, len(keys))
		for i, k := range keys {
			quoted[i] = printable(k)
		}
		fmt.Fprintf(&b, "SSH keys for this reservation: %s\n", strings.Join(quoted, ", "))
		b.WriteString("(this version does not install them on the device: log in with keys the image already accepts)\n")
	}
	fmt.Fprintf(&b, "Current time:           [%s]\n", now.Format(time.RFC3339))
	fmt.Fprintf(&b, "Reservation expires at: [%s]\n", now.Add(timeout).Format(time.RFC3339))
	fmt.Fprintf(&b, "Reservation will automatically timeout in %d seconds\n", int(timeout/time.Second))
	fmt.Fprintf(&b, "To end the reservation sooner use: flinger cancel %s\n", printable(jobID))
	_, err := io.WriteString(out, b.String())
	if err != nil {
		return fmt.Errorf("reserve: writing output: %w", err)
	}
	return nil
}

// Cleanup does nothing, as Testflinger's default cleanup.
func (Base) Cleanup(ctx context.Context, run *Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	return nil
}

// printable returns s, quoted when it holds control characters (a newline
// in a job value must not forge a line of output).
func printable(s string) string {
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

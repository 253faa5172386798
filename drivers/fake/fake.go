// Package fake is the fake_connector driver (alias fake): a device that
// needs no hardware. Like Testflinger's fake connector
// (DC/devices/fake_connector/__init__.py in canonical/testflinger) it only
// prints the job's provision_data when provisioning and otherwise behaves
// as the default connector: test_cmds really run, on this machine, in the
// job's run directory.
//
// Flinger adds keys to provision_data so that tests and demos can make the
// device slow, chatty or broken:
//
//	delay: 30            # or "1m30s": provisioning takes this long
//	output_lines: 500    # provisioning prints this many numbered lines
//	fail: provision      # provision fails (the device stays in service)
//	fail: recovery       # provision fails and the device cannot be recovered
//	fail: firmware_update  # firmware_update fails (unless firmware_update_data says ignore_failure: true)
//	fail: cleanup        # cleanup fails
//
// The same fail key in the device's own entry of the host file makes that
// device broken for every job (fail: recovery is a device that never comes
// back), so that requeueing to another device can be shown and tested.
package fake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "fake_connector"

// Alias is the short name also accepted as provision_type.
const Alias = "fake"

// The values of provision_data.fail.
const (
	// FailProvision makes Provision fail with a *drivers.ProvisioningError.
	FailProvision = "provision"
	// FailRecovery makes Provision fail with a *drivers.RecoveryError.
	FailRecovery = "recovery"
	// FailFirmwareUpdate makes FirmwareUpdate fail (unless ignore_failure).
	FailFirmwareUpdate = "firmware_update"
	// FailCleanup makes Cleanup fail.
	FailCleanup = "cleanup"
)

// FailModes lists the values provision_data.fail accepts.
var FailModes = []string{FailProvision, FailRecovery, FailFirmwareUpdate, FailCleanup}

// MaxOutputLines bounds provision_data.output_lines.
const MaxOutputLines = 1_000_000

// progressSteps is how many progress lines a delay prints at most.
const progressSteps = 10

func init() {
	drivers.Register(Type, New, Alias)
}

// Driver is the fake_connector driver. Phases it does not implement come
// from drivers.Base.
type Driver struct {
	drivers.Base
	cfg *drivers.DeviceConfig
	// fail is the device's own fail key: how it is broken for every job.
	fail string
}

var _ drivers.Driver = (*Driver)(nil)

// New returns the fake driver of the device cfg describes.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("fake: no device configuration")
	}
	fail, err := cfg.Raw.String("fail", "")
	if err != nil {
		return nil, fmt.Errorf("fake: device %s: %w", cfg.Name, err)
	}
	if fail != "" && !slices.Contains(FailModes, fail) {
		return nil, fmt.Errorf("fake: device %s: fail: unknown value %q (known: %s)", cfg.Name, fail, strings.Join(FailModes, ", "))
	}
	return &Driver{cfg: cfg, fail: fail}, nil
}

// options are the Flinger-extension keys of provision_data.
type options struct {
	delay time.Duration
	lines int
	fail  string
}

func parseOptions(d events.Data) (options, error) {
	var o options
	var err error
	if o.delay, err = d.Duration("delay", 0); err != nil {
		return o, err
	}
	if o.delay < 0 {
		return o, fmt.Errorf("delay: must not be negative, got %s", o.delay)
	}
	if o.lines, err = d.Int("output_lines", 0); err != nil {
		return o, err
	}
	if o.lines < 0 || o.lines > MaxOutputLines {
		return o, fmt.Errorf("output_lines: %d out of range (0-%d)", o.lines, MaxOutputLines)
	}
	if o.fail, err = d.String("fail", ""); err != nil {
		return o, err
	}
	if o.fail != "" && !slices.Contains(FailModes, o.fail) {
		return o, fmt.Errorf("fail: unknown value %q (known: %s)", o.fail, strings.Join(FailModes, ", "))
	}
	return o, nil
}

// failMode returns provision_data.fail, else the device's own fail key, or
// "" when neither is set.
func (d *Driver) failMode(run *drivers.Run) string {
	if run.Job != nil {
		if f, _ := run.Job.ProvisionData.String("fail", ""); f != "" {
			return f
		}
	}
	return d.fail
}

func out(run *drivers.Run) io.Writer {
	if run.Out == nil {
		return io.Discard
	}
	return run.Out
}

// Provision prints provision_data as Testflinger's fake connector does (a
// banner and the data as indented JSON), then honours delay, output_lines
// and fail.
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake provision: %w", err)
	}
	w := out(run)
	var pd events.Data
	if run.Job != nil {
		pd = run.Job.ProvisionData
	}
	if pd == nil {
		pd = events.Data{}
	}
	banner := strings.Repeat("*", 40)
	fmt.Fprintln(w, banner)
	fmt.Fprintln(w, "This is a fake device connector!")
	fmt.Fprintln(w, "No provisioning will actually happen, but here are the values from the provision_data:")
	fmt.Fprintln(w, dump(pd))
	fmt.Fprintln(w, banner)

	opts, err := parseOptions(pd)
	if d.fail != "" && opts.fail == "" {
		opts.fail = d.fail
	}
	run.Logger().Debug("fake provision", "device", d.cfg.Name, "delay", opts.delay, "output_lines", opts.lines, "fail", opts.fail)
	if err != nil {
		return &drivers.ProvisioningError{Err: fmt.Errorf("provision_data: %w", err)}
	}
	if opts.delay > 0 {
		if err := wait(ctx, w, opts.delay); err != nil {
			return fmt.Errorf("fake provision: %w", err)
		}
	}
	for i := 1; i <= opts.lines; i++ {
		if i%1000 == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("fake provision: %w", err)
			}
		}
		fmt.Fprintf(w, "fake provision output line %d of %d\n", i, opts.lines)
	}
	switch opts.fail {
	case FailProvision:
		fmt.Fprintln(w, "Fake provisioning failed, as fail asks")
		return &drivers.ProvisioningError{Err: errors.New(`fake provisioning failed (provision_data.fail: "provision")`)}
	case FailRecovery:
		fmt.Fprintln(w, "Fake device could not be recovered, as fail asks")
		return drivers.Recovery(`fake device %s could not be recovered (fail: %q)`, d.cfg.Name, FailRecovery)
	}
	fmt.Fprintln(w, "Fake provisioning done")
	return nil
}

// dump renders provision_data as indented JSON, as Testflinger's fake
// connector prints it (keys sorted), falling back to YAML for values JSON
// cannot hold.
func dump(d events.Data) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "    ")
	if err := enc.Encode(d); err == nil {
		return strings.TrimRight(b.String(), "\n")
	}
	y, err := yaml.Marshal(map[string]any(d))
	if err != nil {
		return fmt.Sprintf("%v", map[string]any(d))
	}
	return strings.TrimRight(string(y), "\n")
}

// wait sleeps for delay, printing up to progressSteps progress lines spread
// over it, and returns early with ctx.Err() when ctx is done.
func wait(ctx context.Context, w io.Writer, delay time.Duration) error {
	steps := progressSteps
	if secs := int(delay / time.Second); secs < steps {
		steps = max(secs, 1)
	}
	step := delay / time.Duration(steps)
	fmt.Fprintf(w, "Fake provisioning will take %s (provision_data.delay)\n", delay)
	timer := time.NewTimer(step)
	defer timer.Stop()
	for i := 1; i <= steps; i++ {
		select {
		case <-ctx.Done():
			fmt.Fprintf(w, "Fake provisioning interrupted after %s of %s\n", step*time.Duration(i-1), delay)
			return ctx.Err()
		case <-timer.C:
		}
		left := delay - step*time.Duration(i)
		fmt.Fprintf(w, "Fake provisioning: %d%% done, %s left\n", i*100/steps, left.Round(time.Second))
		timer.Reset(step)
	}
	return nil
}

// FirmwareUpdate prints the version firmware_update_data asks for and
// succeeds, unless provision_data.fail is firmware_update: then it fails,
// or only says so when firmware_update_data has ignore_failure: true (as
// Testflinger's firmware_update ignores any failure then).
func (d *Driver) FirmwareUpdate(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake firmware_update: %w", err)
	}
	w := out(run)
	var data events.Data
	if run.Job != nil {
		data = run.Job.FirmwareUpdateData
	}
	version, err := data.String("version", "")
	if err != nil {
		return fmt.Errorf("firmware_update_data: %w", err)
	}
	ignore, err := data.Bool("ignore_failure", false)
	if err != nil {
		return fmt.Errorf("firmware_update_data: %w", err)
	}
	if version == "" {
		fmt.Fprintln(w, "Fake firmware update: firmware_update_data gives no version")
	} else {
		fmt.Fprintf(w, "Fake firmware update to version %s\n", printable(version))
	}
	if d.failMode(run) == FailFirmwareUpdate {
		fmt.Fprintln(w, "Fake firmware update failed, as fail asks")
		if ignore {
			fmt.Fprintln(w, "firmware_update_data says ignore_failure: true; continuing")
			return nil
		}
		return fmt.Errorf("fake firmware update to version %q failed (provision_data.fail: %q)", version, FailFirmwareUpdate)
	}
	fmt.Fprintln(w, "Fake firmware update done")
	return nil
}

// Reserve prints the access instructions of drivers.ReservationNotice
// without reaching the device: a fake device has no SSH server, so the
// keys of reserve_data.ssh_keys are listed, not installed.
func (d *Driver) Reserve(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake reserve: %w", err)
	}
	if run.Job == nil || run.Device == nil {
		return errors.New("fake reserve: no job or no device configuration")
	}
	notice := drivers.ReservationNotice(run, "(a fake device: the keys are not installed anywhere)")
	if _, err := io.WriteString(out(run), notice); err != nil {
		return fmt.Errorf("fake reserve: writing output: %w", err)
	}
	return nil
}

// Cleanup succeeds, unless provision_data.fail is cleanup.
func (d *Driver) Cleanup(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake cleanup: %w", err)
	}
	if d.failMode(run) == FailCleanup {
		fmt.Fprintln(out(run), "Fake cleanup failed, as fail asks")
		return fmt.Errorf("fake cleanup failed (provision_data.fail: %q)", FailCleanup)
	}
	fmt.Fprintln(out(run), "Fake cleanup done")
	return nil
}

// printable quotes s when it holds control characters, so that a job
// value cannot forge lines of output.
func printable(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}

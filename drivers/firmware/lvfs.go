package firmware

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// fwupd's update states (FwupdUpdateState).
const (
	stateSuccess = 2
)

// stateNames names fwupd's update states.
var stateNames = []string{"unknown", "pending", "success", "failed", "needs-reboot", "failed-transient"}

func stateName(s int) string {
	if s >= 0 && s < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state %d", s)
}

// maxOutput bounds what is kept of a command's output.
const maxOutput = 16 << 20

// connectAttempts bounds the attempts to reach the device before the update.
const connectAttempts = 3

// Change is a firmware device updated.
type Change struct {
	// Name and DeviceID identify it as fwupd does.
	Name, DeviceID string
	// From and To are its versions before and after.
	From, To string
}

// Result is what an update did.
type Result struct {
	// Vendor and Chassis are what the DMI information says ("" when the
	// detection was skipped).
	Vendor, Chassis string
	// Updated are the devices updated and checked.
	Updated []Change
	// Rebooted says the device was rebooted to apply firmware.
	Rebooted bool
}

// fwDevice is a device of fwupdmgr get-devices --json.
type fwDevice struct {
	Name     string      `json:"Name"`
	DeviceID string      `json:"DeviceId"`
	Version  string      `json:"Version"`
	Flags    []string    `json:"Flags"`
	Releases []fwRelease `json:"Releases"`

	target      string // the version upgraded to
	needsReboot bool
}

// fwRelease is a release of a device.
type fwRelease struct {
	Version string   `json:"Version"`
	Flags   []string `json:"Flags"`
}

// fwResults is the output of fwupdmgr get-results --json.
type fwResults struct {
	Name        string      `json:"Name"`
	Version     string      `json:"Version"`
	UpdateState int         `json:"UpdateState"`
	UpdateError string      `json:"UpdateError"`
	Releases    []fwRelease `json:"Releases"`
	Error       *struct {
		Message string `json:"Message"`
	} `json:"Error"`
}

func (d *fwDevice) name() string {
	if d.Name != "" {
		return display.Printable(d.Name)
	}
	return display.Printable(d.DeviceID)
}

// updater is one update in progress.
type updater struct {
	o   Options
	out io.Writer
	log *slog.Logger
	c   *sshx.Client
}

// Update updates the firmware of the device o.SSH reaches from LVFS (see
// the package documentation) and returns what it did. Its errors: a
// *VersionError before anything is done, an *UnsupportedError for a device
// out of scope, *DeviceError for upgrades that failed or did not apply
// (joined), a *NotBackError when the device does not come back from the
// reboot, an error wrapping ctx.Err() when ctx ends, and others when the
// device cannot be reached or fwupd misbehaves.
func Update(ctx context.Context, o Options) (*Result, error) {
	if o.Version != LatestVersion {
		return nil, &VersionError{Version: o.Version}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("firmware update: %w", err)
	}
	u := &updater{o: o, out: o.Out, log: o.Log}
	if u.out == nil {
		u.out = io.Discard
	}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	u.defaults()
	res := &Result{}
	if err := u.connect(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if u.c != nil {
			_ = u.c.Close()
		}
	}()

	if o.DeviceType == DeviceTypeLVFS {
		u.printf("firmware_device_type is %s: updating the firmware through LVFS without checking the device's DMI information", DeviceTypeLVFS)
	} else {
		vendor, chassis, err := u.detect(ctx)
		res.Vendor, res.Chassis = vendor, chassis
		if err != nil {
			return res, err
		}
	}
	if err := u.ensureFwupd(ctx); err != nil {
		return res, err
	}
	devs, err := u.inventory(ctx)
	if err != nil {
		return res, err
	}
	upgraded, failures := u.upgrade(ctx, devs)
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("firmware update: %w", err)
	}
	if len(upgraded) == 0 {
		if len(failures) > 0 {
			return res, errors.Join(failures...)
		}
		u.printf("Nothing to update: every device has the latest firmware LVFS offers")
		return res, nil
	}
	if slices.ContainsFunc(upgraded, func(d *fwDevice) bool { return d.needsReboot }) {
		if err := u.reboot(ctx); err != nil {
			return res, err
		}
		res.Rebooted = true
	}
	for _, d := range upgraded {
		if err := u.check(ctx, d); err != nil {
			if ctx.Err() != nil {
				return res, fmt.Errorf("firmware update: %w", ctx.Err())
			}
			failures = append(failures, err)
			continue
		}
		res.Updated = append(res.Updated, Change{Name: d.Name, DeviceID: d.DeviceID, From: d.Version, To: d.target})
	}
	if len(failures) > 0 {
		return res, errors.Join(failures...)
	}
	u.printf("Firmware update done: %d device(s) updated", len(res.Updated))
	return res, nil
}

func (u *updater) defaults() {
	for _, d := range []struct {
		dst *time.Duration
		def time.Duration
	}{
		{&u.o.CommandTimeout, DefaultCommandTimeout},
		{&u.o.UpgradeTimeout, DefaultUpgradeTimeout},
		{&u.o.RebootDelay, DefaultRebootDelay},
		{&u.o.RebootTimeout, DefaultRebootTimeout},
		{&u.o.BootCheckInterval, DefaultBootCheckInterval},
	} {
		if *d.dst <= 0 {
			*d.dst = d.def
		}
	}
}

func (u *updater) printf(format string, args ...any) {
	fmt.Fprintf(u.out, format+"\n", args...)
}

// hostKeyProblem reports whether err is about the device's host key,
// which retrying does not mend.
func hostKeyProblem(err error) bool {
	var changed *sshx.HostKeyChangedError
	return errors.As(err, &changed) || errors.Is(err, sshx.ErrUnknownHost)
}

// connect logs in to the device, trying a few times.
func (u *updater) connect(ctx context.Context) error {
	u.printf("Connecting to %s@%s", display.Printable(u.o.SSH.User), u.o.SSH.Addr)
	err := sshx.Retry(ctx, sshx.Backoff{Initial: 2 * time.Second, Max: 10 * time.Second, Attempts: connectAttempts},
		func(ctx context.Context) error {
			c, err := sshx.Dial(ctx, u.o.SSH, u.o.Device)
			if err != nil {
				if hostKeyProblem(err) || errors.Is(err, sshx.ErrAuth) {
					return sshx.Permanent(err)
				}
				return err
			}
			u.c = c
			return nil
		})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("firmware update: connecting to the device: %w", ctx.Err())
		}
		return fmt.Errorf("firmware update: cannot log in to device %s as %s: %w", u.o.Device, display.Printable(u.o.SSH.User), err)
	}
	return nil
}

// run runs argv on the device within timeout and returns its standard
// output and error and its exit status; err is set only when the command
// could not be run or its end was not seen (the link dropped, ctx ended).
func (u *updater) run(ctx context.Context, timeout time.Duration, argv ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var o, e limitedBuffer
	code, err = u.c.Run(ctx, argv, &o, &e)
	u.log.Debug("firmware: ran", "argv", argv, "code", code, "err", err)
	var exit *sshx.ExitError
	if err != nil && errors.As(err, &exit) {
		err = nil
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%s did not finish within %s: %w", strings.Join(argv, " "), timeout, err)
		} else {
			err = fmt.Errorf("running %s on the device: %w", strings.Join(argv, " "), err)
		}
	}
	return o.String(), e.String(), code, err
}

// fail is the error of a command that ran and failed.
func fail(what string, code int, stdout, stderr string) error {
	msg := strings.TrimSpace(stderr)
	if msg == "" {
		msg = strings.TrimSpace(stdout)
	}
	if len(msg) > 2000 {
		msg = msg[:2000] + "…"
	}
	return fmt.Errorf("%s failed (exit status %d): %s", what, code, msg)
}

// ctxErr returns an error wrapping ctx.Err() when ctx ended, else err.
func ctxErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("firmware update: %s: %w", what, ctx.Err())
	}
	return fmt.Errorf("firmware update: %s: %w", what, err)
}

// detect reads the DMI chassis vendor and type and decides whether the
// device is updated from LVFS.
func (u *updater) detect(ctx context.Context) (vendor, chassis string, err error) {
	var vals [2]string
	for i, f := range []string{"chassis_vendor", "chassis_type"} {
		path := "/sys/class/dmi/id/" + f
		stdout, stderr, code, err := u.run(ctx, u.o.CommandTimeout, "sudo", "cat", path)
		if err != nil {
			return "", "", ctxErr(ctx, "detecting the device", err)
		}
		if code != 0 {
			return "", "", fmt.Errorf("firmware update: cannot detect the device's vendor and type, it has no DMI information (set the device key firmware_device_type: %s to update it through LVFS anyway): %w",
				DeviceTypeLVFS, fail("cat "+path, code, stdout, stderr))
		}
		vals[i] = strings.TrimSpace(stdout)
	}
	vendor = vals[0]
	chassis, err = classify(vendor, vals[1])
	u.printf("Device: DMI chassis vendor %s, chassis type %s", strconv.Quote(vendor), display.Printable(chassis))
	if err != nil {
		return vendor, chassis, err
	}
	u.printf("%s devices of this chassis type are updated from LVFS with fwupd", display.Printable(vendor))
	return vendor, chassis, nil
}

// ensureFwupd installs fwupd when fwupdmgr is missing.
func (u *updater) ensureFwupd(ctx context.Context) error {
	stdout, stderr, code, err := u.run(ctx, u.o.CommandTimeout, "fwupdmgr", "--version")
	if err != nil {
		return ctxErr(ctx, "checking fwupd", err)
	}
	if code == 0 {
		u.printf("fwupd: %s", display.Printable(firstLine(stdout)))
		return nil
	}
	if code != 127 {
		return fmt.Errorf("firmware update: %w", fail("fwupdmgr --version", code, stdout, stderr))
	}
	u.printf("fwupd is not installed: installing it")
	if stdout, stderr, code, err := u.run(ctx, u.o.UpgradeTimeout, "sudo", "apt-get", "update"); err != nil {
		return ctxErr(ctx, "apt-get update", err)
	} else if code != 0 {
		// As Testflinger: a failed update leaves the package lists as they
		// were, which may do.
		u.printf("apt-get update failed (continuing): %v", fail("apt-get update", code, stdout, stderr))
	}
	stdout, stderr, code, err = u.run(ctx, u.o.UpgradeTimeout, "sudo", "apt-get", "install", "-y", "fwupd")
	if err != nil {
		return ctxErr(ctx, "installing fwupd", err)
	}
	if code != 0 {
		return fmt.Errorf("firmware update: installing fwupd: %w", fail("apt-get install -y fwupd", code, stdout, stderr))
	}
	stdout, stderr, code, err = u.run(ctx, u.o.CommandTimeout, "fwupdmgr", "--version")
	if err != nil {
		return ctxErr(ctx, "checking fwupd", err)
	}
	if code != 0 {
		return fmt.Errorf("firmware update: fwupd was installed but does not run: %w", fail("fwupdmgr --version", code, stdout, stderr))
	}
	u.printf("fwupd: %s", display.Printable(firstLine(stdout)))
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.Join(strings.Fields(s), " ")
}

// inventory refreshes the LVFS metadata and returns the updatable devices,
// printing their versions.
func (u *updater) inventory(ctx context.Context) ([]*fwDevice, error) {
	u.printf("Refreshing the LVFS metadata")
	stdout, stderr, code, err := u.run(ctx, u.o.UpgradeTimeout, "sudo", "fwupdmgr", "refresh", "--force")
	if err != nil {
		return nil, ctxErr(ctx, "refreshing the LVFS metadata", err)
	}
	if code != 0 {
		return nil, fmt.Errorf("firmware update: %w", fail("fwupdmgr refresh", code, stdout, stderr))
	}
	stdout, stderr, code, err = u.run(ctx, u.o.CommandTimeout, "sudo", "fwupdmgr", "get-devices", "--json")
	if err != nil {
		return nil, ctxErr(ctx, "listing the firmware devices", err)
	}
	if code != 0 {
		return nil, fmt.Errorf("firmware update: %w", fail("fwupdmgr get-devices", code, stdout, stderr))
	}
	var doc struct {
		Devices []*fwDevice `json:"Devices"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		return nil, fmt.Errorf("firmware update: fwupdmgr get-devices --json printed something that is not its JSON: %w", err)
	}
	var devs []*fwDevice
	for _, d := range doc.Devices {
		if d != nil && slices.Contains(d.Flags, "updatable") {
			devs = append(devs, d)
		}
	}
	if len(devs) == 0 {
		u.printf("fwupd finds no device whose firmware it can update")
	}
	for _, d := range devs {
		var up, down []string
		for _, r := range d.Releases {
			switch {
			case slices.Contains(r.Flags, "is-upgrade"):
				up = append(up, display.Printable(r.Version))
			case slices.Contains(r.Flags, "is-downgrade"):
				down = append(down, display.Printable(r.Version))
			}
		}
		line := fmt.Sprintf("[%s] current version: %s", d.name(), display.Printable(d.Version))
		switch {
		case len(d.Releases) == 0:
			line += " - no firmware on LVFS"
		default:
			if len(up) > 0 {
				line += " - LVFS upgradable version(s): " + strings.Join(up, ", ")
			}
			if len(down) > 0 {
				line += " - LVFS downgradable version(s): " + strings.Join(down, ", ")
			}
		}
		u.printf("%s", line)
	}
	return devs, nil
}

// upgrade upgrades each device whose newest release is an upgrade and
// returns those upgraded and the failures.
func (u *updater) upgrade(ctx context.Context, devs []*fwDevice) (upgraded []*fwDevice, failures []error) {
	for _, d := range devs {
		if len(d.Releases) == 0 {
			continue
		}
		latest := d.Releases[0]
		if latest.Version == d.Version {
			u.printf("[%s] already has the latest firmware LVFS offers (%s)", d.name(), display.Printable(d.Version))
			continue
		}
		if !slices.Contains(latest.Flags, "is-upgrade") {
			u.printf("[%s] the newest release on LVFS (%s) is not an upgrade of %s: not updated", d.name(), display.Printable(latest.Version), display.Printable(d.Version))
			continue
		}
		u.printf("[%s] upgrading %s → %s", d.name(), display.Printable(d.Version), display.Printable(latest.Version))
		stdout, stderr, code, err := u.run(ctx, u.o.UpgradeTimeout, "sudo", "fwupdmgr", "upgrade", d.DeviceID, "-y", "--no-reboot-check")
		if err != nil {
			if ctx.Err() != nil {
				return upgraded, failures
			}
			failures = append(failures, &DeviceError{Name: d.name(), DeviceID: d.DeviceID, Version: latest.Version, Step: "upgrade", Detail: err.Error()})
			u.printf("[%s] upgrade failed: %v", d.name(), err)
			continue
		}
		if code != 0 {
			derr := &DeviceError{Name: d.name(), DeviceID: d.DeviceID, Version: latest.Version, Step: "upgrade",
				Detail: fail("fwupdmgr upgrade", code, stdout, stderr).Error()}
			failures = append(failures, derr)
			u.printf("%v", derr)
			continue
		}
		d.target = latest.Version
		d.needsReboot = slices.Contains(d.Flags, "needs-reboot") || strings.Contains(strings.ToLower(stdout), "requires a reboot")
		if d.needsReboot {
			u.printf("[%s] firmware %s staged: it is applied when the device reboots", d.name(), display.Printable(latest.Version))
		} else {
			u.printf("[%s] firmware %s written", d.name(), display.Printable(latest.Version))
		}
		upgraded = append(upgraded, d)
	}
	return upgraded, failures
}

// reboot reboots the device, waits for it to go down and for it to accept
// a login again, and reconnects.
func (u *updater) reboot(ctx context.Context) error {
	u.printf("Rebooting the device to apply the firmware")
	if _, _, _, err := u.run(ctx, u.o.CommandTimeout, "sudo", "reboot"); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("firmware update: rebooting: %w", ctx.Err())
		}
		// The connection may drop before the command's end is seen.
		u.log.Debug("firmware: reboot command", "err", err)
	}
	_ = u.c.Close()
	u.c = nil

	start := time.Now()
	if down, err := u.waitDown(ctx); err != nil {
		return err
	} else if !down {
		u.printf("The device still answers %s after the reboot command; waiting for it anyway", u.o.RebootDelay)
	}
	u.printf("Waiting up to %s for the device to come back", u.o.RebootTimeout)
	wctx, cancel := context.WithTimeout(ctx, u.o.RebootTimeout)
	defer cancel()
	c, err := sshx.WaitForSSH(wctx, u.o.SSH, u.o.Device, u.o.BootCheckInterval)
	switch {
	case err == nil:
		u.c = c
		u.printf("The device is back after %s", time.Since(start).Round(100*time.Millisecond))
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("firmware update: waiting for the device: %w", ctx.Err())
	case hostKeyProblem(err):
		return fmt.Errorf("firmware update: the device came back with a host key that is not the one recorded: %w", err)
	case errors.Is(err, sshx.ErrAuth):
		return fmt.Errorf("firmware update: the device came back but refuses the login as %s: %w", display.Printable(u.o.SSH.User), err)
	}
	return &NotBackError{Device: u.o.Device, Addr: u.o.SSH.Addr, Timeout: u.o.RebootTimeout, Err: err}
}

// waitDown waits up to RebootDelay for the device's SSH server to stop
// answering (sshx.Answers), and reports whether it did.
func (u *updater) waitDown(ctx context.Context) (bool, error) {
	addr := u.o.SSH.Addr
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, sshx.DefaultPort)
	}
	deadline := time.Now().Add(u.o.RebootDelay)
	interval := min(500*time.Millisecond, u.o.RebootDelay)
	for {
		err := sshx.Answers(ctx, addr, time.Second)
		if ctx.Err() != nil {
			return false, fmt.Errorf("firmware update: waiting for the reboot: %w", ctx.Err())
		}
		if err != nil {
			return true, nil
		}
		if time.Now().Add(interval).After(deadline) {
			return false, nil
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, fmt.Errorf("firmware update: waiting for the reboot: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// check checks with fwupdmgr get-results that d was updated.
func (u *updater) check(ctx context.Context, d *fwDevice) error {
	stdout, stderr, code, err := u.run(ctx, u.o.CommandTimeout, "sudo", "fwupdmgr", "get-results", d.DeviceID, "--json")
	if err != nil {
		return &DeviceError{Name: d.name(), DeviceID: d.DeviceID, Version: d.target, Step: "check", Detail: err.Error()}
	}
	var r fwResults
	jerr := json.Unmarshal([]byte(stdout), &r)
	if code != 0 {
		detail := fail("fwupdmgr get-results", code, stdout, stderr).Error()
		if jerr == nil && r.Error != nil && r.Error.Message != "" {
			detail = "fwupd has no result: " + r.Error.Message
		}
		return &DeviceError{Name: d.name(), DeviceID: d.DeviceID, Version: d.target, Step: "check", Detail: detail}
	}
	if jerr != nil {
		return &DeviceError{Name: d.name(), DeviceID: d.DeviceID, Version: d.target, Step: "check",
			Detail: "fwupdmgr get-results --json printed something that is not its JSON: " + jerr.Error()}
	}
	if len(r.Releases) == 0 {
		return &DeviceError{Name: d.name(), DeviceID: d.DeviceID, Version: d.target, Step: "check",
			Detail: "fwupd's result names no release: cannot tell whether the firmware landed"}
	}
	got := r.Releases[0].Version
	if got != d.target || r.UpdateState != stateSuccess {
		detail := fmt.Sprintf("fwupd reports %s for version %s", stateName(r.UpdateState), display.Printable(got))
		if r.UpdateError != "" {
			detail += ": " + display.Printable(r.UpdateError)
		}
		return &DeviceError{Name: d.name(), DeviceID: d.DeviceID, Version: d.target, Step: "check", Detail: detail}
	}
	u.printf("[%s] firmware flashed %s → %s", d.name(), display.Printable(d.Version), display.Printable(d.target))
	return nil
}

// limitedBuffer keeps the first maxOutput bytes written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// Package firmware is the firmware_update phase of Flinger's drivers:
// Testflinger's LVFS path (DefaultDevice.firmware_update and
// fw_devices/{firmware_update.py,dmi.py,LVFS/LVFS.py} under
// device-connectors/src/testflinger_device_connectors in
// canonical/testflinger), run in-process over SSH as the job's
// test_username on the device.
//
// The steps, as Testflinger's:
//
//  1. firmware_update_data.version must be "latest", the only version
//     LVFS updates support;
//  2. detect the device from its DMI chassis vendor and type (sudo cat
//     /sys/class/dmi/id/chassis_vendor and chassis_type): HP, Dell Inc.
//     and LENOVO desktops, all-in-ones, mini PCs and rack-mount chassis
//     are updated from LVFS; HPE servers are updated through iLO, which
//     Flinger does not support (nor does Testflinger's LVFS path); any
//     other vendor or chassis is out of scope;
//  3. make sure fwupd is there (fwupdmgr --version; if it is missing,
//     sudo apt-get update and sudo apt-get install -y fwupd);
//  4. sudo fwupdmgr refresh --force, then sudo fwupdmgr get-devices --json,
//     and print each updatable device's version and the versions LVFS
//     offers;
//  5. for each updatable device whose newest release is an upgrade, sudo
//     fwupdmgr upgrade <DeviceId> -y --no-reboot-check;
//  6. when an upgraded device applies its firmware at boot (its
//     needs-reboot flag, or fwupdmgr saying so), sudo reboot and wait for
//     the device to accept an SSH login again;
//  7. check each upgrade with sudo fwupdmgr get-results <DeviceId> --json:
//     the release it reports must be the version upgraded to, and its
//     UpdateState success.
//
// # Device configuration keys
//
// Durations in seconds or as "90s", "1m30s", "500ms":
//
//	firmware_device_type: lvfs        # skip the DMI detection (see below)
//	firmware_command_timeout: 30      # each fwupdmgr query (Testflinger's 30 s)
//	firmware_upgrade_timeout: 600     # each upgrade, and installing fwupd
//	firmware_reboot_delay: 10         # wait at most this long for the reboot to start
//	firmware_reboot_timeout: 900      # then for the device to come back (Testflinger's 900 s)
//	firmware_boot_check_interval: 10  # between login attempts meanwhile
//
// Job keys: firmware_update_data.version (required: "latest") and
// test_data.test_username / test_password (the login, default ubuntu).
// ignore_failure is the caller's (drivers.Base.FirmwareUpdate).
//
// # Where Flinger differs from Testflinger
//
//   - A device that does not come back after the firmware reboot is a
//     *NotBackError, which drivers.Base turns into a recovery failure (exit
//     46) even with ignore_failure: true, so that the device is taken out
//     of service instead of failing every later job. Testflinger fails the
//     phase with exit 1 (0 with ignore_failure) and leaves the device in
//     service.
//   - A failed fwupdmgr upgrade fails the phase. Testflinger logs it and,
//     when no other device was upgraded, reports success.
//   - The device is rebooted only when an upgrade needs it (Testflinger
//     reboots after any successful upgrade), and after the reboot Flinger
//     first waits for the device to go down, so that the old system still
//     shutting down is not mistaken for the new one (Testflinger sleeps
//     10 s).
//   - fwupd is installed only when it is missing: Testflinger runs apt
//     update and apt install fwupd on every update.
//   - Upgrades get firmware_upgrade_timeout (Testflinger gives every
//     command 30 s, which a device flashed live can exceed).
//   - firmware_device_type: lvfs updates a device whose DMI information
//     is missing or outside Testflinger's table (laptops and notebooks,
//     whose chassis types the table leaves unknown) through LVFS anyway.
//   - Host keys are checked (TOFU or pinned) where Testflinger's ssh runs
//     with StrictHostKeyChecking=no.
package firmware

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// LatestVersion is the only firmware_update_data.version LVFS updates support.
const LatestVersion = "latest"

// DeviceTypeLVFS is the value of firmware_device_type that skips the DMI
// detection and updates the device through LVFS.
const DeviceTypeLVFS = "lvfs"

// Defaults of the device keys.
const (
	DefaultCommandTimeout    = 30 * time.Second
	DefaultUpgradeTimeout    = 10 * time.Minute
	DefaultRebootDelay       = 10 * time.Second
	DefaultRebootTimeout     = 900 * time.Second
	DefaultBootCheckInterval = 10 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 2 * time.Hour

// Keys are the device configuration keys this package reads.
var Keys = []string{"firmware_device_type", "firmware_command_timeout", "firmware_upgrade_timeout",
	"firmware_reboot_delay", "firmware_reboot_timeout", "firmware_boot_check_interval"}

// Options say how to update one device's firmware.
type Options struct {
	// SSH reaches the device as the job's test_username.
	SSH sshx.Config
	// Device is the device's name (its host key record, messages).
	Device string
	// Version is firmware_update_data.version.
	Version string
	// DeviceType is firmware_device_type: "" to detect the device from
	// its DMI information, DeviceTypeLVFS to update it through LVFS.
	DeviceType string
	// CommandTimeout bounds each fwupdmgr query and the reboot command.
	CommandTimeout time.Duration
	// UpgradeTimeout bounds each upgrade and the installation of fwupd.
	UpgradeTimeout time.Duration
	// RebootDelay bounds the wait for the device to go down after the
	// reboot command.
	RebootDelay time.Duration
	// RebootTimeout bounds the wait for the device to come back.
	RebootTimeout time.Duration
	// BootCheckInterval is the time between login attempts meanwhile.
	BootCheckInterval time.Duration
	// Out receives what is done, for the job's output (nil: discarded).
	Out io.Writer
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
}

// ParseOptions reads the device keys of the package documentation from a
// device configuration; the SSH, Device, Version, Out and Log fields are
// the caller's. Each error names its key.
func ParseOptions(raw events.Data) (Options, error) {
	var o Options
	var errs []error
	t, err := raw.String("firmware_device_type", "")
	switch {
	case err != nil:
		errs = append(errs, err)
	case t != "" && t != DeviceTypeLVFS:
		errs = append(errs, fmt.Errorf("firmware_device_type: %q is not supported (only %q, or leave it out to detect the device)", t, DeviceTypeLVFS))
	default:
		o.DeviceType = t
	}
	if err := devconf.Durations(raw, MaxDuration,
		devconf.DurationKey{Key: "firmware_command_timeout", Default: DefaultCommandTimeout, Dst: &o.CommandTimeout},
		devconf.DurationKey{Key: "firmware_upgrade_timeout", Default: DefaultUpgradeTimeout, Dst: &o.UpgradeTimeout},
		devconf.DurationKey{Key: "firmware_reboot_delay", Default: DefaultRebootDelay, Dst: &o.RebootDelay},
		devconf.DurationKey{Key: "firmware_reboot_timeout", Default: DefaultRebootTimeout, Dst: &o.RebootTimeout},
		devconf.DurationKey{Key: "firmware_boot_check_interval", Default: DefaultBootCheckInterval, Dst: &o.BootCheckInterval},
	); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return Options{}, errors.Join(errs...)
	}
	return o, nil
}

// VersionFrom returns firmware_update_data.version ("" when absent).
func VersionFrom(data events.Data) (string, error) {
	v, err := data.String("version", "")
	if err != nil {
		return "", fmt.Errorf("firmware_update_data.%w", err)
	}
	return v, nil
}

// VersionError reports a firmware_update_data.version LVFS cannot update to.
type VersionError struct {
	// Version is the version asked for ("" when none was).
	Version string
}

// Error names the key and the version supported.
func (e *VersionError) Error() string {
	if e.Version == "" {
		return fmt.Sprintf("firmware_update_data.version is required: the only version LVFS updates support is %q", LatestVersion)
	}
	return fmt.Sprintf("firmware_update_data.version %s is not supported: LVFS devices can only be updated to %q", strconv.Quote(e.Version), LatestVersion)
}

// UnsupportedError reports a device whose firmware Flinger cannot update.
type UnsupportedError struct {
	// Vendor and Chassis are what its DMI information says.
	Vendor, Chassis string
	// Reason says why.
	Reason string
}

// Error gives the vendor, the chassis and the reason.
func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("cannot update the firmware of this device (DMI chassis vendor %s, chassis type %s): %s",
		strconv.Quote(e.Vendor), e.Chassis, e.Reason)
}

// DeviceError reports that updating one firmware device failed: its
// upgrade, or the check of its result.
type DeviceError struct {
	// Name and DeviceID identify the device as fwupd does.
	Name, DeviceID string
	// Version is the version it was to be updated to.
	Version string
	// Step is "upgrade" or "check".
	Step string
	// Detail is what fwupd said.
	Detail string
}

// Error names the device, the step and what fwupd said.
func (e *DeviceError) Error() string {
	verb := "upgrading"
	if e.Step == "check" {
		verb = "the update"
	}
	msg := fmt.Sprintf("[%s] %s to %s failed", e.Name, verb, e.Version)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// NotBackError reports that the device did not come back after the reboot
// that applies its firmware.
type NotBackError struct {
	// Device and Addr are the device's name and SSH address.
	Device, Addr string
	// Timeout is how long it was waited for.
	Timeout time.Duration
	// Err is the last attempt's error.
	Err error
}

// Error names the device and the wait.
func (e *NotBackError) Error() string {
	return fmt.Sprintf("device %s (%s) did not come back within %s of the reboot that applies its firmware: %v", e.Device, e.Addr, e.Timeout, e.Err)
}

// Unwrap returns the last attempt's error.
func (e *NotBackError) Unwrap() error { return e.Err }

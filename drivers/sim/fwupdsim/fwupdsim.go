// Package fwupdsim gives a simulated device (a sim.DUT) the firmware side
// of a PC that fwupd updates from LVFS: the DMI files Testflinger's
// detect_device reads (/sys/class/dmi/id/chassis_vendor, chassis_type,
// sys_vendor, product_name), a firmware inventory with current and
// available versions, and the commands that reach it:
//
//	fwupdmgr --version
//	fwupdmgr refresh [--force]
//	fwupdmgr get-devices [--json]
//	fwupdmgr get-updates [--json]
//	fwupdmgr upgrade [DEVICE-ID] [-y] [--no-reboot-check]
//	fwupdmgr install FILE [DEVICE-ID] [-y] [--no-reboot-check] [--allow-older] [--allow-reinstall]
//	fwupdmgr get-results DEVICE-ID [--json]
//	apt-get update | apt-get install -y fwupd   (apt also)
//
// The JSON has the shapes fwupd prints (Devices with Name, DeviceId, Flags,
// Version, Releases newest first with is-upgrade / is-downgrade flags;
// get-results with UpdateState and UpdateError). Available releases are
// known only after a refresh (the LVFS metadata). Commands that change
// something (refresh, upgrade, install, apt-get install) need sudo, as
// polkit would refuse them over a non-interactive login.
//
// An update of a device flagged needs-reboot (a UEFI capsule) is staged
// and applied at the next boot of the DUT, however it is rebooted; others
// apply at once. Faults: refresh fails, upgrade fails, the device never
// comes back from the reboot that applies the firmware, and the firmware
// not applied by that reboot (get-results reports the failure).
package fwupdsim

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/flingerlab/flinger/drivers/sim"
)

// fwupd's update states (FwupdUpdateState).
const (
	StateUnknown     = 0
	StatePending     = 1
	StateSuccess     = 2
	StateFailed      = 3
	StateNeedsReboot = 4
)

// DMI files written on the DUT.
const (
	DMIDir           = "/sys/class/dmi/id/"
	DMIChassisVendor = DMIDir + "chassis_vendor"
	DMIChassisType   = DMIDir + "chassis_type"
	DMISysVendor     = DMIDir + "sys_vendor"
	DMIProductName   = DMIDir + "product_name"
)

// Defaults of Options.
const (
	DefaultChassisVendor = "Dell Inc."
	DefaultChassisType   = 3 // Desktop
	DefaultProductName   = "Simulated Desktop"
	DefaultFwupdVersion  = "1.9.16"
)

// Release is a firmware release available on LVFS for a device.
type Release struct {
	// Version is the release's version.
	Version string
	// Summary describes it (default: "<device name> firmware").
	Summary string
}

// Device is an entry of the firmware inventory.
type Device struct {
	// Name is the device's name, as fwupd shows it.
	Name string
	// DeviceID is fwupd's device ID (default: the SHA-1 of Name).
	DeviceID string
	// Vendor is the device's vendor.
	Vendor string
	// Plugin is the fwupd plugin handling it (default "uefi_capsule").
	Plugin string
	// Version is the firmware version installed.
	Version string
	// Updatable says fwupd can update it.
	Updatable bool
	// NeedsReboot says its updates apply at the next boot.
	NeedsReboot bool
	// FailsUpgrade makes its upgrades and installs fail (as the fault
	// UpgradeFails, for this device only).
	FailsUpgrade bool
	// Releases are the releases LVFS has for it, in any order.
	Releases []Release
}

// DefaultDevices is a desktop's inventory: system firmware (a UEFI
// capsule, applied at reboot) with an upgrade, an NVMe drive already at its
// latest version, a dock updated live with an upgrade, and a TPM fwupd
// cannot update.
func DefaultDevices() []Device {
	return []Device{
		{Name: "System Firmware", Vendor: "Dell Inc.", Plugin: "uefi_capsule", Version: "1.14.0", Updatable: true, NeedsReboot: true,
			Releases: []Release{{Version: "1.15.0"}, {Version: "1.14.0"}, {Version: "1.13.1"}}},
		{Name: "PC SN740 NVMe WD 512GB", Vendor: "Western Digital", Plugin: "nvme", Version: "73110000", Updatable: true, NeedsReboot: true,
			Releases: []Release{{Version: "73110000"}}},
		{Name: "WD19TB Dock", Vendor: "Dell Inc.", Plugin: "dell_dock", Version: "01.00.30.01", Updatable: true,
			Releases: []Release{{Version: "01.00.32.01"}, {Version: "01.00.30.01"}}},
		{Name: "TPM", Vendor: "Infineon", Plugin: "tpm", Version: "7.85.17.51968"},
	}
}

// Options configure the firmware side of a DUT.
type Options struct {
	// ChassisVendor is the DMI chassis vendor (default DefaultChassisVendor).
	ChassisVendor string
	// ChassisType is the DMI chassis type number (default DefaultChassisType).
	ChassisType int
	// NoDMI leaves the DMI files out, as on a board without DMI tables.
	NoDMI bool
	// ProductName is the DMI product name (default DefaultProductName).
	ProductName string
	// Devices is the firmware inventory (nil: DefaultDevices).
	Devices []Device
	// FwupdVersion is the version fwupdmgr reports (default DefaultFwupdVersion).
	FwupdVersion string
	// NotInstalled leaves fwupd out until apt-get install fwupd runs.
	NotInstalled bool
	// BootCheck is the DUT's own boot check (such as sim.BootFromDisk),
	// asked after the staged firmware is applied at the end of each boot
	// (nil: the DUT keeps its image).
	BootCheck sim.BootCheck
	// Faults are the faults injected from the start.
	Faults Faults
}

// Faults are the misbehaviours the firmware side can be given.
type Faults struct {
	// RefreshFails makes fwupdmgr refresh fail (LVFS unreachable).
	RefreshFails bool
	// UpgradeFails makes every upgrade and install fail.
	UpgradeFails bool
	// NeverComesBack keeps the DUT from coming up from the boot that
	// applies staged firmware.
	NeverComesBack bool
	// NotApplied makes the boot that should apply staged firmware leave it
	// unapplied; get-results then reports the failure.
	NotApplied bool
}

// result is the last update attempt of a device, as get-results reports it.
type result struct {
	state   int
	version string // the release attempted
	from    string
	err     string
}

type device struct {
	Device
	releases []Release // newest first
	pending  string    // version staged for the next boot
	result   *result
}

// FWUPD is the firmware side of one DUT. Its methods are safe for
// concurrent use.
type FWUPD struct {
	dut          *sim.DUT
	fwupdVersion string
	inner        sim.BootCheck

	mu        sync.Mutex
	installed bool
	refreshed bool
	devices   []*device
	faults    Faults
	calls     []string
}

// Attach gives dut its firmware side: it writes the DMI files, adds the
// fwupdmgr, apt-get and apt commands and sets the DUT's BootCheck (which
// then asks opts.BootCheck).
func Attach(dut *sim.DUT, opts Options) (*FWUPD, error) {
	if dut == nil {
		return nil, errors.New("fwupdsim: no DUT")
	}
	f := &FWUPD{dut: dut, fwupdVersion: cmp.Or(opts.FwupdVersion, DefaultFwupdVersion), inner: opts.BootCheck,
		installed: !opts.NotInstalled, faults: opts.Faults}
	devs := opts.Devices
	if devs == nil {
		devs = DefaultDevices()
	}
	seen := map[string]bool{}
	for i, d := range devs {
		if d.Name == "" || d.Version == "" {
			return nil, fmt.Errorf("fwupdsim: device %d: Name and Version are required", i)
		}
		if d.DeviceID == "" {
			sum := sha1.Sum([]byte(d.Name))
			d.DeviceID = hex.EncodeToString(sum[:])
		}
		if seen[d.DeviceID] {
			return nil, fmt.Errorf("fwupdsim: device %d: duplicate DeviceID %s", i, d.DeviceID)
		}
		seen[d.DeviceID] = true
		d.Plugin = cmp.Or(d.Plugin, "uefi_capsule")
		rels := slices.Clone(d.Releases)
		slices.SortStableFunc(rels, func(a, b Release) int { return CompareVersions(b.Version, a.Version) })
		f.devices = append(f.devices, &device{Device: d, releases: rels})
	}
	if !opts.NoDMI {
		vendor := cmp.Or(opts.ChassisVendor, DefaultChassisVendor)
		ctype := opts.ChassisType
		if ctype == 0 {
			ctype = DefaultChassisType
		}
		dut.WriteFile(DMIChassisVendor, []byte(vendor+"\n"))
		dut.WriteFile(DMIChassisType, []byte(strconv.Itoa(ctype)+"\n"))
		dut.WriteFile(DMISysVendor, []byte(vendor+"\n"))
		dut.WriteFile(DMIProductName, []byte(cmp.Or(opts.ProductName, DefaultProductName)+"\n"))
	}
	dut.Handle("fwupdmgr", buffered(f.fwupdmgr))
	dut.Handle("apt-get", buffered(f.apt))
	dut.Handle("apt", buffered(f.apt))
	dut.SetBootCheck(f.bootCheck)
	return f, nil
}

// SetFaults replaces the injected faults.
func (f *FWUPD) SetFaults(faults Faults) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = faults
}

// Version returns the firmware version of the device with DeviceID or
// Name id, and whether there is one.
func (f *FWUPD) Version(id string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.findLocked(id); d != nil {
		return d.Version, true
	}
	return "", false
}

// Pending returns the version staged for the next boot of the device with
// DeviceID or Name id ("" for none).
func (f *FWUPD) Pending(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.findLocked(id); d != nil {
		return d.pending
	}
	return ""
}

// DeviceID returns the DeviceID of the device named name ("" if none).
func (f *FWUPD) DeviceID(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.findLocked(name); d != nil {
		return d.DeviceID
	}
	return ""
}

// Installed reports whether fwupd is installed.
func (f *FWUPD) Installed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.installed
}

// Calls returns the fwupdmgr and apt command lines run so far (their
// words joined by spaces, sudo first when given).
func (f *FWUPD) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *FWUPD) findLocked(id string) *device {
	for _, d := range f.devices {
		if d.DeviceID == id || d.Name == id {
			return d
		}
	}
	return nil
}

// bootCheck applies staged firmware at the end of a boot, then asks the
// DUT's own boot check. It runs under the DUT's lock: it must not call the
// DUT.
func (f *FWUPD) bootCheck() (sim.Image, bool, error) {
	f.mu.Lock()
	staged := false
	for _, d := range f.devices {
		if d.pending == "" {
			continue
		}
		staged = true
		if f.faults.NeverComesBack {
			continue
		}
		if f.faults.NotApplied {
			d.result = &result{state: StateFailed, version: d.pending, from: d.Version,
				err: fmt.Sprintf("failed to run update on reboot: firmware version is still %s, expected %s", d.Version, d.pending)}
		} else {
			d.result = &result{state: StateSuccess, version: d.pending, from: d.Version}
			d.Version = d.pending
		}
		d.pending = ""
	}
	never := staged && f.faults.NeverComesBack
	f.mu.Unlock()
	if never {
		return sim.Image{}, false, errors.New("fwupdsim: the firmware update left the device unbootable (simulated fault)")
	}
	if f.inner != nil {
		return f.inner()
	}
	return sim.Image{}, true, nil
}

// buffered runs cmd with its output kept in memory and written once cmd
// has returned, so that no output is written while the lock is held (a
// write can wait on the DUT, whose boot check waits on the lock).
func buffered(cmd func(x *sim.Exec) int) sim.Command {
	return func(_ context.Context, x *sim.Exec) int {
		var out, errOut bytes.Buffer
		bx := *x
		bx.Stdout, bx.Stderr = &out, &errOut
		code := cmd(&bx)
		_, _ = x.Stdout.Write(out.Bytes())
		_, _ = x.Stderr.Write(errOut.Bytes())
		return code
	}
}

// apt runs apt-get and apt: update, and install -y fwupd.
func (f *FWUPD) apt(x *sim.Exec) int {
	f.record(x)
	args := x.Args[1:]
	if len(args) == 0 {
		return x.Errorf(100, "E: no operation given")
	}
	if !x.Sudo {
		fmt.Fprintln(x.Stderr, "E: Could not open lock file /var/lib/dpkg/lock-frontend - open (13: Permission denied)")
		return 100
	}
	switch args[0] {
	case "update":
		fmt.Fprintln(x.Stdout, "Hit:1 http://archive.ubuntu.com/ubuntu noble InRelease\nReading package lists... Done")
		return 0
	case "install":
		var pkgs []string
		for _, a := range args[1:] {
			if !strings.HasPrefix(a, "-") {
				pkgs = append(pkgs, a)
			}
		}
		for _, p := range pkgs {
			if p != "fwupd" {
				fmt.Fprintf(x.Stderr, "E: Unable to locate package %s\n", p)
				return 100
			}
		}
		f.mu.Lock()
		already := f.installed
		f.installed = true
		f.mu.Unlock()
		if already {
			fmt.Fprintf(x.Stdout, "fwupd is already the newest version (%s).\n", f.fwupdVersion)
		} else {
			fmt.Fprintf(x.Stdout, "Setting up fwupd (%s) ...\n", f.fwupdVersion)
		}
		return 0
	}
	return x.Errorf(100, "E: Invalid operation %s", args[0])
}

func (f *FWUPD) record(x *sim.Exec) {
	line := strings.Join(x.Args, " ")
	if x.Sudo {
		line = "sudo " + line
	}
	f.mu.Lock()
	f.calls = append(f.calls, line)
	f.mu.Unlock()
}

// flags are fwupdmgr's options.
type flags struct {
	json, yes, noRebootCheck, force, allowOlder, allowReinstall bool
	args                                                        []string
}

func parseFlags(args []string) (flags, error) {
	var fl flags
	for _, a := range args {
		switch a {
		case "--json":
			fl.json = true
		case "-y", "--assume-yes":
			fl.yes = true
		case "--no-reboot-check":
			fl.noRebootCheck = true
		case "--force":
			fl.force = true
		case "--allow-older":
			fl.allowOlder = true
		case "--allow-reinstall":
			fl.allowReinstall = true
		case "-v", "--verbose", "--no-unreported-check", "--no-metadata-check", "--no-remote-check", "--no-safety-check":
		default:
			if strings.HasPrefix(a, "-") {
				return fl, fmt.Errorf("unknown option %s", a)
			}
			fl.args = append(fl.args, a)
		}
	}
	return fl, nil
}

// fwupdmgr runs the fwupdmgr command.
func (f *FWUPD) fwupdmgr(x *sim.Exec) int {
	f.record(x)
	f.mu.Lock()
	installed := f.installed
	f.mu.Unlock()
	if !installed {
		fmt.Fprintf(x.Stderr, "sh: %s: command not found\n", x.Args[0])
		return 127
	}
	if len(x.Args) < 2 {
		return x.Errorf(1, "Invalid arguments; run fwupdmgr --help")
	}
	sub := x.Args[1]
	if sub == "--version" {
		fmt.Fprintf(x.Stdout, "runtime   org.freedesktop.fwupd         %s\ncompile   org.freedesktop.fwupd         %s\n", f.fwupdVersion, f.fwupdVersion)
		return 0
	}
	fl, err := parseFlags(x.Args[2:])
	if err != nil {
		return x.Errorf(1, "%v", err)
	}
	switch sub {
	case "refresh":
		return f.refresh(x)
	case "get-devices":
		return f.getDevices(x, fl)
	case "get-updates":
		return f.getUpdates(x, fl)
	case "upgrade", "update":
		return f.upgrade(x, fl)
	case "install":
		return f.install(x, fl)
	case "get-results":
		return f.getResults(x, fl)
	}
	return x.Errorf(1, "Command not found, valid commands are: get-devices, get-results, get-updates, install, refresh, upgrade")
}

func needsAuth(x *sim.Exec) int {
	fmt.Fprintln(x.Stderr, "Authenticating…\nFailed to obtain auth: Not authorized")
	return 1
}

func (f *FWUPD) refresh(x *sim.Exec) int {
	if !x.Sudo {
		return needsAuth(x)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.faults.RefreshFails {
		fmt.Fprintln(x.Stderr, "Failed to download https://cdn.fwupd.org/downloads/firmware.xml.zst: Could not resolve host: cdn.fwupd.org")
		return 1
	}
	f.refreshed = true
	n := 0
	for _, d := range f.devices {
		if d.Updatable && len(d.releases) > 0 {
			n++
		}
	}
	fmt.Fprintf(x.Stdout, "Updating lvfs\nDownloading…             [***************************************]\nSuccessfully downloaded new metadata: %d local devices supported\n", n)
	return 0
}

// jsonRelease is a release as fwupd prints it.
type jsonRelease struct {
	AppstreamID string   `json:"AppstreamId"`
	RemoteID    string   `json:"RemoteId"`
	Name        string   `json:"Name"`
	Summary     string   `json:"Summary"`
	Version     string   `json:"Version"`
	Filename    string   `json:"Filename"`
	Protocol    string   `json:"Protocol"`
	Checksum    []string `json:"Checksum"`
	Size        int      `json:"Size"`
	Locations   []string `json:"Locations"`
	URI         string   `json:"Uri"`
	Vendor      string   `json:"Vendor"`
	Flags       []string `json:"Flags,omitempty"`
}

// jsonDevice is a device as fwupd prints it.
type jsonDevice struct {
	Name          string        `json:"Name"`
	DeviceID      string        `json:"DeviceId"`
	GUID          []string      `json:"Guid"`
	Plugin        string        `json:"Plugin"`
	Flags         []string      `json:"Flags"`
	Vendor        string        `json:"Vendor,omitempty"`
	Version       string        `json:"Version"`
	VersionFormat string        `json:"VersionFormat"`
	Created       int64         `json:"Created"`
	UpdateState   int           `json:"UpdateState,omitempty"`
	UpdateError   string        `json:"UpdateError,omitempty"`
	Releases      []jsonRelease `json:"Releases,omitempty"`
}

func guid(s string) string {
	sum := sha1.Sum([]byte("guid:" + s))
	h := hex.EncodeToString(sum[:16])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// cabName is the file name of a release's cabinet archive.
func cabName(d *device, r Release) string {
	sum := sha1.Sum([]byte(d.DeviceID + "@" + r.Version))
	return hex.EncodeToString(sum[:]) + ".cab"
}

func (f *FWUPD) releaseJSON(d *device, r Release, flags []string) jsonRelease {
	sum := sha1.Sum([]byte(d.DeviceID + "@" + r.Version))
	cab := cabName(d, r)
	return jsonRelease{
		AppstreamID: "org.fwupd.sim." + strings.ToLower(strings.ReplaceAll(d.Plugin, "_", "")) + ".firmware",
		RemoteID:    "lvfs", Name: d.Name, Summary: cmp.Or(r.Summary, d.Name+" firmware"), Version: r.Version,
		Filename: hex.EncodeToString(sum[:]), Protocol: "org.uefi.capsule", Checksum: []string{hex.EncodeToString(sum[:])},
		Size: 16781312, Locations: []string{"https://fwupd.org/downloads/" + cab}, URI: "https://fwupd.org/downloads/" + cab,
		Vendor: d.Vendor, Flags: flags,
	}
}

// deviceJSON renders d; with releases, those of the metadata, each
// flagged against the installed version (upgradesOnly: only upgrades).
func (f *FWUPD) deviceJSON(d *device, releases, upgradesOnly bool) jsonDevice {
	fl := []string{"internal"}
	if d.Updatable {
		fl = append(fl, "updatable", "require-ac", "supported")
	}
	fl = append(fl, "registered")
	if d.NeedsReboot {
		fl = append(fl, "needs-reboot")
	}
	j := jsonDevice{Name: d.Name, DeviceID: d.DeviceID, GUID: []string{guid(d.DeviceID)}, Plugin: d.Plugin, Flags: fl,
		Vendor: d.Vendor, Version: d.Version, VersionFormat: "plain", Created: 1735689600}
	if d.result != nil {
		j.UpdateState = d.result.state
		j.UpdateError = d.result.err
	}
	if releases && f.refreshed && d.Updatable {
		for _, r := range d.releases {
			var rf []string
			switch c := CompareVersions(r.Version, d.Version); {
			case c > 0:
				rf = []string{"is-upgrade"}
			case c < 0:
				rf = []string{"is-downgrade"}
			}
			if upgradesOnly && (len(rf) == 0 || rf[0] != "is-upgrade") {
				continue
			}
			j.Releases = append(j.Releases, f.releaseJSON(d, r, rf))
		}
	}
	return j
}

func writeJSON(x *sim.Exec, v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return x.Errorf(1, "%v", err)
	}
	_, _ = x.Stdout.Write(append(b, '\n'))
	return 0
}

func (f *FWUPD) getDevices(x *sim.Exec, fl flags) int {
	f.mu.Lock()
	devs := make([]jsonDevice, 0, len(f.devices))
	for _, d := range f.devices {
		devs = append(devs, f.deviceJSON(d, true, false))
	}
	f.mu.Unlock()
	if fl.json {
		return writeJSON(x, map[string]any{"Devices": devs})
	}
	name, _ := x.DUT.ReadFile(DMIProductName)
	fmt.Fprintf(x.Stdout, "%s\n", strings.TrimSpace(string(name)))
	for _, d := range devs {
		fmt.Fprintf(x.Stdout, "├─%s:\n│     Device ID:          %s\n│     Current version:    %s\n│     Vendor:             %s\n│     Device Flags:       • %s\n│\n",
			d.Name, d.DeviceID, d.Version, d.Vendor, strings.Join(d.Flags, "\n│                         • "))
	}
	return 0
}

func (f *FWUPD) getUpdates(x *sim.Exec, fl flags) int {
	f.mu.Lock()
	var devs []jsonDevice
	var none []string
	for _, d := range f.devices {
		if !d.Updatable {
			continue
		}
		j := f.deviceJSON(d, true, true)
		if len(j.Releases) == 0 {
			none = append(none, d.Name)
			continue
		}
		devs = append(devs, j)
	}
	f.mu.Unlock()
	if len(devs) == 0 {
		if len(none) > 0 {
			fmt.Fprintf(x.Stdout, "Devices with no available firmware updates: \n • %s\n", strings.Join(none, "\n • "))
		}
		fmt.Fprintln(x.Stderr, "No updates available")
		return 2
	}
	if fl.json {
		return writeJSON(x, map[string]any{"Devices": devs})
	}
	for _, d := range devs {
		fmt.Fprintf(x.Stdout, "├─%s:\n│     Current version:    %s\n│     New version:        %s\n", d.Name, d.Version, d.Releases[0].Version)
	}
	return 0
}

// apply installs release r on d (the lock held), printing what fwupdmgr
// prints, and returns the exit status and whether a reboot is needed.
func (f *FWUPD) applyLocked(x *sim.Exec, d *device, r Release) (int, bool) {
	fmt.Fprintf(x.Stdout, "Downloading %s for %s…\nDecompressing…           [***************************************]\n", r.Version, d.Name)
	if f.faults.UpgradeFails || d.FailsUpgrade {
		d.result = &result{state: StateFailed, version: r.Version, from: d.Version,
			err: "failed to write-firmware: failed to update: simulated write failure"}
		fmt.Fprintf(x.Stderr, "failed to write-firmware: failed to update %s: simulated write failure\n", d.Name)
		return 1, false
	}
	if d.NeedsReboot {
		d.pending = r.Version
		d.result = &result{state: StateNeedsReboot, version: r.Version, from: d.Version}
		fmt.Fprintln(x.Stdout, "Scheduling…              [***************************************]\nSuccessfully installed firmware")
		return 0, true
	}
	d.result = &result{state: StateSuccess, version: r.Version, from: d.Version}
	d.Version = r.Version
	fmt.Fprintln(x.Stdout, "Writing…                 [***************************************]\nSuccessfully installed firmware")
	return 0, false
}

// finish prints the reboot prompt when a reboot is needed and reboots
// when told to.
func finish(x *sim.Exec, fl flags, reboot bool) {
	if !reboot || fl.noRebootCheck {
		return
	}
	fmt.Fprint(x.Stdout, "An update requires a reboot to complete. Restart now? [y|N]: ")
	if fl.yes {
		fmt.Fprintln(x.Stdout, "y")
		x.RebootAfter()
		return
	}
	fmt.Fprintln(x.Stdout)
}

func (f *FWUPD) upgrade(x *sim.Exec, fl flags) int {
	if !x.Sudo {
		return needsAuth(x)
	}
	if len(fl.args) > 1 {
		return x.Errorf(1, "Invalid arguments: expected at most one DEVICE-ID")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	targets := f.devices
	if len(fl.args) == 1 {
		d := f.findLocked(fl.args[0])
		if d == nil {
			return x.Errorf(1, "failed to find %s", fl.args[0])
		}
		targets = []*device{d}
	}
	status, reboot, done := 0, false, 0
	for _, d := range targets {
		if !d.Updatable || !f.refreshed || len(d.releases) == 0 {
			continue
		}
		latest := d.releases[0]
		if CompareVersions(latest.Version, d.Version) <= 0 || d.pending == latest.Version {
			continue
		}
		rc, rb := f.applyLocked(x, d, latest)
		done++
		if rc != 0 {
			status = rc
		}
		reboot = reboot || rb
	}
	if done == 0 {
		fmt.Fprintln(x.Stderr, "No updates available")
		return 2
	}
	finish(x, fl, reboot)
	return status
}

func (f *FWUPD) install(x *sim.Exec, fl flags) int {
	if !x.Sudo {
		return needsAuth(x)
	}
	if len(fl.args) < 1 || len(fl.args) > 2 {
		return x.Errorf(1, "Invalid arguments: expected FILE [DEVICE-ID]")
	}
	file := path.Base(fl.args[0])
	f.mu.Lock()
	defer f.mu.Unlock()
	var dev *device
	var rel Release
	for _, d := range f.devices {
		if len(fl.args) == 2 && d.DeviceID != fl.args[1] {
			continue
		}
		for _, r := range d.releases {
			if cabName(d, r) == file {
				dev, rel = d, r
			}
		}
	}
	if dev == nil {
		return x.Errorf(1, "failed to load %s: No such file or directory", fl.args[0])
	}
	switch c := CompareVersions(rel.Version, dev.Version); {
	case c < 0 && !fl.allowOlder:
		return x.Errorf(1, "%s has firmware version %s, %s is older: use --allow-older", dev.Name, dev.Version, rel.Version)
	case c == 0 && !fl.allowReinstall:
		return x.Errorf(1, "%s has firmware version %s already: use --allow-reinstall", dev.Name, rel.Version)
	}
	rc, reboot := f.applyLocked(x, dev, rel)
	if rc == 0 {
		finish(x, fl, reboot)
	}
	return rc
}

func (f *FWUPD) getResults(x *sim.Exec, fl flags) int {
	if len(fl.args) != 1 {
		return x.Errorf(1, "Invalid arguments: expected DEVICE-ID")
	}
	f.mu.Lock()
	d := f.findLocked(fl.args[0])
	var j jsonDevice
	var r *result
	if d != nil && d.result != nil {
		r = d.result
		j = f.deviceJSON(d, false, false)
		rel := f.releaseJSON(d, Release{Version: r.version}, nil)
		j.Releases = []jsonRelease{rel}
	}
	f.mu.Unlock()
	if r == nil {
		msg := "Failed to find " + fl.args[0] + " in history database"
		if fl.json {
			writeJSON(x, map[string]any{"Error": map[string]any{"Domain": "FwupdError", "Code": 9, "Message": msg}})
		} else {
			fmt.Fprintln(x.Stderr, msg)
		}
		return 1
	}
	if fl.json {
		return writeJSON(x, j)
	}
	fmt.Fprintf(x.Stdout, "%s:\n  Device ID:       %s\n  Previous version: %s\n  Update State:    %s\n", j.Name, j.DeviceID, r.from, StateName(r.state))
	if r.err != "" {
		fmt.Fprintf(x.Stdout, "  Update Error:    %s\n", r.err)
	}
	return 0
}

// StateName returns fwupd's name of an update state.
func StateName(s int) string {
	switch s {
	case StatePending:
		return "pending"
	case StateSuccess:
		return "success"
	case StateFailed:
		return "failed"
	case StateNeedsReboot:
		return "needs-reboot"
	}
	return "unknown"
}

// CompareVersions compares two firmware versions, dotted parts compared as
// numbers when both are numbers and as strings otherwise: -1 when a < b,
// 0 when equal, +1 when a > b.
func CompareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(pa), len(pb)) {
		var x, y string
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		nx, ex := strconv.ParseUint(x, 10, 64)
		ny, ey := strconv.ParseUint(y, 10, 64)
		var c int
		if ex == nil && ey == nil {
			c = cmp.Compare(nx, ny)
		} else {
			c = cmp.Compare(x, y)
		}
		if c != 0 {
			return c
		}
	}
	return 0
}

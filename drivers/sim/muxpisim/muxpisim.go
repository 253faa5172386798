// Package muxpisim simulates the lab rig of a muxpi device: a control host
// (a MuxPi, or a Zapper driving an SDWire and a Type-C USB mux) that can
// take the device's boot media, write images to them and hand them back,
// and the device under test (DUT) that boots from those media. Both are
// sim.DUTs reached over real SSH, so the muxpi driver is tested as against
// hardware.
//
// # The media
//
// The rig has two media, each a sim.Disk: the SD card (MediaSD) and a USB
// stick (MediaUSB). A medium is on one side of its mux at a time. Switched
// to the control host, it is attached there as a block device (the SD card
// at Options.TestDevice, the stick at Options.USBNode), so that dd,
// hdparm, lsblk and mount reach it; switched to the DUT, it is gone from
// the control host (dd of= it fails) and the DUT may boot from it. The DUT
// cannot boot while no written medium is switched to it; it boots the
// medium that was last written and handed back, or else the first of SD
// and USB that was written (the SD card holds Options.Image from the
// start, the USB stick nothing), and it never comes up when that medium
// does not hold a complete simulated image (sim.Bootable).
//
// Each written image carries the partitions and files of its kind
// (sim.Image.Kind): ubuntu or server, pi-desktop or desktop, core,
// core20, ubuntu-cpc, ce-oem-iot, tegra (see Layout). Mounting a partition on the control host
// puts its files under the mount point, where cat, ls, test, tee, cp, rm
// and chmod see them; unmounting it puts what is there back on the medium
// (MediumFiles), so a test can check the files a driver installed.
//
// # The control host's commands
//
// Besides sim.DUT's built-in commands (sync, hdparm, tee, cat, mkdir,
// rm, the decompressors...):
//
//	dd of=DEVICE [bs=N] ...   write standard input to a medium switched to the
//	                          control host (with sudo): sim.DD
//	stm -ts | -dut            switch the SD card to the control host | to the DUT
//	stm -tick                 power-cycle the DUT
//	CLI sdwire|typecmux plug_to_self   switch the SD card | USB stick to the
//	                                   control host and print its block node
//	CLI sdwire|typecmux plug_to_dut    switch it to the DUT
//	CLI sdwire|typecmux set TS|DUT     the same, printing nothing
//	CLI --help
//	lsblk [-J] [-n] [-o NAME,LABEL,MOUNTPOINT] DEVICE...
//	mount DEVICE DIR, umount DIR|DEVICE...   and the other commands of sim.Mounts:
//	ls [-1] [-a] DIR, test -e|-f|-d|-b PATH, cp [-a] SRC DST, chmod MODE PATH
//
// where CLI is Options.MuxCLI (default zapper). Every command may be run
// with sudo, and dd, mount and umount must be.
// /proc/sys/kernel/random/boot_id changes each time the control host
// boots.
//
// # The control host's REST API
//
// The control host also serves Testflinger's control-host REST API
// (package controlhostsim, API): POST /api/v1/system/poweroff takes it
// down until ControlRebootScript powers it on again, /health answers while
// it is up, and the setup requests are recorded.
//
// # Power
//
// A sim.Switch gives the rig four local scripts: RebootScript power-cycles
// the DUT (a device's reboot_script), PowerOffScript and PowerOnScript
// switch the DUT off and on (poweroff_script, poweron_script), and
// ControlRebootScript power-cycles the control host, or powers it on when
// it is down (control_host_reboot_script).
//
// # Faults
//
// Faults injects: a DUT that never boots, a DUT whose host key changes on
// each boot, media that fail with an I/O error part way through a write or
// write slowly, a control host whose connections drop or whose link is
// slow, a control host that does not answer (and never comes back), a
// REST API that does not answer, and power scripts that fail.
package muxpisim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/controlhostsim"
)

// Defaults of Options.
const (
	DefaultName            = "muxpi-sim"
	DefaultBootTime        = 200 * time.Millisecond
	DefaultControlBootTime = 200 * time.Millisecond
	DefaultUser            = "ubuntu"
	DefaultPassword        = "ubuntu"
	DefaultTestDevice      = "/dev/sda"
	DefaultUSBNode         = "/dev/sdb"
	DefaultMuxCLI          = "zapper"
)

// BootIDPath is the file of the control host that changes on each of its
// boots, as on Linux.
const BootIDPath = sim.BootIDPath

// Media is one of the rig's boot media.
type Media string

// The media of a rig.
const (
	// MediaSD is the SD card, switched by stm and by CLI sdwire.
	MediaSD Media = "sd"
	// MediaUSB is the USB stick, switched by CLI typecmux.
	MediaUSB Media = "usb"
)

// Side is where a medium is switched to.
type Side int

// The sides of a mux.
const (
	// DUTSide: the DUT sees the medium and may boot from it.
	DUTSide Side = iota
	// HostSide: the control host sees the medium as a block device.
	HostSide
)

// String names the side.
func (s Side) String() string {
	if s == HostSide {
		return "control host"
	}
	return "DUT"
}

// Faults are the misbehaviours a rig can be given.
type Faults struct {
	// NeverBoots keeps the DUT booting forever after its next power cycle.
	NeverBoots bool
	// HostKeyChangesOnBoot gives the DUT a new host key each time it boots.
	HostKeyChangesOnBoot bool
	// WriteFailsAfter, when positive, makes every write to a medium fail
	// with an I/O error once that many bytes were written (a dying card).
	WriteFailsAfter int64
	// WriteRate, when positive, limits writes to the media to that many
	// bytes per second (a slow card).
	WriteRate int64
	// ControlDropAfter cuts each connection to the control host this long
	// after it was accepted.
	ControlDropAfter time.Duration
	// SlowLink delays every write the control host makes to a connection.
	SlowLink time.Duration
	// ControlUnreachable powers the control host off; it never boots again.
	ControlUnreachable bool
	// ControlAPIDown keeps the control host's REST API from answering
	// while the host is up.
	ControlAPIDown bool
	// RebootScriptFails makes RebootScript fail (exit 1) without resetting
	// the DUT.
	RebootScriptFails bool
	// ControlRebootScriptFails makes ControlRebootScript fail without
	// resetting the control host.
	ControlRebootScriptFails bool
}

// Options configure a rig.
type Options struct {
	// Name is the device's name (default DefaultName): the DUT's host name,
	// and the control host's with "-control".
	Name string
	// Dir is where the power scripts are written. Required.
	Dir string
	// BootTime is how long the DUT takes to boot (default DefaultBootTime).
	BootTime time.Duration
	// ControlBootTime is how long the control host takes to boot (default
	// DefaultControlBootTime).
	ControlBootTime time.Duration
	// Users are the DUT's logins (default ubuntu/ubuntu).
	Users map[string]string
	// ControlUser is the control host's login (default ubuntu).
	ControlUser string
	// ControlPassword is its password (default ubuntu when there are no
	// AuthorizedKeys; with keys and no password, keys only).
	ControlPassword string
	// AuthorizedKeys are accepted by the DUT and the control host for any user.
	AuthorizedKeys []ssh.PublicKey
	// TestDevice is the SD card's block node on the control host (default
	// DefaultTestDevice).
	TestDevice string
	// USBNode is the USB stick's block node on the control host (default
	// DefaultUSBNode).
	USBNode string
	// MuxCLI is the name of the control host's mux command (default
	// DefaultMuxCLI).
	MuxCLI string
	// Image is the image the SD card holds and the DUT runs at the start
	// (zero: a small Ubuntu 22.04 image of kind ubuntu).
	Image sim.Image
	// Faults are injected from the start.
	Faults Faults
	// Log receives the rig's diagnostics (nil: discarded).
	Log *slog.Logger
}

// Rig is a running simulated muxpi rig. Its methods are safe for
// concurrent use.
type Rig struct {
	// Control is the control host.
	Control *sim.DUT
	// API is the control host's REST API; power the control host only
	// through it (or the scripts), so that the API follows.
	API *controlhostsim.Server
	// DUT is the device under test.
	DUT *sim.DUT
	// Switch runs the power scripts.
	Switch *sim.Switch

	name                string
	user, password      string
	muxCLI              string
	rebootScript        string
	powerOffScript      string
	powerOnScript       string
	controlRebootScript string
	log                 *slog.Logger
	mounts              *sim.Mounts // the control host's

	mu        sync.Mutex
	media     map[Media]*medium
	preferred Media // last medium handed back to the DUT after a write
	faults    Faults
	switches  []string // switch history, for tests
}

// DefaultImage is the image a rig starts with when Options.Image is zero.
func DefaultImage() sim.Image {
	return sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Kind: "ubuntu", Size: 64 << 10, Seed: 1}
}

// Start starts a rig: the control host (up), the DUT (up, running
// opts.Image from the SD card, both media switched to it) and the power
// switch. Everything stops when ctx is done or Close is called.
func Start(ctx context.Context, opts Options) (*Rig, error) {
	if opts.Dir == "" {
		return nil, errors.New("muxpisim: Options.Dir is required")
	}
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if opts.BootTime == 0 {
		opts.BootTime = DefaultBootTime
	}
	if opts.ControlBootTime == 0 {
		opts.ControlBootTime = DefaultControlBootTime
	}
	if len(opts.Users) == 0 {
		opts.Users = map[string]string{DefaultUser: DefaultPassword}
	}
	if opts.ControlUser == "" {
		opts.ControlUser = DefaultUser
	}
	if opts.ControlPassword == "" && len(opts.AuthorizedKeys) == 0 {
		opts.ControlPassword = DefaultPassword
	}
	if opts.TestDevice == "" {
		opts.TestDevice = DefaultTestDevice
	}
	if opts.USBNode == "" {
		opts.USBNode = DefaultUSBNode
	}
	if opts.TestDevice == opts.USBNode {
		return nil, fmt.Errorf("muxpisim: the SD card and the USB stick both at %s", opts.TestDevice)
	}
	if opts.MuxCLI == "" {
		opts.MuxCLI = DefaultMuxCLI
	}
	if opts.Image == (sim.Image{}) {
		opts.Image = DefaultImage()
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	r := &Rig{
		name:     opts.Name,
		user:     opts.ControlUser,
		password: opts.ControlPassword,
		muxCLI:   opts.MuxCLI,
		log:      opts.Log.With("rig", opts.Name),
		faults:   opts.Faults,
		media: map[Media]*medium{
			MediaSD:  {name: MediaSD, node: opts.TestDevice, disk: sim.NewDisk(opts.TestDevice, 0)},
			MediaUSB: {name: MediaUSB, node: opts.USBNode, disk: sim.NewDisk(opts.USBNode, 0)},
		},
	}
	for _, m := range r.media {
		m.vol = sim.NewVolume(m.disk, Layout)
	}
	// The SD card holds the image the DUT runs.
	if _, err := r.media[MediaSD].disk.CopyTo(ctx, opts.Image.Reader(), 1<<20); err != nil {
		return nil, fmt.Errorf("muxpisim: writing the initial image: %w", err)
	}
	for _, m := range r.media {
		m.written = m.disk.Writes()
	}

	ctx, cancel := context.WithCancel(ctx)
	ok := false
	defer func() {
		if !ok {
			cancel()
		}
	}()
	controlUsers := map[string]string{}
	if opts.ControlPassword != "" {
		controlUsers[opts.ControlUser] = opts.ControlPassword
	}
	var err error
	r.Control, err = sim.StartDUT(ctx, sim.DUTOptions{
		Name:           opts.Name + "-control",
		BootTime:       opts.ControlBootTime,
		Users:          controlUsers,
		AuthorizedKeys: opts.AuthorizedKeys,
		OSRelease:      sim.UbuntuRelease("22.04", "jammy"),
		Log:            opts.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("muxpisim: control host: %w", err)
	}
	r.mounts = sim.NewMounts(r.Control, r.partition)
	r.newBootID()
	r.API, err = controlhostsim.Start(ctx, controlhostsim.Options{Name: opts.Name + "-control", Host: r.Control, Log: opts.Log})
	if err != nil {
		return nil, fmt.Errorf("muxpisim: control host API: %w", err)
	}
	r.DUT, err = sim.StartDUT(ctx, sim.DUTOptions{
		Name:           opts.Name,
		BootTime:       opts.BootTime,
		Users:          opts.Users,
		AuthorizedKeys: opts.AuthorizedKeys,
		OSRelease:      opts.Image.OSRelease,
		Model:          opts.Image.Model,
		BootCheck:      r.bootCheck,
		Log:            opts.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("muxpisim: DUT: %w", err)
	}
	r.Switch, err = sim.StartSwitch(ctx, opts.Dir, opts.Log)
	if err != nil {
		return nil, fmt.Errorf("muxpisim: %w", err)
	}
	if r.rebootScript, err = r.Switch.Script("dut-reboot", r.resetDUT); err != nil {
		return nil, fmt.Errorf("muxpisim: %w", err)
	}
	if r.controlRebootScript, err = r.Switch.Script("control-host-reboot", r.resetControl); err != nil {
		return nil, fmt.Errorf("muxpisim: %w", err)
	}
	if r.powerOffScript, err = r.Switch.Script("dut-poweroff", func() error { r.DUT.PowerOff(); return nil }); err != nil {
		return nil, fmt.Errorf("muxpisim: %w", err)
	}
	if r.powerOnScript, err = r.Switch.Script("dut-poweron", func() error { r.DUT.PowerOn(); return nil }); err != nil {
		return nil, fmt.Errorf("muxpisim: %w", err)
	}
	r.installCommands()
	r.SetFaults(opts.Faults)
	context.AfterFunc(ctx, r.close)
	ok = true
	return r, nil
}

// Close stops the rig.
func (r *Rig) Close() { r.close() }

func (r *Rig) close() {
	if r.Switch != nil {
		r.Switch.Close()
	}
	if r.DUT != nil {
		r.DUT.Close()
	}
	if r.API != nil {
		r.API.Close()
	}
	if r.Control != nil {
		r.Control.Close()
	}
}

// SetFaults replaces the injected faults. They apply as sim.DUT.SetFaults
// says for the hosts (NeverBoots at the end of the next boot), to the next
// write for the media, at once for the scripts and the REST API;
// ControlUnreachable powers the control host off at once.
func (r *Rig) SetFaults(f Faults) {
	r.mu.Lock()
	r.faults = f
	media := []*medium{r.media[MediaSD], r.media[MediaUSB]}
	r.mu.Unlock()
	for _, m := range media {
		m.disk.FailWritesAfter(f.WriteFailsAfter)
		m.disk.SetRate(max(f.WriteRate, 0))
	}
	r.DUT.SetFaults(sim.Faults{NeverBoots: f.NeverBoots, HostKeyChangesOnBoot: f.HostKeyChangesOnBoot})
	r.Control.SetFaults(sim.Faults{NeverBoots: f.ControlUnreachable, SlowLink: f.SlowLink, DropAfter: f.ControlDropAfter})
	r.API.SetFaults(controlhostsim.Faults{RESTDown: f.ControlAPIDown, NeverComesBack: f.ControlUnreachable})
	if f.ControlUnreachable {
		r.API.PowerOff()
	}
}

// Faults returns the injected faults.
func (r *Rig) Faults() Faults {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.faults
}

// resetDUT is the action of RebootScript.
func (r *Rig) resetDUT() error {
	if r.Faults().RebootScriptFails {
		return errors.New("the DUT's power relay does not answer (injected fault)")
	}
	r.DUT.PowerCycle()
	return nil
}

// resetControl is the action of ControlRebootScript: the control host is
// power-cycled, or powered on when it is down.
func (r *Rig) resetControl() error {
	if r.Faults().ControlRebootScriptFails {
		return errors.New("the control host's power relay does not answer (injected fault)")
	}
	r.mounts.UnmountAll()
	r.API.PowerOff()
	r.newBootID()
	r.API.PowerOn()
	return nil
}

// newBootID gives the control host a new boot_id.
func (r *Rig) newBootID() {
	r.Control.WriteFile(BootIDPath, sim.NewBootID())
}

// RebootScript returns the path of the local script that power-cycles the
// DUT.
func (r *Rig) RebootScript() string { return r.rebootScript }

// ControlRebootScript returns the path of the local script that
// power-cycles the control host.
func (r *Rig) ControlRebootScript() string { return r.controlRebootScript }

// PowerOffScript returns the path of the local script that powers the DUT
// off.
func (r *Rig) PowerOffScript() string { return r.powerOffScript }

// PowerOnScript returns the path of the local script that powers the DUT
// on.
func (r *Rig) PowerOnScript() string { return r.powerOnScript }

// Disk returns the disk of medium m.
func (r *Rig) Disk(m Media) *sim.Disk {
	r.mu.Lock()
	defer r.mu.Unlock()
	if md := r.media[m]; md != nil {
		return md.disk
	}
	return nil
}

// Node returns the block node medium m has on the control host.
func (r *Rig) Node(m Media) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if md := r.media[m]; md != nil {
		return md.node
	}
	return ""
}

// Side returns where medium m is switched to.
func (r *Rig) Side(m Media) Side {
	r.mu.Lock()
	defer r.mu.Unlock()
	if md := r.media[m]; md != nil {
		return md.side
	}
	return DUTSide
}

// Switches returns the mux switches made so far, in order, as
// "<media>:<side>" (such as "sd:host", "sd:dut").
func (r *Rig) Switches() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.switches...)
}

// MuxCLI returns the name of the control host's mux command.
func (r *Rig) MuxCLI() string { return r.muxCLI }

// Config returns the device configuration keys that reach the rig:
// device_ip, ssh_port, control_host, control_port, control_host_api_port,
// control_user, control_password (when the control host takes one),
// test_device, reboot_script, poweroff_script, poweron_script and
// control_host_reboot_script.
func (r *Rig) Config() map[string]any {
	dutHost, dutPort := sim.SplitAddr(r.DUT.Addr())
	ctlHost, ctlPort := sim.SplitAddr(r.Control.Addr())
	c := map[string]any{
		"device_ip":                  dutHost,
		"ssh_port":                   dutPort,
		"control_host":               ctlHost,
		"control_port":               ctlPort,
		"control_host_api_port":      r.API.APIPort(),
		"control_user":               r.user,
		"test_device":                r.Node(MediaSD),
		"reboot_script":              []any{r.rebootScript},
		"poweroff_script":            []any{r.powerOffScript},
		"poweron_script":             []any{r.powerOnScript},
		"control_host_reboot_script": []any{r.controlRebootScript},
	}
	if r.password != "" {
		c["control_password"] = r.password
	}
	return c
}

// bootCheck is the DUT's BootCheck: it boots the medium last handed back
// after a write, else the first of SD and USB switched to it that was
// written; it cannot boot with no written medium switched to it.
func (r *Rig) bootCheck() (sim.Image, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var candidates []*medium
	for _, name := range []Media{MediaSD, MediaUSB} {
		if m := r.media[name]; m.side == DUTSide {
			candidates = append(candidates, m)
		}
	}
	if len(candidates) == 0 {
		return sim.Image{}, false, errors.New("no boot medium: every medium is switched to the control host")
	}
	var boot *medium
	if p := r.media[r.preferred]; p != nil && p.side == DUTSide {
		boot = p
	}
	for _, m := range candidates {
		if boot == nil && m.disk.Writes() > 0 {
			boot = m
		}
	}
	if boot == nil {
		return sim.Image{}, false, errors.New("no boot medium: the media switched to the DUT were never written")
	}
	im, err := sim.Bootable(boot.disk.Last())
	if err != nil {
		return sim.Image{}, false, fmt.Errorf("booting from the %s: %w", boot.name, err)
	}
	return im, false, nil
}

// switchLocked switches medium m to side s.
func (r *Rig) switchLocked(m *medium, s Side) {
	r.switches = append(r.switches, fmt.Sprintf("%s:%s", m.name, map[Side]string{DUTSide: "dut", HostSide: "host"}[s]))
	if m.side == s {
		return
	}
	m.side = s
	switch s {
	case HostSide:
		m.written = m.disk.Writes()
		r.Control.AddDisk(m.node, m.disk)
	case DUTSide:
		r.mounts.UnmountVolume(m.vol)
		r.Control.AddDisk(m.node, nil)
		if m.disk.Writes() != m.written {
			r.preferred = m.name
		}
	}
	r.log.Info("muxpisim: switched", "media", m.name, "to", s)
}

// Package cm3sim simulates a Raspberry Pi Compute Module 3 test rig, as
// Testflinger's cm3 connector drives it: a "sidecar" Raspberry Pi (the
// control host, always up) whose GPIO 16 holds the CM3's boot-mode pin,
// and the CM3 itself (the device under test), which boots from its eMMC.
//
// With GPIO 16 high, a hard reset (the reset script, run as the device's
// reboot_script) brings the CM3 up in USB-boot mode: it does not answer
// at its address, and after a short enumeration delay its eMMC appears on
// the sidecar as a USB mass-storage disk at the test device node
// (/dev/sda), which dd can write. `udisksctl power-off -b /dev/sda`
// detaches it; with GPIO 16 low, a hard reset boots the CM3 from its eMMC
// (sim.BootFromDisk): it comes up only when the eMMC holds a complete
// simulated image, and then reports that image's os-release.
//
// The CM3's address (Addr) is a sim.Proxy in front of the CM3's sim.DUT,
// which closes connections while the CM3 is in USB-boot mode: the DUT
// itself keeps its port meanwhile (a DUT kept down would give its port up
// for as long as it is down).
//
// The sidecar runs, besides the sim.DUT built-in commands (dd, sync,
// hdparm, tee, mkdir, rm, cat...): pi3gpio set high|low 16 and
// pi3gpio get 16, udisksctl power-off -b DEV, lsblk -J DEV (the
// partitions of the image the eMMC holds, laid out as Ubuntu lays out a
// Raspberry Pi image of the image's Kind), and the commands of
// sim.Mounts for the eMMC's partitions: mount PART MOUNTPOINT and umount
// MOUNTPOINT|PART (the partition's files appear under the mount point and
// what is written there stays on the partition, see Rig.PartitionFiles),
// ls DIR, cp, chmod, and test -e|-f|-b|-d PATH with the meaning of a real
// test (-f: a regular file, -b: a block device). pi3gpio, mount, umount
// and udisksctl need sudo.
//
// A CM3 sidecar runs no control-host REST API (package controlhost): the
// port Config gives as control_host_api_port answers 404 Not Found to
// every request, so that the hooks every connector runs learn at once
// that there is nothing to ask.
//
// Faults: see Faults. The package registers the "cm3" lab simulator (see
// StartLab for its settings).
package cm3sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
)

// Defaults of Options.
const (
	DefaultTestDevice = "/dev/sda"
	DefaultBootTime   = time.Second
	DefaultUSBDelay   = 200 * time.Millisecond
	DefaultUser       = "ubuntu"
	DefaultPassword   = "ubuntu"
)

// DefaultImage is what the CM3 runs when the rig starts, unless
// Options.Image says otherwise.
var DefaultImage = sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Kind: "ubuntu", Size: 1 << 20, Seed: 1}

// ResetScriptName is the name of the reset script in Options.Dir.
const ResetScriptName = "cm3-reset"

// Faults are the misbehaviours a rig can be given.
type Faults struct {
	// NeverBoots keeps the CM3 from ever coming up after a reset.
	NeverBoots bool
	// HostKeyChangesOnBoot gives the CM3 a new host key at every boot, as
	// a newly written image does.
	HostKeyChangesOnBoot bool
	// StaleImage ("wrong image") makes the CM3 keep booting the image it
	// ran before, whatever is written to its eMMC, as a board whose boot
	// order falls back to another medium.
	StaleImage bool
	// WriteFailsAfter makes every write to the eMMC fail with an I/O
	// error once that many bytes were written (0: never).
	WriteFailsAfter int64
	// SlowLink delays every write the sidecar makes to a connection.
	SlowLink time.Duration
	// DropAfter cuts each connection to the sidecar this long after it
	// was accepted.
	DropAfter time.Duration
	// ResetFails makes the reset script fail (a relay that does not switch).
	ResetFails bool
	// USBNeverAppears keeps the eMMC from appearing on the sidecar in
	// USB-boot mode (a broken USB cable).
	USBNeverAppears bool
	// BogusDeviceFile puts a regular file at the test device node on the
	// sidecar, as dd leaves when it ran while no eMMC was attached.
	BogusDeviceFile bool
}

// Options configure a rig.
type Options struct {
	// Name is the CM3's host name (default "cm3"); the sidecar is
	// <Name>-sidecar.
	Name string
	// Dir is where the reset script is written. Required.
	Dir string
	// BootTime is how long the CM3 takes to boot (default DefaultBootTime).
	BootTime time.Duration
	// USBDelay is how long the eMMC takes to appear on the sidecar after a
	// reset in USB-boot mode (default DefaultUSBDelay).
	USBDelay time.Duration
	// TestDevice is where the eMMC appears on the sidecar (default
	// DefaultTestDevice).
	TestDevice string
	// Image is what the CM3 runs when the rig starts (default DefaultImage).
	Image sim.Image
	// DiskSize is the eMMC's size in bytes (0: no limit).
	DiskSize int64
	// DiskRate limits writes to the eMMC, in bytes per second (0: none).
	DiskRate int64
	// Users are the CM3's logins (default ubuntu/ubuntu).
	Users map[string]string
	// ControlUser and ControlPassword are the sidecar's login (default
	// ubuntu/ubuntu).
	ControlUser, ControlPassword string
	// AuthorizedKeys are accepted for any user, by the CM3 and the sidecar.
	AuthorizedKeys []ssh.PublicKey
	// Faults are injected from the start.
	Faults Faults
	// Console is the CM3's serial console (nil: none): the rig prints
	// its boot logs to it, gives it in Config and closes it on Close.
	Console *sim.SerialConsole
	// Log receives the rig's diagnostics (nil: discarded).
	Log *slog.Logger
}

// Rig is a running CM3 rig. Its methods are safe for concurrent use.
type Rig struct {
	// Sidecar is the control host.
	Sidecar *sim.DUT
	// CM3 is the device under test.
	CM3 *sim.DUT
	// EMMC is the CM3's eMMC.
	EMMC *sim.Disk
	// Switch runs the reset script.
	Switch *sim.Switch
	// ResetScript is the path of the hard-reset script (reboot_script).
	ResetScript string

	dev         string
	vol         *sim.Volume // the eMMC's partitions
	mounts      *sim.Mounts // the sidecar's
	px          *sim.Proxy
	api         *http.Server
	apiAddr     string
	usbDelay    time.Duration
	controlUser string
	controlPass string
	serial      *sim.SerialConsole
	log         *slog.Logger

	mu       sync.Mutex
	faults   Faults
	gpio     bool // GPIO 16 high: USB-boot mode selected
	usbBoot  bool // the last reset was in USB-boot mode
	resetGen uint64
	usbTimer *time.Timer
	booted   sim.Image
	closed   bool
}

// Start starts a rig: the sidecar and the CM3 up, GPIO 16 low, the CM3
// running opts.Image. It stops when ctx is done or Close is called.
func Start(ctx context.Context, opts Options) (*Rig, error) {
	if opts.Dir == "" {
		return nil, errors.New("cm3sim: Options.Dir is required (the reset script goes there)")
	}
	if opts.Name == "" {
		opts.Name = "cm3"
	}
	if opts.BootTime == 0 {
		opts.BootTime = DefaultBootTime
	}
	if opts.USBDelay == 0 {
		opts.USBDelay = DefaultUSBDelay
	}
	if opts.TestDevice == "" {
		opts.TestDevice = DefaultTestDevice
	}
	if opts.Image == (sim.Image{}) {
		opts.Image = DefaultImage
	}
	if opts.Users == nil {
		opts.Users = map[string]string{DefaultUser: DefaultPassword}
	}
	if opts.ControlUser == "" {
		opts.ControlUser = DefaultUser
	}
	if opts.ControlPassword == "" {
		opts.ControlPassword = DefaultPassword
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	r := &Rig{
		dev:         opts.TestDevice,
		usbDelay:    opts.USBDelay,
		controlUser: opts.ControlUser,
		controlPass: opts.ControlPassword,
		serial:      opts.Console,
		log:         opts.Log.With("rig", opts.Name),
		faults:      opts.Faults,
		booted:      opts.Image,
	}
	r.EMMC = sim.NewDisk(opts.TestDevice, opts.DiskSize)
	r.vol = sim.NewVolume(r.EMMC, layoutOf)
	r.EMMC.SetRate(opts.DiskRate)
	r.EMMC.FailWritesAfter(opts.Faults.WriteFailsAfter)

	ctx, cancel := context.WithCancel(ctx)
	fail := func(err error) (*Rig, error) {
		cancel()
		r.Close()
		return nil, fmt.Errorf("cm3sim: %w", err)
	}
	var err error
	r.Sidecar, err = sim.StartDUT(ctx, sim.DUTOptions{
		Name:           opts.Name + "-sidecar",
		Users:          map[string]string{opts.ControlUser: opts.ControlPassword},
		AuthorizedKeys: opts.AuthorizedKeys,
		OSRelease:      sim.UbuntuRelease("22.04", "jammy"),
		Faults:         sim.Faults{SlowLink: opts.Faults.SlowLink, DropAfter: opts.Faults.DropAfter},
		Log:            opts.Log,
	})
	if err != nil {
		return fail(err)
	}
	r.CM3, err = sim.StartDUT(ctx, sim.DUTOptions{
		Name:           opts.Name,
		BootTime:       opts.BootTime,
		Users:          opts.Users,
		AuthorizedKeys: opts.AuthorizedKeys,
		OSRelease:      opts.Image.OSRelease,
		Model:          opts.Image.Model,
		Faults:         sim.Faults{NeverBoots: opts.Faults.NeverBoots, HostKeyChangesOnBoot: opts.Faults.HostKeyChangesOnBoot},
		BootCheck:      r.bootCheck,
		Console:        opts.Console,
		Log:            opts.Log,
	})
	if err != nil {
		return fail(err)
	}
	if opts.Faults.BogusDeviceFile {
		r.Sidecar.WriteFile(r.dev, []byte("what dd wrote while no eMMC was attached\n"))
	}
	r.mounts = sim.NewMounts(r.Sidecar, r.partition)
	r.mounts.Install()
	for name, cmd := range map[string]sim.Command{
		"pi3gpio":   r.pi3gpio,
		"udisksctl": r.udisksctl,
		"lsblk":     r.lsblk,
	} {
		r.Sidecar.Handle(name, cmd)
	}
	if err := r.startAPI(); err != nil {
		return fail(err)
	}
	if r.px, err = sim.StartProxy(ctx, r.target, r.log); err != nil {
		return fail(err)
	}
	r.Switch, err = sim.StartSwitch(ctx, opts.Dir, opts.Log)
	if err != nil {
		return fail(err)
	}
	r.ResetScript, err = r.Switch.Script(ResetScriptName, r.reset)
	if err != nil {
		return fail(err)
	}
	context.AfterFunc(ctx, r.Close)
	return r, nil
}

// Close stops the rig.
func (r *Rig) Close() {
	r.mu.Lock()
	r.closed = true
	if r.usbTimer != nil {
		r.usbTimer.Stop()
	}
	r.mu.Unlock()
	if r.Switch != nil {
		r.Switch.Close()
	}
	if r.api != nil {
		_ = r.api.Close()
	}
	if r.px != nil {
		r.px.Close()
	}
	if r.CM3 != nil {
		r.CM3.Close()
	}
	if r.Sidecar != nil {
		r.Sidecar.Close()
	}
	_ = r.serial.Close()
}

// startAPI answers the control-host API port with 404 Not Found.
func (r *Rig) startAPI() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("control-host API port: %w", err)
	}
	r.apiAddr = ln.Addr().String()
	r.api = &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.api.Serve(ln) }()
	return nil
}

// TestDevice returns where the eMMC appears on the sidecar.
func (r *Rig) TestDevice() string { return r.dev }

// Config returns the device configuration keys that reach the rig:
// device_ip and ssh_port (the CM3), control_host, control_port,
// control_user and control_password (the sidecar), control_host_api_port,
// test_device and reboot_script; serial_host and serial_port when the CM3
// has a serial console.
func (r *Rig) Config() map[string]any {
	host, port := sim.SplitAddr(r.Addr())
	chost, cport := sim.SplitAddr(r.Sidecar.Addr())
	_, apiPort := sim.SplitAddr(r.apiAddr)
	c := map[string]any{
		"control_host_api_port": apiPort,
		"device_ip":             host,
		"ssh_port":              port,
		"control_host":          chost,
		"control_port":          cport,
		"control_user":          r.controlUser,
		"control_password":      r.controlPass,
		"test_device":           r.dev,
		"reboot_script":         []string{r.ResetScript},
	}
	r.serial.AddConfig(c)
	return c
}

// Addr returns the CM3's SSH address (device_ip:ssh_port).
func (r *Rig) Addr() string { return r.px.Addr() }

// USBBoot reports whether the CM3 was last reset in USB-boot mode: it
// does not answer at Addr.
func (r *Rig) USBBoot() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.usbBoot
}

// target returns the CM3 DUT's address, or "" in USB-boot mode.
func (r *Rig) target() string {
	r.mu.Lock()
	off := r.usbBoot || r.closed
	r.mu.Unlock()
	if off {
		return ""
	}
	return r.CM3.Addr()
}

// GPIO reports whether GPIO 16 is high (USB-boot mode selected).
func (r *Rig) GPIO() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gpio
}

// Booted returns the image the CM3 runs: the one it last booted.
func (r *Rig) Booted() sim.Image {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.booted
}

// Resets returns how many times the reset script was run.
func (r *Rig) Resets() int { return r.Switch.Calls(ResetScriptName) }

// Faults returns the injected faults.
func (r *Rig) Faults() Faults {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.faults
}

// SetFaults replaces the injected faults. Link faults apply to the
// sidecar at once (DropAfter to new connections), boot faults at the end
// of the CM3's next boot, disk faults to the next write.
func (r *Rig) SetFaults(f Faults) {
	r.mu.Lock()
	r.faults = f
	r.mu.Unlock()
	r.EMMC.FailWritesAfter(f.WriteFailsAfter)
	r.Sidecar.SetFaults(sim.Faults{SlowLink: f.SlowLink, DropAfter: f.DropAfter})
	r.CM3.SetFaults(sim.Faults{NeverBoots: f.NeverBoots, HostKeyChangesOnBoot: f.HostKeyChangesOnBoot})
}

// bootCheck is the CM3's BootCheck: in USB-boot mode nothing is booted
// (the proxy keeps the CM3 out of reach); otherwise it boots its eMMC (or,
// with StaleImage, what it ran before). It runs with the CM3's lock held:
// it must not call the CM3's methods.
func (r *Rig) bootCheck() (sim.Image, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.usbBoot || r.faults.StaleImage {
		return sim.Image{}, true, nil
	}
	im, keep, err := sim.BootFromDisk(r.EMMC)()
	if err == nil && !keep {
		r.booted = im
	}
	return im, keep, err
}

// reset is the reset script's action: a hard reset of the CM3. The eMMC
// leaves the sidecar; in USB-boot mode it comes back after the USB delay.
func (r *Rig) reset() error {
	r.mu.Lock()
	if r.faults.ResetFails {
		r.mu.Unlock()
		return errors.New("the reset relay does not switch (simulated fault)")
	}
	r.resetGen++
	r.usbBoot = r.gpio
	gen, high, never := r.resetGen, r.gpio, r.faults.USBNeverAppears
	if r.usbTimer != nil {
		r.usbTimer.Stop()
		r.usbTimer = nil
	}
	r.Sidecar.AddDisk(r.dev, nil)
	if high && !never && !r.closed {
		r.usbTimer = time.AfterFunc(r.usbDelay, func() { r.attachUSB(gen) })
	}
	r.mu.Unlock()
	r.log.Info("cm3sim: hard reset", "usb_boot", high)
	r.CM3.PowerCycle()
	return nil
}

// attachUSB attaches the eMMC to the sidecar, unless the CM3 was reset
// again or left USB-boot mode since reset generation gen.
func (r *Rig) attachUSB(gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.resetGen != gen || !r.gpio {
		return
	}
	r.log.Info("cm3sim: the eMMC appears on the sidecar", "device", r.dev)
	r.Sidecar.AddDisk(r.dev, r.EMMC)
}

// pi3gpio: pi3gpio set high|low 16, pi3gpio get 16.
func (r *Rig) pi3gpio(_ context.Context, x *sim.Exec) int {
	if !x.Sudo {
		return x.Errorf(1, "/dev/gpiomem: Permission denied")
	}
	args := x.Args[1:]
	switch {
	case len(args) == 3 && args[0] == "set" && args[2] == "16" && (args[1] == "high" || args[1] == "low"):
		r.mu.Lock()
		r.gpio = args[1] == "high"
		r.mu.Unlock()
		r.log.Info("cm3sim: GPIO 16", "level", args[1])
		return 0
	case len(args) == 2 && args[0] == "get" && args[1] == "16":
		level := "low"
		if r.GPIO() {
			level = "high"
		}
		fmt.Fprintln(x.Stdout, level)
		return 0
	}
	return x.Errorf(2, "usage: pi3gpio set high|low PIN | pi3gpio get PIN (only pin 16 is wired)")
}

// udisksctl: udisksctl power-off -b DEV.
func (r *Rig) udisksctl(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) != 3 || args[0] != "power-off" || args[1] != "-b" {
		return x.Errorf(1, "only power-off -b DEVICE is simulated")
	}
	if !x.Sudo {
		return x.Errorf(1, "Error powering off drive: Not authorized to perform operation")
	}
	if args[2] != r.dev || r.Sidecar.Disk(r.dev) == nil {
		return x.Errorf(1, "Error looking up object for device %s", args[2])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.mounts.List()) > 0 {
		return x.Errorf(1, "Error powering off drive: %s is mounted", r.dev)
	}
	r.Sidecar.AddDisk(r.dev, nil)
	r.log.Info("cm3sim: the eMMC was powered off on the sidecar")
	return 0
}

// partition returns the eMMC partition whose node is node, while the
// eMMC is attached to the sidecar: mount's resolver.
func (r *Rig) partition(node string) (*sim.Volume, int, bool) {
	if r.Sidecar.Disk(r.dev) == nil {
		return nil, 0, false
	}
	for n := 1; n <= len(r.vol.Partitions()); n++ {
		if node == sim.PartitionNode(r.dev, n) {
			return r.vol, n, true
		}
	}
	return nil, 0, false
}

// lsblk: lsblk -J DEV.
func (r *Rig) lsblk(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) != 2 || (args[0] != "-J" && args[0] != "--json") {
		return x.Errorf(1, "only lsblk -J DEVICE is simulated")
	}
	if args[1] != r.dev || r.Sidecar.Disk(r.dev) == nil {
		return x.Errorf(32, "%s: not a block device", args[1])
	}
	at := map[int]string{}
	for _, m := range r.mounts.List() {
		at[m.N] = m.Dir
	}
	_, _ = x.Stdout.Write(lsblkJSON(r.dev, r.Last().Bytes, len(r.vol.Partitions()), at))
	return 0
}

// Last returns the eMMC's last write.
func (r *Rig) Last() sim.DiskWrite { return r.EMMC.Last() }

// PartitionFiles returns the files of partition n (from 1) of the eMMC
// that a provisioning path read or wrote, by path relative to the
// partition's root: the image's own files (such as etc/os-release),
// changed by what was written or removed while the partition was mounted
// on the sidecar. It is nil when the eMMC holds no partition n.
func (r *Rig) PartitionFiles(n int) map[string][]byte {
	return r.mounts.PartitionFiles(r.vol, n)
}

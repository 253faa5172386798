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
// The CM3's address (Addr) is a TCP proxy in front of the CM3's sim.DUT,
// which closes connections while the CM3 is in USB-boot mode: the DUT
// itself keeps its port meanwhile (a DUT kept down would give its port up
// for as long as it is down).
//
// The sidecar runs, besides the sim.DUT built-in commands (dd, sync,
// hdparm, tee, mkdir, rm, cat...): pi3gpio set high|low 16 and
// pi3gpio get 16, udisksctl power-off -b DEV, lsblk -J DEV (the
// partitions of the image the eMMC holds, laid out as Ubuntu lays out a
// Raspberry Pi image of the image's Kind), mount PART MOUNTPOINT and
// umount MOUNTPOINT|PART (the partition's files appear under the mount
// point and what is written there stays on the partition, see
// Rig.PartitionFiles), ls DIR, and test -e|-f|-b|-d PATH with the
// meaning of a real test (-f: a regular file, -b: a block device).
// pi3gpio, mount, umount and udisksctl need sudo.
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
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
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
	px          *proxy
	api         *http.Server
	apiAddr     string
	usbDelay    time.Duration
	controlUser string
	controlPass string
	log         *slog.Logger

	mu       sync.Mutex
	faults   Faults
	gpio     bool // GPIO 16 high: USB-boot mode selected
	usbBoot  bool // the last reset was in USB-boot mode
	resetGen uint64
	usbTimer *time.Timer
	booted   sim.Image
	mounts   map[string]mounted // by mount point
	saved    map[int]savedPart  // by partition number
	closed   bool
}

// mounted is a partition of the eMMC mounted on the sidecar.
type mounted struct {
	n      int    // partition number, from 1
	node   string // /dev/sda2
	writes int    // the eMMC's write count when it was mounted
}

// savedPart is the content of a partition as last unmounted.
type savedPart struct {
	writes int
	files  map[string][]byte
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
		log:         opts.Log.With("rig", opts.Name),
		faults:      opts.Faults,
		booted:      opts.Image,
		mounts:      map[string]mounted{},
		saved:       map[int]savedPart{},
	}
	r.EMMC = sim.NewDisk(opts.TestDevice, opts.DiskSize)
	r.EMMC.SetRate(opts.DiskRate)
	r.applyDiskFaults(opts.Faults)

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
		Log:            opts.Log,
	})
	if err != nil {
		return fail(err)
	}
	if opts.Faults.BogusDeviceFile {
		r.Sidecar.WriteFile(r.dev, []byte("what dd wrote while no eMMC was attached\n"))
	}
	for name, cmd := range map[string]sim.Command{
		"pi3gpio":   r.pi3gpio,
		"udisksctl": r.udisksctl,
		"lsblk":     r.lsblk,
		"mount":     r.mount,
		"umount":    r.umount,
		"ls":        r.ls,
		"test":      r.test,
	} {
		r.Sidecar.Handle(name, cmd)
	}
	if err := r.startAPI(); err != nil {
		return fail(err)
	}
	if r.px, err = startProxy(r.target, r.log); err != nil {
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
		r.px.close()
	}
	if r.CM3 != nil {
		r.CM3.Close()
	}
	if r.Sidecar != nil {
		r.Sidecar.Close()
	}
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
// test_device and reboot_script.
func (r *Rig) Config() map[string]any {
	host, port := splitAddr(r.Addr())
	chost, cport := splitAddr(r.Sidecar.Addr())
	_, apiPort := splitAddr(r.apiAddr)
	return map[string]any{
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
}

func splitAddr(addr string) (string, int) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	port, _ := strconv.Atoi(p)
	return host, port
}

// Addr returns the CM3's SSH address (device_ip:ssh_port).
func (r *Rig) Addr() string { return r.px.ln.Addr().String() }

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
	r.applyDiskFaults(f)
	r.Sidecar.SetFaults(sim.Faults{SlowLink: f.SlowLink, DropAfter: f.DropAfter})
	r.CM3.SetFaults(sim.Faults{NeverBoots: f.NeverBoots, HostKeyChangesOnBoot: f.HostKeyChangesOnBoot})
}

func (r *Rig) applyDiskFaults(f Faults) {
	if f.WriteFailsAfter > 0 {
		r.EMMC.FailAfter(f.WriteFailsAfter)
	} else {
		r.EMMC.FailAfter(-1)
	}
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
	if len(r.mounts) > 0 {
		return x.Errorf(1, "Error powering off drive: %s is mounted", r.dev)
	}
	r.Sidecar.AddDisk(r.dev, nil)
	r.log.Info("cm3sim: the eMMC was powered off on the sidecar")
	return 0
}

// partitions returns the partitions of what the eMMC holds (none when it
// holds no complete image) and its write count.
func (r *Rig) partitions() ([]partition, int) {
	last := r.EMMC.Last()
	im, err := sim.Bootable(last)
	if err != nil {
		return nil, r.EMMC.Writes()
	}
	return layoutOf(im), r.EMMC.Writes()
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
	parts, _ := r.partitions()
	r.mu.Lock()
	at := map[int]string{}
	for mp, m := range r.mounts {
		at[m.n] = mp
	}
	r.mu.Unlock()
	_, _ = x.Stdout.Write(lsblkJSON(r.dev, r.Last().Bytes, parts, at))
	return 0
}

// Last returns the eMMC's last write.
func (r *Rig) Last() sim.DiskWrite { return r.EMMC.Last() }

// partitionOf returns the number of the eMMC partition whose node is node.
func (r *Rig) partitionOf(node string, parts []partition) (int, bool) {
	for i := range parts {
		if node == "/dev/"+PartitionName(r.dev, i+1) {
			return i + 1, true
		}
	}
	return 0, false
}

// mount: mount PART MOUNTPOINT.
func (r *Rig) mount(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) != 2 || strings.HasPrefix(args[0], "-") {
		return x.Errorf(1, "only mount DEVICE MOUNTPOINT is simulated")
	}
	if !x.Sudo {
		return x.Errorf(32, "must be superuser to use mount")
	}
	node, mp := args[0], strings.TrimSuffix(args[1], "/")
	parts, writes := r.partitions()
	n, ok := r.partitionOf(node, parts)
	if !ok || r.Sidecar.Disk(r.dev) == nil {
		return x.Errorf(32, "%s: special device %s does not exist.", mp, node)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if m, busy := r.mounts[mp]; busy {
		return x.Errorf(32, "%s: %s already mounted or mount point busy (%s is there).", mp, node, m.node)
	}
	files := map[string][]byte{}
	if s, ok := r.saved[n]; ok && s.writes == writes {
		files = s.files
	} else {
		for rel, content := range parts[n-1].files {
			files[rel] = []byte(content)
		}
	}
	for rel, content := range files {
		r.Sidecar.WriteFile(mp+"/"+rel, content)
	}
	r.mounts[mp] = mounted{n: n, node: node, writes: writes}
	return 0
}

// umount: umount MOUNTPOINT|PART. What was written under the mount point
// stays on the partition.
func (r *Rig) umount(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) != 1 {
		return x.Errorf(1, "only umount MOUNTPOINT is simulated")
	}
	if !x.Sudo {
		return x.Errorf(32, "must be superuser to unmount")
	}
	target := strings.TrimSuffix(args[0], "/")
	r.mu.Lock()
	defer r.mu.Unlock()
	for mp, m := range r.mounts {
		if mp != target && m.node != target {
			continue
		}
		r.saved[m.n] = savedPart{writes: m.writes, files: r.takeFiles(mp)}
		delete(r.mounts, mp)
		return 0
	}
	return x.Errorf(32, "%s: not mounted.", target)
}

// takeFiles removes the sidecar's files under mp and returns them by
// path relative to mp.
func (r *Rig) takeFiles(mp string) map[string][]byte {
	files := map[string][]byte{}
	for _, p := range r.Sidecar.Files() {
		if rel, ok := strings.CutPrefix(p, mp+"/"); ok {
			files[rel], _ = r.Sidecar.ReadFile(p)
			r.Sidecar.RemoveFile(p)
		}
	}
	return files
}

// ls: ls [DIR]: one entry a line.
func (r *Rig) ls(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) > 1 || (len(args) == 1 && strings.HasPrefix(args[0], "-")) {
		return x.Errorf(2, "only ls DIRECTORY is simulated")
	}
	dir := "."
	if len(args) == 1 {
		dir = strings.TrimSuffix(args[0], "/")
	}
	var base []string
	r.mu.Lock()
	if m, ok := r.mounts[dir]; ok {
		parts, _ := r.partitions()
		if m.n <= len(parts) {
			base = parts[m.n-1].entries
		}
	}
	r.mu.Unlock()
	entries := entriesUnder(dir, r.Sidecar.Files(), base)
	if len(entries) == 0 && base == nil {
		if _, ok := r.Sidecar.ReadFile(dir); !ok {
			return x.Errorf(2, "cannot access '%s': No such file or directory", dir)
		}
		entries = []string{dir}
	}
	for _, e := range entries {
		fmt.Fprintln(x.Stdout, e)
	}
	return 0
}

// test: test -e|-f|-b|-d PATH, with a real test's meaning.
func (r *Rig) test(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) != 2 {
		return x.Errorf(2, "only test -e|-f|-b|-d PATH is simulated")
	}
	p := args[1]
	_, isFile := r.Sidecar.ReadFile(p)
	isDisk := r.Sidecar.Disk(p) != nil
	r.mu.Lock()
	_, isMount := r.mounts[strings.TrimSuffix(p, "/")]
	r.mu.Unlock()
	isDir := isMount || len(entriesUnder(p, r.Sidecar.Files(), nil)) > 0
	var ok bool
	switch args[0] {
	case "-e":
		ok = isFile || isDisk || isDir
	case "-f":
		ok = isFile
	case "-b":
		ok = isDisk
	case "-d":
		ok = isDir
	default:
		return x.Errorf(2, "%s: unknown operator", args[0])
	}
	if ok {
		return 0
	}
	return 1
}

// PartitionFiles returns the files of partition n (from 1) of the eMMC
// that a provisioning path read or wrote, by path relative to the
// partition's root: the image's own files (such as etc/os-release),
// changed by what was written or removed while the partition was mounted
// on the sidecar. It is nil when the eMMC holds no partition n.
func (r *Rig) PartitionFiles(n int) map[string][]byte {
	parts, writes := r.partitions()
	if n < 1 || n > len(parts) {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for mp, m := range r.mounts {
		if m.n == n && m.writes == writes {
			files := map[string][]byte{}
			for _, p := range r.Sidecar.Files() {
				if rel, ok := strings.CutPrefix(p, mp+"/"); ok {
					files[rel], _ = r.Sidecar.ReadFile(p)
				}
			}
			return files
		}
	}
	if s, ok := r.saved[n]; ok && s.writes == writes {
		return maps.Clone(s.files)
	}
	files := map[string][]byte{}
	for rel, content := range parts[n-1].files {
		files[rel] = []byte(content)
	}
	return files
}

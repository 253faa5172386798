// Package oemsim simulates an OEM laptop for the oemrecovery and oemscript
// drivers: a sim.DUT with an EFI partition and a recovery partition (a
// sim.Disk holding an ISO, a sim.Image of Kind "iso"), the commands the
// recovery steps use (lsblk, blkid, mount, umount, rsync, cp, chmod,
// fatlabel, journalctl, update-grub, grub-editenv, grub-reboot,
// dell-restore-system, systemctl is-active, snap model, snap changes,
// apt-get purge, dd into files, and sh running the authorized_keys
// installer of package sshx), and its factory reset: when the laptop
// reboots into its recovery (dell-restore-system, or a reboot with the
// "ubuntu-recovery restore" GRUB entry selected), it stays booting for the
// reinstall time, then comes up with the image its recovery partition
// holds: that image's os-release, a new host key, the user ubuntu with the
// recovery password, ubiquity's OEM configuration running for a while
// (systemctl is-active ubiquity says active; `snap model` is not ready and
// the snap change "Initialize device" is Doing), then the generic-classic
// model and the change Done.
//
// A reinstall starts a new sim.DUT on the same address (the old one is
// closed), with the same disks, files of the recovery partition (under
// /cdrom/) and faults, so DUT returns the current one. A sim.DUT takes
// its authorized keys when it starts, so the reinstalled system accepts
// Options.AuthorizedKeys from its first boot; InjectedKeys reports the keys
// a driver installed into it, for a test to check.
//
// The recovery only completes when the recovery partition holds a
// complete ISO and, on an ubuntu-recovery (UbuntuRecovery) laptop, when its
// label is PQSERVICE and /cdrom/preseed/ubuntu-recovery.cfg exists, as
// ubuntu-recovery needs (it never finishes otherwise); when
// /cdrom/preseed/project.cfg makes the installer power off at its end (as
// a stock OEM ISO's does), the laptop is left off with the new system
// installed, which the next power cycle boots. A power cycle during a
// reinstall starts it again.
//
// Faults (Faults, SetFaults): a laptop that never boots, a recovery that
// never finishes, a recovery partition write that fails half way, a slow
// link, dropped connections, a reinstall that comes up with another image,
// and a host key that changes on every ordinary boot.
//
// The laptop is hard-reset by a sim.Switch script (RebootScript, for
// reboot_script). The package registers a simulator for `flinger lab` for
// each of oemrecovery, oemscript, dell_oemscript, hp_oemscript and
// lenovo_oemscript, whose sim: settings LabSettings lists.
package oemsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
)

// Recovery is how a laptop's recovery is started.
type Recovery int

// The kinds of recovery.
const (
	// DellRecovery: dell-recovery, started with dell-restore-system -y.
	DellRecovery Recovery = iota
	// UbuntuRecovery: ubuntu-recovery, started by booting the GRUB entry
	// "ubuntu-recovery restore" (HP and Lenovo laptops).
	UbuntuRecovery
)

// String names the kind as the lab file's recovery setting does.
func (r Recovery) String() string {
	if r == UbuntuRecovery {
		return "ubuntu"
	}
	return "dell"
}

// Device nodes and names of the simulated laptop.
const (
	// Disk is the laptop's NVMe drive.
	Disk = "nvme0n1"
	// EFIPartition is its EFI system partition, mounted on /boot/efi.
	EFIPartition = "/dev/nvme0n1p1"
	// RecoveryPartition is its recovery partition, the EFI partition's
	// name with a 2 at the end, as recovery-from-iso.sh finds it.
	RecoveryPartition = "/dev/nvme0n1p2"
	// RecoveryUUID is the recovery partition's file system UUID.
	RecoveryUUID = "3A1F-9C2E"
	// RecoveryEntry is the GRUB entry that boots ubuntu-recovery.
	RecoveryEntry = "ubuntu-recovery restore"
	// ViaDell and ViaGRUB say how a recovery was started (RecoveryBoot.Via).
	ViaDell = "dell-restore-system"
	ViaGRUB = "grub"
)

// Defaults of Options.
const (
	DefaultBootTime         = 300 * time.Millisecond
	DefaultReinstallTime    = time.Second
	DefaultOEMConfigTime    = 500 * time.Millisecond
	DefaultRecoverySize     = 64 << 20
	DefaultFreeSpace        = 256 << 20
	DefaultRecoveryPassword = "u"
	DefaultUser             = "ubuntu"
	DefaultPassword         = "ubuntu"
)

// Faults are the misbehaviours a Rig can be given.
type Faults struct {
	// NeverBoots keeps the laptop booting forever after its next power
	// cycle or reboot (a reinstall included).
	NeverBoots bool
	// RecoveryNeverFinishes keeps a reinstall going forever.
	RecoveryNeverFinishes bool
	// WriteFailsAfter makes writes to the recovery partition fail with an
	// I/O error after this many bytes (0: never).
	WriteFailsAfter int64
	// SlowLink delays every write the laptop makes to a connection.
	SlowLink time.Duration
	// DropAfter cuts each connection this long after it was accepted.
	DropAfter time.Duration
	// WrongImage makes a reinstall come up with WrongOSRelease rather than
	// the recovery partition's image.
	WrongImage bool
	// HostKeyChangesOnBoot gives the laptop a new host key on every boot
	// that is not a reinstall (which always gives a new one).
	HostKeyChangesOnBoot bool
}

// WrongOSRelease is what a reinstall with the WrongImage fault reports.
var WrongOSRelease = sim.UbuntuRelease("20.04", "focal")

// Options configure a Rig.
type Options struct {
	// Name is the laptop's host name and device name (default "oem").
	Name string
	// Dir holds the power switch's scripts; required.
	Dir string
	// Recovery is how the laptop's recovery is started.
	Recovery Recovery
	// Factory is the image the recovery partition holds at first (Kind
	// "iso" is set); its OSRelease is the installed system's (default
	// Ubuntu 22.04, 8 MiB).
	Factory sim.Image
	// BootTime is how long an ordinary boot takes.
	BootTime time.Duration
	// ReinstallTime is how long a reinstall stays booting.
	ReinstallTime time.Duration
	// OEMConfigTime is how long ubiquity's OEM configuration runs once the
	// reinstalled system is up.
	OEMConfigTime time.Duration
	// RecoverySize is the recovery partition's size in bytes.
	RecoverySize int64
	// Label, when set, is the recovery partition's label at first, and
	// the laptop is left as the stock ISO made it. By default an
	// ubuntu-recovery laptop is prepared for unattended resets (PQSERVICE,
	// the preseed of ubuntu-recovery, a project preseed that reboots at the
	// end), and another is labelled OS.
	Label string
	// FreeSpace is the room for a file written with dd (such as an ISO
	// copied to the laptop), in bytes.
	FreeSpace int64
	// Users maps the factory system's users to their passwords (default
	// ubuntu/ubuntu).
	Users map[string]string
	// RecoveryPassword is the password of the user ubuntu on a reinstalled
	// system (default "u", as the OEM automation sets it).
	RecoveryPassword string
	// AuthorizedKeys are the public keys accepted for any user.
	AuthorizedKeys []ssh.PublicKey
	// Faults are the faults injected from the start.
	Faults Faults
	// Console is the laptop's serial console (nil: none), which every
	// incarnation of its DUT prints its boot logs to.
	Console *sim.SerialConsole
	// Log receives the simulator's diagnostics (nil: discarded).
	Log *slog.Logger
}

// RecoveryBoot records one reboot into the recovery.
type RecoveryBoot struct {
	// Via says how it was started: ViaDell or ViaGRUB.
	Via string
	// Label is the recovery partition's label at the time.
	Label string
	// Preseed lists the files under /cdrom/preseed/ at the time.
	Preseed []string
}

// Rig is a simulated OEM laptop. Its methods are safe for concurrent use.
type Rig struct {
	opts     Options
	log      *slog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	sw       *sim.Switch
	reboot   string
	recovery *sim.Disk
	addr     string

	mu          sync.Mutex
	dut         *sim.DUT
	faults      Faults
	mounts      map[string]string    // mount point -> source
	files       map[string]*sim.Disk // files written with dd
	label       string
	grubEntry   bool // the GRUB menu has RecoveryEntry
	recoveryNow bool // the next reboot boots the recovery
	reinstall   uint64
	reinstalls  int
	boots       []RecoveryBoot
	oemUntil    time.Time // OEM configuration running until then
	ready       bool      // snap model and "Initialize device" ready
	injected    []string
	purged      bool
	osRelease   string
	pendingOS   string // installed, powered off: what boots next
	stopWatch   context.CancelFunc
	closed      bool
}

// Start starts a Rig with its laptop up. It stops when ctx is done or
// Close is called.
func Start(ctx context.Context, opts Options) (*Rig, error) {
	if opts.Dir == "" {
		return nil, errors.New("oemsim: Options.Dir is required")
	}
	if opts.Name == "" {
		opts.Name = "oem"
	}
	if opts.Factory.OSRelease == "" {
		opts.Factory.OSRelease = sim.UbuntuRelease("22.04", "jammy")
	}
	if opts.Factory.Size == 0 {
		opts.Factory.Size = 8 << 20
	}
	opts.Factory.Kind = "iso"
	for _, d := range []struct {
		dst *time.Duration
		def time.Duration
	}{{&opts.BootTime, DefaultBootTime}, {&opts.ReinstallTime, DefaultReinstallTime}, {&opts.OEMConfigTime, DefaultOEMConfigTime}} {
		if *d.dst <= 0 {
			*d.dst = d.def
		}
	}
	if opts.RecoverySize <= 0 {
		opts.RecoverySize = DefaultRecoverySize
	}
	if opts.FreeSpace <= 0 {
		opts.FreeSpace = DefaultFreeSpace
	}
	if len(opts.Users) == 0 {
		opts.Users = map[string]string{DefaultUser: DefaultPassword}
	}
	if opts.RecoveryPassword == "" {
		opts.RecoveryPassword = DefaultRecoveryPassword
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Rig{
		opts:      opts,
		log:       log.With("oem", opts.Name),
		recovery:  sim.NewDisk(RecoveryPartition, opts.RecoverySize),
		faults:    opts.Faults,
		mounts:    map[string]string{},
		files:     map[string]*sim.Disk{},
		label:     "OS",
		grubEntry: opts.Recovery == UbuntuRecovery,
		ready:     true,
	}
	r.ctx, r.cancel = context.WithCancel(ctx)
	if _, err := r.recovery.CopyTo(r.ctx, opts.Factory.Reader(), 1<<20); err != nil {
		r.cancel()
		return nil, fmt.Errorf("oemsim: writing the factory image to the recovery partition: %w", err)
	}
	r.recovery.FailWritesAfter(opts.Faults.WriteFailsAfter)
	dut, err := sim.StartDUT(r.ctx, r.dutOptions("", opts.Users, opts.Factory.OSRelease, r.dutFaults(false)))
	if err != nil {
		r.cancel()
		return nil, fmt.Errorf("oemsim: %w", err)
	}
	r.dut, r.addr, r.osRelease = dut, dut.Addr(), opts.Factory.OSRelease
	r.mu.Lock()
	r.watchLocked(dut)
	r.mu.Unlock()
	r.writeISOFiles(dut, "/cdrom", opts.Factory)
	if opts.Label != "" {
		r.label = opts.Label
	} else if opts.Recovery == UbuntuRecovery {
		// The factory prepared ubuntu-recovery for an unattended reset.
		r.label = "PQSERVICE"
		dut.WriteFile("/cdrom/preseed/ubuntu-recovery.cfg", []byte(factoryRecoveryCfg))
		dut.WriteFile("/cdrom/preseed/project.cfg", []byte(strings.NewReplacer("reboot boolean false", "reboot boolean true", "poweroff boolean true", "poweroff boolean false").Replace(factoryProjectCfg)))
	}
	r.sw, err = sim.StartSwitch(r.ctx, opts.Dir, r.log)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("oemsim: %w", err)
	}
	if r.reboot, err = r.sw.Script(opts.Name+"-power-cycle", r.powerCycle); err != nil {
		r.Close()
		return nil, fmt.Errorf("oemsim: %w", err)
	}
	context.AfterFunc(r.ctx, r.Close)
	return r, nil
}

// dutOptions returns the options of a DUT incarnation listening on addr.
func (r *Rig) dutOptions(addr string, users map[string]string, osRelease string, faults sim.Faults) sim.DUTOptions {
	return sim.DUTOptions{
		Name:           r.opts.Name,
		Addr:           addr,
		BootTime:       r.opts.BootTime,
		Users:          users,
		AuthorizedKeys: r.opts.AuthorizedKeys,
		OSRelease:      osRelease,
		Model:          "generic-classic",
		Faults:         faults,
		Commands:       r.commands(),
		Disks:          map[string]*sim.Disk{RecoveryPartition: r.recovery, EFIPartition: sim.NewDisk(EFIPartition, 512<<20)},
		Console:        r.opts.Console,
		Log:            r.log,
	}
}

// dutFaults returns the sim.Faults of the rig's faults; reinstalling
// holds the DUT booting. r.mu is held, or the rig not started yet.
func (r *Rig) dutFaults(reinstalling bool) sim.Faults {
	return sim.Faults{
		NeverBoots:           r.faults.NeverBoots || reinstalling,
		HostKeyChangesOnBoot: r.faults.HostKeyChangesOnBoot,
		SlowLink:             r.faults.SlowLink,
		DropAfter:            r.faults.DropAfter,
	}
}

// DUT returns the current incarnation of the laptop.
func (r *Rig) DUT() *sim.DUT {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dut
}

// Addr returns the host:port the laptop's SSH server listens on.
func (r *Rig) Addr() string { return r.addr }

// Port returns the port of Addr.
func (r *Rig) Port() int {
	_, port := sim.SplitAddr(r.addr)
	return port
}

// RebootScript returns the path of the power switch's script that power
// cycles the laptop, for reboot_script.
func (r *Rig) RebootScript() string { return r.reboot }

// Switch returns the rig's power switch, for scripts of other actions.
func (r *Rig) Switch() *sim.Switch { return r.sw }

// RecoveryDisk returns the recovery partition.
func (r *Rig) RecoveryDisk() *sim.Disk { return r.recovery }

// Label returns the recovery partition's file system label.
func (r *Rig) Label() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.label
}

// Reinstalls returns how many reinstalls completed.
func (r *Rig) Reinstalls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reinstalls
}

// RecoveryBoots returns the reboots into the recovery so far.
func (r *Rig) RecoveryBoots() []RecoveryBoot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]RecoveryBoot(nil), r.boots...)
}

// InjectedKeys returns the authorized_keys lines installed with sshx's
// installer (see the package documentation).
func (r *Rig) InjectedKeys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.injected...)
}

// OSRelease returns the os-release of the system installed now.
func (r *Rig) OSRelease() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.osRelease
}

// BootIDPath is where the laptop tells its boot identifier.
const BootIDPath = sim.BootIDPath

// watchLocked gives dut, the new incarnation, a boot identifier, and a new
// one each time it boots.
func (r *Rig) watchLocked(dut *sim.DUT) {
	if r.stopWatch != nil {
		r.stopWatch()
	}
	ctx, cancel := context.WithCancel(r.ctx)
	r.stopWatch = cancel
	dut.WriteFile(BootIDPath, sim.NewBootID())
	go func() {
		for {
			if dut.WaitState(ctx, sim.Booting) != nil {
				return
			}
			dut.WriteFile(BootIDPath, sim.NewBootID())
			if dut.WaitState(ctx, sim.Up) != nil {
				return
			}
		}
	}()
}

// UbiquityPurged reports whether ubiquity was purged from the current
// system.
func (r *Rig) UbiquityPurged() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.purged
}

// Faults returns the injected faults.
func (r *Rig) Faults() Faults {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.faults
}

// SetFaults replaces the injected faults; see sim.DUT.SetFaults for when
// each applies. WriteFailsAfter applies to the next write.
func (r *Rig) SetFaults(f Faults) {
	r.mu.Lock()
	r.faults = f
	dut := r.dut
	faults := r.dutFaults(r.reinstall%2 == 1)
	r.mu.Unlock()
	r.recovery.FailWritesAfter(f.WriteFailsAfter)
	dut.SetFaults(faults)
}

// PowerOff cuts the laptop's power.
func (r *Rig) PowerOff() {
	r.DUT().PowerOff()
}

// powerCycle is the power switch's action: a hard reset, which starts a
// reinstall in progress again.
func (r *Rig) powerCycle() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errors.New("the laptop is gone")
	}
	dut := r.dut
	restart := r.reinstall%2 == 1
	pending := r.pendingOS
	r.pendingOS = ""
	gen := r.reinstall
	if pending != "" {
		// The installed system boots; the incarnation is still the old one.
		r.reinstall++
		gen = r.reinstall
	}
	r.mu.Unlock()
	r.log.Info("oemsim: power cycle", "reinstalling", restart, "installed", pending != "")
	dut.PowerCycle()
	switch {
	case pending != "":
		go func() {
			if sleep(r.ctx, r.opts.BootTime) == nil {
				r.complete(gen, pending)
			}
		}()
	case restart:
		r.startReinstall(dut, "")
	}
	return nil
}

// Close stops the rig.
func (r *Rig) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	dut := r.dut
	r.mu.Unlock()
	r.cancel()
	if r.sw != nil {
		r.sw.Close()
	}
	dut.Close()
}

// startReinstall makes dut, which is rebooting, reinstall from the
// recovery partition; via (when not empty) records how it was started.
// The reinstall generation is odd while one runs.
func (r *Rig) startReinstall(dut *sim.DUT, via string) {
	r.mu.Lock()
	if r.reinstall%2 == 0 {
		r.reinstall++
	} else {
		r.reinstall += 2
	}
	gen := r.reinstall
	r.recoveryNow = false
	if via != "" {
		r.boots = append(r.boots, RecoveryBoot{Via: via, Label: r.label, Preseed: r.preseedFilesLocked(dut)})
	}
	faults := r.dutFaults(true)
	wait := r.opts.BootTime + r.opts.ReinstallTime
	r.mu.Unlock()
	dut.SetFaults(faults)
	r.log.Info("oemsim: reinstalling from the recovery partition", "via", via)
	go func() {
		if sleep(r.ctx, wait) != nil {
			return
		}
		r.finishReinstall(gen)
	}()
}

// preseedFilesLocked lists the files under /cdrom/preseed/.
func (r *Rig) preseedFilesLocked(dut *sim.DUT) []string {
	var out []string
	for _, f := range dut.Files() {
		if strings.HasPrefix(f, "/cdrom/preseed/") {
			out = append(out, f)
		}
	}
	return out
}

// finishReinstall ends reinstall generation gen: the laptop comes up with
// the recovery partition's image, unless the recovery cannot complete; an
// installer told to power off at its end leaves it off, with the new
// system installed.
func (r *Rig) finishReinstall(gen uint64) {
	r.mu.Lock()
	if r.closed || r.reinstall != gen {
		r.mu.Unlock()
		return
	}
	old := r.dut
	faults := r.faults
	kind := r.opts.Recovery
	label := r.label
	r.mu.Unlock()

	im, err := sim.Bootable(r.recovery.Last())
	if err == nil && im.Kind != "iso" {
		err = fmt.Errorf("the recovery partition holds a %q image, not an ISO", im.Kind)
	}
	powerOff := false
	if err == nil && kind == UbuntuRecovery {
		err = ubuntuRecoveryReady(old, label)
		if errors.Is(err, errPowersOff) {
			powerOff, err = true, nil
		}
	}
	switch {
	case faults.RecoveryNeverFinishes || faults.NeverBoots:
		r.log.Info("oemsim: the recovery never finishes (fault)")
		return
	case err != nil:
		r.log.Info("oemsim: the recovery fails", "err", err)
		return
	}
	osRelease := im.OSRelease
	if faults.WrongImage {
		osRelease = WrongOSRelease
	}
	if powerOff {
		r.mu.Lock()
		if r.reinstall == gen {
			r.reinstall++
			r.pendingOS = osRelease
		}
		r.mu.Unlock()
		r.log.Info("oemsim: installed; the installer powers the laptop off")
		old.PowerOff()
		return
	}
	r.complete(gen, osRelease)
}

// complete ends reinstall generation gen by starting the incarnation
// running the system of osRelease on the laptop's address.
func (r *Rig) complete(gen uint64, osRelease string) {
	r.mu.Lock()
	if r.closed || r.reinstall != gen {
		r.mu.Unlock()
		return
	}
	old := r.dut
	dutFaults := r.dutFaults(false)
	r.mu.Unlock()
	keep := map[string][]byte{}
	for _, f := range old.Files() {
		if strings.HasPrefix(f, "/cdrom/") {
			b, _ := old.ReadFile(f)
			keep[f] = b
		}
	}
	addr := old.Addr()
	old.Close()
	dut, err := sim.StartDUT(r.ctx, r.dutOptions(addr, map[string]string{DefaultUser: r.opts.RecoveryPassword}, osRelease, dutFaults))
	if err != nil {
		r.log.Error("oemsim: the reinstalled laptop cannot listen", "err", err)
		return
	}
	for f, b := range keep {
		dut.WriteFile(f, b)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		dut.Close()
		return
	}
	r.dut = dut
	r.osRelease = osRelease
	r.watchLocked(dut)
	r.reinstall++
	r.reinstalls++
	r.mounts = map[string]string{}
	r.files = map[string]*sim.Disk{}
	r.grubEntry = r.opts.Recovery == UbuntuRecovery
	r.recoveryNow = false
	r.oemUntil = time.Now().Add(r.opts.OEMConfigTime)
	r.ready = false
	r.purged = false
	r.injected = nil
	r.log.Info("oemsim: reinstalled", "os_release", firstLine(osRelease))
}

// errPowersOff reports that the installer powers off at its end.
var errPowersOff = errors.New("project.cfg makes the installer power off at its end")

// ubuntuRecoveryReady checks what ubuntu-recovery needs on the recovery
// partition.
func ubuntuRecoveryReady(dut *sim.DUT, label string) error {
	if label != "PQSERVICE" {
		return fmt.Errorf("ubuntu-recovery needs the recovery partition labelled PQSERVICE, not %q", label)
	}
	if _, ok := dut.ReadFile("/cdrom/preseed/ubuntu-recovery.cfg"); !ok {
		return errors.New("ubuntu-recovery needs /cdrom/preseed/ubuntu-recovery.cfg")
	}
	if b, ok := dut.ReadFile("/cdrom/preseed/project.cfg"); ok && strings.Contains(string(b), "ubiquity/poweroff boolean true") {
		return errPowersOff
	}
	return nil
}

// oemState returns whether ubiquity's OEM configuration still runs, and
// marks the system ready once it has ended.
func (r *Rig) oemState() (running bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ready && !time.Now().Before(r.oemUntil) {
		r.ready = true
	}
	return !r.ready
}

// writeISOFiles writes the files of the ISO im that the recovery steps
// read, under dir (/mnt or /cdrom) on dut.
func (r *Rig) writeISOFiles(dut *sim.DUT, dir string, im sim.Image) {
	dut.WriteFile(dir+"/.disk/info", []byte(DiskInfo(im)+"\n"))
	dut.WriteFile(dir+"/.disk/ubuntu_dist_channel", []byte("canonical-oem-sim\n"))
	dut.WriteFile(dir+"/preseed/project.cfg", []byte(factoryProjectCfg))
}

// factoryProjectCfg is the project preseed a stock OEM ISO carries: the
// installer powers the laptop off at its end.
const factoryProjectCfg = `# OEM project preseed
ubiquity ubiquity/reboot boolean false
ubiquity ubiquity/poweroff boolean true
`

// factoryRecoveryCfg is the ubuntu-recovery preseed of a laptop prepared
// for unattended factory resets.
const factoryRecoveryCfg = `ubiquity ubuntu-recovery/recovery_type string dev
ubiquity ubuntu-recovery/recovery_hotkey/partition_label string PQSERVICE
ubiquity ubiquity/reboot boolean true
`

// DiskInfo returns the .disk/info line of an ISO of im: its PRETTY_NAME
// and " - Release amd64".
func DiskInfo(im sim.Image) string {
	name := "Ubuntu"
	for _, l := range strings.Split(im.OSRelease, "\n") {
		if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
			name = strings.Trim(v, `"`)
		}
	}
	return name + " - Release amd64"
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// Config returns the device configuration keys that reach the laptop:
// device_ip, ssh_port and reboot_script.
func (r *Rig) Config() map[string]any {
	return map[string]any{
		"device_ip":     "127.0.0.1",
		"ssh_port":      r.Port(),
		"reboot_script": []string{r.reboot},
	}
}

// RecoveryCmds returns recovery_cmds that start the laptop's recovery, for
// the oemrecovery driver.
func (r *Rig) RecoveryCmds() []string {
	if r.opts.Recovery == UbuntuRecovery {
		return []string{`sudo grub-editenv /boot/grub/grubenv set "next_entry=` + RecoveryEntry + `"`, "sudo reboot"}
	}
	return []string{"sudo dell-restore-system -y"}
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

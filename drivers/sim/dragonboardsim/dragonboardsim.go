// Package dragonboardsim simulates a Dragonboard test rig, as
// Testflinger's dragonboard connector drives it: one board reachable at
// one address that boots either its "master" image (Debian, on its own
// storage, login linaro) or the test image on the test device (an SD
// card), whichever the boot selector chose at its last reset.
//
// The boot selector is set by the select-master and select-test scripts
// (run as the device's select_master_script and select_test_script) and
// applied at the next boot: a hard reset (the reset script, run as
// reboot_script) or `sudo reboot` on either image. The board's address is
// a sim.Proxy in front of two sim.DUTs, Master and Test, which forwards
// to the one booted: each has its own host key, users and faults. (The
// other one is rebooted at each boot of the board, which cuts its
// connections, but keeps answering on its own port, unseen: a DUT kept
// off would give its port up for as long as it is off.)
//
// The master image runs, besides the sim.DUT built-in commands (dd of the
// test device, sync, hdparm, tee, mkdir, rm, cat, including
// /etc/issue), the commands of sim.Mounts for the test device's
// partitions (laid out as Ubuntu lays out an image of the written image's
// Kind): mount PART MOUNTPOINT and umount MOUNTPOINT|PART (what is written
// under the mount point stays on the partition, see Rig.PartitionFiles),
// ls DIR, test, cp and chmod; and sgdisk -o DEV (a new empty partition
// table: the card no longer boots) and reboot. mount, umount and sgdisk
// need sudo.
//
// The test image boots from the test device (sim.BootFromDisk): it comes
// up only when the card holds a complete simulated image, and then
// reports that image's os-release; it answers `snap -h` and `snap model`.
//
// Faults: see Faults. The package registers the "dragonboard" lab
// simulator (see StartLab for its settings).
package dragonboardsim

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

// Defaults of Options.
const (
	DefaultTestDevice     = "/dev/mmcblk1"
	DefaultBootTime       = time.Second
	DefaultMasterUser     = "linaro"
	DefaultMasterPassword = "linaro"
	DefaultUser           = "ubuntu"
	DefaultPassword       = "ubuntu"
)

// MasterIssue is the master image's /etc/issue.
const MasterIssue = "Debian GNU/Linux 12 \\n \\l\n\n"

// DefaultImage is the test image on the card when the rig starts, unless
// Options.Image says otherwise.
var DefaultImage = sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Kind: "ubuntu", Size: 1 << 20, Seed: 1}

// masterRelease is the master image's os-release.
const masterRelease = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n"

// Names of the scripts in Options.Dir.
const (
	ResetScriptName        = "dragonboard-reset"
	SelectMasterScriptName = "dragonboard-select-master"
	SelectTestScriptName   = "dragonboard-select-test"
)

// rebootDelay is how long after a reboot command returned the board goes
// down, so that its exit status reaches the client.
const rebootDelay = 50 * time.Millisecond

// Faults are the misbehaviours a rig can be given.
type Faults struct {
	// MasterNeverBoots keeps the master image from coming up at its next boot.
	MasterNeverBoots bool
	// NeverBoots keeps the test image from coming up at its next boot.
	NeverBoots bool
	// HostKeyChangesOnBoot gives the test image a new host key at every
	// boot, as a newly written image does.
	HostKeyChangesOnBoot bool
	// MasterHostKeyChangesOnBoot gives the master image a new host key at
	// every boot (a reinstalled master, or an impostor).
	MasterHostKeyChangesOnBoot bool
	// StaleImage ("wrong image") makes the board keep booting the test
	// image it ran before, whatever is written to the card.
	StaleImage bool
	// WriteFailsAfter makes every write to the card fail with an I/O
	// error once that many bytes were written (0: never).
	WriteFailsAfter int64
	// SlowLink delays every write the master image makes to a connection.
	SlowLink time.Duration
	// DropAfter cuts each connection to the master image this long after
	// it was accepted.
	DropAfter time.Duration
	// ResetFails makes the reset script fail.
	ResetFails bool
	// SelectFails makes the select scripts fail.
	SelectFails bool
}

// Options configure a rig.
type Options struct {
	// Name is the board's host name (default "dragonboard").
	Name string
	// Dir is where the scripts are written. Required.
	Dir string
	// BootTime is how long either image takes to boot (default DefaultBootTime).
	BootTime time.Duration
	// TestDevice is the card's device node on the master image (default
	// DefaultTestDevice).
	TestDevice string
	// WritablePartition is the device configuration's
	// snappy_writable_partition (default partition 2 of TestDevice).
	WritablePartition string
	// Image is the test image on the card when the rig starts (default
	// DefaultImage).
	Image sim.Image
	// StartInMaster starts the board in its master image (default: in the
	// test image).
	StartInMaster bool
	// DiskSize is the card's size in bytes (0: no limit).
	DiskSize int64
	// DiskRate limits writes to the card, in bytes per second (0: none).
	DiskRate int64
	// Users are the test image's logins (default ubuntu/ubuntu).
	Users map[string]string
	// MasterUser and MasterPassword are the master image's login (default
	// linaro/linaro).
	MasterUser, MasterPassword string
	// AuthorizedKeys are accepted for any user by both images.
	AuthorizedKeys []ssh.PublicKey
	// Faults are injected from the start.
	Faults Faults
	// Console is the board's serial console (nil: none): both images
	// print their boot logs to it, the rig gives it in Config and closes
	// it on Close.
	Console *sim.SerialConsole
	// Log receives the rig's diagnostics (nil: discarded).
	Log *slog.Logger
}

// Rig is a running Dragonboard rig. Its methods are safe for concurrent use.
type Rig struct {
	// Master is the master image, Test the test image.
	Master, Test *sim.DUT
	// Disk is the card (the test device).
	Disk *sim.Disk
	// Switch runs the scripts.
	Switch *sim.Switch
	// The paths of the scripts: reboot_script, select_master_script and
	// select_test_script.
	ResetScript, SelectMasterScript, SelectTestScript string

	dev, writable          string
	masterUser, masterPass string
	serial                 *sim.SerialConsole
	log                    *slog.Logger
	px                     *sim.Proxy
	vol                    *sim.Volume // the card's partitions
	mounts                 *sim.Mounts // the master image's

	mu           sync.Mutex
	faults       Faults
	selectMaster bool // what the next boot boots
	inMaster     bool // what the last boot booted
	boots        int
	booted       sim.Image
	closed       bool
}

// Start starts a rig, in its test image or (Options.StartInMaster) in its
// master image. It stops when ctx is done or Close is called.
func Start(ctx context.Context, opts Options) (*Rig, error) {
	if opts.Dir == "" {
		return nil, errors.New("dragonboardsim: Options.Dir is required (the scripts go there)")
	}
	if opts.Name == "" {
		opts.Name = "dragonboard"
	}
	if opts.BootTime == 0 {
		opts.BootTime = DefaultBootTime
	}
	if opts.TestDevice == "" {
		opts.TestDevice = DefaultTestDevice
	}
	if opts.WritablePartition == "" {
		opts.WritablePartition = sim.PartitionNode(opts.TestDevice, 2)
	}
	if opts.Image == (sim.Image{}) {
		opts.Image = DefaultImage
	}
	if opts.Users == nil {
		opts.Users = map[string]string{DefaultUser: DefaultPassword}
	}
	if opts.MasterUser == "" {
		opts.MasterUser = DefaultMasterUser
	}
	if opts.MasterPassword == "" {
		opts.MasterPassword = DefaultMasterPassword
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	r := &Rig{
		dev: opts.TestDevice, writable: opts.WritablePartition,
		masterUser: opts.MasterUser, masterPass: opts.MasterPassword,
		serial:       opts.Console,
		log:          opts.Log.With("rig", opts.Name),
		faults:       opts.Faults,
		selectMaster: opts.StartInMaster,
		inMaster:     opts.StartInMaster,
		booted:       opts.Image,
	}
	r.Disk = sim.NewDisk(opts.TestDevice, opts.DiskSize)
	r.vol = sim.NewVolume(r.Disk, layoutOf)
	r.Disk.SetRate(opts.DiskRate)
	r.Disk.FailWritesAfter(opts.Faults.WriteFailsAfter)

	ctx, cancel := context.WithCancel(ctx)
	fail := func(err error) (*Rig, error) {
		cancel()
		r.Close()
		return nil, fmt.Errorf("dragonboardsim: %w", err)
	}
	var err error
	r.Master, err = sim.StartDUT(ctx, sim.DUTOptions{
		Name:           opts.Name,
		BootTime:       opts.BootTime,
		Users:          map[string]string{opts.MasterUser: opts.MasterPassword},
		AuthorizedKeys: opts.AuthorizedKeys,
		OSRelease:      masterRelease,
		Faults:         masterFaults(opts.Faults),
		Disks:          map[string]*sim.Disk{opts.TestDevice: r.Disk},
		Console:        opts.Console,
		Log:            opts.Log,
	})
	if err != nil {
		return fail(err)
	}
	r.Master.WriteFile("/etc/issue", []byte(MasterIssue))
	r.Test, err = sim.StartDUT(ctx, sim.DUTOptions{
		Name:           opts.Name,
		BootTime:       opts.BootTime,
		Users:          opts.Users,
		AuthorizedKeys: opts.AuthorizedKeys,
		OSRelease:      opts.Image.OSRelease,
		Model:          opts.Image.Model,
		Faults:         testFaults(opts.Faults),
		BootCheck:      r.testBootCheck,
		Console:        opts.Console,
		Log:            opts.Log,
	})
	if err != nil {
		return fail(err)
	}
	r.mounts = sim.NewMounts(r.Master, r.partition)
	r.mounts.Install()
	r.Master.Handle("sgdisk", r.sgdisk)
	for _, d := range []*sim.DUT{r.Master, r.Test} {
		d.Handle("reboot", r.rebootCmd)
		d.Handle("/sbin/reboot", r.rebootCmd)
	}
	r.Test.Handle("snap", r.snap)

	if r.px, err = sim.StartProxy(ctx, r.target, r.log); err != nil {
		return fail(err)
	}
	if r.Switch, err = sim.StartSwitch(ctx, opts.Dir, opts.Log); err != nil {
		return fail(err)
	}
	for _, s := range []struct {
		name   string
		action func() error
		dst    *string
	}{
		{ResetScriptName, r.reset, &r.ResetScript},
		{SelectMasterScriptName, func() error { return r.selectBoot(true) }, &r.SelectMasterScript},
		{SelectTestScriptName, func() error { return r.selectBoot(false) }, &r.SelectTestScript},
	} {
		if *s.dst, err = r.Switch.Script(s.name, s.action); err != nil {
			return fail(err)
		}
	}
	context.AfterFunc(ctx, r.Close)
	return r, nil
}

func masterFaults(f Faults) sim.Faults {
	return sim.Faults{NeverBoots: f.MasterNeverBoots, HostKeyChangesOnBoot: f.MasterHostKeyChangesOnBoot, SlowLink: f.SlowLink, DropAfter: f.DropAfter}
}

func testFaults(f Faults) sim.Faults {
	return sim.Faults{NeverBoots: f.NeverBoots, HostKeyChangesOnBoot: f.HostKeyChangesOnBoot}
}

// Close stops the rig.
func (r *Rig) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	if r.Switch != nil {
		r.Switch.Close()
	}
	if r.px != nil {
		r.px.Close()
	}
	for _, d := range []*sim.DUT{r.Master, r.Test} {
		if d != nil {
			d.Close()
		}
	}
	_ = r.serial.Close()
}

// Addr returns the board's SSH address (device_ip:ssh_port).
func (r *Rig) Addr() string { return r.px.Addr() }

// TestDevice returns the card's device node on the master image.
func (r *Rig) TestDevice() string { return r.dev }

// Config returns the device configuration keys that reach the rig:
// device_ip, ssh_port, test_device, snappy_writable_partition,
// select_master_script, select_test_script, reboot_script, master_user
// and master_password; serial_host and serial_port when the board has a
// serial console.
func (r *Rig) Config() map[string]any {
	host, port := sim.SplitAddr(r.Addr())
	c := map[string]any{
		"device_ip":                 host,
		"ssh_port":                  port,
		"test_device":               r.dev,
		"snappy_writable_partition": r.writable,
		"select_master_script":      []string{r.SelectMasterScript},
		"select_test_script":        []string{r.SelectTestScript},
		"reboot_script":             []string{r.ResetScript},
		"master_user":               r.masterUser,
		"master_password":           r.masterPass,
	}
	r.serial.AddConfig(c)
	return c
}

// InMaster reports whether the board runs (or is booting) its master
// image; the DUT of the other image is then out of reach.
func (r *Rig) InMaster() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inMaster
}

// SelectsMaster reports whether the next boot boots the master image.
func (r *Rig) SelectsMaster() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.selectMaster
}

// Booted returns the test image the board last booted.
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

// SetFaults replaces the injected faults: link faults apply to the master
// image at once (DropAfter to new connections), boot faults at the end of
// the next boot, disk faults to the next write.
func (r *Rig) SetFaults(f Faults) {
	r.mu.Lock()
	r.faults = f
	r.mu.Unlock()
	r.Disk.FailWritesAfter(f.WriteFailsAfter)
	r.Master.SetFaults(masterFaults(f))
	r.Test.SetFaults(testFaults(f))
}

// target returns the address of the image the board booted.
func (r *Rig) target() string {
	r.mu.Lock()
	master, closed := r.inMaster, r.closed
	r.mu.Unlock()
	switch {
	case closed:
		return ""
	case master:
		return r.Master.Addr()
	}
	return r.Test.Addr()
}

// testBootCheck is the test image's BootCheck. It runs with the test
// DUT's lock held: it must not call the DUT's methods.
func (r *Rig) testBootCheck() (sim.Image, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.faults.StaleImage || r.inMaster {
		// The board runs its master image: nothing of the card is booted.
		return sim.Image{}, true, nil
	}
	im, keep, err := sim.BootFromDisk(r.Disk)()
	if err == nil && !keep {
		r.booted = im
	}
	return im, keep, err
}

// boot boots the board into the image selected.
func (r *Rig) boot() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	master := r.selectMaster
	r.inMaster = master
	r.mu.Unlock()
	r.log.Info("dragonboardsim: boot", "master", master)
	r.Master.PowerCycle()
	r.Test.PowerCycle()
	r.mu.Lock()
	r.boots++
	r.mu.Unlock()
}

// Boots returns how many times the board was booted (reset or rebooted);
// once it has grown, the image booted is booting or up.
func (r *Rig) Boots() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.boots
}

// reset is the reset script's action.
func (r *Rig) reset() error {
	if r.Faults().ResetFails {
		return errors.New("the reset relay does not switch (simulated fault)")
	}
	r.boot()
	return nil
}

// selectBoot is the select scripts' action.
func (r *Rig) selectBoot(master bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.faults.SelectFails {
		return errors.New("the boot selector does not answer (simulated fault)")
	}
	r.selectMaster = master
	return nil
}

// rebootCmd is reboot on either image: the board reboots into the image
// selected, once the command has returned.
func (r *Rig) rebootCmd(_ context.Context, x *sim.Exec) int {
	if !x.Sudo {
		return x.Errorf(1, "must be superuser")
	}
	time.AfterFunc(rebootDelay, r.boot)
	return 0
}

// snap on the test image: snap -h, snap model.
func (r *Rig) snap(_ context.Context, x *sim.Exec) int {
	switch strings.Join(x.Args[1:], " ") {
	case "-h", "--help", "help":
		fmt.Fprintln(x.Stdout, "The snap command lets you install, configure, refresh and remove snaps.")
		return 0
	case "model":
		im := r.Booted()
		if im.Model == "" {
			return x.Errorf(1, "error: device not ready yet (no assertions found)")
		}
		fmt.Fprintf(x.Stdout, "brand-id: canonical\nmodel: %s\n", im.Model)
		return 0
	}
	return x.Errorf(1, "error: unknown command %q, see 'snap help'.", strings.Join(x.Args[1:], " "))
}

// partition returns the card's partition whose node is node: mount's
// resolver.
func (r *Rig) partition(node string) (*sim.Volume, int, bool) {
	for n := 1; n <= len(r.vol.Partitions()); n++ {
		if node == sim.PartitionNode(r.dev, n) {
			return r.vol, n, true
		}
	}
	return nil, 0, false
}

// sgdisk: sgdisk -o DEV writes a new, empty partition table.
func (r *Rig) sgdisk(_ context.Context, x *sim.Exec) int {
	args := x.Args[1:]
	if len(args) != 2 || args[0] != "-o" {
		return x.Errorf(2, "only sgdisk -o DEVICE is simulated")
	}
	if !x.Sudo {
		return x.Errorf(2, "Problem opening %s for reading! Error is 13.", args[1])
	}
	if args[1] != r.dev {
		return x.Errorf(2, "Problem opening %s for reading! Error is 2.", args[1])
	}
	w := r.Disk.OpenWrite()
	if err := w.Close(); err != nil {
		return x.Errorf(4, "Unable to save GPT data: %v", err)
	}
	r.log.Info("dragonboardsim: the card was wiped")
	fmt.Fprintln(x.Stdout, "The operation has completed successfully.")
	return 0
}

// PartitionFiles returns the files of partition n (from 1) of the card
// that a provisioning path read or wrote, by path relative to the
// partition's root (see cm3sim.Rig.PartitionFiles). It is nil when the
// card holds no partition n.
func (r *Rig) PartitionFiles(n int) map[string][]byte {
	return r.mounts.PartitionFiles(r.vol, n)
}

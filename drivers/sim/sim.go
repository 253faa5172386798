// Package sim is a simulated device under test reachable over real SSH, so
// that drivers can be tested with no hardware and behave as against
// hardware: a power and boot state machine (Off, Booting, Up) whose TCP
// listener resets every connection unless the device is Up, an SSH server
// (golang.org/x/crypto/ssh) that runs a small, explicit set of commands
// without any shell, and faults to inject (a device that never boots, a
// host key that changes on each boot, a slow link, dropped sessions).
//
// Commands come through exec requests only (no interactive shell, no SFTP)
// and are split into words and pipelines by Parse, never interpreted; the
// commands known are listed in the documentation of DUTOptions, and
// whatever embeds a DUT adds its own with Handle. Anything else, including
// the script wrapper of sshx.Client.RunScript, exits 127 with "command not
// found" on stderr, as in a shell.
//
// Disks (simulated block devices) take images written with dd, keeping
// their length, SHA-256 and header; a DUT given a BootCheck (such as
// BootFromDisk) boots what its boot disk holds, and never comes up when
// that is not a complete image. Image builds the simulated images.
//
// The simulators of connector types (the packages under drivers/sim) are
// made of these and of: Switch (local scripts that drive simulated power
// and boot-select hardware), Proxy (a device's address in front of
// whichever host answers there), ImageServer (an image mirror), Volume
// and Mounts (the partitions of a disk's image and a host's mount table,
// with mount, umount, ls, test, cp and chmod), SerialConsole (a
// device's serial console on TCP, which a DUT prints its boot logs to),
// DD and Tee (the dd and tee commands, for a simulator to adapt to its
// host), and Settings (the sim: keys of a lab file's device entry, for
// RegisterLab's starters).
package sim

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// State is the power and boot state of a DUT.
type State int

// The states of a DUT.
const (
	Off     State = iota // powered off: connections are reset at once
	Booting              // powered on, not answering yet: connections are reset at once
	Up                   // answering SSH
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case Off:
		return "off"
	case Booting:
		return "booting"
	case Up:
		return "up"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Faults are the misbehaviours a DUT can be given.
type Faults struct {
	// NeverBoots keeps the DUT Booting forever after its next power cycle,
	// power-on or reboot.
	NeverBoots bool
	// HostKeyChangesOnBoot gives the DUT a new host key each time it boots.
	HostKeyChangesOnBoot bool
	// SlowLink delays every write the DUT makes to a connection.
	SlowLink time.Duration
	// DropAfter cuts each connection this long after it was accepted.
	DropAfter time.Duration
}

// DUTOptions configure a DUT.
//
// The DUT runs these commands, each optionally after sudo, alone or in a
// pipeline (a | b), and also as sh -c LINE or bash [-o pipefail] -c LINE:
// true, false (also as /bin/...), echo [-n], cat (stdin, /etc/os-release
// or a file of the DUT), tee [-a] FILE (see Tee), mkdir, rm, test and [
// -e|-f|-d|-b PATH (a directory is one a file is under, or /, /mnt or
// /tmp), dd of=DISK [bs=N] (see DD), sync, hdparm, partprobe, sha256sum
// DISK, the decompressors zstdcat, xzcat, zcat, bzcat (and
// zstd|xz|gzip|bzip2 -dc),
// snap model, uname [-a|-s|-n|-r|-m], hostname, sleep N, exit N, and
// reboot, shutdown -r now, poweroff, shutdown -h now, which return with
// status 0 and then take the DUT down (Booting for BootTime, or Off) and
// cut its connections.
type DUTOptions struct {
	// Name is the DUT's host name (default "sim").
	Name string
	// Addr is where it listens (default 127.0.0.1:0); the port chosen is
	// kept across reboots.
	Addr string
	// BootTime is how long it stays Booting after a power-on or reboot.
	BootTime time.Duration
	// Users maps user names to passwords accepted for them.
	Users map[string]string
	// AuthorizedKeys are public keys accepted for any user name.
	AuthorizedKeys []ssh.PublicKey
	// OSRelease is the content of /etc/os-release of the current image.
	OSRelease string
	// Model is the model `snap model` reports; empty means no model.
	Model string
	// Faults are the faults injected from the start.
	Faults Faults
	// Commands are commands added to the built-in ones (see Handle).
	Commands map[string]Command
	// Disks are the disks attached, by device node (see AddDisk).
	Disks map[string]*Disk
	// BootCheck, when set, is asked at the end of every boot what the DUT
	// booted (see BootCheck).
	BootCheck BootCheck
	// Console, when set, is the serial console the DUT prints its boot
	// logs to (see SetConsole).
	Console *SerialConsole
	// Log receives state changes and commands (nil: discarded).
	Log *slog.Logger
}

// rebootDropDelay is how long after a reboot command returned its
// connections are cut, so that its exit status reaches the client as it
// would from a real machine shutting down.
const rebootDropDelay = 50 * time.Millisecond

// DUT is a simulated device under test. Its methods are safe for
// concurrent use.
type DUT struct {
	name     string
	bootTime time.Duration
	users    map[string]string
	keys     [][]byte
	log      *slog.Logger

	wg sync.WaitGroup

	mu        sync.Mutex
	addr      string
	state     State
	changed   chan struct{} // closed and replaced on each state change
	gen       uint64        // bumped on each power transition
	faults    Faults
	hostKey   ssh.Signer
	osRelease string
	model     string
	ln        net.Listener
	conns     map[net.Conn]struct{}
	bootTimer *time.Timer
	commands  []string
	closed    bool
	handlers  map[string]Command
	disks     map[string]*Disk
	files     map[string][]byte
	bootCheck BootCheck
	console   *SerialConsole
}

// BootCheck says what a DUT booted at the end of a boot: the image whose
// os-release and model it then reports, keep (the image did not change),
// or an error, with which the DUT never comes up (it stays Booting, as a
// board with no bootable media).
type BootCheck func() (im Image, keep bool, err error)

// BootFromDisk is a BootCheck that boots what disk holds: a disk never
// written keeps the image the DUT has; otherwise the disk must hold a
// complete simulated image.
func BootFromDisk(disk *Disk) BootCheck {
	return func() (Image, bool, error) {
		if disk.Writes() == 0 {
			return Image{}, true, nil
		}
		im, err := Bootable(disk.Last())
		if err != nil {
			return Image{}, false, fmt.Errorf("%s: %w", disk.Name(), err)
		}
		return im, false, nil
	}
}

// SetBootCheck replaces the DUT's BootCheck (nil: none); it applies at
// the end of the next boot.
func (d *DUT) SetBootCheck(c BootCheck) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bootCheck = c
}

// StartDUT starts a DUT in state Up. It is closed when ctx is done or
// Close is called.
func StartDUT(ctx context.Context, opts DUTOptions) (*DUT, error) {
	if len(opts.Users) == 0 && len(opts.AuthorizedKeys) == 0 {
		return nil, errors.New("sim: start DUT: no Users and no AuthorizedKeys: nobody could log in")
	}
	if opts.BootTime < 0 {
		return nil, fmt.Errorf("sim: start DUT: negative BootTime %s", opts.BootTime)
	}
	d := &DUT{
		name:      opts.Name,
		bootTime:  opts.BootTime,
		users:     opts.Users,
		log:       opts.Log,
		addr:      opts.Addr,
		state:     Up,
		changed:   make(chan struct{}),
		faults:    opts.Faults,
		osRelease: opts.OSRelease,
		model:     opts.Model,
		conns:     map[net.Conn]struct{}{},
		handlers:  maps.Clone(opts.Commands),
		disks:     maps.Clone(opts.Disks),
		files:     map[string][]byte{},
		bootCheck: opts.BootCheck,
		console:   opts.Console,
	}
	if d.handlers == nil {
		d.handlers = map[string]Command{}
	}
	if d.disks == nil {
		d.disks = map[string]*Disk{}
	}
	if d.name == "" {
		d.name = "sim"
	}
	if d.addr == "" {
		d.addr = "127.0.0.1:0"
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("dut", d.name)
	for _, k := range opts.AuthorizedKeys {
		d.keys = append(d.keys, k.Marshal())
	}
	var err error
	if d.hostKey, err = newHostKey(); err != nil {
		return nil, fmt.Errorf("sim: start DUT %s: %w", d.name, err)
	}
	// A device coming back on its old address (a reinstalled laptop) may
	// find the port taken for a moment by a short-lived connection's
	// local end: wait for it, as a machine's address stays its own.
	deadline := time.Now().Add(20 * time.Second)
	for {
		d.mu.Lock()
		err = d.listenLocked()
		d.mu.Unlock()
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("sim: start DUT %s: %w", d.name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("sim: start DUT %s: %w", d.name, err)
	}
	context.AfterFunc(ctx, d.Close)
	d.log.Info("sim: DUT up", "addr", d.addr)
	return d, nil
}

func newHostKey() (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a host key: %w", err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("generating a host key: %w", err)
	}
	return s, nil
}

// listenLocked opens the listener on d.addr and starts accepting.
func (d *DUT) listenLocked() error {
	ln, err := net.Listen("tcp", d.addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", d.addr, err)
	}
	d.addr = ln.Addr().String()
	d.ln = ln
	d.wg.Add(1)
	go d.accept(ln)
	return nil
}

// setStateLocked changes the state and wakes WaitState callers.
func (d *DUT) setStateLocked(s State) {
	if d.state == s {
		return
	}
	d.log.Info("sim: DUT state", "from", d.state, "to", s)
	d.state = s
	close(d.changed)
	d.changed = make(chan struct{})
}

// downLocked closes the listener, stops a pending boot and cuts every
// connection (after delay, if not zero), entering state s.
func (d *DUT) downLocked(s State, delay time.Duration) {
	d.gen++
	if d.bootTimer != nil {
		d.bootTimer.Stop()
		d.bootTimer = nil
	}
	conns := make([]net.Conn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	drop := func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	if delay > 0 {
		time.AfterFunc(delay, drop)
	} else {
		drop()
	}
	d.setStateLocked(s)
}

// bootLocked enters Booting and schedules the end of the boot.
func (d *DUT) bootLocked(delay time.Duration) {
	d.downLocked(Booting, delay)
	d.printPowerOnLocked()
	gen := d.gen
	d.bootTimer = time.AfterFunc(d.bootTime, func() { d.booted(gen) })
}

// booted ends the boot started in generation gen, unless the DUT was
// power-cycled since or must never boot.
func (d *DUT) booted(gen uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.gen != gen || d.state != Booting {
		return
	}
	d.bootTimer = nil
	if d.faults.NeverBoots {
		d.log.Info("sim: DUT never boots (fault)")
		d.printKernelLocked()
		return
	}
	if d.bootCheck != nil {
		im, keep, err := d.bootCheck()
		if err != nil {
			d.log.Info("sim: DUT does not boot", "err", err)
			d.printNoBootLocked(err)
			return
		}
		if !keep {
			d.osRelease, d.model = im.OSRelease, im.Model
		}
	}
	if d.faults.HostKeyChangesOnBoot {
		k, err := newHostKey()
		if err != nil {
			d.log.Error("sim: DUT could not change its host key", "err", err)
		} else {
			d.hostKey = k
		}
	}
	d.printKernelLocked()
	d.printUpLocked()
	d.setStateLocked(Up)
}

// PowerCycle is a hard reset: every connection is cut and the DUT boots
// again (Booting for BootTime, then Up).
func (d *DUT) PowerCycle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.log.Info("sim: DUT power cycle")
	d.bootLocked(0)
}

// PowerOff cuts the power: every connection is cut and the DUT stays Off.
func (d *DUT) PowerOff() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.downLocked(Off, 0)
}

// PowerOn boots a DUT that is Off; it does nothing otherwise.
func (d *DUT) PowerOn() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.state != Off {
		return
	}
	d.bootLocked(0)
}

// reboot is what a reboot command does once it has returned: the DUT
// boots again, its connections cut a moment later. It does nothing if the
// DUT changed power state since generation gen.
func (d *DUT) reboot(gen uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.gen != gen {
		return
	}
	d.printShutdownLocked(true)
	d.bootLocked(rebootDropDelay)
}

// poweroff is what a poweroff command does once it has returned.
func (d *DUT) poweroff(gen uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.gen != gen {
		return
	}
	d.printShutdownLocked(false)
	d.downLocked(Off, rebootDropDelay)
}

// State returns the DUT's current state.
func (d *DUT) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// WaitState waits until the DUT is in state s or ctx is done.
func (d *DUT) WaitState(ctx context.Context, s State) error {
	for {
		d.mu.Lock()
		cur, ch := d.state, d.changed
		d.mu.Unlock()
		if cur == s {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sim: waiting for DUT %s to be %s (it is %s): %w", d.name, s, cur, ctx.Err())
		case <-ch:
		}
	}
}

// Addr returns the host:port the DUT listens on when Up.
func (d *DUT) Addr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.addr
}

// SplitAddr splits host:port into the host and the port number, as a
// device configuration gives them (device_ip and ssh_port): addr itself
// and 0 when it is not host:port.
func SplitAddr(addr string) (host string, port int) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return h, 0
	}
	return h, n
}

// BootIDPath is the file of a Linux host that holds a new identifier at
// each of its boots (see NewBootID).
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// NewBootID returns a random boot identifier, shaped as the kernel's
// (a UUID and a newline), for a simulated host's BootIDPath.
func NewBootID() []byte {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Appendf(nil, "%x-%x-%x-%x-%x\n", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// HostKey returns the DUT's current host key.
func (d *DUT) HostKey() ssh.PublicKey {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hostKey.PublicKey()
}

// WriteImage replaces the installed image, as a provisioning path would:
// what /etc/os-release holds and the model `snap model` reports. The
// running sessions see the change at once.
func (d *DUT) WriteImage(osRelease, model string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.osRelease, d.model = osRelease, model
}

// SetFaults replaces the injected faults. SlowLink applies at once,
// DropAfter to new connections, NeverBoots and HostKeyChangesOnBoot at the
// end of the next boot.
func (d *DUT) SetFaults(f Faults) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.faults = f
}

// Faults returns the injected faults.
func (d *DUT) Faults() Faults {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.faults
}

// Commands returns the command lines run so far, in order, as received
// (without the process group preamble sshx adds).
func (d *DUT) Commands() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.commands...)
}

// Close powers the DUT off for good and waits for its goroutines.
func (d *DUT) Close() {
	d.mu.Lock()
	if !d.closed {
		d.downLocked(Off, 0)
		d.closed = true
		if d.ln != nil {
			_ = d.ln.Close()
			d.ln = nil
		}
	}
	d.mu.Unlock()
	d.wg.Wait()
}

func (d *DUT) accept(ln net.Listener) {
	defer d.wg.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.log.Warn("sim: accept", "err", err)
			}
			return
		}
		d.mu.Lock()
		if d.closed || d.ln != ln {
			d.mu.Unlock()
			_ = nc.Close()
			continue
		}
		if d.state != Up {
			// Off or booting: nothing answers. The port stays the DUT's
			// (a listener closed while it is down could be given to
			// another socket), and the connection is reset at once.
			d.mu.Unlock()
			if tc, ok := nc.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = nc.Close()
			continue
		}
		c := &slowConn{Conn: nc, d: d, done: make(chan struct{})}
		d.conns[c] = struct{}{}
		cfg := d.serverConfigLocked()
		gen := d.gen
		if f := d.faults.DropAfter; f > 0 {
			time.AfterFunc(f, func() { _ = c.Close() })
		}
		d.wg.Add(1)
		d.mu.Unlock()
		go d.serveConn(c, cfg, gen)
	}
}

func (d *DUT) serverConfigLocked() *ssh.ServerConfig {
	cfg := &ssh.ServerConfig{ServerVersion: "SSH-2.0-OpenSSH_9.6p1 flinger-sim"}
	cfg.AddHostKey(d.hostKey)
	if len(d.users) > 0 {
		cfg.PasswordCallback = func(m ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			want, ok := d.users[m.User()]
			if ok && subtle.ConstantTimeCompare([]byte(want), pw) == 1 {
				return nil, nil
			}
			return nil, fmt.Errorf("sim: password refused for %q", m.User())
		}
	}
	if len(d.keys) > 0 {
		cfg.PublicKeyCallback = func(m ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			b := k.Marshal()
			for _, want := range d.keys {
				if subtle.ConstantTimeCompare(want, b) == 1 {
					return nil, nil
				}
			}
			return nil, fmt.Errorf("sim: key refused for %q", m.User())
		}
	}
	return cfg
}

func (d *DUT) forget(c net.Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
}

// serveConn runs one SSH connection.
func (d *DUT) serveConn(c *slowConn, cfg *ssh.ServerConfig, gen uint64) {
	defer d.wg.Done()
	defer d.forget(c)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		d.log.Debug("sim: handshake", "err", err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	d.log.Debug("sim: login", "user", sc.User(), "remote", sc.RemoteAddr())
	go func() {
		for r := range reqs {
			if r.WantReply {
				_ = r.Reply(r.Type == "keepalive@openssh.com", nil)
			}
		}
	}()
	var sessions sync.WaitGroup
	for nch := range chans {
		if nch.ChannelType() != "session" {
			_ = nch.Reject(ssh.UnknownChannelType, "only session channels")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		sessions.Add(1)
		go func() {
			defer sessions.Done()
			d.serveSession(ch, creqs, gen)
		}()
	}
	sessions.Wait()
}

// slowConn is a connection whose writes are delayed by the SlowLink fault.
type slowConn struct {
	net.Conn
	d    *DUT
	once sync.Once
	done chan struct{}
}

func (c *slowConn) Write(p []byte) (int, error) {
	if delay := c.d.Faults().SlowLink; delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.done:
			t.Stop()
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(p)
}

func (c *slowConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}

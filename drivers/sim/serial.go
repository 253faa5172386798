package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"time"
)

// SerialRate is the pace of a SerialConsole's output: a 115200-baud line
// (8N1: ten bits a byte), in bytes per second.
const SerialRate = 115200 / 10

// SerialBuffer is how much output a SerialConsole keeps for a client
// that does not read it fast enough; what comes beyond is dropped for
// that client.
const SerialBuffer = 64 << 10

// serialChunk bounds a write to a client when the output holds no line
// end.
const serialChunk = 1 << 10

// SerialConsole is a simulated serial console served on TCP, as ser2net
// serves one in raw mode: every client connected gets what the device
// prints from then on (nothing printed before is replayed), one line at a
// time at the pace of a 115200-baud line (SerialRate). Printing never
// blocks the device: a client that reads too slowly, or not at all, loses
// what does not fit in its SerialBuffer. What clients send is read and
// ignored. Its methods are safe for concurrent use, and those of a nil
// *SerialConsole do nothing.
type SerialConsole struct {
	ln net.Listener
	wg sync.WaitGroup

	mu      sync.Mutex
	clients map[*serialClient]struct{}
	closed  bool
}

// serialClient is a connection to a SerialConsole.
type serialClient struct {
	conn    net.Conn
	wake    chan struct{} // a token when pending grew
	done    chan struct{} // closed when the client is dropped
	pending []byte        // output not yet written; guarded by the console's mu
}

// NewSerialConsole starts a serial console listening on addr (such as
// "127.0.0.1:0"). Close stops it.
func NewSerialConsole(addr string) (*SerialConsole, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sim: serial console: %w", err)
	}
	s := &SerialConsole{ln: ln, clients: map[*serialClient]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Addr returns the host and the port the console listens on, as a device
// configuration gives them (serial_host and serial_port).
func (s *SerialConsole) Addr() (host string, port int) {
	if s == nil {
		return "", 0
	}
	return SplitAddr(s.ln.Addr().String())
}

// AddConfig sets serial_host and serial_port in c, a device
// configuration, to the console's address.
func (s *SerialConsole) AddConfig(c map[string]any) {
	if s == nil {
		return
	}
	c["serial_host"], c["serial_port"] = s.Addr()
}

// Printf prints a line: the line formatted, ended with CR LF as a
// terminal's output is (any line end given is replaced).
func (s *SerialConsole) Printf(format string, args ...any) {
	line := strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf(format, args...), "\n"), "\r")
	_, _ = s.Write([]byte(line + "\r\n"))
}

// Write prints p as it is. It never blocks on the clients: each gets p
// unless that would overflow its SerialBuffer. It fails only once the
// console is closed.
func (s *SerialConsole) Write(p []byte) (int, error) {
	if s == nil {
		return len(p), nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, fmt.Errorf("sim: serial console: %w", net.ErrClosed)
	}
	for c := range s.clients {
		if len(c.pending)+len(p) > SerialBuffer {
			continue
		}
		c.pending = append(c.pending, p...)
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// Clients returns the number of clients connected.
func (s *SerialConsole) Clients() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// WaitClients waits until n clients are connected, or ctx is done.
func (s *SerialConsole) WaitClients(ctx context.Context, n int) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.Clients() != n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("sim: serial console: waiting for %d clients (%d connected): %w", n, s.Clients(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Kick drops every client connected, as a console server that restarts
// does; they may connect again.
func (s *SerialConsole) Kick() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		s.dropLocked(c)
	}
}

// Close stops the console: it stops listening, drops every client and
// waits for its goroutines. It may be called more than once.
func (s *SerialConsole) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.clients {
		s.dropLocked(c)
	}
	s.mu.Unlock()
	s.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("sim: serial console: %w", err)
	}
	return nil
}

func (s *SerialConsole) dropLocked(c *serialClient) {
	if _, ok := s.clients[c]; !ok {
		return
	}
	delete(s.clients, c)
	close(c.done)
	_ = c.conn.Close()
}

func (s *SerialConsole) drop(c *serialClient) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(c)
}

func (s *SerialConsole) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // such as too many open files
			continue
		}
		c := &serialClient{conn: conn, wake: make(chan struct{}, 1), done: make(chan struct{})}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = conn.Close()
			return
		}
		s.clients[c] = struct{}{}
		s.wg.Add(2)
		s.mu.Unlock()
		go s.send(c)
		go s.discard(c)
	}
}

// discard reads what the client sends until it goes away.
func (s *SerialConsole) discard(c *serialClient) {
	defer s.wg.Done()
	buf := make([]byte, 512)
	for {
		if _, err := c.conn.Read(buf); err != nil {
			s.drop(c)
			return
		}
	}
}

// send writes the client's output, a line at a time, at SerialRate.
func (s *SerialConsole) send(c *serialClient) {
	defer s.wg.Done()
	var next time.Time // when the line being sent has gone down the wire
	pace := time.NewTimer(0)
	defer pace.Stop()
	for {
		s.mu.Lock()
		chunk := nextChunk(c.pending)
		c.pending = c.pending[len(chunk):]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		s.mu.Unlock()
		if len(chunk) == 0 {
			select {
			case <-c.wake:
				continue
			case <-c.done:
				return
			}
		}
		now := time.Now()
		next = later(next, now).Add(time.Duration(len(chunk)) * time.Second / SerialRate)
		pace.Reset(next.Sub(now))
		select {
		case <-pace.C:
		case <-c.done:
			return
		}
		if _, err := c.conn.Write(chunk); err != nil {
			s.drop(c)
			return
		}
	}
}

// nextChunk returns the first line of p (with its line end), or at most
// serialChunk bytes of it.
func nextChunk(p []byte) []byte {
	n := len(p)
	if i := bytes.IndexByte(p, '\n'); i >= 0 {
		n = i + 1
	}
	return p[:min(n, serialChunk)]
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// SetConsole gives the DUT a serial console to print its boot logs to
// (nil: none), as DUTOptions.Console does.
func (d *DUT) SetConsole(c *SerialConsole) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.console = c
}

// Console returns the DUT's serial console (nil: none).
func (d *DUT) Console() *SerialConsole {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.console
}

// osReleaseField returns the value of key in an os-release file's content,
// unquoted.
func osReleaseField(osRelease, key string) string {
	for line := range strings.Lines(osRelease) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && k == key {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// prettyName is the system's name as a login prompt shows it.
func prettyName(osRelease string) string {
	if p := osReleaseField(osRelease, "PRETTY_NAME"); p != "" {
		return p
	}
	if n := strings.TrimSpace(osReleaseField(osRelease, "NAME") + " " + osReleaseField(osRelease, "VERSION_ID")); n != "" {
		return n
	}
	return "Linux"
}

// kernelRelease is the kernel an Ubuntu release boots.
func kernelRelease(osRelease string) string {
	switch osReleaseField(osRelease, "VERSION_ID") {
	case "20.04":
		return "5.4.0-177-generic"
	case "22.04":
		return "5.15.0-105-generic"
	}
	return "6.8.0-31-generic"
}

// printPowerOnLocked prints what the firmware prints when the DUT is
// powered on or reset.
func (d *DUT) printPowerOnLocked() {
	c := d.console
	if c == nil {
		return
	}
	c.Printf("")
	c.Printf("U-Boot 2024.01+dfsg-1ubuntu5 (Apr 01 2024 - 10:00:00 +0000)")
	c.Printf("")
	c.Printf("DRAM:  4 GiB")
	c.Printf("Hit any key to stop autoboot:  0")
}

// printKernelLocked prints the start of the kernel of the installed
// system.
func (d *DUT) printKernelLocked() {
	c := d.console
	if c == nil {
		return
	}
	k := kernelRelease(d.osRelease)
	c.Printf("Starting kernel ...")
	c.Printf("")
	c.Printf("[    0.000000] Linux version %s (buildd@lcy02-amd64-010) (gcc 13.2.0) #31-Ubuntu SMP", k)
	c.Printf("[    0.000000] Kernel command line: console=ttyS0,115200n8 root=LABEL=writable ro quiet")
	c.Printf("[    0.412907] Freeing unused kernel memory: 2048K")
	c.Printf("[    1.204317] Run /sbin/init as init process")
}

// printUpLocked prints the end of a boot: init reaching its target and
// the login prompt.
func (d *DUT) printUpLocked() {
	c := d.console
	if c == nil {
		return
	}
	c.Printf("[    2.021876] systemd[1]: Hostname set to <%s>.", d.name)
	c.Printf("[  OK  ] Started ssh.service - OpenBSD Secure Shell server.")
	c.Printf("[  OK  ] Reached target multi-user.target - Multi-User System.")
	c.Printf("")
	c.Printf("%s %s ttyS0", prettyName(d.osRelease), d.name)
	c.Printf("")
	c.Printf("%s login:", d.name)
}

// printNoBootLocked prints the firmware's failure to boot what the DUT
// holds.
func (d *DUT) printNoBootLocked(err error) {
	if d.console != nil {
		d.console.Printf("** Unable to boot: %v **", err)
	}
}

// printShutdownLocked prints the end of a reboot (or, if !restart, of a
// poweroff) command.
func (d *DUT) printShutdownLocked(restart bool) {
	c := d.console
	if c == nil {
		return
	}
	if restart {
		c.Printf("[  OK  ] Reached target reboot.target - System Reboot.")
		c.Printf("reboot: Restarting system")
	} else {
		c.Printf("[  OK  ] Reached target poweroff.target - System Power Off.")
		c.Printf("reboot: Power down")
	}
}

// SerialSetting is the sim: key of a lab file's device entry that, set to
// false, leaves the device without a serial console (StartLab).
const SerialSetting = "serial"

// startLabConsole takes the setting serial out of a lab device's
// settings and, unless it is false, starts a serial console on loopback,
// closed when ctx is done if not before.
func startLabConsole(ctx context.Context, settings map[string]any) (map[string]any, *SerialConsole, error) {
	on := true
	if v, ok := settings[SerialSetting]; ok {
		settings = maps.Clone(settings)
		delete(settings, SerialSetting)
		if v != nil {
			b, isBool := v.(bool)
			if !isBool {
				return nil, nil, fmt.Errorf("sim.%s: must be true or false, got %v", SerialSetting, v)
			}
			on = b
		}
	}
	if !on {
		return settings, nil, nil
	}
	c, err := NewSerialConsole("127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	context.AfterFunc(ctx, func() { _ = c.Close() })
	return settings, c, nil
}

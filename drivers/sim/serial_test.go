package sim_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	_ "github.com/flingerlab/flinger/drivers/sim/all"
	"github.com/flingerlab/flinger/drivers/sim/dutsim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// serialWait bounds the waits of the serial console tests.
const serialWait = 10 * time.Second

func newConsole(t *testing.T) *sim.SerialConsole {
	t.Helper()
	s, err := sim.NewSerialConsole("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// serialClient is a client of a serial console, reading it line by line.
type serialClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialConsole(t *testing.T, host string, port int) *serialClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), serialWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &serialClient{conn: conn, r: bufio.NewReader(conn)}
}

// connect dials s and waits until s counts n clients.
func connect(t *testing.T, s *sim.SerialConsole, n int) *serialClient {
	t.Helper()
	host, port := s.Addr()
	c := dialConsole(t, host, port)
	waitClients(t, s, n)
	return c
}

func waitClients(t *testing.T, s *sim.SerialConsole, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), serialWait)
	defer cancel()
	if err := s.WaitClients(ctx, n); err != nil {
		t.Fatal(err)
	}
}

// line reads the next line, without its CR LF.
func (c *serialClient) line(t *testing.T) string {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(serialWait))
	l, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the console: %v (after %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		t.Errorf("line %q does not end with CR LF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// until reads lines up to the first one holding last, and returns them.
func (c *serialClient) until(t *testing.T, last string) []string {
	t.Helper()
	var lines []string
	for {
		l := c.line(t)
		lines = append(lines, l)
		if strings.Contains(l, last) {
			return lines
		}
	}
}

func TestSerialConsoleClients(t *testing.T) {
	t.Parallel()
	s := newConsole(t)
	if host, port := s.Addr(); host != "127.0.0.1" || port == 0 {
		t.Fatalf("Addr() = %s, %d", host, port)
	}
	s.Printf("before anyone listens")
	a := connect(t, s, 1)
	s.Printf("first %d", 1)
	b := connect(t, s, 2)
	s.Printf("second\n")
	_, _ = s.Write([]byte("raw\r\n"))
	for _, tc := range []struct {
		name string
		c    *serialClient
		want []string
	}{
		{"a", a, []string{"first 1", "second", "raw"}},
		{"b", b, []string{"second", "raw"}},
	} {
		var got []string
		for range tc.want {
			got = append(got, tc.c.line(t))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("client %s read %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestSerialConsoleSlowClient: a client that never reads blocks neither
// the device nor the other clients.
func TestSerialConsoleSlowClient(t *testing.T) {
	t.Parallel()
	s := newConsole(t)
	connect(t, s, 1) // never reads
	line := strings.Repeat("x", 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// 2 MB: three minutes at 115200 baud, far beyond the socket buffers.
		for range 2000 {
			s.Printf("%s", line)
		}
	}()
	select {
	case <-done:
	case <-time.After(serialWait):
		t.Fatal("Printf blocked on a client that does not read")
	}
	fresh := connect(t, s, 2)
	s.Printf("still printing")
	if l := fresh.line(t); l != "still printing" {
		t.Errorf("a new client read %q", l)
	}
}

func TestSerialConsoleKick(t *testing.T) {
	t.Parallel()
	s := newConsole(t)
	a := connect(t, s, 1)
	b := connect(t, s, 2)
	s.Kick()
	for _, c := range []*serialClient{a, b} {
		_ = c.conn.SetReadDeadline(time.Now().Add(serialWait))
		if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("read after Kick: %v, want EOF", err)
		}
	}
	waitClients(t, s, 0)
	c := connect(t, s, 1)
	s.Printf("back")
	if l := c.line(t); l != "back" {
		t.Errorf("after reconnecting: %q", l)
	}
}

func TestSerialConsoleClose(t *testing.T) {
	t.Parallel()
	s := newConsole(t)
	c := connect(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(serialWait))
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("read after Close: %v, want EOF", err)
	}
	if _, err := s.Write([]byte("x\n")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	var none *sim.SerialConsole // a device without a console
	none.Printf("nothing")
	cfg := map[string]any{}
	none.AddConfig(cfg)
	if len(cfg) != 0 || none.Close() != nil {
		t.Errorf("a nil console: config %v", cfg)
	}
}

// TestDUTConsole: a DUT prints a boot log to its console on each boot,
// and the end of a reboot or poweroff command.
func TestDUTConsole(t *testing.T) {
	t.Parallel()
	s := newConsole(t)
	d, err := sim.StartDUT(t.Context(), sim.DUTOptions{
		Name: "sim-1", BootTime: 50 * time.Millisecond, Users: map[string]string{"ubuntu": "ubuntu"},
		OSRelease: sim.UbuntuRelease("24.04", "noble"), Console: s,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if d.Console() != s {
		t.Fatal("Console() is not the console given")
	}
	c := connect(t, s, 1)
	boot := []string{"U-Boot", "Starting kernel ...", "Linux version 6.8.0", "Reached target multi-user.target", "Ubuntu 24.04 sim-1 ttyS0", "sim-1 login:"}
	for _, tc := range []struct {
		name  string
		do    func(t *testing.T)
		wants []string // substrings of lines, in order, the last ending the log
	}{
		{"power cycle", func(*testing.T) { d.PowerCycle() }, boot},
		{"reboot command", func(t *testing.T) { runOn(t, d, "sudo reboot") }, append([]string{"reboot: Restarting system"}, boot...)},
		{"poweroff command", func(t *testing.T) { runOn(t, d, "sudo poweroff") }, []string{"reboot: Power down"}},
		{"power on", func(*testing.T) { d.PowerOn() }, boot},
	} {
		tc.do(t)
		lines := c.until(t, tc.wants[len(tc.wants)-1])
		i := 0
		for _, l := range lines {
			if i < len(tc.wants) && strings.Contains(l, tc.wants[i]) {
				i++
			}
		}
		if i < len(tc.wants) {
			t.Errorf("%s: the console lacks %q, in order, in:\n%s", tc.name, tc.wants[i:], strings.Join(lines, "\n"))
		}
		if tc.name != "poweroff command" {
			waitUp(t, d)
		}
	}
}

// TestDUTConsoleNoBoot: a DUT whose boot fails says so on its console.
func TestDUTConsoleNoBoot(t *testing.T) {
	t.Parallel()
	s := newConsole(t)
	d := start(t, sim.Faults{})
	d.SetConsole(s)
	d.SetBootCheck(func() (sim.Image, bool, error) { return sim.Image{}, false, errors.New("/dev/sda: no image") })
	c := connect(t, s, 1)
	d.PowerCycle()
	lines := c.until(t, "Unable to boot")
	if got := lines[len(lines)-1]; got != "** Unable to boot: /dev/sda: no image **" {
		t.Errorf("last line %q", got)
	}
}

func runOn(t *testing.T, d *sim.DUT, line string) {
	t.Helper()
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	if _, errs, code := raw(t, c, line); code != 0 {
		t.Fatalf("%s: exit %d: %s", line, code, errs)
	}
}

func waitUp(t *testing.T, d *sim.DUT) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), serialWait)
	defer cancel()
	if err := d.WaitState(ctx, sim.Up); err != nil {
		t.Fatal(err)
	}
}

// TestLabConsoles: every simulated device has a serial console, given
// in its configuration, unless its setting serial is false; a reset
// through the noprovision device's reboot_script prints a boot log.
func TestLabConsoles(t *testing.T) {
	t.Parallel()
	for _, typ := range sim.LabTypes() {
		for _, serial := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s serial=%t", typ, serial), func(t *testing.T) {
				t.Parallel()
				settings := map[string]any{}
				if !serial {
					settings["serial"] = false
				}
				d, err := sim.StartLab(t.Context(), typ, sim.LabOptions{Name: "lab-serial", Dir: t.TempDir(), Settings: settings})
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				cfg := d.Config()
				host, _ := cfg["serial_host"].(string)
				port, _ := cfg["serial_port"].(int)
				if !serial {
					if cfg["serial_host"] != nil || cfg["serial_port"] != nil {
						t.Errorf("serial: false, yet Config() gives %v:%v", cfg["serial_host"], cfg["serial_port"])
					}
					return
				}
				if host == "" || port == 0 {
					t.Fatalf("Config() gives serial_host %v, serial_port %v", cfg["serial_host"], cfg["serial_port"])
				}
				c := dialConsole(t, host, port)
				if typ != "noprovision" {
					return
				}
				waitClients(t, d.(*dutsim.Device).DUT.Console(), 1)
				script, _ := cfg["reboot_script"].([]any)
				if len(script) != 1 {
					t.Fatalf("reboot_script %v", cfg["reboot_script"])
				}
				if out, err := exec.CommandContext(t.Context(), fmt.Sprint(script[0])).CombinedOutput(); err != nil {
					t.Fatalf("reboot_script: %v: %s", err, out)
				}
				c.until(t, "lab-serial login:")
			})
		}
	}
}

func TestLabSerialSetting(t *testing.T) {
	t.Parallel()
	for _, v := range []any{"no", 0} {
		_, err := sim.StartLab(t.Context(), "noprovision", sim.LabOptions{Name: "bad", Dir: t.TempDir(), Settings: map[string]any{"serial": v}})
		if err == nil || !strings.Contains(err.Error(), "sim.serial: must be true or false") {
			t.Errorf("serial: %v: %v", v, err)
		}
	}
	settings := map[string]any{"serial": false, "boot_time": "1s"}
	d, err := sim.StartLab(t.Context(), "noprovision", sim.LabOptions{Name: "ok", Dir: t.TempDir(), Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if len(settings) != 2 {
		t.Errorf("StartLab changed the settings given: %v", settings)
	}
}

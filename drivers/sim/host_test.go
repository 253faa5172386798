package sim_test

import (
	"bytes"
	"errors"
	"regexp"
	"testing"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func TestSplitAddr(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr, host string
		port       int
	}{
		{"127.0.0.1:2222", "127.0.0.1", 2222},
		{"[::1]:22", "::1", 22},
		{"localhost", "localhost", 0},
		{"host:ssh", "host", 0},
	} {
		if host, port := sim.SplitAddr(tc.addr); host != tc.host || port != tc.port {
			t.Errorf("SplitAddr(%q) = %q, %d; want %q, %d", tc.addr, host, port, tc.host, tc.port)
		}
	}
}

func TestNewBootID(t *testing.T) {
	t.Parallel()
	shape := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n$`)
	a, b := sim.NewBootID(), sim.NewBootID()
	if !shape.Match(a) || !shape.Match(b) || bytes.Equal(a, b) {
		t.Errorf("boot ids %q and %q: want two different UUIDs, each with a newline", a, b)
	}
}

func TestFailWritesAfter(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 100_000}
	for _, tc := range []struct {
		n    int64
		fail bool
	}{{50_000, true}, {0, false}, {-1, false}} {
		d := sim.NewDisk("/dev/sda", 0)
		d.FailAfter(10) // replaced below
		d.FailWritesAfter(tc.n)
		_, err := d.CopyTo(t.Context(), bytes.NewReader(im.Bytes()), 16<<10)
		if got := errors.Is(err, sim.ErrIO); got != tc.fail {
			t.Errorf("FailWritesAfter(%d): CopyTo = %v, want failing %t", tc.n, err, tc.fail)
		}
	}
}

func TestBuiltinTest(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	d.WriteFile("/etc/flinger/x.conf", []byte("x"))
	d.AddDisk("/dev/sda", sim.NewDisk("/dev/sda", 0))
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	for _, tc := range []struct {
		line string
		code int
	}{
		{"test -f /etc/flinger/x.conf", 0}, {"test -d /etc/flinger", 0}, {"test -d /etc/flinger/x.conf", 1},
		{"test -e /etc/none", 1}, {"test -d /tmp", 0}, {"test -b /dev/sda", 0}, {"test -f /dev/sda", 1},
		{"test -e /dev/sda", 0}, {"sudo [ -e /etc ]", 0}, {"[ -e /etc", 2}, {"test -z x", 2}, {"test -e", 2},
	} {
		if _, errs, code := runIn(t, c, tc.line, nil); code != tc.code {
			t.Errorf("%s: exit %d (%q), want %d", tc.line, code, errs, tc.code)
		}
	}
}

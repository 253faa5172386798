package sim_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"512", 512, true},
		{"4k", 4 << 10, true},
		{"4K", 4 << 10, true},
		{"16M", 16 << 20, true},
		{"1G", 1 << 30, true},
		{"0", 0, true},
		{"", 0, false},
		{"M", 0, false},
		{"-1", 0, false},
		{"1.5M", 0, false},
		{"16MB", 0, false},
		{"9999999999G", 0, false},
	} {
		got, err := sim.ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok %t", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestDDMessages(t *testing.T) {
	t.Parallel()
	if got, want := sim.DDSummary(1<<20+1, 512<<10, time.Second), "2+1 records in\n2+1 records out\n1048577 bytes copied, 1.000 s, 1.0 MB/s\n"; got != want {
		t.Errorf("DDSummary = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("writing at byte 5: %w", sim.ErrIO), "dd: error writing '/dev/sda': Input/output error"},
		{fmt.Errorf("disk full: %w", io.ErrShortWrite), "dd: error writing '/dev/sda': No space left on device"},
		{errors.New("gremlins"), "dd: error writing '/dev/sda': gremlins"},
	} {
		if got := sim.DDWriteError("/dev/sda", tc.err); got != tc.want {
			t.Errorf("DDWriteError(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestDDOpen runs dd adapted to a host whose disk only root may write,
// and which creates files.
func TestDDOpen(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	disk := sim.NewDisk("/dev/sdb", 0)
	d.AddDisk("/dev/sdb", disk)
	d.Handle("dd", sim.DD{Open: func(x *sim.Exec, path string) (*sim.Disk, error) {
		switch {
		case strings.HasPrefix(path, "/tmp/"):
			f := sim.NewDisk(path, 1000)
			x.DUT.AddDisk(path, f)
			return f, nil
		case x.DUT.Disk(path) == nil:
			return nil, fs.ErrNotExist
		case !x.Sudo:
			return nil, fmt.Errorf("opening %s: %w", path, fs.ErrPermission)
		}
		return x.DUT.Disk(path), nil
	}}.Run)
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 100_000}
	for _, tc := range []struct {
		name, line string
		stdin      []byte
		code       int
		stderr     string
	}{
		{"written", "sudo dd of=/dev/sdb bs=4M status=none", im.Bytes(), 0, ""},
		{"summary", "sudo dd of=/dev/sdb bs=64K", im.Bytes(), 0, "1+1 records in\n1+1 records out\n100000 bytes copied"},
		{"no sudo", "dd of=/dev/sdb", im.Bytes(), 1, "dd: failed to open '/dev/sdb': Permission denied"},
		{"no disk", "sudo dd of=/dev/sdz", nil, 1, "dd: failed to open '/dev/sdz': No such file or directory"},
		{"full", "dd of=/tmp/x bs=512", im.Bytes(), 1, "dd: error writing '/tmp/x': No space left on device\n1+1 records in"},
		{"block too big", "sudo dd of=/dev/sdb bs=2G", nil, 1, "dd: invalid number: '2G'"},
		{"no of", "sudo dd if=/dev/zero", nil, 1, "dd: operand 'if=/dev/zero' is not simulated"},
		{"bad operand", "sudo dd /dev/sdb", nil, 1, "dd: unrecognized operand '/dev/sdb'"},
	} {
		_, stderr, code := runIn(t, c, tc.line, tc.stdin)
		if code != tc.code || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("%s: %s: exit %d, stderr %q; want %d with %q", tc.name, tc.line, code, stderr, tc.code, tc.stderr)
		}
	}
	if _, err := sim.Bootable(disk.Last()); err != nil {
		t.Errorf("the disk does not hold the image: %v", err)
	}
}

// TestDDKilled checks that dd stops at once when its session is
// signalled, even while it waits for input.
func TestDDKilled(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	disk := sim.NewDisk("/dev/sda", 0)
	d.AddDisk("/dev/sda", disk)
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write(bytes.Repeat([]byte{1}, 4096)) }()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.RunInput(ctx, []string{"dd", "of=/dev/sda", "bs=1M"}, pr, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("dd waiting for input ended without an error")
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("dd took %s to stop", elapsed)
	}
	if w := disk.Last(); w.Complete {
		t.Errorf("a killed dd completed its write: %+v", w)
	}
}

// TestTeeCheck runs tee adapted to a host whose /sys files only root may
// write.
func TestTeeCheck(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	d.WriteFile("/sys/request", nil)
	d.Handle("tee", sim.Tee{Check: func(x *sim.Exec, p string) error {
		switch _, ok := x.DUT.ReadFile(p); {
		case !strings.HasPrefix(p, "/sys/"):
			return nil
		case !ok:
			return fs.ErrNotExist
		case !x.Sudo:
			return fs.ErrPermission
		}
		return nil
	}}.Run)
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	for _, tc := range []struct {
		line, stdout, stderr string
		code                 int
	}{
		{"tee /tmp/a", "one", "", 0},
		{"tee -a /tmp/a /tmp/b", "two", "", 0},
		{"tee /sys/request", "", "tee: /sys/request: Permission denied", 1},
		{"sudo tee /sys/none", "", "tee: /sys/none: No such file or directory", 1},
		{"sudo tee /sys/request", "5", "", 0},
		{"tee -x /tmp/a", "", `tee: invalid option "-x"`, 1},
	} {
		stdin := tc.stdout
		if stdin == "" {
			stdin = "ignored"
		}
		out, errs, code := runIn(t, c, tc.line, []byte(stdin))
		if code != tc.code || out != tc.stdout || !strings.Contains(errs, tc.stderr) {
			t.Errorf("%s: exit %d, %q, %q; want %d, %q, %q", tc.line, code, out, errs, tc.code, tc.stdout, tc.stderr)
		}
	}
	for path, want := range map[string]string{"/tmp/a": "onetwo", "/tmp/b": "two", "/sys/request": "5"} {
		if b, _ := d.ReadFile(path); string(b) != want {
			t.Errorf("%s = %q, want %q", path, b, want)
		}
	}
}

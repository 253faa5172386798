package sim_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func zstdBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	z, err := sim.Compress("zst", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func xzBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	z, err := sim.Compress("xz", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// runIn runs a raw command line with stdin.
func runIn(t *testing.T, c *sshx.Client, line string, stdin []byte) (string, string, int) {
	t.Helper()
	s, err := c.SSH().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdin, s.Stdout, s.Stderr = bytes.NewReader(stdin), &out, &errb
	err = s.Run(line)
	code := 0
	if err != nil {
		var ee *ssh.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitStatus()
		} else {
			t.Fatalf("%s: %v", line, err)
		}
	}
	return out.String(), errb.String(), code
}

func TestImageRoundTrip(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Model: "pi-24", Kind: "core", Size: 300_000, Seed: 7}
	b := im.Bytes()
	if int64(len(b)) != im.Size {
		t.Fatalf("len = %d, want %d", len(b), im.Size)
	}
	got, err := sim.ParseImage(b)
	if err != nil || got != im {
		t.Fatalf("ParseImage = %+v, %v; want %+v", got, err, im)
	}
	if !bytes.Equal(b, im.Bytes()) {
		t.Error("the image's bytes are not deterministic")
	}
	other := im
	other.Seed = 8
	if bytes.Equal(b[sim.ImageHeaderSize:], other.Bytes()[sim.ImageHeaderSize:]) {
		t.Error("two seeds give the same payload")
	}
	// Realistic compression: neither all zeros nor incompressible.
	z := zstdBytes(t, b)
	if ratio := float64(len(b)) / float64(len(z)); ratio < 1.5 || ratio > 20 {
		t.Errorf("zstd ratio %.1f, want between 1.5 and 20", ratio)
	}
	if _, err := sim.ParseImage(make([]byte, 5000)); !errors.Is(err, sim.ErrNoImage) {
		t.Errorf("ParseImage(zeros) = %v, want ErrNoImage", err)
	}
}

func TestDiskFaults(t *testing.T) {
	t.Parallel()
	im := sim.Image{OSRelease: "ID=ubuntu\n", Size: 100_000}
	for _, tc := range []struct {
		name      string
		setup     func(*sim.Disk)
		data      []byte
		bootable  bool
		wantError bool
	}{
		{"complete", func(*sim.Disk) {}, im.Bytes(), true, false},
		{"truncated", func(*sim.Disk) {}, im.Bytes()[:60_000], false, false},
		{"not an image", func(*sim.Disk) {}, bytes.Repeat([]byte{1}, 100_000), false, false},
		{"fails half way", func(d *sim.Disk) { d.FailAfter(50_000) }, im.Bytes(), false, true},
		{"too small", func(d *sim.Disk) {}, append(im.Bytes(), 0), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := sim.NewDisk("/dev/sda", 0)
			tc.setup(d)
			n, err := d.CopyTo(t.Context(), bytes.NewReader(tc.data), 16<<10)
			if (err != nil) != tc.wantError {
				t.Fatalf("CopyTo = %d, %v", n, err)
			}
			if tc.wantError && !errors.Is(err, sim.ErrIO) {
				t.Errorf("CopyTo error %v, want ErrIO", err)
			}
			_, err = sim.Bootable(d.Last())
			if (err == nil) != tc.bootable {
				t.Errorf("Bootable = %v, want bootable %v", err, tc.bootable)
			}
		})
	}
}

func TestDDPipelineBootsTheImage(t *testing.T) {
	t.Parallel()
	disk := sim.NewDisk("/dev/mmcblk0", 0)
	d, err := sim.StartDUT(t.Context(), sim.DUTOptions{
		Name: "pi", BootTime: 100 * time.Millisecond, Users: map[string]string{"ubuntu": "ubuntu"},
		OSRelease: sim.UbuntuRelease("22.04", "jammy"),
		Disks:     map[string]*sim.Disk{"/dev/mmcblk0": disk},
		BootCheck: sim.BootFromDisk(disk),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Model: "ubuntu-core-24-pi", Size: 1 << 20, Seed: 3}
	raw := im.Bytes()
	for _, tc := range []struct {
		line string
		in   []byte
	}{
		{"sudo dd of=/dev/mmcblk0 bs=16M", raw},
		{"zstdcat | sudo dd of=/dev/mmcblk0 bs=16M status=none", zstdBytes(t, raw)},
		{"bash -o pipefail -c 'xz -dc | dd of=/dev/mmcblk0 bs=4M'", xzBytes(t, raw)},
		{"sh -c 'cat | zstd -d -c -q | dd of=/dev/mmcblk0'", zstdBytes(t, raw)},
	} {
		_, errs, code := runIn(t, c, tc.line, tc.in)
		if code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", tc.line, code, errs)
		}
		if last := disk.Last(); last.SHA256 != im.SHA256() || !last.Complete {
			t.Fatalf("%s: disk holds %d bytes, sha %s complete %v; want the image", tc.line, last.Bytes, last.SHA256, last.Complete)
		}
	}
	// A corrupt stream fails the pipeline with pipefail, and the disk
	// does not boot.
	bad := zstdBytes(t, raw)
	bad = bad[:len(bad)/2]
	_, errs, code := runIn(t, c, "bash -o pipefail -c 'zstdcat | dd of=/dev/mmcblk0 bs=1M'", bad)
	if code == 0 || !strings.Contains(errs, "zstdcat") {
		t.Fatalf("truncated zstd: exit %d, stderr %q", code, errs)
	}
	if _, err := sim.Bootable(disk.Last()); err == nil {
		t.Fatal("a truncated write is bootable")
	}
	if _, _, code := runIn(t, c, "reboot", nil); code != 0 {
		t.Fatalf("reboot: exit %d", code)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := d.WaitState(ctx, sim.Booting); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := d.WaitState(ctx, sim.Up); err == nil {
		t.Fatal("the DUT came up from a truncated image")
	}
	// Written in full, it boots and reports the new image.
	if _, err := disk.CopyTo(t.Context(), bytes.NewReader(raw), 0); err != nil {
		t.Fatal(err)
	}
	d.PowerCycle()
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := d.WaitState(ctx, sim.Up); err != nil {
		t.Fatal(err)
	}
	c = mustDial(t, d, sshx.TOFU(t.TempDir()))
	out, _, _ := runIn(t, c, "cat /etc/os-release", nil)
	if !strings.Contains(out, "24.04") {
		t.Errorf("os-release after boot = %q, want the image's", out)
	}
}

func TestHandleAndFiles(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	d.Handle("stm", func(ctx context.Context, x *sim.Exec) int {
		if len(x.Args) != 2 || x.Args[1] != "-ts" {
			return x.Errorf(1, "bad arguments %q", x.Args[1:])
		}
		io.WriteString(x.Stdout, "switched\n")
		return 0
	})
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	if out, errs, code := runIn(t, c, "sudo stm -ts", nil); code != 0 || out != "switched\n" {
		t.Errorf("stm -ts: %q %q %d", out, errs, code)
	}
	if _, errs, code := runIn(t, c, "stm -x", nil); code != 1 || !strings.Contains(errs, "stm: bad arguments") {
		t.Errorf("stm -x: %q %d", errs, code)
	}
	if _, _, code := runIn(t, c, "sudo tee /etc/cloud/seed", []byte("hello")); code != 0 {
		t.Fatalf("tee exit %d", code)
	}
	if b, ok := d.ReadFile("/etc/cloud/seed"); !ok || string(b) != "hello" {
		t.Errorf("file = %q, %v", b, ok)
	}
	if out, _, code := runIn(t, c, "cat /etc/cloud/seed", nil); code != 0 || out != "hello" {
		t.Errorf("cat = %q, %d", out, code)
	}
	for _, line := range []string{"true; touch /tmp/x", "a || b", "echo | ", "echo $(id)", "cat > f"} {
		if _, _, code := runIn(t, c, line, nil); code != 2 {
			t.Errorf("%q: exit %d, want 2 (syntax refused)", line, code)
		}
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line string
		want [][]string
		err  bool
	}{
		{"a b", [][]string{{"a", "b"}}, false},
		{"a | b 'c|d'", [][]string{{"a"}, {"b", "c|d"}}, false},
		{"a|b|c", [][]string{{"a"}, {"b"}, {"c"}}, false},
		{"| a", nil, true},
		{"a |", nil, true},
		{"a || b", nil, true},
		{"", nil, false},
	} {
		got, err := sim.Parse(tc.line)
		if (err != nil) != tc.err || !equalStages(got, tc.want) {
			t.Errorf("Parse(%q) = %q, %v; want %q (error %v)", tc.line, got, err, tc.want, tc.err)
		}
	}
}

func equalStages(a, b [][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if strings.Join(a[i], "\x00") != strings.Join(b[i], "\x00") {
			return false
		}
	}
	return true
}

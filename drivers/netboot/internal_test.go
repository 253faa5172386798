package netboot

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/drivertest"
)

// TestOneShotRefusesOtherAddresses checks that the image server closes a
// connection from an address other than the device's, keeps waiting, serves
// the device's connection, and then accepts no other.
func TestOneShotRefusesOtherAddresses(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	device := netip.MustParseAddr("127.0.0.2")
	var out drivertest.Output
	payload := []byte("the image")
	srv := serveOnce(t.Context(), ln, []netip.Addr{device}, func(_ context.Context, w io.Writer) sent {
		n, err := w.Write(payload)
		return sent{bytes: int64(n), raw: -1, err: err}
	}, &out, slog.New(slog.DiscardHandler))
	defer srv.close()
	addr := srv.Addr().String()

	// From 127.0.0.1, which is not the device: closed without a byte.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	_ = c.Close()
	if len(got) != 0 || err != nil {
		t.Errorf("a connection from another address read %q (%v), want nothing", got, err)
	}
	if !strings.Contains(out.String(), "Refused a connection to the image server from 127.0.0.1:") {
		t.Errorf("the refusal was not reported:\n%s", out.String())
	}

	// From the device's address: served.
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(device.String())}}
	c, err = d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatalf("the device could not connect: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err = io.ReadAll(c)
	_ = c.Close()
	if !bytes.Equal(got, payload) || err != nil {
		t.Errorf("the device read %q (%v), want %q", got, err, payload)
	}
	res := srv.wait(10 * time.Second)
	if !res.connected || res.bytes != int64(len(payload)) || !strings.HasPrefix(res.from, "127.0.0.2:") || res.err != nil {
		t.Errorf("served %+v", res)
	}

	// One shot: nothing listens any more.
	if c, err := d.DialContext(t.Context(), "tcp", addr); err == nil {
		_ = c.Close()
		t.Error("the image server still accepts connections after serving one")
	}
}

// TestOneShotClosedWhenCancelled checks that cancelling stops a server no
// device connected to.
func TestOneShotClosedWhenCancelled(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	srv := serveOnce(ctx, ln, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, func(context.Context, io.Writer) sent {
		t.Error("served without a connection")
		return sent{}
	}, io.Discard, slog.New(slog.DiscardHandler))
	cancel()
	res := srv.wait(0)
	if res.connected || !errors.Is(res.err, context.Canceled) {
		t.Errorf("after cancel: %+v, want no connection and context.Canceled", res)
	}
	if c, err := net.DialTimeout("tcp", srv.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Error("the listener is still open")
	}
}

func TestWriteImagePath(t *testing.T) {
	for _, tc := range []struct{ server, dev, want string }{
		{"10.0.0.5:41234", "/dev/mmcblk0", "/writeimage?server=10.0.0.5:41234&dev=/dev/mmcblk0"},
		{"[fd00::1]:80", "/dev/disk/by-id/usb-X_1.0-0:0", "/writeimage?server=%5Bfd00::1%5D:80&dev=/dev/disk/by-id/usb-X_1.0-0:0"},
		{"10.0.0.5:1", "/dev/sda&reboot=1 #x", "/writeimage?server=10.0.0.5:1&dev=/dev/sda%26reboot%3D1%20%23x"},
	} {
		if got := writeImagePath(tc.server, tc.dev); got != tc.want {
			t.Errorf("writeImagePath(%q, %q) = %q, want %q", tc.server, tc.dev, got, tc.want)
		}
	}
}

func TestImagerAnswers(t *testing.T) {
	for _, tc := range []struct {
		body    string
		failure string // the line reported as a failure, if any
		copied  int64  // -1: no summary
	}{
		{"0+1 records in\n0+1 records out\n524288 bytes copied, 0.012 s, 43.7 MB/s\n", "", 524288},
		{"2147483648 bytes (2.1 GB, 2.0 GiB) copied, 20.1 s, 107 MB/s\n", "", 2147483648},
		{"unxz: (stdin): Unexpected end of input\n12 bytes copied, 1 s, 0 MB/s\n", "unxz: (stdin): Unexpected end of input", 12},
		{"dd: error writing '/dev/sda': No space left on device\n", "dd: error writing '/dev/sda': No space left on device", -1},
		{"nc: connect to 10.0.0.1 port 4000 (tcp) failed: Connection refused\n", "nc: connect to 10.0.0.1 port 4000 (tcp) failed: Connection refused", -1},
		{"<html><body>Image written</body></html>", "", -1},
	} {
		line, bad := reportsFailure(tc.body)
		if bad != (tc.failure != "") || line != tc.failure {
			t.Errorf("reportsFailure(%q) = %q, %v; want %q", tc.body, line, bad, tc.failure)
		}
		n, ok := copiedBytes(tc.body)
		if ok != (tc.copied >= 0) || (ok && n != tc.copied) {
			t.Errorf("copiedBytes(%q) = %d, %v; want %d", tc.body, n, ok, tc.copied)
		}
	}
}

// TestCompressDoesNotEndAFailedStream checks that an image that fails half
// way never reaches the imager as a complete xz stream.
func TestCompressDoesNotEndAFailedStream(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	boom := errors.New("download failed")
	n, err := compress(&buf, func(dst io.Writer) error {
		if _, err := dst.Write(bytes.Repeat([]byte("x"), 1<<16)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) || n != 1<<16 {
		t.Fatalf("compress = %d, %v; want %d, %v", n, err, 1<<16, boom)
	}
	// The xz footer ends with "YZ"; a stream that was not ended lacks it.
	if bytes.HasSuffix(buf.Bytes(), []byte("YZ")) {
		t.Error("a failed image was sent as a complete xz stream")
	}

	buf.Reset()
	if _, err := compress(&buf, func(dst io.Writer) error {
		_, err := dst.Write([]byte("QFI\xfb\x00\x00\x00\x03"))
		return err
	}); !errors.Is(err, errQcow2) {
		t.Errorf("compress of a qcow2 image = %v, want errQcow2", err)
	}
}

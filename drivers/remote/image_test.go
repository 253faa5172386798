package remote_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sim"
)

func TestWriteImage(t *testing.T) {
	t.Parallel()
	img := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 256 << 10, Seed: 7}
	raw := img.Bytes()
	corrupt := drivertest.Compress(t, "zst", raw)
	srv := drivertest.StartImageServer(t, map[string][]byte{
		"/noble.img.zst":   drivertest.Compress(t, "zst", raw),
		"/noble.img":       raw,
		"/corrupt.img.zst": corrupt[:len(corrupt)/2],
	})
	for _, tc := range []struct {
		name    string
		path    string
		setup   func(r *rig, disk *sim.Disk)
		timeout time.Duration
		check   func(err error) bool
		errText string
		written bool // the disk holds the image
	}{
		{name: "writes", path: "/noble.img.zst", written: true},
		{name: "404", path: "/missing.img.zst", check: provisioning, errText: "404"},
		{name: "corrupt", path: "/corrupt.img.zst", check: provisioning},
		{name: "dd fails half way", path: "/noble.img.zst", setup: func(_ *rig, d *sim.Disk) { d.FailAfter(64 << 10) },
			check: func(err error) bool {
				var we *flash.WriteError
				return provisioning(err) && errors.As(err, &we)
			}},
		{name: "too slow", path: "/slow/noble.img", timeout: 100 * time.Millisecond, check: provisioning,
			errText: "writing the image to /dev/sda did not finish within 100ms (write_timeout)"},
		{name: "unreachable", path: "/noble.img.zst", setup: func(r *rig, _ *sim.Disk) { r.dut.PowerOff() },
			check: remote.IsUnreachable, errText: "cannot reach the test host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, ok)
			disk := sim.NewDisk("/dev/sda", 0)
			r.dut.AddDisk("/dev/sda", disk)
			if tc.setup != nil {
				tc.setup(r, disk)
			}
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 20 * time.Second
			}
			var out drivertest.Output
			_, err := r.host.WriteImage(t.Context(), remote.ImageWrite{
				Source:  image.Source{URL: srv.URL + tc.path},
				Flash:   flash.Options{Device: "/dev/sda", Sudo: true, Out: &out},
				Timeout: timeout, TimeoutKey: "write_timeout",
			})
			if tc.check == nil {
				if err != nil {
					t.Fatalf("WriteImage: %v\n%s", err, out.String())
				}
			} else if err == nil || !tc.check(err) || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("WriteImage = %v, want another error, with %q", err, tc.errText)
			}
			last := disk.Last()
			if got := last.Complete && last.SHA256 == img.SHA256(); got != tc.written {
				t.Errorf("the disk holds the image: %v, want %v (%+v)", got, tc.written, last)
			}
			if tc.written && (!strings.Contains(out.String(), "Writing "+srv.URL+tc.path+" to /dev/sda on the test host") || !strings.Contains(out.String(), "Wrote 256.0 KiB (zstd")) {
				t.Errorf("output:\n%s", out.String())
			}
		})
	}
}

// TestWriteImageCancelled checks that a cancelled write returns promptly
// with an error wrapping the context's, not a provisioning failure.
func TestWriteImageCancelled(t *testing.T) {
	t.Parallel()
	img := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Size: 1 << 20, Seed: 8}
	srv := drivertest.StartImageServer(t, map[string][]byte{"/big.img": img.Bytes()})
	r := newRig(t, ok)
	r.dut.AddDisk("/dev/sda", sim.NewDisk("/dev/sda", 0))
	ctx, cancel := context.WithCancel(t.Context())
	var out drivertest.Output
	done := make(chan error, 1)
	go func() {
		_, err := r.host.WriteImage(ctx, remote.ImageWrite{
			Source:  image.Source{URL: srv.URL + "/slow/big.img"},
			Flash:   flash.Options{Device: "/dev/sda", Sudo: true, Out: &out},
			Timeout: time.Minute, TimeoutKey: "write_timeout",
		})
		done <- err
	}()
	if !out.WaitFor("Writing ", 10*time.Second) {
		t.Fatal("the write did not start")
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || provisioning(err) {
			t.Errorf("WriteImage = %v, want an error wrapping context.Canceled", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("WriteImage returned %s after the cancellation", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WriteImage did not return after the cancellation")
	}
}

func provisioning(err error) bool {
	var pe *drivers.ProvisioningError
	return errors.As(err, &pe)
}

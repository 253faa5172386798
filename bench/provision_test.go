package bench

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers/flash"
)

// needBinaries skips the test when the OpenSSH or zstd programs are
// missing, unless CI is set: then it fails, since CI installs them.
func needBinaries(t *testing.T) {
	t.Helper()
	if err := requirePrograms(provisionPrograms); err != nil {
		if os.Getenv("CI") == "" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
}

// TestMissingProgramNamesItsPackage checks that a missing program fails
// with the Debian package to install, rather than being skipped.
func TestMissingProgramNamesItsPackage(t *testing.T) {
	t.Parallel()
	err := requirePrograms([]program{
		{"sh", "dash"},
		{"flinger-no-such-program", "flinger-test-pkg"},
		{"/nonexistent/flinger-sshd", "flinger-server-pkg"},
	})
	if err == nil {
		t.Fatal("no error for missing programs")
	}
	for _, want := range []string{"flinger-no-such-program (Debian package flinger-test-pkg)", "/nonexistent/flinger-sshd (Debian package flinger-server-pkg)",
		"make test-deps", "apt-get install flinger-test-pkg flinger-server-pkg"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "dash") {
		t.Errorf("error %q names a program that is there", err)
	}
}

// TestProvisionPathsWriteTheImage writes a small image by every path the
// provision figure times and checks that what reached the target is the
// image, byte for byte (its sha256, computed here from the simulated
// image rather than taken from the rig).
func TestProvisionPathsWriteTheImage(t *testing.T) {
	t.Parallel()
	needBinaries(t)
	ctx := t.Context()
	rig, err := newProvisionRig(ctx, filepath.Join(t.TempDir(), "provision"), 3<<20+12345, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer rig.close()
	want := rig.image.SHA256()
	if rig.sha != want {
		t.Fatalf("the rig's image has sha256 %s, the simulated image %s", rig.sha, want)
	}
	for _, tc := range []struct {
		name string
		run  func() (pathRun, error)
		// remote, when set, says whether flash must have decompressed the
		// image on the far side.
		remote *bool
	}{
		{"Testflinger's way", func() (pathRun, error) { return rig.testflingerWay(ctx) }, nil},
		{"Flinger into OpenSSH, local", func() (pathRun, error) { return rig.flingerOpenSSH(ctx, flash.Local) }, new(false)},
		{"Flinger into OpenSSH, remote", func() (pathRun, error) { return rig.flingerOpenSSH(ctx, flash.Remote) }, new(true)},
		{"Flinger into a simulated control host", func() (pathRun, error) { return rig.flingerSim(ctx) }, nil},
	} {
		run, err := tc.run()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if run.written.bytes != rig.size || run.written.sha256 != want {
			t.Errorf("%s wrote %d bytes with sha256 %s, want %d bytes with sha256 %s", tc.name, run.written.bytes, run.written.sha256, rig.size, want)
		}
		if tc.remote != nil && run.remote != *tc.remote {
			t.Errorf("%s: decompressed remotely = %v, want %v", tc.name, run.remote, *tc.remote)
		}
		if run.elapsed <= 0 || run.cpu <= 0 {
			t.Errorf("%s: elapsed %v, CPU %v s: want both measured", tc.name, run.elapsed, run.cpu)
		}
	}
	ceiling, err := rig.rawCeiling(ctx)
	if err != nil {
		t.Fatalf("ceiling: %v", err)
	}
	if ceiling.written.bytes != rig.size {
		t.Errorf("ceiling sent %d bytes, want %d", ceiling.written.bytes, rig.size)
	}
	const hosts = 4
	before := rig.srv.requests.Load()
	fan, err := rig.fanOut(ctx, hosts)
	if err != nil {
		t.Fatalf("fan-out: %v", err)
	}
	if fan.requests != 1 || rig.srv.requests.Load()-before != 1 {
		t.Errorf("%d hosts sharing a cache made %d requests for the image, want 1", hosts, fan.requests)
	}
	if len(fan.written) != hosts {
		t.Fatalf("fan-out reported %d writes, want %d", len(fan.written), hosts)
	}
	for i, w := range fan.written {
		if w.bytes != rig.size || w.sha256 != want {
			t.Errorf("control host %d holds %d bytes with sha256 %s, want %d bytes with sha256 %s", i, w.bytes, w.sha256, rig.size, want)
		}
	}
}

// TestProvisionFigure runs the whole figure on a few MiB and checks its
// rows: every one measured, the shared cache fetching the image once.
func TestProvisionFigure(t *testing.T) {
	t.Parallel()
	needBinaries(t)
	dir := t.TempDir()
	env := &Env{Short: true, Trials: 1, Dir: dir, Log: slog.New(slog.DiscardHandler)}
	res, err := provisionFigure(t.Context(), env, provisionParams{size: 2 << 20, devices: 3, trials: 2, profiles: filepath.Join(dir, "profiles")})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) != 11 {
		t.Errorf("%d rows, want 11", len(res.Rows))
	}
	for _, r := range res.Rows {
		if len(r.Trials) != 2 || r.Value.Value <= 0 {
			t.Errorf("row %q: value %v from trials %v", r.Name, r.Value.Value, r.Trials)
		}
		if strings.HasPrefix(r.Name, "Flinger into OpenSSH, auto") && (r.Ratio == nil || r.Met == nil) {
			t.Errorf("row %q has no ratio or target check", r.Name)
		}
		if strings.Contains(r.Name, "HTTP requests") && (r.Met == nil || !*r.Met) {
			t.Errorf("row %q: %v requests for the image, want 1", r.Name, r.Value.Value)
		}
	}
	var profiles int
	for _, n := range res.Notes {
		if strings.HasPrefix(n, "CPU profile of") {
			profiles++
			if strings.Contains(n, "pprof failed") {
				t.Errorf("profile note: %s", n)
			}
		}
	}
	if profiles != 2 {
		t.Errorf("%d CPU profiles in the notes, want 2", profiles)
	}
	if _, err := os.Stat(filepath.Join(dir, "provision")); !os.IsNotExist(err) {
		t.Errorf("the figure left its scratch directory behind (%v)", err)
	}
}

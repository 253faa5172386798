package oemscript_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/oemscript"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/oemsim"
	"github.com/flingerlab/flinger/events"
)

// theISO is the ISO the jobs install.
var theISO = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "iso", Size: 3 << 20, Seed: 24}

// factory is what the laptops' recovery partitions hold at first.
var factory = sim.Image{OSRelease: sim.UbuntuRelease("22.04", "jammy"), Size: 1 << 20, Seed: 22}

// fast are device keys scaled to the simulator.
func fast() events.Data {
	return events.Data{
		"boot_check_interval": "50ms", "recovery_poll_interval": "50ms", "boot_timeout": "5s",
		"recovery_timeout": "8s", "shutdown_timeout": "5s", "reboot_script_timeout": "5s",
	}
}

// recoveryOf returns the recovery of the laptops of connector type typ.
func recoveryOf(typ string) oemsim.Recovery {
	if v, _ := oemscript.VendorOf(typ); v.UbuntuRecovery {
		return oemsim.UbuntuRecovery
	}
	return oemsim.DellRecovery
}

// bench is a simulated laptop and the configuration of a device reaching it.
type bench struct {
	rig *oemsim.Rig
	cfg *drivers.DeviceConfig
	key ssh.PublicKey
}

// start starts a laptop with recovery rec and faults f, and returns it
// with the configuration of a device of type typ (the keys of fast, then
// raw) reaching it: TOFU host keys, a key file it accepts.
func start(t *testing.T, typ string, rec oemsim.Recovery, f oemsim.Faults, raw events.Data, mods ...func(*oemsim.Options)) *bench {
	t.Helper()
	keyFile, pub, err := oemsim.NewKeyFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts := oemsim.Options{
		Name: "oem-" + typ, Dir: t.TempDir(), Recovery: rec, Factory: factory, Label: "OS",
		BootTime: 100 * time.Millisecond, ReinstallTime: 300 * time.Millisecond, OEMConfigTime: 200 * time.Millisecond,
		AuthorizedKeys: []ssh.PublicKey{pub}, Faults: f,
	}
	for _, m := range mods {
		m(&opts)
	}
	rig, err := oemsim.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rig.Close)
	keys := fast()
	for k, v := range raw {
		keys[k] = v
	}
	cfg := &drivers.DeviceConfig{
		Name: "oem-" + typ, Type: typ, Queues: []string{"oem"},
		DeviceIP: "127.0.0.1", SSHPort: rig.Port(), RebootScript: []string{rig.RebootScript()}, Raw: keys,
		SSH: &drivers.SSHSettings{HostKeys: drivers.HostKeysTOFU, HostKeyDir: t.TempDir(), KeyFile: keyFile},
	}
	return &bench{rig: rig, cfg: cfg, key: pub}
}

// isoServer serves the ISO raw (/noble.iso, /pc-stella-noble.iso),
// compressed (/noble.iso.zst), damaged (/corrupt.iso.zst), not an ISO
// (/notiso.iso), slowly (/slow.iso), and nothing else (404).
func isoServer(t *testing.T) *httptest.Server {
	t.Helper()
	raw := theISO.Bytes()
	var z bytes.Buffer
	zw, err := zstd.NewWriter(&z)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = zw.Write(raw)
	_ = zw.Close()
	compressed := z.Bytes()
	corrupt := bytes.Clone(compressed)
	for i := len(corrupt) / 2; i < len(corrupt)/2+64; i++ {
		corrupt[i] ^= 0x5a
	}
	notISO := []byte("<html><body>Welcome to nginx!</body></html>\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body []byte
		switch r.URL.Path {
		case "/noble.iso", "/pc-stella-noble.iso":
			body = raw
		case "/noble.iso.zst":
			body = compressed
		case "/corrupt.iso.zst":
			body = corrupt
		case "/notiso.iso":
			body = notISO
		case "/slow.iso":
			w.Header().Set("Content-Length", "3145728")
			for off := 0; off < len(raw); off += 32 << 10 {
				if _, err := w.Write(raw[off:min(off+32<<10, len(raw))]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
			return
		default:
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "iso", time.Unix(0, 0), bytes.NewReader(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// jobFor returns a job installing the ISO at path of srv.
func jobFor(srv *httptest.Server, path string, extra events.Data) func(*drivers.DeviceConfig) *events.Job {
	return func(*drivers.DeviceConfig) *events.Job {
		pd := events.Data{"url": srv.URL + path}
		for k, v := range extra {
			pd[k] = v
		}
		return &events.Job{JobID: "job-oem", JobQueue: "oem", ProvisionData: pd, TestData: &events.TestData{}}
	}
}

var types = []string{oemscript.Type, oemscript.TypeDell, oemscript.TypeHP, oemscript.TypeLenovo}

func TestConformance(t *testing.T) {
	for _, typ := range types {
		t.Run(typ, func(t *testing.T) {
			drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
				b := start(t, typ, recoveryOf(typ), oemsim.Faults{}, nil)
				d, err := drivers.New(b.cfg)
				if err != nil {
					t.Fatal(err)
				}
				return d, b.cfg
			})
		})
	}
}

// untouched checks that the recovery partition still holds the factory
// image, that no recovery was started and that the laptop is up.
func untouched(t *testing.T, rig *oemsim.Rig, _ string) {
	if w := rig.RecoveryDisk().Writes(); w != 1 {
		t.Errorf("the recovery partition was written %d times after the factory image", w-1)
	}
	if b := rig.RecoveryBoots(); len(b) > 0 {
		t.Errorf("a recovery was started: %+v", b)
	}
	if s := rig.DUT().State(); s != sim.Up {
		t.Errorf("the laptop is %s, want up with its old system", s)
	}
}

func TestScenarios(t *testing.T) {
	srv := isoServer(t)
	// rigs maps each scenario run's device to its laptop, for the checks.
	var rigs drivertest.Rigs[*oemsim.Rig]
	setup := func(typ string, rec oemsim.Recovery, f oemsim.Faults, raw events.Data, prep func(*bench)) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig {
			b := start(t, typ, rec, f, raw)
			if prep != nil {
				prep(b)
			}
			rigs.Add(t, b.cfg, b.rig)
			return b.cfg
		}
	}
	check := func(f func(t *testing.T, rig *oemsim.Rig, output string)) func(t *testing.T, cfg *drivers.DeviceConfig, output string, _ error) {
		return func(t *testing.T, cfg *drivers.DeviceConfig, output string, _ error) {
			f(t, rigs.Of(t, cfg), output)
		}
	}
	isoUntouched := check(untouched)
	installed := func(via, label string, ubr bool) func(t *testing.T, rig *oemsim.Rig, output string) {
		return func(t *testing.T, rig *oemsim.Rig, output string) {
			if got, want := rig.RecoveryDisk().Last().SHA256, theISO.SHA256(); got != want {
				t.Errorf("recovery partition sha256 %s, want the ISO's %s", got, want)
			}
			boots := rig.RecoveryBoots()
			if len(boots) != 1 || boots[0].Via != via || boots[0].Label != label {
				t.Fatalf("recovery boots %+v, want one via %s with label %s", boots, via, label)
			}
			hasCfg := slices.Contains(boots[0].Preseed, "/cdrom/preseed/ubuntu-recovery.cfg")
			if hasCfg != ubr {
				t.Errorf("ubuntu-recovery.cfg written: %v, want %v (preseed %q)", hasCfg, ubr, boots[0].Preseed)
			}
			if rig.Reinstalls() != 1 || rig.OSRelease() != theISO.OSRelease {
				t.Errorf("%d reinstalls, system %q; want the ISO's", rig.Reinstalls(), rig.OSRelease())
			}
			if len(rig.InjectedKeys()) != 1 {
				t.Errorf("keys injected into the reinstalled system: %q, want the lab host's", rig.InjectedKeys())
			}
			if !rig.UbiquityPurged() {
				t.Error("ubiquity was not purged")
			}
			if !strings.Contains(output, "The device is back with Ubuntu 24.04") {
				t.Errorf("output does not report the new system:\n%s", output)
			}
		}
	}
	dell, ubuntu := oemsim.DellRecovery, oemsim.UbuntuRecovery
	none := oemsim.Faults{}
	var scenarios []drivertest.Scenario
	for _, typ := range types {
		v, _ := oemscript.VendorOf(typ)
		via, label := oemsim.ViaDell, "OS"
		if v.UbuntuRecovery {
			via, label = oemsim.ViaGRUB, "PQSERVICE"
		}
		scenarios = append(scenarios, drivertest.Scenario{
			Name: typ + " installs", Setup: setup(typ, recoveryOf(typ), none, nil, nil),
			Job: jobFor(srv, "/noble.iso.zst", nil), Want: drivertest.Succeeds,
			Check: check(installed(via, label, v.UbuntuRecovery)),
		})
	}
	scenarios = append(scenarios, []drivertest.Scenario{
		{Name: "ubuntu-recovery chosen by the ISO's name", Setup: setup(oemscript.Type, ubuntu, none, nil, nil),
			Job: jobFor(srv, "/pc-stella-noble.iso", nil), Want: drivertest.Succeeds,
			Check: check(installed(oemsim.ViaGRUB, "PQSERVICE", true))},
		{Name: "dell on an ubuntu-recovery laptop", Setup: setup(oemscript.TypeDell, ubuntu, none, nil, nil),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.ProvisioningFails, Output: "dell-restore-system"},
		{Name: "404", Setup: setup(oemscript.TypeHP, ubuntu, none, nil, nil),
			Job: jobFor(srv, "/missing.iso", nil), Want: drivertest.ProvisioningFails, Output: "404", Check: isoUntouched},
		{Name: "corrupt ISO", Setup: setup(oemscript.TypeDell, dell, none, nil, nil),
			Job: jobFor(srv, "/corrupt.iso.zst", nil), Want: drivertest.ProvisioningFails, Output: "corrupt", Check: isoUntouched},
		{Name: "checksum mismatch", Setup: setup(oemscript.TypeLenovo, ubuntu, none, nil, nil),
			Job: jobFor(srv, "/noble.iso", events.Data{"sha256": strings.Repeat("0", 64)}), Want: drivertest.ProvisioningFails, Output: "sha256", Check: isoUntouched},
		{Name: "not an ISO", Setup: setup(oemscript.Type, dell, none, nil, nil),
			Job: jobFor(srv, "/notiso.iso", nil), Want: drivertest.ProvisioningFails, Output: "cannot mount the image as an ISO", Check: isoUntouched},
		{Name: "write fails half way", Setup: setup(oemscript.TypeHP, ubuntu, oemsim.Faults{WriteFailsAfter: 1 << 20}, nil, nil),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.ProvisioningFails, Output: "recovery partition is incomplete",
			Check: check(func(t *testing.T, rig *oemsim.Rig, _ string) {
				if w := rig.RecoveryDisk().Last(); w.Complete || w.Bytes != 1<<20 {
					t.Errorf("recovery partition write %+v, want one that failed at 1 MiB", w)
				}
				if len(rig.RecoveryBoots()) > 0 || rig.DUT().State() != sim.Up {
					t.Errorf("a recovery started (%+v) or the laptop is %s", rig.RecoveryBoots(), rig.DUT().State())
				}
			})},
		{Name: "recovery never finishes", Setup: setup(oemscript.TypeDell, dell, oemsim.Faults{RecoveryNeverFinishes: true}, events.Data{"recovery_timeout": "1500ms"}, nil),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.RecoveryFails, Output: "did not come back from its recovery"},
		{Name: "wrong image", Setup: setup(oemscript.TypeDell, dell, oemsim.Faults{WrongImage: true}, nil, nil),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.ProvisioningFails, Output: "not the ISO's system"},
		{Name: "unreachable, reboot_script brings it back", Setup: setup(oemscript.TypeLenovo, ubuntu, none, nil, func(b *bench) { b.rig.PowerOff() }),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.Succeeds, Output: "Running reboot_script[0]",
			Check: check(func(t *testing.T, rig *oemsim.Rig, _ string) {
				if rig.Switch().Calls("oem-lenovo_oemscript-power-cycle") != 1 || rig.Reinstalls() != 1 {
					t.Errorf("power cycles %d, reinstalls %d; want 1 and 1", rig.Switch().Calls("oem-lenovo_oemscript-power-cycle"), rig.Reinstalls())
				}
			})},
		{Name: "never boots", Setup: setup(oemscript.TypeDell, dell, oemsim.Faults{NeverBoots: true}, events.Data{"boot_timeout": "1s"}, func(b *bench) { b.rig.PowerOff() }),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.RecoveryFails, Output: "did not answer ssh"},
		{Name: "reboot_script fails", Setup: setup(oemscript.TypeHP, ubuntu, none, nil, func(b *bench) {
			b.rig.PowerOff()
			script, err := b.rig.Switch().Script("broken-pdu", func() error { return errors.New("PDU outlet 3 does not answer") })
			if err != nil {
				panic(err)
			}
			b.cfg.RebootScript = []string{script}
		}), Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.RecoveryFails, Output: "PDU outlet 3 does not answer"},
		{Name: "host key changes outside a reinstall", Setup: setup(oemscript.TypeDell, dell, oemsim.Faults{HostKeyChangesOnBoot: true}, nil, nil),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.ProvisioningFails, Output: "refusing its host key",
			Check: check(func(t *testing.T, rig *oemsim.Rig, _ string) {
				if rig.RecoveryDisk().Writes() != 1 {
					t.Error("the recovery partition was written after the host key changed")
				}
			})},
		{Name: "link drops", Setup: setup(oemscript.TypeDell, dell, oemsim.Faults{DropAfter: 150 * time.Millisecond}, nil, nil),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.ProvisioningFails},
		{Name: "slow link", Setup: setup(oemscript.TypeHP, ubuntu, oemsim.Faults{SlowLink: time.Millisecond}, nil, nil),
			Job: jobFor(srv, "/noble.iso", nil), Want: drivertest.Succeeds,
			Check: check(installed(oemsim.ViaGRUB, "PQSERVICE", true))},
		{Name: "missing url", Setup: setup(oemscript.Type, dell, none, nil, nil), Want: drivertest.ProvisioningFails, Output: "provision_data.url",
			Job: func(*drivers.DeviceConfig) *events.Job {
				return &events.Job{JobID: "j", JobQueue: "oem", ProvisionData: events.Data{"delay": "100s"}}
			}},
		{Name: "file url refused", Setup: setup(oemscript.Type, dell, none, nil, nil), Want: drivertest.ProvisioningFails, Output: "not an http or https URL",
			Job: func(*drivers.DeviceConfig) *events.Job {
				return &events.Job{JobID: "j", JobQueue: "oem", ProvisionData: events.Data{"url": "file:///etc/shadow"}}
			}},
	}...)
	drivertest.RunScenarios(t, scenarios)
}

// TestPreseedDir installs with preseed_dir: its files reach the recovery
// partition before the recovery starts.
func TestPreseedDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	files := map[string]string{
		"preseed/flinger-lab.cfg":                     "ubiquity oem-config/enable boolean false\n",
		"scripts/chroot-scripts/os-post/50-skip-oobe": "#!/bin/sh\ntouch /var/lib/oem-config/skip\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := isoServer(t)
	b := start(t, oemscript.TypeDell, oemsim.DellRecovery, oemsim.Faults{}, events.Data{"preseed_dir": dir})
	d, err := drivers.New(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, out := drivertest.NewRun(t, b.cfg, jobFor(srv, "/noble.iso", nil)(b.cfg))
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	boots := b.rig.RecoveryBoots()
	if len(boots) != 1 || !slices.Contains(boots[0].Preseed, "/cdrom/preseed/flinger-lab.cfg") {
		t.Errorf("recovery boots %+v, want one with preseed/flinger-lab.cfg", boots)
	}
	for name, content := range files {
		if got, ok := b.rig.DUT().ReadFile("/cdrom/" + name); !ok || string(got) != content {
			t.Errorf("/cdrom/%s = %q, %v; want %q", name, got, ok, content)
		}
	}
}

// TestISODoesNotFit refuses an ISO larger than the recovery partition
// before touching the partition.
func TestISODoesNotFit(t *testing.T) {
	t.Parallel()
	srv := isoServer(t)
	b := start(t, oemscript.TypeLenovo, oemsim.UbuntuRecovery, oemsim.Faults{}, nil, func(o *oemsim.Options) { o.RecoverySize = 2 << 20 })
	d, err := drivers.New(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, out := drivertest.NewRun(t, b.cfg, jobFor(srv, "/noble.iso", nil)(b.cfg))
	err = d.Provision(t.Context(), run)
	var pe *drivers.ProvisioningError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "does not fit the recovery partition") {
		t.Fatalf("Provision = %v, want a provisioning failure saying the ISO does not fit\n%s", err, out)
	}
	untouched(t, b.rig, "")
	if _, ok := b.rig.DUT().ReadFile("/var/tmp/flinger-recovery.iso"); ok || b.rig.DUT().Disk("/var/tmp/flinger-recovery.iso") != nil {
		t.Error("the ISO was left on the device")
	}
}

// TestCancelWhileWriting cancels provisioning while the ISO streams to the
// device: Provision returns promptly with the cancellation, and the
// recovery partition is untouched.
func TestCancelWhileWriting(t *testing.T) {
	t.Parallel()
	srv := isoServer(t)
	b := start(t, oemscript.TypeHP, oemsim.UbuntuRecovery, oemsim.Faults{}, nil)
	d, err := drivers.New(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, out := drivertest.NewRun(t, b.cfg, jobFor(srv, "/slow.iso", nil)(b.cfg))
	progressed := make(chan struct{})
	var once atomic.Bool
	run.Progress = func(p image.Progress) {
		if p.BytesOut > 0 && once.CompareAndSwap(false, true) {
			close(progressed)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Provision(ctx, run) }()
	select {
	case <-progressed:
	case err := <-done:
		t.Fatalf("Provision returned %v before the ISO streamed\n%s", err, out)
	case <-time.After(20 * time.Second):
		t.Fatalf("no progress while streaming the ISO\n%s", out)
	}
	cancel()
	cancelled := time.Now()
	select {
	case err = <-done:
	case <-time.After(drivertest.CancelDeadline):
		t.Fatalf("Provision did not return within %s of cancellation\n%s", drivertest.CancelDeadline, out)
	}
	t.Logf("returned %v after %s", err, time.Since(cancelled))
	if !errors.Is(err, context.Canceled) || drivers.IsRecovery(err) {
		t.Errorf("Provision = %v, want an error wrapping context.Canceled, not a recovery failure", err)
	}
	if b.rig.RecoveryDisk().Writes() != 1 || len(b.rig.RecoveryBoots()) > 0 {
		t.Errorf("the recovery partition was written or a recovery started")
	}
}

// TestCacheAndProgress provisions two laptops with one ISO through the lab
// host's cache: the second streams it from the cache; both report progress.
func TestCacheAndProgress(t *testing.T) {
	t.Parallel()
	var requests atomic.Int64
	iso := isoServer(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Redirect(w, r, iso.URL+r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	cache, err := image.NewCache(t.TempDir(), 1<<30, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	for i, typ := range []string{oemscript.TypeDell, oemscript.TypeLenovo} {
		b := start(t, typ, recoveryOf(typ), oemsim.Faults{}, nil)
		d, err := drivers.New(b.cfg)
		if err != nil {
			t.Fatal(err)
		}
		run, out := drivertest.NewRun(t, b.cfg, jobFor(srv, "/noble.iso.zst", nil)(b.cfg))
		run.Images = cache
		var last atomic.Int64
		run.Progress = func(p image.Progress) { last.Store(p.BytesOut) }
		if err := d.Provision(t.Context(), run); err != nil {
			t.Fatalf("%s: Provision: %v\n%s", typ, err, out)
		}
		if got := last.Load(); got != theISO.Size {
			t.Errorf("%s: last progress %d bytes out, want %d", typ, got, theISO.Size)
		}
		if fromCache := strings.Contains(out.String(), "from the lab host's cache"); fromCache != (i == 1) {
			t.Errorf("%s: streamed from the cache: %v\n%s", typ, fromCache, out)
		}
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("%d requests for the ISO, want 1", n)
	}
}

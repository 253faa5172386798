package maas2_test

import (
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/maas2"
	"github.com/flingerlab/flinger/drivers/sim/maassim"
	"github.com/flingerlab/flinger/events"
)

// fast are the device keys that suit the simulator: short polls and
// retries, timeouts long enough for a slow machine.
var fast = events.Data{
	"poll_interval":        "50ms",
	"poll_max":             "200ms",
	"release_timeout":      "5s",
	"fallback_timeout":     "2s",
	"boot_timeout":         "15s",
	"ssh_check_interval":   "100ms",
	"maas_retry_interval":  "50ms",
	"maas_request_timeout": "5s",
}

// rig is a simulated MAAS with one machine, and the configuration of a
// maas2 device for it.
type rig struct {
	srv *maassim.Server
	m   *maassim.Machine
	cfg *drivers.DeviceConfig
}

// rigs finds the rig of a device configuration, for scenario checks.
var rigs drivertest.Rigs[*rig]

func rigOf(t *testing.T, cfg *drivers.DeviceConfig) *rig {
	t.Helper()
	return rigs.Of(t, cfg)
}

// setup describes a rig to start.
type setup struct {
	server  maassim.Options
	machine maassim.MachineOptions
	raw     events.Data // device keys over fast
	key     string      // the key the device uses ("": the server's)
}

// startRig starts a simulated MAAS and machine and returns them with a
// device configuration reaching them: the API key in a 0600 file, TOFU
// host keys in a directory of the test's.
func startRig(t *testing.T, su setup) *rig {
	t.Helper()
	srv, err := maassim.Start(t.Context(), su.server)
	if err != nil {
		t.Fatalf("maassim.Start: %v", err)
	}
	t.Cleanup(srv.Close)
	mo := su.machine
	if mo.DeployTime == 0 {
		mo.DeployTime = 150 * time.Millisecond
	}
	if mo.ReleaseTime == 0 {
		mo.ReleaseTime = 50 * time.Millisecond
	}
	if mo.BootTime == 0 {
		mo.BootTime = 100 * time.Millisecond
	}
	m, err := srv.AddMachine(t.Context(), mo)
	if err != nil {
		t.Fatalf("AddMachine: %v", err)
	}
	key := su.key
	if key == "" {
		key = srv.Key()
	}
	dir := t.TempDir()
	cred := filepath.Join(dir, "maas.key")
	if err := os.WriteFile(cred, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw := events.Data{}
	maps.Copy(raw, fast)
	maps.Copy(raw, events.Data{
		"maas_url": srv.URL(), "maas_credentials": cred, "node_id": m.SystemID(), "maas_user": "flinger",
	})
	maps.Copy(raw, su.raw)
	cfg := &drivers.DeviceConfig{
		Name: "maas-sim", Type: maas2.Type, Queues: []string{"maas"},
		DeviceIP: m.DeviceIP(), SSHPort: m.SSHPort(), Raw: raw,
		SSH: &drivers.SSHSettings{HostKeys: drivers.HostKeysTOFU, HostKeyDir: filepath.Join(dir, "hostkeys")},
	}
	r := &rig{srv: srv, m: m, cfg: cfg}
	rigs.Add(t, cfg, r)
	return r
}

// newDriver builds the driver of cfg.
func newDriver(t *testing.T, cfg *drivers.DeviceConfig) drivers.Driver {
	t.Helper()
	d, err := drivers.New(cfg)
	if err != nil {
		t.Fatalf("drivers.New: %v", err)
	}
	return d
}

// jobWith returns a job on the maas queue with the given provision_data.
func jobWith(pd events.Data) *events.Job {
	if pd == nil {
		pd = events.Data{}
	}
	return &events.Job{JobID: "11111111-2222-4333-8444-555555555555", JobQueue: "maas", ProvisionData: pd, TestData: &events.TestData{}}
}

// customDisks is a two-disk layout in Testflinger's format: an EFI
// partition and / on the first disk, /boot on its own partition, and the
// second disk formatted whole on /data.
func customDisks() []any {
	return []any{
		map[string]any{"id": "disk0", "type": "disk", "disk": 0, "ptable": "gpt", "name": "rootdisk"},
		map[string]any{"id": "disk0-part1", "type": "partition", "device": "disk0", "number": 1, "size": "512M"},
		map[string]any{"id": "disk0-part1-format", "type": "format", "volume": "disk0-part1", "fstype": "fat32", "label": "efi"},
		map[string]any{"id": "disk0-part1-mount", "type": "mount", "device": "disk0-part1-format", "path": "/boot/efi"},
		map[string]any{"id": "disk0-part2", "type": "partition", "device": "disk0", "number": 2, "size": "1G"},
		map[string]any{"id": "disk0-part2-format", "type": "format", "volume": "disk0-part2", "fstype": "ext4", "label": "boot"},
		map[string]any{"id": "disk0-part2-mount", "type": "mount", "device": "disk0-part2-format", "path": "/boot"},
		map[string]any{"id": "disk0-part3", "type": "partition", "device": "disk0", "number": 3, "size": "20G", "alloc_pct": 90},
		map[string]any{"id": "disk0-part3-format", "type": "format", "volume": "disk0-part3", "fstype": "ext4", "label": "root"},
		map[string]any{"id": "disk0-part3-mount", "type": "mount", "device": "disk0-part3-format", "path": "/"},
		map[string]any{"id": "disk1", "type": "disk", "disk": 1, "ptable": "gpt"},
		map[string]any{"id": "disk1-format", "type": "format", "volume": "disk1", "fstype": "xfs", "label": "data"},
		map[string]any{"id": "disk1-mount", "type": "mount", "device": "disk1-format", "path": "/data"},
	}
}

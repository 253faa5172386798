package maassim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
)

// Type is the connector type this package simulates.
const Type = "maas2"

func init() {
	sim.RegisterLab(Type, func(ctx context.Context, opts sim.LabOptions) (sim.LabDevice, error) {
		return StartLab(ctx, opts)
	})
}

// CredentialsFile is the name of the file, in the lab device's directory,
// that holds the simulated MAAS's API key (mode 0600).
const CredentialsFile = "maas-api-key"

// LabSettings documents the sim: keys of a maas2 device's entry in a lab
// file, read with sim.Settings (durations as Go durations such as "2s" or
// whole seconds; disk sizes as bytes or with K, M, G or T, powers of 1000,
// as MAAS counts them):
//
//	version: 3.5.0             # the MAAS version reported (ephemeral deploys need 3.5)
//	node_id: abc123            # the machine's system id (default: a random one)
//	deploy_time: 2s            # how long a deployment takes (default 2s)
//	release_time: 500ms        # how long a release takes (default 500ms)
//	boot_time: 1s              # how long the deployed system takes to boot (default 1s)
//	disks: [500G, 250G]        # the machine's disks, sda, sdb, ... (default 500 GB and 250 GB)
//	status: Ready              # the machine's status at start: Ready, Deployed, Allocated, Broken, New
//	not_admin: false           # the key's user is not an administrator (may not mark fixed)
//	no_tpm: false              # the machine has no TPM
//	deploy_fails: false        # every deployment fails, with a curtin error in the log
//	release_hangs: false       # a release never completes until the machine is powered off
//	mark_broken_refused: false # mark_broken answers 409
//	bmc_unresponsive: false    # power requests are ignored (releases hang, deployments fail)
//	no_address: false          # the deployed machine gets another address than device_ip
//	never_boots: false         # the deployed system never answers SSH
//	wrong_distro: false        # the machine boots another release than the one deployed
//	host_key_changes: false    # a new SSH host key on every boot
//	efi_disk_first: false      # the firmware puts the disk first in the boot order after a deployment
//	fail_requests: 0           # the first this many API requests answer 500
//	drop_requests: 0           # the first this many API requests get no answer
//	slow_answers: 0s           # every API answer is delayed this long
//	serial: false              # no serial console for the machine (see sim.StartLab)
//
// The device keys it gives (Config): maas_url, maas_credentials (a file
// in the device's directory, mode 0600), node_id, maas_user, device_ip,
// ssh_port, and polling intervals and timeouts suited to a simulator
// (poll_interval 200ms, poll_max 1s, release_timeout 30s,
// fallback_timeout 10s, boot_timeout 60s, ssh_check_interval 200ms,
// maas_retry_interval 200ms), and serial_host and serial_port when the
// machine has a serial console. The deployed system accepts ubuntu
// (password ubuntu) and the lab's keys.
var LabSettings = []string{
	"version", "node_id", "deploy_time", "release_time", "boot_time", "disks", "status", "not_admin", "no_tpm",
	"deploy_fails", "release_hangs", "mark_broken_refused", "bmc_unresponsive", "no_address", "never_boots",
	"wrong_distro", "host_key_changes", "efi_disk_first", "fail_requests", "drop_requests", "slow_answers",
	sim.SerialSetting,
}

// Lab defaults: slower than the tests', so that a demo can be watched.
const (
	labDeployTime  = 2 * time.Second
	labReleaseTime = 500 * time.Millisecond
	labBootTime    = time.Second
)

// LabDevice is a simulated MAAS with one machine, started for a lab.
type LabDevice struct {
	// Server is the simulated MAAS.
	Server *Server
	// Machine is its machine.
	Machine *Machine
	// Credentials is the path of the file holding the API key.
	Credentials string
	// Console is the machine's serial console (nil: none).
	Console *sim.SerialConsole
}

// Config returns the device keys that reach the simulated MAAS and its
// machine.
func (d *LabDevice) Config() map[string]any {
	c := map[string]any{
		"maas_url":            d.Server.URL(),
		"maas_credentials":    d.Credentials,
		"maas_user":           d.Server.user,
		"node_id":             d.Machine.SystemID(),
		"device_ip":           d.Machine.DeviceIP(),
		"ssh_port":            d.Machine.SSHPort(),
		"poll_interval":       "200ms",
		"poll_max":            "1s",
		"release_timeout":     "30s",
		"fallback_timeout":    "10s",
		"boot_timeout":        "60s",
		"ssh_check_interval":  "200ms",
		"maas_retry_interval": "200ms",
	}
	d.Console.AddConfig(c)
	return c
}

// Close stops the simulated MAAS, its machine and its serial console.
func (d *LabDevice) Close() {
	d.Server.Close()
	_ = d.Console.Close()
}

// StartLab starts a simulated MAAS with one machine for a lab device
// (see LabSettings), writing its API key into opts.Dir.
func StartLab(ctx context.Context, opts sim.LabOptions) (*LabDevice, error) {
	set := sim.NewSettings(opts.Settings)
	so := Options{
		Log:      opts.Log,
		Version:  stringOrNumber(set, "version", DefaultVersion),
		NotAdmin: set.Bool("not_admin", false),
		Faults: Faults{
			SlowAnswers:  labDuration(set, "slow_answers", 0),
			FailRequests: set.Int("fail_requests", 0),
			DropRequests: set.Int("drop_requests", 0),
		},
	}
	mo := MachineOptions{
		Hostname: opts.Name, AuthorizedKeys: opts.AuthorizedKeys,
		Users:       map[string]string{"ubuntu": "ubuntu"},
		SystemID:    stringOrNumber(set, "node_id", ""),
		Status:      stringOrNumber(set, "status", StatusReady),
		DeployTime:  labDuration(set, "deploy_time", labDeployTime),
		ReleaseTime: labDuration(set, "release_time", labReleaseTime),
		BootTime:    labDuration(set, "boot_time", labBootTime),
		Disks:       disks(set, "disks"),
		NoTPM:       set.Bool("no_tpm", false),
		Faults: MachineFaults{
			DeployFails:       set.Bool("deploy_fails", false),
			ReleaseHangs:      set.Bool("release_hangs", false),
			MarkBrokenRefused: set.Bool("mark_broken_refused", false),
			BMCUnresponsive:   set.Bool("bmc_unresponsive", false),
			NoAddress:         set.Bool("no_address", false),
			NeverBoots:        set.Bool("never_boots", false),
			WrongDistro:       set.Bool("wrong_distro", false),
			HostKeyChanges:    set.Bool("host_key_changes", false),
			EFIDiskFirst:      set.Bool("efi_disk_first", false),
		},
	}
	if err := set.Err(); err != nil {
		return nil, err
	}
	srv, err := Start(ctx, so)
	if err != nil {
		return nil, err
	}
	m, err := srv.AddMachine(ctx, mo)
	if err != nil {
		srv.Close()
		return nil, err
	}
	path := filepath.Join(opts.Dir, CredentialsFile)
	if err := writeSecret(path, srv.Key()+"\n"); err != nil {
		srv.Close()
		return nil, fmt.Errorf("maassim: writing the API key: %w", err)
	}
	m.DUT().SetConsole(opts.Console)
	return &LabDevice{Server: srv, Machine: m, Credentials: path, Console: opts.Console}, nil
}

// writeSecret writes a file only its owner can read, whatever the umask.
func writeSecret(path, content string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// stringOrNumber reads a string setting that YAML may have decoded as a
// number (a version 3.5, a node_id 123): the number is taken as written.
func stringOrNumber(s *sim.Settings, key, def string) string {
	if v, ok := s.Value(key); ok {
		switch v.(type) {
		case int, float64:
			return fmt.Sprint(v)
		}
	}
	return s.String(key, def)
}

// maxLabDuration bounds the durations of a lab's MAAS.
const maxLabDuration = time.Hour

// labDuration reads a duration setting of at most maxLabDuration.
func labDuration(s *sim.Settings, key string, def time.Duration) time.Duration {
	d := s.Duration(key, def)
	if d > maxLabDuration {
		s.Invalid(key, "%s out of range (0s to %s)", d, maxLabDuration)
		return def
	}
	return d
}

// disks reads a list of disk sizes (MAAS's sizes: bytes, or with K, M, G
// or T, powers of 1000), each of at least 64M.
func disks(s *sim.Settings, key string) []Disk {
	v, ok := s.Value(key)
	if !ok {
		return nil
	}
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		s.Invalid(key, "must be a list of disk sizes, such as [500G, 250G]")
		return nil
	}
	var out []Disk
	for i, e := range list {
		n, err := parseSize(fmt.Sprint(e))
		if err != nil || n < 64<<20 {
			s.Invalid(fmt.Sprintf("%s[%d]", key, i), "%v is not a disk size of at least 64M", e)
			return nil
		}
		out = append(out, Disk{Name: "sd" + string(rune('a'+i)), Size: n, Model: "QEMU HARDDISK", Serial: fmt.Sprintf("QM%05d", i+1)})
	}
	return out
}

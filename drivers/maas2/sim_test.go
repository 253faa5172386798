package maas2_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/sim/maassim"
	"github.com/flingerlab/flinger/events"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		r := startRig(t, setup{})
		return newDriver(t, r.cfg), r.cfg
	})
}

// deployed checks that the machine is Deployed with distro, its system
// up and reporting it.
func deployed(distro string) func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		t.Helper()
		r := rigOf(t, cfg)
		if st := r.m.Status(); st != maassim.StatusDeployed {
			t.Errorf("machine %s, want Deployed", st)
		}
		ds := r.m.Deployments()
		if len(ds) == 0 || ds[len(ds)-1].Distro != distro {
			t.Errorf("deployments %+v, want the last one of %s", ds, distro)
		}
	}
}

// mounts checks the machine's mount points (mount point -> "disk-partN fstype").
func mounts(want map[string]string) func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		t.Helper()
		got := rigOf(t, cfg).m.Mounts()
		for mp, what := range want {
			if got[mp] != what {
				t.Errorf("%s holds %q, want %q (mounts %v)", mp, got[mp], what, got)
			}
		}
		if len(got) != len(want) {
			t.Errorf("mounts %v, want %v", got, want)
		}
	}
}

// untouched checks that MAAS was asked nothing that changes the machine.
func untouched(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	t.Helper()
	r := rigOf(t, cfg)
	for _, req := range r.srv.Requests() {
		if !strings.HasPrefix(req, "GET ") {
			t.Errorf("MAAS was asked %s; the job should have been refused before", req)
		}
	}
}

// status checks the machine's status, waiting up to a few seconds for it.
func status(want string) func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
	return func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := rigOf(t, cfg).m.WaitStatus(ctx, want); err != nil {
			t.Error(err)
		}
	}
}

func all(checks ...func(*testing.T, *drivers.DeviceConfig, string, error)) func(*testing.T, *drivers.DeviceConfig, string, error) {
	return func(t *testing.T, cfg *drivers.DeviceConfig, out string, err error) {
		t.Helper()
		for _, c := range checks {
			c(t, cfg, out, err)
		}
	}
}

// TestScenarios runs maas2's outcomes through the driver and the
// connector command line.
func TestScenarios(t *testing.T) {
	device := func(su setup) func(t *testing.T) *drivers.DeviceConfig {
		return func(t *testing.T) *drivers.DeviceConfig { return startRig(t, su).cfg }
	}
	job := func(pd events.Data) func(*drivers.DeviceConfig) *events.Job {
		return func(*drivers.DeviceConfig) *events.Job { return jobWith(pd) }
	}
	deployedAt := maassim.MachineOptions{Status: maassim.StatusDeployed}
	shortBoot := events.Data{"boot_timeout": "1s"}
	flat := map[string]string{"/": "sda-part2 ext4", "/boot/efi": "sda-part1 fat32"}
	custom := map[string]string{"/": "rootdisk-part3 ext4", "/boot": "rootdisk-part2 ext4", "/boot/efi": "rootdisk-part1 fat32", "/data": "sdb xfs"}
	drivertest.RunScenarios(t, []drivertest.Scenario{
		{
			Name: "flat layout by default", Setup: device(setup{machine: deployedAt}), Job: job(nil),
			Want: drivertest.Succeeds, Output: "is deployed and answers: Ubuntu 22.04",
			Check: all(deployed("jammy"), mounts(flat)),
		},
		{
			Name: "custom disks layout", Setup: device(setup{}), Job: job(events.Data{"disks": customDisks()}),
			Want: drivertest.Succeeds, Output: "Storage: disk0-part3 mounted on /",
			Check: all(deployed("jammy"), mounts(custom), func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				for _, d := range rigOf(t, cfg).m.Storage() {
					if d.Boot != (d.Name == "rootdisk") {
						t.Errorf("disk %s boot %v; rootdisk (with /boot) should be the boot disk", d.Name, d.Boot)
					}
					if d.Name == "rootdisk" && d.Partitions[2].Size < 400e9 {
						t.Errorf("alloc_pct 90 gave / %d bytes", d.Partitions[2].Size)
					}
				}
			}),
		},
		{
			Name: "default_disks of the device", Setup: device(setup{raw: events.Data{"default_disks": customDisks()}}), Job: job(nil),
			Want: drivertest.Succeeds, Output: "Storage: applying default_disks",
			Check: all(deployed("jammy"), mounts(custom)),
		},
		{
			Name: "distro and kernel", Setup: device(setup{}), Job: job(events.Data{"distro": "noble", "kernel": "hwe-24.04"}),
			Want: drivertest.Succeeds, Output: "answers: Ubuntu 24.04",
			Check: all(deployed("noble"), func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				if ds := rigOf(t, cfg).m.Deployments(); ds[len(ds)-1].Kernel != "hwe-24.04" {
					t.Errorf("deployed with kernel %q, want hwe-24.04", ds[len(ds)-1].Kernel)
				}
			}),
		},
		{
			Name: "user_data", Setup: device(setup{}), Job: job(events.Data{"user_data": "#cloud-config\npackages: [jq]\n"}),
			Want: drivertest.Succeeds, Output: "with 29 bytes of user data",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				b, ok := rigOf(t, cfg).m.DUT().ReadFile(maassim.UserDataPath)
				if !ok || string(b) != "#cloud-config\npackages: [jq]\n" {
					t.Errorf("the machine's user data is %q (%v)", b, ok)
				}
			},
		},
		{
			Name: "ephemeral on MAAS 3.5", Setup: device(setup{server: maassim.Options{Version: "3.5.2"}}), Job: job(events.Data{"ephemeral": true}),
			Want: drivertest.Succeeds, Output: "ephemeral (in memory)",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				if ds := rigOf(t, cfg).m.Deployments(); !ds[len(ds)-1].Ephemeral {
					t.Errorf("deployment %+v is not ephemeral", ds[len(ds)-1])
				}
			},
		},
		{
			Name: "ephemeral refused on MAAS 3.4", Setup: device(setup{server: maassim.Options{Version: "3.4.6"}}), Job: job(events.Data{"ephemeral": true}),
			Want: drivertest.ProvisioningFails, Output: "ephemeral deployments need MAAS 3.5 or later", Check: untouched,
		},
		{
			Name: "unknown distro refused by MAAS", Setup: device(setup{}), Job: job(events.Data{"distro": "warty"}),
			Want: drivertest.ProvisioningFails, Output: "'warty' is not a valid distro_series",
		},
		{
			Name: "layout referencing a missing partition", Setup: device(setup{machine: deployedAt}),
			Job: job(events.Data{"disks": slices.Replace(customDisks(), 2, 3, any(map[string]any{
				"id": "disk0-part1-format", "type": "format", "volume": "disk0-part9", "fstype": "fat32"}))}),
			Want: drivertest.ProvisioningFails, Output: "provision_data.disks[2] (disk0-part1-format): volume: disk0-part9 (no entry has this id)",
			Check: all(untouched, status(maassim.StatusDeployed)),
		},
		{
			Name: "layout that does not fit", Setup: device(setup{machine: maassim.MachineOptions{Disks: []maassim.Disk{{Name: "vda", Size: 10e9}}}}),
			Job: job(events.Data{"disks": []any{
				map[string]any{"id": "d", "type": "disk"},
				map[string]any{"id": "p", "type": "partition", "device": "d", "size": "12G"},
				map[string]any{"id": "f", "type": "format", "volume": "p", "fstype": "ext4"},
				map[string]any{"id": "m", "type": "mount", "device": "f", "path": "/"},
			}}),
			Want: drivertest.ProvisioningFails, Output: "provision_data.disks[0] (d): its partitions need 12.0 GB", Check: untouched,
		},
		{
			Name: "deployment fails", Setup: device(setup{machine: maassim.MachineOptions{Faults: maassim.MachineFaults{DeployFails: true}}}), Job: job(nil),
			Want: drivertest.ProvisioningFails, Output: "curtin: Installation failed with exception",
			Check: status(maassim.StatusFailedDeployment),
		},
		{
			Name: "release hangs: mark broken and fixed bring it back",
			Setup: device(setup{machine: maassim.MachineOptions{Status: maassim.StatusDeployed,
				Faults: maassim.MachineFaults{ReleaseHangs: true}}, raw: events.Data{"release_timeout": "300ms"}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "marking machine",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				if h := rigOf(t, cfg).m.History(); !slices.Contains(h, maassim.StatusBroken) {
					t.Errorf("history %v: never Broken", h)
				}
			},
		},
		{
			Name: "release hangs, mark broken refused: the power off brings it back",
			Setup: device(setup{machine: maassim.MachineOptions{Status: maassim.StatusDeployed,
				Faults: maassim.MachineFaults{ReleaseHangs: true, MarkBrokenRefused: true}}, raw: events.Data{"release_timeout": "300ms"}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "powering machine",
		},
		{
			Name: "nothing brings the machine back",
			Setup: device(setup{machine: maassim.MachineOptions{Status: maassim.StatusDeployed,
				Faults: maassim.MachineFaults{BMCUnresponsive: true, MarkBrokenRefused: true}},
				raw: events.Data{"release_timeout": "300ms", "fallback_timeout": "300ms"}}),
			Job: job(nil), Want: drivertest.RecoveryFails, Output: "is Releasing after a release, mark broken/mark fixed and a power off and a release",
		},
		{
			Name: "mark fixed forbidden and the BMC dead",
			Setup: device(setup{server: maassim.Options{NotAdmin: true}, machine: maassim.MachineOptions{Status: maassim.StatusDeployed,
				Faults: maassim.MachineFaults{BMCUnresponsive: true}},
				raw: events.Data{"release_timeout": "300ms", "fallback_timeout": "300ms"}}),
			Job: job(nil), Want: drivertest.RecoveryFails, Output: "permission to mark this machine fixed",
		},
		{
			Name: "the machine never gets device_ip", Setup: device(setup{machine: maassim.MachineOptions{Faults: maassim.MachineFaults{NoAddress: true}}, raw: shortBoot}),
			Job: job(nil), Want: drivertest.ProvisioningFails, Output: "not among the addresses MAAS reports for machine",
			Check: func(t *testing.T, _ *drivers.DeviceConfig, out string, err error) {
				if msg := out + errText(err); !strings.Contains(msg, maassim.OtherAddress) {
					t.Errorf("the failure does not name the address MAAS reports (%s)", maassim.OtherAddress)
				}
			},
		},
		{
			Name: "deployed but never answers ssh", Setup: device(setup{machine: maassim.MachineOptions{Faults: maassim.MachineFaults{NeverBoots: true}}, raw: shortBoot}),
			Job: job(nil), Want: drivertest.ProvisioningFails, Output: "is Deployed but does not answer ssh",
		},
		{
			Name: "the machine boots another release", Setup: device(setup{machine: maassim.MachineOptions{Faults: maassim.MachineFaults{WrongDistro: true}}}),
			Job: job(events.Data{"distro": "jammy"}), Want: drivertest.ProvisioningFails, Output: "runs Ubuntu 24.04 (noble) where the job asked for jammy",
		},
		{
			Name: "host key changes on every boot", Setup: device(setup{machine: maassim.MachineOptions{Faults: maassim.MachineFaults{HostKeyChanges: true}}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "is deployed and answers",
		},
		{
			Name: "500s retried then succeeding", Setup: device(setup{server: maassim.Options{Faults: maassim.Faults{FailRequests: 3}}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "trying again",
		},
		{
			Name: "connections dropped then retried", Setup: device(setup{server: maassim.Options{Faults: maassim.Faults{DropRequests: 2}}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "trying again",
		},
		{
			Name: "slow answers", Setup: device(setup{server: maassim.Options{Faults: maassim.Faults{SlowAnswers: 20 * time.Millisecond}}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "is deployed and answers",
		},
		{
			Name: "a MAAS that does not answer", Setup: device(setup{raw: events.Data{"maas_retries": 2, "maas_request_timeout": "200ms"},
				server: maassim.Options{Faults: maassim.Faults{SlowAnswers: time.Second}}}),
			Job: job(nil), Want: drivertest.Fails, Output: "did not answer GET machines/",
		},
		{
			Name: "wrong API key", Setup: device(setup{key: "AAAAAAAAAAAAAAAAAA:BBBBBBBBBBBBBBBBBB:CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"}),
			Job: job(nil), Want: drivertest.Fails, Output: "refused the API key of device maas-sim",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, out string, err error) {
				if err == nil {
					return // the connector: its error went to stderr, which Output checked
				}
				msg := out + errText(err)
				if !strings.Contains(msg, rigOf(t, cfg).srv.URL()) || !strings.Contains(msg, "Invalid API key") {
					t.Errorf("the failure does not name the server and MAAS's message: %s", msg)
				}
				for _, part := range []string{"AAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBB", "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"} {
					if strings.Contains(msg, part) {
						t.Errorf("the output or error shows the key")
					}
				}
			},
		},
		{
			Name: "reset_efi puts network boot first",
			Setup: device(setup{machine: maassim.MachineOptions{Status: maassim.StatusDeployed, BootOrder: []string{"0000", "0002", "0001", "0003"},
				Faults: maassim.MachineFaults{EFIDiskFirst: true}}, raw: events.Data{"reset_efi": true}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "EFI: setting the boot order to 0001,0000,0002,0003",
		},
		{
			Name:  "without reset_efi the machine boots its disk",
			Setup: device(setup{machine: maassim.MachineOptions{Status: maassim.StatusDeployed, BootOrder: []string{"0000", "0001", "0002", "0003"}}}),
			Job:   job(nil), Want: drivertest.ProvisioningFails, Output: "did not boot from the network",
		},
		{
			Name: "clear_tpm on the running system", Setup: device(setup{machine: deployedAt, raw: events.Data{"clear_tpm": true}}),
			Job: job(nil), Want: drivertest.Succeeds, Output: "TPM: clear requested",
			Check: func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				r := rigOf(t, cfg)
				if n := r.m.TPMClears(); n != 1 {
					t.Errorf("TPM cleared %d times, want once", n)
				}
				if n := len(r.m.Deployments()); n != 1 {
					t.Errorf("%d deployments, want 1", n)
				}
			},
		},
		{
			Name: "clear_tpm on a released machine deploys it first", Setup: device(setup{raw: events.Data{"clear_tpm": true}}),
			Job: job(events.Data{"distro": "noble"}), Want: drivertest.Succeeds, Output: "deploying jammy to do it there",
			Check: all(deployed("noble"), func(t *testing.T, cfg *drivers.DeviceConfig, _ string, _ error) {
				r := rigOf(t, cfg)
				if n := r.m.TPMClears(); n != 1 {
					t.Errorf("TPM cleared %d times, want once", n)
				}
			}),
		},
		{
			Name: "clear_tpm without a TPM", Setup: device(setup{machine: maassim.MachineOptions{NoTPM: true}, raw: events.Data{"clear_tpm": true}}),
			Job: job(nil), Want: drivertest.ProvisioningFails, Output: "failed to clear the TPM",
		},
		{
			Name: "cleanup releases the machine", Setup: device(setup{machine: deployedAt}), Phase: events.PhaseCleanup,
			Job: job(nil), Want: drivertest.Succeeds, Output: "is Ready", Check: status(maassim.StatusReady),
		},
		{
			Name: "cleanup of a machine that cannot be brought back", Phase: events.PhaseCleanup,
			Setup: device(setup{machine: maassim.MachineOptions{Status: maassim.StatusDeployed,
				Faults: maassim.MachineFaults{BMCUnresponsive: true, MarkBrokenRefused: true}},
				raw: events.Data{"release_timeout": "300ms", "fallback_timeout": "300ms"}}),
			Job: job(nil), Want: drivertest.RecoveryFails, Output: "could not bring machine",
		},
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestProvisionCancelledMidDeploy cancels a provisioning while MAAS
// deploys the machine: the phase returns promptly with the context's
// error, and the machine is released, not left allocated.
func TestProvisionCancelledMidDeploy(t *testing.T) {
	t.Parallel()
	r := startRig(t, setup{machine: maassim.MachineOptions{DeployTime: time.Minute}})
	d := newDriver(t, r.cfg)
	run, out := drivertest.NewRun(t, r.cfg, jobWith(nil))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Provision(ctx, run) }()
	wait, stop := context.WithTimeout(t.Context(), 20*time.Second)
	defer stop()
	if err := r.m.WaitStatus(wait, maassim.StatusDeploying); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cancel()
	cancelled := time.Now()
	var err error
	select {
	case err = <-done:
	case <-time.After(drivertest.CancelDeadline):
		t.Fatalf("Provision did not return within %s of being cancelled\n%s", drivertest.CancelDeadline, out)
	}
	t.Logf("returned %v after %s", err, time.Since(cancelled))
	if !errors.Is(err, context.Canceled) || drivers.IsRecovery(err) {
		t.Errorf("Provision = %v, want an error wrapping context.Canceled", err)
	}
	if err := r.m.WaitStatus(wait, maassim.StatusReady); err != nil {
		t.Errorf("after the cancellation: %v (history %v)", err, r.m.History())
	}
	if owner := r.m.Owner(); owner != "" {
		t.Errorf("the machine is still owned by %s", owner)
	}
	if !strings.Contains(out.String(), "provisioning cancelled: releasing machine") {
		t.Errorf("output:\n%s", out)
	}
}

func TestNewRejectsBadKeys(t *testing.T) {
	t.Parallel()
	good := func() events.Data {
		return events.Data{"maas_url": "http://maas:5240/MAAS", "maas_credentials": "/etc/flinger/maas.key", "node_id": "abc123"}
	}
	for _, tc := range []struct {
		name string
		edit func(events.Data)
		ip   string
		want string
	}{
		{"no maas_url", func(d events.Data) { delete(d, "maas_url") }, "10.0.0.5", "maas_url: required"},
		{"bad maas_url", func(d events.Data) { d["maas_url"] = "maas:5240" }, "10.0.0.5", "maas_url: maasapi: the MAAS URL maas:5240 must be an http or https URL"},
		{"no key", func(d events.Data) { delete(d, "maas_credentials") }, "10.0.0.5", "maas_credentials: required"},
		{"two keys", func(d events.Data) { d["maas_api_key"] = "a:b:c" }, "10.0.0.5", "give one of them"},
		{"bad inline key", func(d events.Data) { delete(d, "maas_credentials"); d["maas_api_key"] = "SeCrEt" }, "10.0.0.5", "maas_api_key: a MAAS API key is three parts"},
		{"no node_id", func(d events.Data) { delete(d, "node_id") }, "10.0.0.5", "node_id: required"},
		{"bad node_id", func(d events.Data) { d["node_id"] = "abc 123" }, "10.0.0.5", `node_id: "abc 123" is not a system id`},
		{"no device_ip", func(events.Data) {}, "", "device_ip: required"},
		{"timeout_min", func(d events.Data) { d["timeout_min"] = 0 }, "10.0.0.5", "timeout_min: 0 out of range"},
		{"reset_efi", func(d events.Data) { d["reset_efi"] = "yes" }, "10.0.0.5", "reset_efi: must be true or false"},
		{"default_disks", func(d events.Data) { d["default_disks"] = []any{map[string]any{"id": "x", "type": "lvm"}} }, "10.0.0.5", "default_disks[0] (x): type: unknown type lvm"},
		{"poll_interval", func(d events.Data) { d["poll_interval"] = "soon" }, "10.0.0.5", "poll_interval"},
		{"maas_retries", func(d events.Data) { d["maas_retries"] = 0 }, "10.0.0.5", "maas_retries: 0 out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := good()
			tc.edit(raw)
			_, err := drivers.New(&drivers.DeviceConfig{Name: "m", Type: "maas2", DeviceIP: tc.ip, Raw: raw})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error with %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "SeCrEt") {
				t.Errorf("the error shows the key: %v", err)
			}
		})
	}
	raw := good()
	raw["node_id"] = 424242 // YAML reads an all-digit system id as a number
	if _, err := drivers.New(&drivers.DeviceConfig{Name: "m", Type: "maas2", DeviceIP: "10.0.0.5", Raw: raw}); err != nil {
		t.Errorf("New with a numeric node_id: %v", err)
	}
}

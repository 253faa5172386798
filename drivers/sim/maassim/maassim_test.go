package maassim_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/maassim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

const wait = 20 * time.Second

func start(t *testing.T, so maassim.Options, mo maassim.MachineOptions) (*maassim.Server, *maassim.Machine, *maasapi.Client) {
	t.Helper()
	srv, err := maassim.Start(t.Context(), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	if mo.DeployTime == 0 {
		mo.DeployTime = 50 * time.Millisecond
	}
	if mo.ReleaseTime == 0 {
		mo.ReleaseTime = 20 * time.Millisecond
	}
	if mo.BootTime == 0 {
		mo.BootTime = 50 * time.Millisecond
	}
	m, err := srv.AddMachine(t.Context(), mo)
	if err != nil {
		t.Fatal(err)
	}
	return srv, m, apiClient(t, srv, srv.Key())
}

func apiClient(t *testing.T, srv *maassim.Server, key string) *maasapi.Client {
	t.Helper()
	k, err := maasapi.ParseKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := maasapi.New(maasapi.Options{URL: srv.URL(), Key: k, RequestTimeout: 5 * time.Second,
		Retry: sshx.Backoff{Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func waitStatus(t *testing.T, m *maassim.Machine, status string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if err := m.WaitStatus(ctx, status); err != nil {
		t.Fatalf("%v (history %v)", err, m.History())
	}
}

// ssh logs in to the machine's system as ubuntu.
func ssh(t *testing.T, m *maassim.Machine) *sshx.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	c, err := sshx.WaitForSSH(ctx, sshx.Config{
		Addr: net.JoinHostPort(m.DeviceIP(), strconv.Itoa(m.SSHPort())), User: "ubuntu", Password: "ubuntu",
		HostKeys: sshx.TOFU(t.TempDir()),
	}, "maas", 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func runOn(t *testing.T, c *sshx.Client, stdin string, argv ...string) (string, string, int) {
	t.Helper()
	var out, errOut strings.Builder
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	code, err := c.RunInput(t.Context(), argv, in, &out, &errOut)
	var exit *sshx.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%v: %v", argv, err)
	}
	return out.String(), errOut.String(), code
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc123"})
	ctx := t.Context()
	if m.DUT().State() != sim.Off {
		t.Errorf("a Ready machine's system is %s", m.DUT().State())
	}
	got, err := c.Allocate(ctx, "abc123", "test")
	if err != nil || got.StatusName != maassim.StatusAllocated || got.Owner != maassim.DefaultUser {
		t.Fatalf("Allocate = %+v, %v", got, err)
	}
	if _, err := c.Deploy(ctx, "abc123", maasapi.DeployParams{DistroSeries: "ubuntu/noble", HWEKernel: "hwe-24.04", UserData: []byte("#cloud-config\n")}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m, maassim.StatusDeployed)
	got, err = c.Machine(ctx, "abc123")
	if err != nil || got.DistroSeries != "noble" || got.OSystem != "ubuntu" || got.HWEKernel != "hwe-24.04" ||
		len(got.IPAddresses) != 1 || got.IPAddresses[0] != m.DeviceIP() || got.PowerState != "on" || got.BootDisk == nil {
		t.Errorf("deployed machine %+v, %v", got, err)
	}
	sc := ssh(t, m)
	if out, _, _ := runOn(t, sc, "", "cat", "/etc/os-release"); !strings.Contains(out, "VERSION_CODENAME=noble") {
		t.Errorf("os-release %q", out)
	}
	if out, _, _ := runOn(t, sc, "", "cat", maassim.UserDataPath); out != "#cloud-config\n" {
		t.Errorf("user data %q", out)
	}
	sets, err := c.ScriptResults(ctx, "abc123", "installation")
	if err != nil || len(sets) != 1 || sets[0].StatusName != "Passed" {
		t.Fatalf("results %+v, %v", sets, err)
	}
	log, err := c.DownloadScriptResult(ctx, "abc123", sets[0].ID)
	if err != nil || !strings.Contains(log, "curtin: Installation finished.") || !strings.Contains(log, "inet "+m.DeviceIP()) {
		t.Errorf("installation log %q, %v", log, err)
	}
	if _, err := c.Release(ctx, "abc123", ""); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m, maassim.StatusReady)
	if m.DUT().State() != sim.Off || m.Owner() != "" || m.PowerState() != "off" {
		t.Errorf("released: system %s, owner %q, power %s", m.DUT().State(), m.Owner(), m.PowerState())
	}
	if _, err := c.Release(ctx, "abc123", ""); err != nil {
		t.Errorf("releasing a Ready machine: %v (MAAS does nothing and succeeds)", err)
	}
	want := []string{"Ready", "Allocated", "Deploying", "Deployed", "Releasing", "Ready"}
	if h := m.History(); strings.Join(h, ",") != strings.Join(want, ",") {
		t.Errorf("history %v, want %v", h, want)
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	srv, _, _ := start(t, maassim.Options{Key: "cons:tok:sec"}, maassim.MachineOptions{SystemID: "abc"})
	for _, tc := range []struct {
		key, want string
	}{
		{"other:tok:sec", "Authorization Error: Invalid API key."},
		{"cons:other:sec", "Authorization Error: 'Invalid access token: ****'"}, // MAAS quotes the token; the client masks it
		{"cons:tok:other", "Authorization Error: 'Invalid signature.'"},
	} {
		_, err := apiClient(t, srv, tc.key).Machine(t.Context(), "abc")
		var e *maasapi.Error
		if !errors.As(err, &e) || e.Status != http.StatusUnauthorized || e.Message != tc.want {
			t.Errorf("key %s: %v, want 401 %q", tc.key, err, tc.want)
		}
	}
	if _, err := apiClient(t, srv, "cons:tok:sec").Machine(t.Context(), "abc"); err != nil {
		t.Errorf("the right key: %v", err)
	}
	k, _ := maasapi.ParseKey("cons:tok:sec")
	get := func(auth string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL()+"/api/2.0/machines/abc/", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(""); code != 401 {
		t.Errorf("no Authorization: %d %s", code, body)
	}
	same := k.Authorization("nonce-1", time.Now())
	if code, _ := get(same); code != 200 {
		t.Errorf("first use of a nonce: %d", code)
	}
	if code, body := get(same); code != 401 || !strings.Contains(body, "Nonce already used: nonce-1") {
		t.Errorf("nonce reused: %d %s", code, body)
	}
	if code, body := get(k.Authorization("nonce-2", time.Now().Add(-time.Hour))); code != 401 || !strings.Contains(body, "Expired timestamp") {
		t.Errorf("old timestamp: %d %s", code, body)
	}
	// The version endpoint answers anyone, as in MAAS.
	resp, err := http.Get(srv.URL() + "/api/2.0/version/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("anonymous version: %d", resp.StatusCode)
	}
}

func TestStateRules(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	_, m, c := start(t, maassim.Options{NotAdmin: true}, maassim.MachineOptions{SystemID: "abc", Status: maassim.StatusBroken})
	check := func(what string, err error, status int, msg string) {
		t.Helper()
		var e *maasapi.Error
		if !errors.As(err, &e) || e.Status != status || !strings.Contains(e.Message, msg) {
			t.Errorf("%s: %v, want %d %q", what, err, status, msg)
		}
	}
	_, err := c.Release(ctx, "abc", "")
	check("release Broken", err, 409, "Machine cannot be released in its current state ('Broken').")
	_, err = c.Deploy(ctx, "abc", maasapi.DeployParams{})
	check("deploy Broken", err, 409, "Can't deploy a machine that is in the 'Broken' state")
	_, err = c.Allocate(ctx, "abc", "")
	check("allocate Broken", err, 409, "No available machine matches constraints")
	_, err = c.MarkFixed(ctx, "abc", "")
	check("mark_fixed by a non-admin", err, 403, "permission")
	_, err = c.SetStorageLayout(ctx, "abc", "flat")
	check("layout of a Broken machine", err, 409, "not Ready")
	_, err = c.Machine(ctx, "nope")
	check("unknown machine", err, 404, "No Machine matches")
	if m.Status() != maassim.StatusBroken {
		t.Errorf("status %s", m.Status())
	}

	srv2, m2, c2 := start(t, maassim.Options{Version: "3.4.2"}, maassim.MachineOptions{SystemID: "def"})
	_, err = c2.MarkFixed(ctx, "def", "")
	check("mark_fixed a Ready machine", err, 409, "Can't mark a non-broken machine as 'Ready'.")
	_, err = c2.SetStorageLayout(ctx, "def", "lvm")
	check("lvm", err, 400, "storage_layout")
	_, err = c2.Deploy(ctx, "def", maasapi.DeployParams{DistroSeries: "warty"})
	check("unknown distro", err, 400, "distro_series: 'warty' is not a valid distro_series.")
	_, err = c2.Deploy(ctx, "def", maasapi.DeployParams{DistroSeries: "focal", HWEKernel: "hwe-24.04"})
	check("kernel too new", err, 400, "hwe_kernel: hwe-24.04 is not available for ubuntu/focal")
	if _, err := c2.Deploy(ctx, "def", maasapi.DeployParams{DistroSeries: "22.04", Ephemeral: true}); err != nil {
		t.Fatalf("deploying a Ready machine (MAAS allocates it): %v", err)
	}
	waitStatus(t, m2, maassim.StatusDeployed)
	if d := m2.Deployments(); len(d) != 1 || d[0].Ephemeral || d[0].Distro != "jammy" {
		t.Errorf("MAAS 3.4 deployment %+v: ephemeral_deploy must be ignored", d)
	}
	_, err = c2.CreatePartition(ctx, "def", 1, 1<<30)
	check("partition of a Deployed machine", err, 409, "Cannot create partition because the machine is not Ready.")
	req, _ := http.NewRequest(http.MethodPost, srv2.URL()+"/api/2.0/machines/def/?op=frobnicate", nil)
	k, _ := maasapi.ParseKey(srv2.Key())
	req.Header.Set("Authorization", k.Authorization(maasapi.NewNonce(), time.Now()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || string(b) != "Unrecognised signature: method=POST op=frobnicate" {
		t.Errorf("unknown op: %d %s", resp.StatusCode, b)
	}
}

func TestStorage(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc", Disks: []maassim.Disk{{Name: "vda", Size: 1e9}, {Name: "vdb", Size: 2e9}}})
	// A new machine has the flat layout.
	if mounts := m.Mounts(); mounts["/"] != "vda-part2 ext4" || mounts["/boot/efi"] != "vda-part1 fat32" {
		t.Errorf("flat layout %v", mounts)
	}
	devs, err := c.BlockDevices(ctx, "abc")
	if err != nil || len(devs) != 2 {
		t.Fatal(devs, err)
	}
	for _, p := range devs[0].Partitions {
		if err := c.DeletePartition(ctx, "abc", devs[0].ID, p.ID); err != nil {
			t.Fatal(err)
		}
	}
	p, err := c.CreatePartition(ctx, "abc", devs[0].ID, 1)
	if err != nil || p.Size != maassim.PartitionAlignment {
		t.Fatalf("a 1-byte partition: %+v, %v (want it rounded up to 4 MiB)", p, err)
	}
	usable := int64(1e9) - maassim.PartitionTableExtraSpace - maassim.PartitionAlignment
	_, err = c.CreatePartition(ctx, "abc", devs[0].ID, usable+1)
	var e *maasapi.Error
	if !errors.As(err, &e) || e.Status != 400 || !strings.Contains(e.Message, "size: Ensure this value is less than or equal to") {
		t.Errorf("too big a partition: %v", err)
	}
	rest, err := c.CreatePartition(ctx, "abc", devs[0].ID, 0)
	if err != nil || int64(rest.Size) != usable/maassim.PartitionAlignment*maassim.PartitionAlignment {
		t.Errorf("the rest: %+v, %v", rest, err)
	}
	if err := c.FormatPartition(ctx, "abc", devs[0].ID, rest.ID, "ntfs", ""); err == nil || !strings.Contains(err.Error(), "fstype: Select a valid choice. ntfs") {
		t.Errorf("ntfs: %v", err)
	}
	if err := c.FormatPartition(ctx, "abc", devs[0].ID, rest.ID, "ext4", "root"); err != nil {
		t.Fatal(err)
	}
	if err := c.MountPartition(ctx, "abc", devs[0].ID, rest.ID, "/"); err != nil {
		t.Fatal(err)
	}
	if err := c.FormatBlockDevice(ctx, "abc", devs[1].ID, "xfs", "data"); err != nil {
		t.Fatal(err)
	}
	if err := c.MountBlockDevice(ctx, "abc", devs[1].ID, "/data"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreatePartition(ctx, "abc", devs[1].ID, 0); err == nil {
		t.Error("a partition on a formatted disk")
	}
	if err := c.UnformatBlockDevice(ctx, "abc", devs[1].ID); err == nil || !strings.Contains(err.Error(), "Filesystem is mounted") {
		t.Errorf("unformatting a mounted disk: %v", err)
	}
	if err := c.SetBootDisk(ctx, "abc", devs[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := c.RenameBlockDevice(ctx, "abc", devs[1].ID, "data"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"/": "vda-part2 ext4", "/data": "data xfs"}
	if got := m.Mounts(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("mounts %v, want %v", got, want)
	}
	for _, d := range m.Storage() {
		if d.Boot != (d.Name == "data") {
			t.Errorf("boot disk: %+v", d)
		}
	}
	if _, err := c.SetStorageLayout(ctx, "abc", "blank"); err != nil || len(m.Mounts()) != 0 {
		t.Errorf("blank layout: %v %v", err, m.Mounts())
	}
	if _, err := c.Deploy(ctx, "abc", maasapi.DeployParams{}); err == nil || !strings.Contains(err.Error(), "Mount the root '/' filesystem") {
		t.Errorf("deploying without /: %v", err)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	t.Run("requests", func(t *testing.T) {
		t.Parallel()
		srv, _, c := start(t, maassim.Options{Faults: maassim.Faults{FailRequests: 1, DropRequests: 1}}, maassim.MachineOptions{SystemID: "abc"})
		_, err := c.Machine(ctx, "abc")
		if err == nil || strings.Contains(err.Error(), "answered") {
			t.Errorf("a dropped request: %v", err)
		}
		_, err = c.Machine(ctx, "abc")
		if maasapi.StatusOf(err) != 500 {
			t.Errorf("a failed request: %v", err)
		}
		if _, err := c.Machine(ctx, "abc"); err != nil {
			t.Errorf("after the faults: %v", err)
		}
		if f := srv.Faults(); f.FailRequests != 0 || f.DropRequests != 0 {
			t.Errorf("faults left %+v", f)
		}
		if n := srv.Count("GET machines/abc/"); n != 3 {
			t.Errorf("%d requests recorded, want 3", n)
		}
	})
	t.Run("release hangs until powered off", func(t *testing.T) {
		t.Parallel()
		_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc", Status: maassim.StatusDeployed,
			Faults: maassim.MachineFaults{ReleaseHangs: true}})
		if _, err := c.Release(ctx, "abc", ""); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // many release times: it must still hang
		if st := m.Status(); st != maassim.StatusReleasing {
			t.Fatalf("status %s, want Releasing", st)
		}
		if _, err := c.PowerOff(ctx, "abc", "hard", ""); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, m, maassim.StatusReady)
	})
	t.Run("mark broken and fixed", func(t *testing.T) {
		t.Parallel()
		_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc", Status: maassim.StatusDeployed,
			Faults: maassim.MachineFaults{ReleaseHangs: true}})
		if _, err := c.Release(ctx, "abc", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := c.MarkBroken(ctx, "abc", "stuck"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.MarkFixed(ctx, "abc", ""); err != nil {
			t.Fatal(err)
		}
		if st := m.Status(); st != maassim.StatusReady || m.DUT().State() != sim.Off {
			t.Errorf("status %s, system %s", st, m.DUT().State())
		}
		m.SetFaults(maassim.MachineFaults{MarkBrokenRefused: true})
		if _, err := c.MarkBroken(ctx, "abc", ""); maasapi.StatusOf(err) != 409 {
			t.Errorf("refused mark_broken: %v", err)
		}
	})
	t.Run("BMC unresponsive", func(t *testing.T) {
		t.Parallel()
		_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc", Status: maassim.StatusDeployed,
			Faults: maassim.MachineFaults{BMCUnresponsive: true}})
		if _, err := c.Release(ctx, "abc", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := c.PowerOff(ctx, "abc", "hard", ""); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if st, p := m.Status(), m.PowerState(); st != maassim.StatusReleasing || p != "on" {
			t.Errorf("status %s, power %s; want Releasing and on", st, p)
		}
	})
	t.Run("deployment fails", func(t *testing.T) {
		t.Parallel()
		_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc", Faults: maassim.MachineFaults{DeployFails: true}})
		if _, err := c.Deploy(ctx, "abc", maasapi.DeployParams{}); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, m, maassim.StatusFailedDeployment)
		sets, _ := c.ScriptResults(ctx, "abc", "installation")
		log, err := c.DownloadScriptResult(ctx, "abc", sets[len(sets)-1].ID)
		if err != nil || !strings.Contains(log, "curtin: Installation failed") || sets[len(sets)-1].StatusName != "Failed" {
			t.Errorf("log %q, %v", log, err)
		}
		if _, err := c.Release(ctx, "abc", ""); err != nil {
			t.Errorf("releasing a Failed deployment: %v", err)
		}
		waitStatus(t, m, maassim.StatusReady)
	})
	t.Run("no address, wrong distro", func(t *testing.T) {
		t.Parallel()
		_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc", Faults: maassim.MachineFaults{NoAddress: true, WrongDistro: true}})
		if _, err := c.Deploy(ctx, "abc", maasapi.DeployParams{DistroSeries: "jammy"}); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, m, maassim.StatusDeployed)
		got, _ := c.Machine(ctx, "abc")
		if len(got.IPAddresses) != 1 || got.IPAddresses[0] != maassim.OtherAddress {
			t.Errorf("addresses %v", got.IPAddresses)
		}
		if out, _, _ := runOn(t, ssh(t, m), "", "cat", "/etc/os-release"); !strings.Contains(out, "noble") {
			t.Errorf("os-release %q", out)
		}
	})
}

func TestEFIAndTPM(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	_, m, c := start(t, maassim.Options{}, maassim.MachineOptions{SystemID: "abc", Status: maassim.StatusDeployed,
		Faults: maassim.MachineFaults{EFIDiskFirst: true}})
	sc := ssh(t, m)
	out, _, code := runOn(t, sc, "", "sudo", "efibootmgr", "-v")
	if code != 0 || !strings.Contains(out, "BootOrder: 0001,0000,0002,0003") || !strings.Contains(out, "Boot0001* UEFI: PXE IPv4") || !strings.Contains(out, "/IPv4(") {
		t.Errorf("efibootmgr -v: %d\n%s", code, out)
	}
	if _, errOut, code := runOn(t, sc, "", "efibootmgr", "-o", "0000,0001"); code == 0 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("efibootmgr -o without sudo: %d %s", code, errOut)
	}
	if _, errOut, code := runOn(t, sc, "", "sudo", "efibootmgr", "-o", "0000,0009"); code == 0 {
		t.Errorf("efibootmgr -o with an unknown entry: %d %s", code, errOut)
	}
	if _, _, code := runOn(t, sc, "", "tee", maassim.TPMRequestPath); code == 0 {
		t.Error("tee to the TPM without sudo succeeded")
	}
	if _, _, code := runOn(t, sc, "5\n", "sudo", "tee", maassim.TPMRequestPath); code != 0 {
		t.Fatal("sudo tee to the TPM failed")
	}
	if out, _, _ := runOn(t, sc, "", "cat", maassim.TPMRequestPath); strings.TrimSpace(out) != "5" {
		t.Errorf("TPM request %q", out)
	}
	// A deployment boots the machine: the TPM is cleared; the firmware
	// then puts the disk first, and the next deployment cannot PXE boot.
	if _, err := c.Release(ctx, "abc", ""); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m, maassim.StatusReady)
	if _, err := c.Deploy(ctx, "abc", maasapi.DeployParams{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m, maassim.StatusDeployed)
	if n := m.TPMClears(); n != 1 {
		t.Errorf("TPM cleared %d times", n)
	}
	if o := m.BootOrder(); o[0] != "0000" {
		t.Errorf("boot order %v, want the disk first", o)
	}
	if _, err := c.Release(ctx, "abc", ""); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m, maassim.StatusReady)
	if _, err := c.Deploy(ctx, "abc", maasapi.DeployParams{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m, maassim.StatusFailedDeployment)
}

func TestLab(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dev, err := sim.StartLab(t.Context(), maassim.Type, sim.LabOptions{Name: "maas-lab", Dir: dir, Settings: map[string]any{
		"version": "3.4.2", "node_id": "lab001", "deploy_time": "100ms", "disks": []any{"100G", 50000000000}, "release_hangs": true, "fail_requests": 2,
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Close)
	cfg := dev.Config()
	for _, k := range []string{"maas_url", "maas_credentials", "maas_user", "node_id", "device_ip", "ssh_port", "poll_interval"} {
		if cfg[k] == nil || cfg[k] == "" {
			t.Errorf("Config lacks %s: %v", k, cfg)
		}
	}
	path, _ := cfg["maas_credentials"].(string)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || filepath.Dir(path) != dir {
		t.Fatalf("credentials file %s: %v, %v", path, st, err)
	}
	lab := dev.(*maassim.LabDevice)
	b, _ := os.ReadFile(path)
	if strings.TrimSpace(string(b)) != lab.Server.Key() {
		t.Error("the credentials file does not hold the server's key")
	}
	if lab.Server.Version() != "3.4.2" || lab.Machine.SystemID() != "lab001" || cfg["node_id"] != "lab001" {
		t.Errorf("settings not applied: %s %s", lab.Server.Version(), lab.Machine.SystemID())
	}
	if s := lab.Machine.Storage(); len(s) != 2 || s[0].Size != 100e9 || s[1].Size != 50e9 {
		t.Errorf("disks %+v", s)
	}
	if f := lab.Machine.Faults(); !f.ReleaseHangs {
		t.Errorf("faults %+v", f)
	}
	for _, bad := range []map[string]any{
		{"release_hang": true}, {"deploy_time": "soon"}, {"disks": []any{"1K"}}, {"status": "Commissioning"}, {"never_boots": "yes"},
	} {
		if d, err := sim.StartLab(t.Context(), maassim.Type, sim.LabOptions{Name: "x", Dir: t.TempDir(), Settings: bad}); err == nil {
			d.Close()
			t.Errorf("settings %v accepted", bad)
		}
	}
}

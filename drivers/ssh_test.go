package drivers_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/sshkeys"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

const sshDevice = `
devices:
  - agent_name: d1
    provision_type: fake
    job_queues: q
    device_ip: 10.0.0.5
    ssh_port: 2222
`

func TestParseHostSSH(t *testing.T) {
	dir := t.TempDir()
	known := filepath.Join(dir, "known_hosts")
	key := filepath.Join(dir, "id_ed25519")
	for _, f := range []string{known, key} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hc, err := drivers.ParseHost([]byte(`
run_dir: `+dir+`
ssh:
  host_keys: `+known+`
  key_file: `+key+`
  key_servers: {lp: "http://mirror.lab/lp/%s", gh: "https://mirror.lab/gh/%s.keys"}
`+sshDevice), "host.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := hc.SSH
	if s.HostKeys != known || s.KeyFile != key || s.LaunchpadURL != "http://mirror.lab/lp/%s" || s.GitHubURL != "https://mirror.lab/gh/%s.keys" {
		t.Errorf("SSH = %+v", s)
	}
	if _, ok := s.Policy().(*sshx.KnownHosts); !ok {
		t.Errorf("Policy = %T, want pinned known_hosts", s.Policy())
	}
	dev := hc.Devices[0]
	if dev.SSH != s || dev.SSHPort != 2222 {
		t.Fatalf("device SSH = %p (port %d), want the host's (2222)", dev.SSH, dev.SSHPort)
	}
	cfg, err := dev.SSHSettings().DeviceConfig(dev, &events.Job{TestData: &events.TestData{TestUsername: "admin", TestPassword: "pw"}}, nil)
	if err != nil || cfg.Addr != "10.0.0.5:2222" || cfg.User != "admin" || cfg.Password != "pw" || len(cfg.KeyFiles) != 1 || cfg.KeyFiles[0] != key {
		t.Errorf("DeviceConfig = %+v, %v", cfg, err)
	}
	cfg, err = s.DeviceConfig(dev, &events.Job{}, nil)
	if err != nil || cfg.User != "ubuntu" || cfg.Password != "ubuntu" {
		t.Errorf("DeviceConfig defaults = %q/%q, %v; want ubuntu/ubuntu", cfg.User, cfg.Password, err)
	}
	if u, _ := s.Fetcher(nil).URL("lp:alice"); u != "http://mirror.lab/lp/alice" {
		t.Errorf("Fetcher URL = %q", u)
	}
}

func TestParseHostSSHDefaults(t *testing.T) {
	dir := t.TempDir()
	hc, err := drivers.ParseHost([]byte("run_dir: "+dir+"\nssh:\n  host_keys: tofu\n"+sshDevice), "host.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if hc.SSH.HostKeys != drivers.HostKeysTOFU || hc.SSH.HostKeyDir != filepath.Join(dir, "hostkeys") {
		t.Errorf("SSH = %+v, want TOFU under run_dir/hostkeys", hc.SSH)
	}
	if _, ok := hc.SSH.Policy().(*sshx.TOFUStore); !ok {
		t.Errorf("Policy = %T, want TOFU", hc.SSH.Policy())
	}
	if u, _ := hc.SSH.Fetcher(nil).URL("gh:bob"); u != strings.Replace(sshkeys.DefaultGitHubURL, "%s", "bob", 1) {
		t.Errorf("Fetcher URL = %q, want GitHub's", u)
	}
	var nilDev *drivers.DeviceConfig
	if nilDev.SSHSettings() == nil {
		t.Error("SSHSettings of a configuration without settings is nil")
	}
}

func TestParseHostSSHErrors(t *testing.T) {
	for _, tc := range []struct {
		ssh  string
		want []string
	}{
		{"ssh: tofu\n", []string{"host.yaml: ssh: must be a mapping"}},
		{"ssh: {host_key: tofu}\n", []string{"host.yaml: ssh.host_key: unknown key"}},
		{"ssh: {host_keys: /nonexistent/known_hosts}\n", []string{`host.yaml: ssh.host_keys: "/nonexistent/known_hosts" is neither "tofu" nor a readable known_hosts file`}},
		{"ssh: {key_file: /nonexistent/id}\n", []string{"host.yaml: ssh.key_file: open /nonexistent/id"}},
		{"ssh: {key_file: [a]}\n", []string{"host.yaml: ssh.key_file: must be a string"}},
		{"ssh: {key_servers: {lp: 'http://x/lp', bb: 'http://x/%s', gh: 'ftp://x/%s'}}\n", []string{
			`host.yaml: ssh.key_servers.lp: "http://x/lp" must contain %s exactly once`,
			"host.yaml: ssh.key_servers.bb: unknown key server",
			`host.yaml: ssh.key_servers.gh: "ftp://x/%s" must be an http or https URL`}},
		{"ssh: {}\n" + strings.Replace(sshDevice, "2222", "70000", 1), []string{"host.yaml: devices[0] (d1): ssh_port: 70000 out of range"}},
	} {
		doc := tc.ssh
		if !strings.Contains(doc, "devices:") {
			doc += sshDevice
		}
		_, err := drivers.ParseHost([]byte(doc), "host.yaml")
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("ParseHost(%q) = %v, want an error with %q", tc.ssh, err, w)
			}
		}
	}
}

package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

func TestAuthCommand(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "a.yaml")
	if err := os.WriteFile(host, []byte("host: lab-a\ndevices:\n  - agent_name: a-1\n    provision_type: fake_connector\n    job_queues: [qa]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "auth")
	code, text := runFlinger(t, "auth", "--host", host, "--out", out, "--max-priority", "2")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, text)
	}
	for _, u := range []string{"orchestrator", "submitter", "observer", "worker-lab-a"} {
		env, err := os.ReadFile(filepath.Join(out, u+".env"))
		if err != nil || !strings.Contains(string(env), "FLINGER_NATS_USER="+u+"\n") || !strings.Contains(string(env), "FLINGER_NATS_PASSWORD=") {
			t.Errorf("%s.env: %q (%v)", u, env, err)
		}
		if st, err := os.Stat(filepath.Join(out, u+".env")); err == nil && st.Mode().Perm() != 0o600 {
			t.Errorf("%s.env mode %v, want 0600", u, st.Mode().Perm())
		}
	}
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte("include auth/auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("auth.conf does not load into nats-server: %v", err)
	}
	if len(opts.Users) != 4 {
		t.Fatalf("%d users, want 4", len(opts.Users))
	}
	for _, u := range opts.Users {
		if !strings.HasPrefix(u.Password, "$2a$") {
			t.Errorf("%s: password not bcrypt-hashed", u.Username)
		}
		if u.Username == "worker-lab-a" && !contains(u.Permissions.Publish.Allow, "$JS.API.CONSUMER.MSG.NEXT.FLINGER_QUEUES_07.queue-qa-p2") {
			t.Errorf("worker may not take priority 2 jobs of its queue: %v", u.Permissions.Publish.Allow)
		}
	}
	// With --tls: a CA, certificates, and a tls.conf the server loads.
	code, text = runFlinger(t, "auth", "--host", host, "--out", out, "--tls", "localhost,127.0.0.1")
	if code != 0 {
		t.Fatalf("--tls: exit %d\n%s", code, text)
	}
	for _, f := range []string{"tls/ca.pem", "tls/server.pem", "tls/server-key.pem", "tls/worker-lab-a.pem", "tls/worker-lab-a-key.pem"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("--tls: %s: %v", f, err)
		}
	}
	if err := os.WriteFile(conf, []byte("include auth/auth.conf\ninclude auth/tls.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if opts, err := server.ProcessConfigFile(conf); err != nil || opts.TLSConfig == nil || opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("tls.conf: %v; want client certificates required and verified", err)
	}
	code, text = runFlinger(t, "auth", "--out", out)
	if code == 0 || !strings.Contains(text, "--host") {
		t.Errorf("without hosts: exit %d\n%s", code, text)
	}
}

func contains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

// TestExampleHostFile: the real lab host's example host file loads, and
// `flinger auth` makes its worker's user from it.
func TestExampleHostFile(t *testing.T) {
	out := t.TempDir()
	code, text := runFlinger(t, "auth", "--host", "../../deploy/host.example.yaml", "--out", out)
	if code != 0 || !strings.Contains(text, "worker-lab-host-3") {
		t.Fatalf("exit %d\n%s", code, text)
	}
	conf, err := os.ReadFile(filepath.Join(out, "auth.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"$KV.FLINGER_DEVICES.rpi4b-001"`, `"$KV.FLINGER_DEVICES.server-042"`, "queue-rpi4b-001"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("auth.conf lacks %s", want)
		}
	}
}

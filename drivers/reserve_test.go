package drivers_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
	"github.com/flingerlab/flinger/events"
)

// keyServer serves /lp/<user> and /gh/<user> from keys (404 for others)
// and counts the requests.
func keyServer(t *testing.T, keys map[string]string) (*httptest.Server, *atomic.Int32) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		k, ok := keys[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(k + "\n"))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// reserveDevice is a device reached at srv whose key servers are ks.
func reserveDevice(t *testing.T, srv *sshtest.Server, ks *httptest.Server) *drivers.DeviceConfig {
	t.Helper()
	host, port, err := net.SplitHostPort(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return &drivers.DeviceConfig{
		Name: "res-1", Type: "fake_connector", Queues: []string{"q"}, DeviceIP: host, SSHPort: p,
		Raw: events.Data{"reserve_ssh_timeout": 20},
		SSH: &drivers.SSHSettings{
			HostKeys:           srv.KnownHostsFile(),
			KeyFile:            srv.KeyFile,
			LaunchpadURL:       ks.URL + "/lp/%s",
			GitHubURL:          ks.URL + "/gh/%s",
			AuthorizedKeysHome: srv.HomeDir,
		},
	}
}

func TestBaseReserveInstallsKeys(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	alice := newSigner(t)
	aliceKey := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(alice.PublicKey())))
	ks, _ := keyServer(t, map[string]string{"/lp/alice": aliceKey + " alice@laptop"})
	dev := reserveDevice(t, srv, ks)
	job := &events.Job{JobID: "j-r", TestData: &events.TestData{TestUsername: srv.User},
		ReserveData: &events.ReserveData{SSHKeys: []string{"lp:alice"}, Timeout: 60}}
	run, out := drivertest.NewRun(t, dev, job)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := (drivers.Base{}).Reserve(ctx, run); err != nil {
		t.Fatalf("Reserve: %v\n%s", err, out)
	}
	for _, s := range []string{"Importing the ssh keys of lp:alice", "Installed 1 ssh keys", "ssh -p " + strconv.Itoa(dev.SSHPort) + " " + srv.User + "@127.0.0.1",
		"SSH keys for this reservation: lp:alice", "flinger cancel j-r"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	data, err := os.ReadFile(srv.AuthorizedKeysFile())
	if err != nil || !strings.Contains(string(data), aliceKey) {
		t.Fatalf("authorized_keys (%v) lacks alice's key:\n%s", err, data)
	}
	// Alice logs in with her own key.
	cfg := srv.Config()
	cfg.Signers = []ssh.Signer{alice}
	c, err := sshx.Dial(ctx, cfg, "res-1")
	if err != nil {
		t.Fatalf("login with the installed key: %v", err)
	}
	_ = c.Close()
}

func TestBaseReserveKeyErrors(t *testing.T) {
	t.Parallel()
	// An address nothing listens on: no test here may get as far as the device.
	ks, hits := keyServer(t, map[string]string{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close()
	dev := &drivers.DeviceConfig{Name: "res-2", DeviceIP: "127.0.0.1", SSHPort: addr.Port,
		SSH: &drivers.SSHSettings{HostKeys: "/dev/null", LaunchpadURL: ks.URL + "/lp/%s", GitHubURL: ks.URL + "/gh/%s"}}
	for _, tc := range []struct {
		name  string
		keys  []string
		want  string
		calls int32
	}{
		{"malformed", []string{"gh:ok", "lp:bad user"}, `reserve_data.ssh_keys[1]: ssh key id "lp:bad user" is malformed`, 0},
		{"not found", []string{"gh:nobody"}, "ssh key gh:nobody: the key server does not know this user", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := hits.Load()
			job := &events.Job{JobID: "j", ReserveData: &events.ReserveData{SSHKeys: tc.keys}}
			run, out := drivertest.NewRun(t, dev, job)
			err := (drivers.Base{}).Reserve(t.Context(), run)
			if err == nil || !strings.Contains(err.Error(), tc.want) || drivers.IsRecovery(err) {
				t.Errorf("Reserve = %v, want a phase failure with %q", err, tc.want)
			}
			if n := hits.Load() - before; n != tc.calls {
				t.Errorf("%d requests to the key server, want %d", n, tc.calls)
			}
			if strings.Contains(out.String(), "SYSTEM RESERVED") {
				t.Errorf("access instructions printed for a failed reservation:\n%s", out)
			}
		})
	}
}

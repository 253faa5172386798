package sshx_test

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
)

func TestTOFUAgainstSSHD(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	store := sshx.TOFU(filepath.Join(t.TempDir(), "tofu"))
	cfg := srv.Config()
	cfg.HostKeys = store
	dial := func() error {
		c, err := sshx.Dial(testCtx(t), cfg, "dev-a")
		if err == nil {
			_, err = c.Run(testCtx(t), []string{"true"}, nil, nil)
			_ = c.Close()
		}
		return err
	}
	recorded := func() string {
		k, err := store.Recorded("dev-a")
		if err != nil || k == nil {
			t.Fatalf("Recorded: %v, %v", k, err)
		}
		return ssh.FingerprintSHA256(k)
	}

	// First use records the key.
	if k, err := store.Recorded("dev-a"); k != nil || err != nil {
		t.Fatalf("a key is recorded before the first connection: %v, %v", k, err)
	}
	if err := dial(); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	first := srv.HostKeyFingerprint()
	if got := recorded(); got != first {
		t.Fatalf("recorded %s, want %s", got, first)
	}
	// The same key is accepted again.
	if err := dial(); err != nil {
		t.Fatalf("second connection: %v", err)
	}
	// A new host key (a re-provisioned device, or an impostor) is refused.
	srv.RegenerateHostKey()
	second := srv.HostKeyFingerprint()
	err := dial()
	var changed *sshx.HostKeyChangedError
	if !errors.As(err, &changed) {
		t.Fatalf("after the host key changed: %v, want a *HostKeyChangedError", err)
	}
	if changed.Device != "dev-a" || changed.Addr != srv.Addr || changed.Want != first || changed.Got != second {
		t.Errorf("HostKeyChangedError = %+v, want device dev-a, addr %s, want %s, got %s", changed, srv.Addr, first, second)
	}
	if got := recorded(); got != first {
		t.Errorf("a refused key replaced the record: %s", got)
	}
	// WaitForSSH does not retry it.
	start := time.Now()
	if _, err := sshx.WaitForSSH(testCtx(t), cfg, "dev-a", time.Second); !errors.As(err, &changed) {
		t.Errorf("WaitForSSH: %v, want a *HostKeyChangedError", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("WaitForSSH took %v: it should give up at once", d)
	}
	// After Reset the new key is recorded and accepted.
	if err := store.Reset("dev-a"); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Fatalf("after Reset: %v", err)
	}
	if got := recorded(); got != second {
		t.Errorf("recorded %s after Reset, want %s", got, second)
	}
	// Records are per device: another name for the same address is new.
	cfg2 := cfg
	if c, err := sshx.Dial(testCtx(t), cfg2, "dev-b"); err != nil {
		t.Errorf("another device: %v", err)
	} else {
		_ = c.Close()
	}
}

// TestTOFURecordedKeyTypeGone checks that a device that no longer offers
// the type of key recorded for it gets a *HostKeyChangedError, not a
// failed algorithm negotiation.
func TestTOFURecordedKeyTypeGone(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	store := sshx.TOFU(t.TempDir())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, err := ssh.NewPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Callback("dev")(srv.Addr, nil, rsaPub); err != nil {
		t.Fatal(err)
	}
	if got := store.HostKeyAlgorithms("dev", srv.Addr); !strings.Contains(strings.Join(got, ","), "rsa-sha2-512") {
		t.Fatalf("HostKeyAlgorithms = %q, want the RSA algorithms", got)
	}
	cfg := srv.Config()
	cfg.HostKeys = store
	_, err = sshx.Dial(testCtx(t), cfg, "dev")
	var changed *sshx.HostKeyChangedError
	if !errors.As(err, &changed) || changed.Want != ssh.FingerprintSHA256(rsaPub) || changed.Got != srv.HostKeyFingerprint() {
		t.Errorf("err = %v, want a *HostKeyChangedError from the RSA key to the server's", err)
	}
}

func TestPinnedKnownHosts(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	other := newSigner(t).PublicKey()
	dir := t.TempDir()
	write := func(lines ...string) string {
		p := filepath.Join(dir, fmt.Sprintf("known_hosts_%d", time.Now().UnixNano()))
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	host, _, _ := net.SplitHostPort(srv.Addr)
	for _, tc := range []struct {
		name      string
		file      string
		wantErr   error // nil: must connect
		wantOther bool  // some other error
	}{
		{"pinned", srv.KnownHostsFile(), nil, false},
		{"pinned hashed", write(knownhosts.Line([]string{knownhosts.HashHostname(knownhosts.Normalize(srv.Addr))}, srv.HostKey())), nil, false},
		{"pinned among others", write(
			knownhosts.Line([]string{"[10.9.9.9]:22"}, other),
			knownhosts.Line([]string{srv.Addr}, srv.HostKey())), nil, false},
		{"empty file", write(""), sshx.ErrUnknownHost, false},
		{"other host only", write(knownhosts.Line([]string{"[" + host + "]:1"}, srv.HostKey())), sshx.ErrUnknownHost, false},
		{"other key", write(knownhosts.Line([]string{srv.Addr}, other)), &sshx.HostKeyChangedError{}, false},
		{"revoked", write("@revoked * "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(srv.HostKey()))), knownhosts.Line([]string{srv.Addr}, srv.HostKey())), nil, true},
		{"missing file", filepath.Join(dir, "missing"), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := srv.Config()
			cfg.HostKeys = sshx.PinnedKnownHosts(tc.file)
			c, err := sshx.Dial(testCtx(t), cfg, "dev")
			if c != nil {
				defer c.Close()
			}
			var changed *sshx.HostKeyChangedError
			switch {
			case tc.wantOther:
				if err == nil || errors.Is(err, sshx.ErrUnknownHost) || errors.As(err, &changed) {
					t.Errorf("err = %v, want another error", err)
				}
			case tc.wantErr == nil:
				if err != nil {
					t.Errorf("err = %v", err)
				}
			case errors.Is(tc.wantErr, sshx.ErrUnknownHost):
				if !errors.Is(err, sshx.ErrUnknownHost) {
					t.Errorf("err = %v, want ErrUnknownHost", err)
				}
			default:
				if !errors.As(err, &changed) || changed.Want != ssh.FingerprintSHA256(other) || changed.Got != srv.HostKeyFingerprint() {
					t.Errorf("err = %v, want a *HostKeyChangedError", err)
				}
			}
		})
	}
	if err := sshx.PinnedKnownHosts(srv.KnownHostsFile()).Reset("dev"); err != nil {
		t.Errorf("Reset: %v", err)
	}
}

func TestKnownHostsAlgorithms(t *testing.T) {
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, _ := ssh.NewPublicKey(&rsaKey.PublicKey)
	ed := newSigner(t).PublicKey()
	p := filepath.Join(dir, "known_hosts")
	content := knownhosts.Line([]string{"10.0.0.1"}, ed) + "\n" + knownhosts.Line([]string{"10.0.0.1"}, rsaPub) + "\n"
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	kh := sshx.PinnedKnownHosts(p)
	got := strings.Join(kh.HostKeyAlgorithms("dev", "10.0.0.1:22"), ",")
	if got != "ssh-ed25519,rsa-sha2-512,rsa-sha2-256,ssh-rsa" {
		t.Errorf("HostKeyAlgorithms = %s", got)
	}
	if got := kh.HostKeyAlgorithms("dev", "10.0.0.2:22"); got != nil {
		t.Errorf("HostKeyAlgorithms of an unknown host = %q, want nil", got)
	}
}

func TestTOFUStore(t *testing.T) {
	keyA, keyB := newSigner(t).PublicKey(), newSigner(t).PublicKey()

	t.Run("names map to distinct files inside the directory", func(t *testing.T) {
		dir := t.TempDir()
		store := sshx.TOFU(dir)
		names := []string{"dev", ".", "..", "../escape", "a/b", "xA", "x%41", "ünï", "with space", "-dash", ".hidden"}
		for _, n := range names {
			if err := store.Callback(n)("h:22", nil, keyA); err != nil {
				t.Fatalf("%q: %v", n, err)
			}
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != len(names) {
			t.Errorf("%d files for %d devices", len(entries), len(names))
		}
		for _, n := range names {
			if err := store.Callback(n)("h:22", nil, keyB); err == nil {
				t.Errorf("%q: another key accepted", n)
			}
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape.hostkey")); err == nil {
			t.Error("a record escaped the directory")
		}
		if err := store.Callback("")("h:22", nil, keyA); err == nil {
			t.Error("empty device name accepted")
		}
	})

	t.Run("concurrent first use records one key", func(t *testing.T) {
		dir := t.TempDir()
		var wg sync.WaitGroup
		errs := make([]error, 40)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A store each, as separate worker processes would have.
				key := keyA
				if i%2 == 1 {
					key = keyB
				}
				errs[i] = sshx.TOFU(dir).Callback("dev")("h:22", nil, key)
			}()
		}
		wg.Wait()
		rec, err := sshx.TOFU(dir).Recorded("dev")
		if err != nil || rec == nil {
			t.Fatalf("Recorded: %v, %v", rec, err)
		}
		for i, err := range errs {
			winner := (i%2 == 0) == (ssh.FingerprintSHA256(rec) == ssh.FingerprintSHA256(keyA))
			if winner != (err == nil) {
				t.Errorf("caller %d: err %v (recorded %s)", i, err, ssh.FingerprintSHA256(rec))
			}
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Errorf("directory holds %d files, want the record only", len(entries))
		}
	})

	t.Run("corrupt record is refused until reset", func(t *testing.T) {
		dir := t.TempDir()
		store := sshx.TOFU(dir)
		if err := store.Callback("dev")("h:22", nil, keyA); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(dir)
		if err := os.WriteFile(filepath.Join(dir, entries[0].Name()), []byte("garbage\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := store.Callback("dev")("h:22", nil, keyA); err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("corrupt record: %v", err)
		}
		if err := store.Reset("dev"); err != nil {
			t.Fatal(err)
		}
		if err := store.Callback("dev")("h:22", nil, keyA); err != nil {
			t.Errorf("after Reset: %v", err)
		}
		if err := store.Reset("never-seen"); err != nil {
			t.Errorf("Reset of an unknown device: %v", err)
		}
	})
}

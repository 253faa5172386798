package sshx_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
)

// countKey returns how many lines of an authorized_keys file hold key.
func countKey(t *testing.T, path string, key ssh.PublicKey) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blob := strings.Fields(string(ssh.MarshalAuthorizedKey(key)))[1]
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, blob) {
			n++
		}
	}
	return n
}

func TestInstallAuthorizedKeys(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	file := srv.AuthorizedKeysFile()
	dir := remoteDir(t)

	// The existing file lacks its final newline and has loose modes.
	orig, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(strings.TrimRight(string(orig), "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}

	k2, k3 := newSigner(t), newSigner(t)
	keys := []string{
		// A hostile comment is stored as it is and runs nothing.
		authorizedLine(k2, "bob@lab $(touch "+dir+"/PWNED) `touch "+dir+"/PWNED2`; touch "+dir+"/PWNED3 'q' \"dq\""),
		authorizedLine(k2, "same key, other comment"),
		"no-pty,from=\"127.0.0.1\" " + authorizedLine(k3, "with options"),
		"  " + authorizedLine(srv.Signer, "already there") + "  ",
	}
	for round, want := range []int{2, 0} {
		added, err := sshx.InstallAuthorizedKeys(testCtx(t), c, keys, sshx.WithHome(srv.HomeDir))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if added != want {
			t.Errorf("round %d: added %d, want %d", round, added, want)
		}
	}
	for _, k := range []ssh.Signer{srv.Signer, k2, k3} {
		if n := countKey(t, file, k.PublicKey()); n != 1 {
			t.Errorf("key %s appears %d times", ssh.FingerprintSHA256(k.PublicKey()), n)
		}
	}
	data, _ := os.ReadFile(file)
	if !strings.Contains(string(data), keys[0]+"\n") || !strings.Contains(string(data), keys[2]+"\n") {
		t.Errorf("keys not stored verbatim:\n%s", data)
	}
	if !strings.HasPrefix(string(data), strings.TrimRight(string(orig), "\n")+"\n") {
		t.Errorf("the existing key was changed:\n%s", data)
	}
	for path, want := range map[string]os.FileMode{file: 0o600, filepath.Dir(file): 0o700} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, %v, want %v", path, st.Mode().Perm(), err, want)
		}
	}
	dirHolds(t, dir)

	// The new keys log in.
	for _, k := range []ssh.Signer{k2, k3} {
		cfg := srv.Config()
		cfg.Signers = []ssh.Signer{k}
		nc, err := sshx.Dial(testCtx(t), cfg, "dev")
		if err != nil {
			t.Errorf("logging in with an installed key: %v", err)
			continue
		}
		nc.Close()
	}
}

func TestInstallAuthorizedKeysCreates(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	home := remoteDir(t)
	k := newSigner(t)
	added, err := sshx.InstallAuthorizedKeys(testCtx(t), c, []string{authorizedLine(k, "")}, sshx.WithHome(home))
	if err != nil || added != 1 {
		t.Fatalf("added %d, %v", added, err)
	}
	file := filepath.Join(home, ".ssh", "authorized_keys")
	data, err := os.ReadFile(file)
	if err != nil || string(data) != authorizedLine(k, "")+"\n" {
		t.Errorf("file holds %q, %v", data, err)
	}
	for path, want := range map[string]os.FileMode{file: 0o600, filepath.Dir(file): 0o700} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v, want mode %v", path, err, want)
		}
	}
}

func TestInstallAuthorizedKeysRejectsBadKeys(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	home := remoteDir(t)
	good := authorizedLine(newSigner(t), "ok")
	for _, tc := range []struct {
		name string
		key  string
	}{
		{"empty", ""},
		{"garbage", "not a key"},
		{"truncated", good[:40]},
		{"two lines", good + "\n" + good},
		{"carriage return", good + " a\rb"},
		{"shell", "$(touch " + home + "/PWNED)"},
		{"nul", good + "\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := sshx.InstallAuthorizedKeys(testCtx(t), c, []string{good, tc.key}, sshx.WithHome(home)); err == nil || !strings.Contains(err.Error(), "key 1") {
				t.Errorf("err = %v, want one naming key 1", err)
			}
		})
	}
	// Nothing was done: not even the good key was installed.
	dirHolds(t, home)
	if added, err := sshx.InstallAuthorizedKeys(testCtx(t), c, nil, sshx.WithHome(home)); added != 0 || err != nil {
		t.Errorf("no keys: %d, %v", added, err)
	}
	dirHolds(t, home)
}

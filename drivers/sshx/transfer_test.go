package sshx_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
)

// transferServers runs f against a server with SFTP and one without (cat).
func transferServers(t *testing.T, f func(t *testing.T, srv *sshtest.Server, c *sshx.Client)) {
	for _, tc := range []struct {
		name string
		opts sshtest.Options
	}{
		{"sftp", sshtest.Options{}},
		{"cat", sshtest.Options{NoSFTP: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := sshtest.Start(t, tc.opts)
			f(t, srv, srv.Dial(testCtx(t), "dev"))
		})
	}
}

func randomData(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUploadDownloadRoundTrip(t *testing.T) {
	transferServers(t, func(t *testing.T, srv *sshtest.Server, c *sshx.Client) {
		dir := remoteDir(t)
		for _, tc := range []struct {
			name string
			size int
			mode os.FileMode
			want os.FileMode
		}{
			{"3MiB.bin", 3<<20 + 17, 0o640, 0o640},
			{"empty", 0, 0o600, 0o600},
			{"it's $(touch PWNED) `x`; y.bin", 1000, 0o755, 0o755},
			{"default-mode", 10, 0, 0o644},
		} {
			t.Run(tc.name, func(t *testing.T) {
				data := randomData(t, tc.size)
				remote := filepath.Join(dir, tc.name)
				if err := c.Upload(testCtx(t), bytes.NewReader(data), remote, tc.mode); err != nil {
					t.Fatal(err)
				}
				// The server is this machine: look at the file directly.
				st, err := os.Stat(remote)
				if err != nil {
					t.Fatal(err)
				}
				if st.Mode().Perm() != tc.want {
					t.Errorf("mode %v, want %v", st.Mode().Perm(), tc.want)
				}
				onDisk, err := os.ReadFile(remote)
				if err != nil {
					t.Fatal(err)
				}
				if sha256.Sum256(onDisk) != sha256.Sum256(data) {
					t.Fatalf("uploaded file differs (%d bytes, want %d)", len(onDisk), len(data))
				}
				var back bytes.Buffer
				if err := c.Download(testCtx(t), remote, &back); err != nil {
					t.Fatal(err)
				}
				if sha256.Sum256(back.Bytes()) != sha256.Sum256(data) {
					t.Fatalf("downloaded file differs (%d bytes, want %d)", back.Len(), len(data))
				}
			})
		}
		// Replacing a file works, and no temporary file is left behind.
		remote := filepath.Join(dir, "default-mode")
		if err := c.Upload(testCtx(t), bytes.NewReader([]byte("new")), remote, 0o600); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(remote); string(got) != "new" {
			t.Errorf("replaced file holds %q", got)
		}
		dirHolds(t, dir, "3MiB.bin", "default-mode", "empty", "it's $(touch PWNED) `x`; y.bin")
	})
}

func TestDownloadMissingFile(t *testing.T) {
	transferServers(t, func(t *testing.T, srv *sshtest.Server, c *sshx.Client) {
		var w bytes.Buffer
		err := c.Download(testCtx(t), filepath.Join(remoteDir(t), "missing"), &w)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want fs.ErrNotExist", err)
		}
	})
}

// failingReader returns n bytes, then an error.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	k := min(len(p), r.n)
	r.n -= k
	return k, nil
}

func TestUploadFailingReaderLeavesNothing(t *testing.T) {
	transferServers(t, func(t *testing.T, srv *sshtest.Server, c *sshx.Client) {
		dir := remoteDir(t)
		remote := filepath.Join(dir, "target")
		if err := os.WriteFile(remote, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		err := c.Upload(testCtx(t), &failingReader{n: 1 << 20}, remote, 0o644)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk on fire")) {
			t.Errorf("err = %v, want the reader's error", err)
		}
		if got, _ := os.ReadFile(remote); string(got) != "old" {
			t.Errorf("target holds %d bytes, want it untouched", len(got))
		}
		dirHolds(t, dir, "target")
	})
}

// slowReader yields a byte every 10 ms, forever.
type slowReader struct{}

func (slowReader) Read(p []byte) (int, error) {
	time.Sleep(10 * time.Millisecond)
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = 'x'
	return 1, nil
}

func TestUploadCancelled(t *testing.T) {
	transferServers(t, func(t *testing.T, srv *sshtest.Server, c *sshx.Client) {
		dir := remoteDir(t)
		ctx, cancel := context.WithTimeout(testCtx(t), 500*time.Millisecond)
		defer cancel()
		err := c.Upload(ctx, slowReader{}, filepath.Join(dir, "never"), 0o644)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want DeadlineExceeded", err)
		}
		dl, _ := ctx.Deadline()
		if d := time.Since(dl); d > 10*time.Second {
			t.Errorf("took %v after the deadline to return", d)
		}
		// The partial upload is removed (right away for SFTP; the cat
		// fallback's cat may take a moment to see its input end).
		deadline := time.Now().Add(10 * time.Second)
		for {
			entries, _ := os.ReadDir(dir)
			if len(entries) == 0 {
				break
			}
			if time.Now().After(deadline) {
				dirHolds(t, dir)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

func TestUploadInvalidPath(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	for _, p := range []string{"", "dir/", "nul\x00"} {
		if err := c.Upload(testCtx(t), bytes.NewReader(nil), p, 0o644); err == nil {
			t.Errorf("Upload to %q: no error", p)
		}
	}
	if err := c.Download(testCtx(t), "", io.Discard); err == nil {
		t.Error("Download of \"\": no error")
	}
}

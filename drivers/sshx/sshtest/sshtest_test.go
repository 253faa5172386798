package sshtest

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// recorder is a testing.TB that records Skipf and Fatalf.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestRequire(t *testing.T) {
	for _, tc := range []struct {
		ci, path             string
		wantSkip, wantFailed bool
	}{
		{"", "/nonexistent/sshd", true, false},
		{"true", "/nonexistent/sshd", false, true},
		{"", "/", false, false},
		{"true", "/", false, false},
	} {
		t.Run(fmt.Sprintf("CI=%q %s", tc.ci, tc.path), func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				require(r, tc.path, "openssh-server")
			}()
			<-done
			if (r.skipped != "") != tc.wantSkip || (r.failed != "") != tc.wantFailed {
				t.Errorf("skipped %q, failed %q", r.skipped, r.failed)
			}
			if msg := r.skipped + r.failed; msg != "" && !strings.Contains(msg, "openssh-server") {
				t.Errorf("message %q does not name the package", msg)
			}
		})
	}
}

func TestServer(t *testing.T) {
	srv := Start(t, Options{})
	if srv.User == "" || srv.Signer == nil || srv.HostKey() == nil || !strings.HasPrefix(srv.HostKeyFingerprint(), "SHA256:") {
		t.Fatalf("incomplete server: %+v", srv)
	}
	c := srv.Dial(t.Context(), "dev")
	var out strings.Builder
	if _, err := c.Run(t.Context(), []string{"echo", "hello"}, &out, nil); err != nil || out.String() != "hello\n" {
		t.Fatalf("Run: %q, %v", out.String(), err)
	}
	old := srv.HostKeyFingerprint()
	srv.RegenerateHostKey()
	if srv.HostKeyFingerprint() == old {
		t.Error("the host key did not change")
	}
	// Config pins the new key.
	c2 := srv.Dial(t.Context(), "dev")
	if _, err := c2.Run(t.Context(), []string{"true"}, nil, nil); err != nil {
		t.Error(err)
	}
	srv.Stop()
	srv.Stop() // twice is fine
	if sshx.Answers(t.Context(), srv.Addr, 2*time.Second) == nil {
		t.Error("the server still answers after Stop")
	}
}

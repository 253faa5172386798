package sshx_test

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
)

func TestDialAuth(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	for _, tc := range []struct {
		name    string
		edit    func(*sshx.Config)
		wantErr error // nil: must connect
	}{
		{"signer", func(*sshx.Config) {}, nil},
		{"key file", func(c *sshx.Config) { c.Signers = nil; c.KeyFiles = []string{srv.KeyFile} }, nil},
		{"wrong key", func(c *sshx.Config) { c.Signers = []ssh.Signer{newSigner(t)} }, sshx.ErrAuth},
		{"wrong then right key", func(c *sshx.Config) { c.Signers = []ssh.Signer{newSigner(t), srv.Signer} }, nil},
		{"user not allowed", func(c *sshx.Config) { c.User = "nobody" }, sshx.ErrAuth},
		{"password refused", func(c *sshx.Config) { c.Signers = nil; c.Password = "ubuntu" }, sshx.ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := srv.Config()
			tc.edit(&cfg)
			c, err := sshx.Dial(testCtx(t), cfg, "dev")
			if c != nil {
				defer c.Close()
			}
			if tc.wantErr == nil && err != nil {
				t.Fatalf("err = %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestDialConfigErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, priv := newEd25519(t)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(dir, "locked")
	if err := os.WriteFile(locked, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	policy := sshx.TOFU(dir)
	good := sshx.Config{Addr: "127.0.0.1:1", User: "u", Password: "p", HostKeys: policy}
	for _, tc := range []struct {
		name string
		edit func(*sshx.Config)
		want string
	}{
		{"no addr", func(c *sshx.Config) { c.Addr = "" }, "Addr is required"},
		{"bad addr", func(c *sshx.Config) { c.Addr = "a b:22" }, "not host or host:port"},
		{"empty port", func(c *sshx.Config) { c.Addr = "host:" }, "empty host or port"},
		{"no user", func(c *sshx.Config) { c.User = "" }, "User is required"},
		{"no host key policy", func(c *sshx.Config) { c.HostKeys = nil }, "HostKeys is required"},
		{"no auth", func(c *sshx.Config) { c.Password = "" }, "no authentication method"},
		{"missing key file", func(c *sshx.Config) { c.KeyFiles = []string{filepath.Join(dir, "missing")} }, "reading key file"},
		{"garbage key file", func(c *sshx.Config) { c.KeyFiles = []string{garbage} }, garbage},
		{"passphrase key file", func(c *sshx.Config) { c.KeyFiles = []string{locked} }, "passphrase"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			_, err := sshx.Dial(testCtx(t), cfg, "dev")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
			_, err = sshx.WaitForSSH(testCtx(t), cfg, "dev", time.Millisecond)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("WaitForSSH: err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// silentListener accepts connections and never says anything.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

func TestDialStops(t *testing.T) {
	addr := silentListener(t)
	cfg := sshx.Config{Addr: addr, User: "u", Password: "p", HostKeys: sshx.TOFU(t.TempDir())}

	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testCtx(t))
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		_, err := sshx.Dial(ctx, cfg, "dev")
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("dial timeout", func(t *testing.T) {
		cfg := cfg
		cfg.DialTimeout = 300 * time.Millisecond
		start := time.Now()
		_, err := sshx.Dial(testCtx(t), cfg, "dev")
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
			t.Errorf("err = %v, want a timeout wrapping DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("done context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testCtx(t))
		cancel()
		if _, err := sshx.Dial(ctx, cfg, "dev"); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := l.Addr().String()
		l.Close()
		cfg := cfg
		cfg.Addr = closed
		_, err = sshx.Dial(testCtx(t), cfg, "dev")
		if err == nil || errors.Is(err, sshx.ErrAuth) || !strings.Contains(err.Error(), "connecting") {
			t.Errorf("err = %v, want a connection error", err)
		}
	})
}

func TestWaitForSSH(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	cfg := srv.Config()

	t.Run("device boots", func(t *testing.T) {
		srv.Stop()
		restarted := make(chan struct{})
		go func() {
			time.Sleep(1500 * time.Millisecond)
			srv.Restart()
			close(restarted)
		}()
		start := time.Now()
		c, err := sshx.WaitForSSH(testCtx(t), cfg, "dev", 200*time.Millisecond)
		<-restarted
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if d := time.Since(start); d < 1500*time.Millisecond {
			t.Errorf("connected after %v, before the server was back", d)
		}
		if _, err := c.Run(testCtx(t), []string{"true"}, nil, nil); err != nil {
			t.Error(err)
		}
	})
	t.Run("never boots", func(t *testing.T) {
		srv.Stop()
		defer srv.Restart()
		ctx, cancel := context.WithTimeout(testCtx(t), time.Second)
		defer cancel()
		_, err := sshx.WaitForSSH(ctx, cfg, "dev", 100*time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connecting") {
			t.Errorf("err = %v, want DeadlineExceeded and the last connection error", err)
		}
	})
	t.Run("unknown host is not retried", func(t *testing.T) {
		cfg := cfg
		empty := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(empty, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.HostKeys = sshx.PinnedKnownHosts(empty)
		ctx, cancel := context.WithTimeout(testCtx(t), time.Minute)
		defer cancel()
		start := time.Now()
		_, err := sshx.WaitForSSH(ctx, cfg, "dev", 10*time.Second)
		if !errors.Is(err, sshx.ErrUnknownHost) {
			t.Errorf("err = %v, want ErrUnknownHost", err)
		}
		if d := time.Since(start); d > 9*time.Second {
			t.Errorf("took %v: it was retried", d)
		}
	})
}

// fakeServer is an in-process SSH server (golang.org/x/crypto/ssh), for
// what a real sshd cannot be made to do here: password logins (the test
// user has no password), and stalling.
type fakeServer struct {
	addr    string
	hostKey ssh.Signer
}

// startFakeServer serves password and keyboard-interactive logins for
// user "ubuntu" with password "ubuntu"; each session's exec replies
// "ok" and exit status 0. When stall is set, it answers nothing after
// the handshake.
func startFakeServer(t *testing.T, stall bool) *fakeServer {
	t.Helper()
	hostKey := newSigner(t)
	cfg := &ssh.ServerConfig{
		PasswordCallback: func(m ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if m.User() == "ubuntu" && string(pw) == "ubuntu" {
				return nil, nil
			}
			return nil, errors.New("wrong password")
		},
		KeyboardInteractiveCallback: func(m ssh.ConnMetadata, client ssh.KeyboardInteractiveChallenge) (*ssh.Permissions, error) {
			answers, err := client(m.User(), "", []string{"Password: "}, []bool{false})
			if err == nil && m.User() == "ubuntu" && len(answers) == 1 && answers[0] == "ubuntu" {
				return nil, nil
			}
			return nil, errors.New("wrong password")
		},
	}
	cfg.AddHostKey(hostKey)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				sc, chans, reqs, err := ssh.NewServerConn(conn, cfg)
				if err != nil {
					return
				}
				defer sc.Close()
				if stall {
					// Read nothing more: keepalives go unanswered. The
					// connection ends when the client closes it.
					_ = sc.Wait()
					return
				}
				go ssh.DiscardRequests(reqs)
				for nc := range chans {
					ch, creqs, err := nc.Accept()
					if err != nil {
						continue
					}
					go func() {
						defer ch.Close()
						for r := range creqs {
							if r.Type != "exec" {
								_ = r.Reply(false, nil)
								continue
							}
							_ = r.Reply(true, nil)
							_, _ = io.WriteString(ch, "ok\n")
							_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
							return
						}
					}()
				}
			}()
		}
	}()
	return &fakeServer{addr: l.Addr().String(), hostKey: hostKey}
}

func TestDialPassword(t *testing.T) {
	srv := startFakeServer(t, false)
	for _, tc := range []struct {
		user, password string
		wantErr        error
	}{
		{"ubuntu", "ubuntu", nil},
		{"ubuntu", "wrong", sshx.ErrAuth},
		{"root", "ubuntu", sshx.ErrAuth},
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.user, tc.password), func(t *testing.T) {
			cfg := sshx.Config{Addr: srv.addr, User: tc.user, Password: tc.password, HostKeys: sshx.TOFU(t.TempDir())}
			c, err := sshx.Dial(testCtx(t), cfg, "dev")
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if c == nil {
				return
			}
			defer c.Close()
			var out strings.Builder
			if _, err := c.Run(testCtx(t), []string{"anything"}, &out, nil); err != nil || out.String() != "ok\n" {
				t.Errorf("Run: %q, %v", out.String(), err)
			}
		})
	}
}

func TestKeepAliveClosesDeadConnection(t *testing.T) {
	srv := startFakeServer(t, true)
	cfg := sshx.Config{Addr: srv.addr, User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()),
		KeepAlive: 100 * time.Millisecond}
	c, err := sshx.Dial(testCtx(t), cfg, "dev")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The server answers nothing: without keepalives this would hang
	// until testCtx ends.
	start := time.Now()
	_, err = c.Run(testCtx(t), []string{"true"}, nil, nil)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a closed connection", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to notice", d)
	}
}

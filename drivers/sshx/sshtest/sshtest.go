// Package sshtest runs a real OpenSSH server (Debian's openssh-server) on
// a loopback port for tests of code that reaches devices over SSH.
//
//	srv := sshtest.Start(t, sshtest.Options{})
//	c, err := sshx.Dial(ctx, srv.Config(), "dev-1")
//
// The server lets in only the user running the test, with the key it
// generates (Server.Signer, Server.KeyFile), reads authorized_keys from
// Server.HomeDir (a temporary directory: the real ~/.ssh is never read or
// written) and is stopped when the test ends. Sessions still run as the
// real user, in their real home directory: tests should use absolute paths
// under their own temporary directories.
//
// When /usr/sbin/sshd is missing, Start skips the test, unless the CI
// environment variable is set: then it fails, since CI must install
// openssh-server.
package sshtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// Paths of the OpenSSH programs, as Debian's openssh-server and
// openssh-sftp-server packages install them.
const (
	SSHDPath       = "/usr/sbin/sshd"
	SFTPServerPath = "/usr/lib/openssh/sftp-server"
)

// How long the server is given to start and to stop.
const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
)

// Options change the server Start runs.
type Options struct {
	// NoSFTP leaves out the sftp subsystem, to test fallbacks that do
	// without it.
	NoSFTP bool
}

// Server is a running sshd.
type Server struct {
	// Addr is the server's 127.0.0.1:port.
	Addr string
	// User is the user the server lets in: the one running the test.
	User string
	// KeyFile is the user's private key (OpenSSH format, mode 0600).
	KeyFile string
	// Signer is the same key, ready for sshx.Config.Signers.
	Signer ssh.Signer
	// HomeDir is the temporary directory whose .ssh/authorized_keys the
	// server reads (see sshx.WithHome); it holds Signer's public key.
	HomeDir string
	// Dir is the server's temporary directory (config, keys, log).
	Dir string

	t       testing.TB
	opts    Options
	port    int
	cfgPath string
	logPath string

	mu      sync.Mutex
	hostKey ssh.PublicKey
	proc    *process
}

// process is one sshd run.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts an sshd for the test and stops it when the test ends. It
// skips the test when sshd is not installed and CI is not set, and fails
// it in every other case where the server does not start.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	require(t, SSHDPath, "openssh-server")
	if !opts.NoSFTP {
		require(t, SFTPServerPath, "openssh-sftp-server")
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshtest: current user: %v", err)
	}
	if os.Geteuid() == 0 {
		// sshd running as root needs its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
	}
	// A short path of our own rather than t.TempDir(): it goes in
	// sshd_config, where '%' and spaces would need care.
	dir, err := os.MkdirTemp("", "sshtest-")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	s := &Server{
		User:    u.Username,
		Dir:     dir,
		HomeDir: filepath.Join(dir, "home"),
		KeyFile: filepath.Join(dir, "user_key"),
		t:       t,
		opts:    opts,
		cfgPath: filepath.Join(dir, "sshd_config"),
		logPath: filepath.Join(dir, "sshd.log"),
	}
	var pub ssh.PublicKey
	if s.Signer, pub, err = writeKey(s.KeyFile); err != nil {
		t.Fatalf("sshtest: user key: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(s.HomeDir, ".ssh"), 0o700); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	if err := os.WriteFile(s.AuthorizedKeysFile(), ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	if err := s.newHostKey(); err != nil {
		t.Fatalf("sshtest: host key: %v", err)
	}

	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("sshtest: sshd log:\n%s", s.Log())
		}
	})
	// A free port may be taken between finding and binding it: try again.
	for try := 1; ; try++ {
		if s.port, err = freePort(); err == nil {
			s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
			if err = s.start(); err == nil {
				break
			}
		}
		if try == 3 {
			t.Fatalf("sshtest: starting sshd: %v\nsshd log:\n%s", err, s.Log())
		}
	}
	return s
}

// require skips or fails the test when path is missing.
func require(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skipf("sshtest: %s not found: install Debian's %s package to run this test (apt-get install openssh-server)", path, pkg)
	}
	t.Fatalf("sshtest: %s not found, and CI is set: CI must install Debian's %s package", path, pkg)
}

// writeKey generates an ed25519 key and writes it to path.
func writeKey(path string) (ssh.Signer, ssh.PublicKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "sshtest")
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return signer, signer.PublicKey(), nil
}

// newHostKey generates a new host key, replacing the old one (sshd reads
// it when it starts).
func (s *Server) newHostKey() error {
	path := filepath.Join(s.Dir, "host_ed25519_key")
	_ = os.Remove(path)
	_, pub, err := writeKey(path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.hostKey = pub
	s.mu.Unlock()
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeConfig writes sshd_config.
func (s *Server) writeConfig() error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# sshd_config written by sshtest")
	p("Port %d", s.port)
	p("ListenAddress 127.0.0.1")
	p("HostKey %q", filepath.Join(s.Dir, "host_ed25519_key"))
	p("PidFile %q", filepath.Join(s.Dir, "sshd.pid"))
	p("AuthorizedKeysFile %q", s.AuthorizedKeysFile())
	p("AllowUsers %s", s.User)
	p("StrictModes no")
	p("UsePAM no")
	p("PubkeyAuthentication yes")
	p("PasswordAuthentication no")
	p("KbdInteractiveAuthentication no")
	p("PermitRootLogin prohibit-password")
	p("PermitUserEnvironment no")
	p("UseDNS no")
	p("PrintMotd no")
	p("PrintLastLog no")
	p("X11Forwarding no")
	p("MaxStartups 100")
	p("MaxSessions 100")
	p("LogLevel VERBOSE")
	if !s.opts.NoSFTP {
		p("Subsystem sftp %s", SFTPServerPath)
	}
	return os.WriteFile(s.cfgPath, []byte(b.String()), 0o600)
}

// start runs sshd and waits until it answers on its port.
func (s *Server) start() error {
	if err := s.writeConfig(); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(SSHDPath, "-D", "-e", "-f", s.cfgPath)
	// A file, not a pipe, so that Wait does not wait for the connection
	// processes, which inherit it.
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", SSHDPath, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("sshd exited at start: %v", p.err)
		default:
		}
		if sshx.Answers(context.Background(), s.Addr, 2*time.Second) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("sshd did not answer on %s within %v", s.Addr, startTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server (connections already made keep their own
// processes until they close). Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(stopTimeout):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
}

// Restart stops the server if it runs and starts it again on the same
// port, with its current host key.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	for try := 1; try <= 5; try++ {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("sshtest: restarting sshd: %v\nsshd log:\n%s", err, s.Log())
}

// RegenerateHostKey gives the server a new host key and restarts it, as
// re-provisioning a device does. KnownHostsFile then pins the new key.
func (s *Server) RegenerateHostKey() {
	s.t.Helper()
	if err := s.newHostKey(); err != nil {
		s.t.Fatalf("sshtest: host key: %v", err)
	}
	s.Restart()
}

// HostKey returns the server's current host key.
func (s *Server) HostKey() ssh.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hostKey
}

// HostKeyFingerprint returns the SHA256 fingerprint of the server's
// current host key, as ssh-keygen -l prints it.
func (s *Server) HostKeyFingerprint() string {
	return ssh.FingerprintSHA256(s.HostKey())
}

// AuthorizedKeysFile returns the authorized_keys file the server reads:
// HomeDir/.ssh/authorized_keys.
func (s *Server) AuthorizedKeysFile() string {
	return filepath.Join(s.HomeDir, ".ssh", "authorized_keys")
}

// KnownHostsFile writes a known_hosts file pinning the server's current
// host key for its address and returns its path.
func (s *Server) KnownHostsFile() string {
	s.t.Helper()
	path := filepath.Join(s.Dir, "known_hosts")
	line := knownhosts.Line([]string{s.Addr}, s.HostKey()) + "\n"
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		s.t.Fatalf("sshtest: %v", err)
	}
	return path
}

// Config returns a configuration that logs in to the server with Signer
// and accepts only its current host key (PinnedKnownHosts of
// KnownHostsFile).
func (s *Server) Config() sshx.Config {
	s.t.Helper()
	return sshx.Config{
		Addr:        s.Addr,
		User:        s.User,
		Signers:     []ssh.Signer{s.Signer},
		HostKeys:    sshx.PinnedKnownHosts(s.KnownHostsFile()),
		DialTimeout: 15 * time.Second,
	}
}

// Dial connects to the server with Config as device, failing the test if
// it cannot, and closes the client when the test ends.
func (s *Server) Dial(ctx context.Context, device string) *sshx.Client {
	s.t.Helper()
	c, err := sshx.Dial(ctx, s.Config(), device)
	if err != nil {
		s.t.Fatalf("sshtest: dialling %s: %v\nsshd log:\n%s", s.Addr, err, s.Log())
	}
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Log returns what sshd has logged so far.
func (s *Server) Log() string {
	data, err := os.ReadFile(s.logPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("(reading the log: %v)", err)
	}
	return string(data)
}

package sshx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults for the zero values of Config.
const (
	// DefaultPort is the port used when Config.Addr has none.
	DefaultPort = "22"
	// DefaultDialTimeout bounds connecting and the SSH handshake.
	DefaultDialTimeout = 30 * time.Second
	// DefaultKeepAlive is the interval between keepalive requests.
	DefaultKeepAlive = 15 * time.Second
	// keepAliveMisses is how many keepalive intervals may pass without an
	// answer before the connection is declared dead and closed.
	keepAliveMisses = 3
)

// ErrAuth reports that the server refused every authentication method
// offered (wrong user, password or key). Test with errors.Is.
var ErrAuth = errors.New("authentication refused")

// Config says how to reach one SSH server.
type Config struct {
	// Addr is host:port; a bare host (or IPv6 address) means port 22.
	Addr string
	// User is the user to log in as. Required.
	User string
	// Password, when not empty, is offered with the password and
	// keyboard-interactive methods (after any keys).
	Password string
	// KeyFiles are private key files (OpenSSH or PEM format, without a
	// passphrase) to offer.
	KeyFiles []string
	// Signers are private keys to offer, before those of KeyFiles.
	Signers []ssh.Signer
	// HostKeys checks the server's host key. Required: see
	// PinnedKnownHosts and TOFU.
	HostKeys HostKeyPolicy
	// DialTimeout bounds connecting and the handshake (0: DefaultDialTimeout).
	DialTimeout time.Duration
	// KeepAlive is the interval between SSH keepalive requests on an
	// established connection (0: DefaultKeepAlive; negative: none). A
	// connection that leaves three in a row unanswered is closed, so that
	// calls on a dead device fail instead of hanging.
	KeepAlive time.Duration
	// Log receives the client's diagnostics (nil: discarded).
	Log *slog.Logger
}

// dialer is a Config checked and made ready to dial, so that retries do not
// read key files again.
type dialer struct {
	addr      string
	user      string
	auth      []ssh.AuthMethod
	hostKeys  HostKeyPolicy
	timeout   time.Duration
	keepAlive time.Duration
	log       *slog.Logger
}

// prepare checks cfg and loads its keys. Its errors are configuration
// errors: retrying does not help.
func (cfg *Config) prepare() (*dialer, error) {
	addr, err := normalizeAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.User == "" {
		return nil, errors.New("ssh config: User is required")
	}
	if cfg.HostKeys == nil {
		return nil, errors.New("ssh config: HostKeys is required (PinnedKnownHosts or TOFU)")
	}
	d := &dialer{
		addr:      addr,
		user:      cfg.User,
		hostKeys:  cfg.HostKeys,
		timeout:   cfg.DialTimeout,
		keepAlive: cfg.KeepAlive,
		log:       cfg.Log,
	}
	if d.timeout <= 0 {
		d.timeout = DefaultDialTimeout
	}
	if d.keepAlive == 0 {
		d.keepAlive = DefaultKeepAlive
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	signers := append([]ssh.Signer(nil), cfg.Signers...)
	for _, f := range cfg.KeyFiles {
		s, err := loadKeyFile(f)
		if err != nil {
			return nil, err
		}
		signers = append(signers, s)
	}
	if len(signers) > 0 {
		d.auth = append(d.auth, ssh.PublicKeys(signers...))
	}
	if pw := cfg.Password; pw != "" {
		d.auth = append(d.auth, ssh.Password(pw),
			ssh.KeyboardInteractive(func(_, _ string, questions []string, echos []bool) ([]string, error) {
				// Answer the password to every hidden prompt ("Password:").
				answers := make([]string, len(questions))
				for i := range questions {
					if !echos[i] {
						answers[i] = pw
					}
				}
				return answers, nil
			}))
	}
	if len(d.auth) == 0 {
		return nil, errors.New("ssh config: no authentication method (give Password, KeyFiles or Signers)")
	}
	return d, nil
}

// loadKeyFile reads a private key file.
func loadKeyFile(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh config: reading key file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(data)
	if err != nil {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			return nil, fmt.Errorf("ssh config: key file %s is protected by a passphrase, which is not supported", path)
		}
		return nil, fmt.Errorf("ssh config: key file %s: %w", path, err)
	}
	return s, nil
}

// normalizeAddr returns addr as host:port, adding DefaultPort when it has
// no port.
func normalizeAddr(addr string) (string, error) {
	if addr == "" {
		return "", errors.New("ssh config: Addr is required")
	}
	bad := func() (string, error) {
		return "", fmt.Errorf("ssh config: Addr %q is not host or host:port", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// No port: a host name, an IPv4 address or an IPv6 address,
		// bracketed or not.
		host, port = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), DefaultPort
		if strings.Contains(host, ":") && net.ParseIP(host) == nil {
			return bad()
		}
	}
	if host == "" || port == "" {
		return "", fmt.Errorf("ssh config: Addr %q: empty host or port", addr)
	}
	if strings.IndexFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f || strings.ContainsRune("[]/\\@", r) }) >= 0 {
		return bad()
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("ssh config: Addr %q: bad port", addr)
	}
	return net.JoinHostPort(host, port), nil
}

// Client is a connection to one device's SSH server. Its methods may be
// called from several goroutines at once; each runs in its own session.
type Client struct {
	conn   *ssh.Client
	device string
	addr   string
	log    *slog.Logger
	// dead is closed when the connection has ended.
	dead      chan struct{}
	closeOnce sync.Once
	// noSFTP is set once the server has refused the sftp subsystem.
	noSFTP atomic.Bool
}

// Dial connects to cfg.Addr, checks its host key with cfg.HostKeys for
// device (the device's name: the identity host keys are recorded under)
// and logs in. It stops when ctx is done, returning an error wrapping
// ctx.Err(). A changed host key gives a *HostKeyChangedError, a key that
// is not pinned ErrUnknownHost, a refused login ErrAuth.
func Dial(ctx context.Context, cfg Config, device string) (*Client, error) {
	d, err := cfg.prepare()
	if err != nil {
		return nil, err
	}
	return d.dial(ctx, device)
}

// dial connects once. When the host key policy hints at the key types it
// knows and the server has none of them, it dials again without the hint,
// so that the policy sees the new key and reports it as changed.
func (d *dialer) dial(ctx context.Context, device string) (*Client, error) {
	var hint []string
	if h, ok := d.hostKeys.(HostKeyAlgorithmsPolicy); ok {
		hint = h.HostKeyAlgorithms(device, d.addr)
	}
	c, err := d.dialOnce(ctx, device, hint)
	if err != nil && len(hint) > 0 && strings.Contains(err.Error(), "no common algorithm for host key") {
		d.log.Warn("ssh: the server offers none of the host key types recorded for it; checking the key it offers",
			"device", device, "addr", d.addr, "recorded", hint)
		c, err = d.dialOnce(ctx, device, nil)
	}
	return c, err
}

func (d *dialer) dialOnce(ctx context.Context, device string, hostKeyAlgos []string) (*Client, error) {
	where := describe(device, d.addr)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ssh %s: %w", where, err)
	}
	dctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()

	var (
		hkMu  sync.Mutex
		hkErr error
	)
	check := d.hostKeys.Callback(device)
	cc := &ssh.ClientConfig{
		User: d.user,
		Auth: d.auth,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := check(hostname, remote, key)
			if err != nil {
				hkMu.Lock()
				hkErr = err
				hkMu.Unlock()
			}
			return err
		},
		HostKeyAlgorithms: hostKeyAlgos,
	}

	tcpKeepAlive := d.keepAlive
	if tcpKeepAlive < 0 {
		tcpKeepAlive = -1
	}
	nd := net.Dialer{KeepAlive: tcpKeepAlive}
	conn, err := nd.DialContext(dctx, "tcp", d.addr)
	if err != nil {
		return nil, d.ctxErr(ctx, dctx, where, fmt.Errorf("ssh %s: connecting: %w", where, err))
	}
	// The handshake does not take a context: close the connection when
	// dctx ends, which makes it fail at once.
	stop := context.AfterFunc(dctx, func() { _ = conn.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(conn, d.addr, cc)
	if !stop() {
		// dctx ended during the handshake: the connection is closed.
		if err == nil {
			_ = sc.Close()
		}
		return nil, d.ctxErr(ctx, dctx, where, fmt.Errorf("ssh %s: handshake interrupted", where))
	}
	if err != nil {
		_ = conn.Close()
		hkMu.Lock()
		herr := hkErr
		hkMu.Unlock()
		switch {
		case herr != nil:
			return nil, fmt.Errorf("ssh %s: %w", where, herr)
		case isAuthError(err):
			return nil, fmt.Errorf("ssh %s: %s@%s: %w (%v)", where, d.user, d.addr, ErrAuth, err)
		}
		return nil, d.ctxErr(ctx, dctx, where, fmt.Errorf("ssh %s: handshake: %w", where, err))
	}

	c := &Client{
		conn:   ssh.NewClient(sc, chans, reqs),
		device: device,
		addr:   d.addr,
		log:    d.log.With("device", device, "addr", d.addr),
		dead:   make(chan struct{}),
	}
	go func() {
		_ = c.conn.Wait()
		close(c.dead)
	}()
	if d.keepAlive > 0 {
		go c.keepAlive(d.keepAlive)
	}
	c.log.Debug("ssh: connected", "user", d.user)
	return c, nil
}

// ctxErr returns err, or an error wrapping the context's error when ctx
// or dctx (ctx bounded by the dial timeout) has ended.
func (d *dialer) ctxErr(ctx, dctx context.Context, where string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("ssh %s: %w (%v)", where, ctx.Err(), err)
	}
	if dctx.Err() != nil {
		return fmt.Errorf("ssh %s: timed out after %v: %w (%v)", where, d.timeout, dctx.Err(), err)
	}
	return err
}

// isAuthError reports whether a handshake error means the server refused
// to let the user in.
func isAuthError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "unable to authenticate") ||
		strings.Contains(s, "no supported methods remain") ||
		strings.Contains(s, "Too many authentication failures")
}

// describe names a device and its address for messages.
func describe(device, addr string) string {
	if device == "" {
		return addr
	}
	return device + " (" + addr + ")"
}

// keepAlive sends a keepalive request every interval and closes the
// connection when keepAliveMisses in a row go unanswered.
func (c *Client) keepAlive(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	missed := 0
	for {
		select {
		case <-c.dead:
			return
		case <-t.C:
		}
		res := make(chan error, 1)
		go func() {
			_, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil)
			res <- err
		}()
		select {
		case <-c.dead:
			return
		case err := <-res:
			if err != nil {
				c.log.Warn("ssh: keepalive failed; closing the connection", "err", err)
				_ = c.conn.Close()
				return
			}
			missed = 0
		case <-time.After(interval):
			missed++
			if missed >= keepAliveMisses {
				c.log.Warn("ssh: no answer to keepalives; closing the connection", "missed", missed, "interval", interval)
				_ = c.conn.Close()
				return
			}
		}
	}
}

// Device returns the device name the client was dialled for.
func (c *Client) Device() string { return c.device }

// Addr returns the host:port the client is connected to.
func (c *Client) Addr() string { return c.addr }

// SSH returns the underlying connection, for what this package does not
// do itself (port forwarding, for example).
func (c *Client) SSH() *ssh.Client { return c.conn }

// Close closes the connection; sessions still running end.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.conn.Close()
		if err != nil && errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	if err != nil {
		return fmt.Errorf("ssh %s: closing: %w", describe(c.device, c.addr), err)
	}
	return nil
}

// errorf formats an error prefixed with the client's device and address.
func (c *Client) errorf(format string, args ...any) error {
	return fmt.Errorf("ssh %s: "+format, append([]any{describe(c.device, c.addr)}, args...)...)
}

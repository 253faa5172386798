package muxpi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// maxCommandOutput bounds what is kept of a control-host command's output.
const maxCommandOutput = 1 << 20

// controlHost runs commands on a device's control host over one SSH
// connection, dialled when first needed and again after it drops.
type controlHost struct {
	cfg      sshx.Config
	name     string // the host key record's name
	log      *slog.Logger
	retry    time.Duration // how long a command is retried
	interval time.Duration // between attempts
	timeout  time.Duration // each attempt's bound

	mu sync.Mutex
	c  *sshx.Client
}

// unreachableError reports that the control host could not be reached, or
// kept dropping the connection, for the whole retry window.
type unreachableError struct {
	addr string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("the control host %s could not be reached: %v", e.addr, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// commandError reports that a control-host command ran and failed.
type commandError struct {
	command string
	code    int
	stderr  string
	err     error
}

func (e *commandError) Error() string {
	msg := fmt.Sprintf("%s exited with status %d on the control host", e.command, e.code)
	if s := strings.TrimSpace(e.stderr); s != "" {
		msg += ": " + lastLines(s, 5)
	}
	return msg
}

func (e *commandError) Unwrap() error { return e.err }

// runOpts tune one command.
type runOpts struct {
	// retryExit retries a command that exits non-zero, as Testflinger
	// retries every control-host command; commands that only look at
	// something (test, cat, ls, lsblk) do not, nor do non-idempotent ones.
	retryExit bool
	// stdin is the command's standard input.
	stdin []byte
	// timeout bounds each attempt (0: the host's).
	timeout time.Duration
}

// client returns the connection, dialling it when there is none.
func (h *controlHost) client(ctx context.Context) (*sshx.Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c != nil {
		return h.c, nil
	}
	c, err := sshx.Dial(ctx, h.cfg, h.name)
	if err != nil {
		return nil, err
	}
	h.c = c
	return c, nil
}

// drop closes the connection c (if it is still the current one), so that
// the next command dials again.
func (h *controlHost) drop(c *sshx.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c != nil && h.c == c {
		_ = h.c.Close()
		h.c = nil
	}
}

// close closes the connection.
func (h *controlHost) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c != nil {
		_ = h.c.Close()
		h.c = nil
	}
}

// permanentDialError reports whether a dial error will not go away by
// retrying: a host key that is not the one recorded or pinned, or a login
// refused.
func permanentDialError(err error) bool {
	var changed *sshx.HostKeyChangedError
	return errors.As(err, &changed) || errors.Is(err, sshx.ErrUnknownHost) || errors.Is(err, sshx.ErrAuth)
}

// attempts returns how many attempts the retry window allows: one, and
// one more every interval of it (Testflinger: every 5 s for 60 s, 13).
func (h *controlHost) attempts() int {
	if h.interval <= 0 {
		return 1
	}
	return 1 + int(h.retry/h.interval)
}

func (h *controlHost) backoff(timeout time.Duration) sshx.Backoff {
	return sshx.Backoff{Initial: h.interval, Max: h.interval, Multiplier: 1, Jitter: -1, Attempts: h.attempts(), AttemptTimeout: timeout}
}

// connect makes sure the control host accepts a connection, retrying as
// run does. A host that cannot be reached gives an *unreachableError.
func (h *controlHost) connect(ctx context.Context) (*sshx.Client, error) {
	var c *sshx.Client
	err := sshx.Retry(ctx, h.backoff(h.timeout), func(ctx context.Context) error {
		cl, err := h.client(ctx)
		if err != nil {
			if permanentDialError(err) {
				return sshx.Permanent(err)
			}
			return err
		}
		c = cl
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, &unreachableError{addr: h.cfg.Addr, err: err}
	}
	return c, nil
}

// run runs argv on the control host and returns its standard output. A
// connection that cannot be made or drops is retried every interval for
// the retry window, and so is a non-zero exit with o.retryExit. It fails
// with an *unreachableError when the host could not be reached, a
// *commandError when the command failed, or an error wrapping ctx.Err().
func (h *controlHost) run(ctx context.Context, argv []string, o runOpts) (string, error) {
	timeout := o.timeout
	if timeout <= 0 {
		timeout = h.timeout
	}
	cmdline := strings.Join(argv, " ")
	var out string
	err := sshx.Retry(ctx, h.backoff(timeout), func(ctx context.Context) error {
		c, err := h.client(ctx)
		if err != nil {
			if permanentDialError(err) {
				return sshx.Permanent(err)
			}
			h.log.Debug("muxpi: control host not reachable", "err", err)
			return err
		}
		var stdout, stderr limitedBuffer
		var stdin io.Reader
		if o.stdin != nil {
			stdin = bytes.NewReader(o.stdin)
		}
		code, err := c.RunInput(ctx, argv, stdin, &stdout, &stderr)
		if err == nil {
			out = stdout.String()
			return nil
		}
		var ee *sshx.ExitError
		if errors.As(err, &ee) {
			cerr := &commandError{command: cmdline, code: code, stderr: stderr.String(), err: err}
			if o.retryExit {
				h.log.Debug("muxpi: control host command failed; retrying", "command", cmdline, "err", cerr)
				return cerr
			}
			return sshx.Permanent(cerr)
		}
		// The connection failed (or the attempt timed out): dial again.
		h.drop(c)
		return err
	})
	if err == nil {
		return out, nil
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("%s on the control host: %w", cmdline, err)
	}
	var cerr *commandError
	if errors.As(err, &cerr) {
		return "", cerr
	}
	return "", &unreachableError{addr: h.cfg.Addr, err: fmt.Errorf("running %s: %w", cmdline, err)}
}

// limitedBuffer keeps the first maxCommandOutput bytes written to it.
type limitedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := maxCommandOutput - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

// Package remote runs commands on a host the drivers control over SSH (a
// control host, a sidecar, a device's master image): one connection,
// made when first needed and made again when it breaks, with commands run
// again on the new connection within a retry policy. Commands are
// argument vectors, quoted for the host's shell by package sshx; file
// contents go on standard input, never on a command line. WriteImage
// streams a disk image into one of the host's block devices.
package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// MaxOutput bounds what is kept of a command's standard output and error.
const MaxOutput = 1 << 20

// DefaultBackoff spaces the attempts to reach a host whose connection
// broke, unless a Host says otherwise.
var DefaultBackoff = sshx.Backoff{Initial: 250 * time.Millisecond, Max: 5 * time.Second, Multiplier: 2, Jitter: 0.2}

// Host runs commands on one host over SSH. Its methods are safe for
// concurrent use; a Host must not be copied once used.
type Host struct {
	// Config is how to reach the host.
	Config sshx.Config
	// Name is the identity its host key is recorded under.
	Name string
	// What names the host in messages ("the sidecar ubuntu@10.0.0.2:22").
	What string
	// Timeout bounds each attempt of a command (RunOptions.Timeout
	// overrides it) and each attempt to connect (0: no bound but the
	// context's and Config.DialTimeout).
	Timeout time.Duration
	// Backoff spaces the attempts after a failure (no Initial, Max nor
	// Multiplier: DefaultBackoff's); its Attempts, when not 0, bounds how
	// many are made.
	Backoff sshx.Backoff
	// RetryFor, when not 0, bounds how long attempts go on: Connect
	// gives up RetryFor after it started, and Run RetryFor after the
	// command's first failure to reach the host.
	RetryFor time.Duration
	// RetryTimeouts makes Run run a command whose attempt timed out again
	// on a new connection, as for a connection that broke; otherwise the
	// command fails with a *TimeoutError.
	RetryTimeouts bool
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger

	mu sync.Mutex
	c  *sshx.Client
}

// RunOptions tune one command.
type RunOptions struct {
	// Stdin is the command's standard input (nil: none).
	Stdin []byte
	// Timeout bounds each attempt (0: the Host's).
	Timeout time.Duration
	// RetryExit runs a command that exited with a status other than 0
	// again, as Testflinger retries its control-host commands; otherwise
	// only a command that could not reach the host is run again, so every
	// command must be safe to repeat.
	RetryExit bool
	// Once runs the command at most once, whatever happens: for a command
	// that must not be repeated, such as reboot.
	Once bool
}

// CommandError reports that a command ran on the host and exited with a
// status other than 0.
type CommandError struct {
	// Argv is the command.
	Argv []string
	// Status is its exit status.
	Status int
	// Stderr is what it wrote to its standard error (at most MaxOutput).
	Stderr string
	// Host names the host, as Host.What ("": not said).
	Host string
	// Err is the *sshx.ExitError.
	Err error
}

// Error names the command, its status, the host, and the last lines of
// its standard error.
func (e *CommandError) Error() string {
	msg := fmt.Sprintf("%s exited with status %d", strings.Join(e.Argv, " "), e.Status)
	if e.Host != "" {
		msg += " on " + e.Host
	}
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + lastLines(s, 5)
	}
	return msg
}

// Unwrap returns the *sshx.ExitError.
func (e *CommandError) Unwrap() error { return e.Err }

// UnreachableError reports that the host could not be reached, did not
// let us in, or kept dropping the connection, within the retry policy.
type UnreachableError struct {
	// What names the host.
	What string
	// Err is the last failure.
	Err error
}

// Error names the host and the last failure.
func (e *UnreachableError) Error() string { return fmt.Sprintf("cannot reach %s: %v", e.What, e.Err) }

// Unwrap returns the last failure.
func (e *UnreachableError) Unwrap() error { return e.Err }

// TimeoutError reports that a command did not finish within its timeout.
type TimeoutError struct {
	// Argv is the command.
	Argv []string
	// What names the host.
	What string
	// Timeout is the limit it hit.
	Timeout time.Duration
}

// Error names the command, the host and the limit.
func (e *TimeoutError) Error() string {
	return fmt.Sprintf("%s on %s did not finish within %s", strings.Join(e.Argv, " "), e.What, e.Timeout)
}

// Unwrap returns context.DeadlineExceeded.
func (e *TimeoutError) Unwrap() error { return context.DeadlineExceeded }

// IsExit reports whether err is a command that ran and exited with a
// status other than 0 (rather than one that could not be run).
func IsExit(err error) bool {
	var ee *sshx.ExitError
	return errors.As(err, &ee)
}

// IsUnreachable reports whether err is an *UnreachableError.
func IsUnreachable(err error) bool {
	var ue *UnreachableError
	return errors.As(err, &ue)
}

// IsPermanentDialError reports whether retrying a connection that failed
// with err is pointless: the host presented a host key other than the one
// expected, or refused the login.
func IsPermanentDialError(err error) bool {
	return sshx.IsHostKeyError(err) || errors.Is(err, sshx.ErrAuth)
}

func (h *Host) log() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}

// backoff returns h.Backoff, with DefaultBackoff's spacing when it has
// none.
func (h *Host) backoff() sshx.Backoff {
	b := h.Backoff
	if b.Initial == 0 && b.Max == 0 && b.Multiplier == 0 {
		b.Initial, b.Max, b.Multiplier, b.Jitter = DefaultBackoff.Initial, DefaultBackoff.Max, DefaultBackoff.Multiplier, DefaultBackoff.Jitter
	}
	b.AttemptTimeout, b.OnRetry = 0, nil
	return b
}

// Client returns the current connection, dialling it once when there is
// none (no retries: see Connect).
func (h *Host) Client(ctx context.Context) (*sshx.Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c != nil {
		return h.c, nil
	}
	c, err := sshx.Dial(ctx, h.Config, h.Name)
	if err != nil {
		return nil, err
	}
	h.c = c
	return c, nil
}

// Use makes c the host's connection, closing the one it had: for a
// connection made and checked by other means.
func (h *Host) Use(c *sshx.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c != nil && h.c != c {
		_ = h.c.Close()
	}
	h.c = c
}

// Drop closes c when it is still the host's connection, after it broke or
// was cut short: the next command connects again.
func (h *Host) Drop(c *sshx.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c != nil && h.c == c {
		_ = h.c.Close()
		h.c = nil
	}
}

// Close closes the connection, if any.
func (h *Host) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c != nil {
		_ = h.c.Close()
		h.c = nil
	}
}

// Connect returns the connection to the host, connecting first when there
// is none: attempts are retried as the Host says, except a refused login
// or a host key other than the one expected. A host that cannot be
// reached gives an *UnreachableError, cancellation an error wrapping
// ctx.Err().
func (h *Host) Connect(ctx context.Context) (*sshx.Client, error) {
	wctx := ctx
	if h.RetryFor > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, h.RetryFor)
		defer cancel()
	}
	b := h.backoff()
	b.AttemptTimeout = h.Timeout
	b.OnRetry = func(n int, err error, delay time.Duration) {
		h.log().Warn("remote: cannot reach the host yet", "host", h.What, "attempt", n, "err", err, "retry_in", delay)
	}
	var c *sshx.Client
	err := sshx.Retry(wctx, b, func(ctx context.Context) error {
		cl, err := h.Client(ctx)
		if err != nil {
			if IsPermanentDialError(err) {
				return sshx.Permanent(err)
			}
			return err
		}
		c = cl
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to %s: %w", h.What, ctx.Err())
		}
		return nil, &UnreachableError{What: h.What, Err: err}
	}
	return c, nil
}

// Run runs argv on the host and returns its standard output (at most
// MaxOutput). A command whose connection could not be made or broke is
// run again on a new one, as the Host's policy says (every command must
// be safe to repeat, unless o.Once); so is one that timed out, with
// RetryTimeouts, and one that exited non-zero, with o.RetryExit. It fails
// with a *CommandError when the command exited non-zero, a *TimeoutError
// when it did not finish in time, an *UnreachableError when the host
// could not be reached, and an error wrapping ctx.Err() when ctx is done.
func (h *Host) Run(ctx context.Context, argv []string, o RunOptions) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("remote: no command")
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = h.Timeout
	}
	b := h.backoff()
	if o.Once {
		b.Attempts = 1
	}
	b.OnRetry = func(n int, err error, delay time.Duration) {
		h.log().Warn("remote: command failed; running it again", "host", h.What, "command", argv[0], "attempt", n, "err", err, "retry_in", delay)
	}
	var out string
	var firstFailure time.Time
	// unreachable counts a failure to reach the host against RetryFor.
	unreachable := func(err error) error {
		if firstFailure.IsZero() {
			firstFailure = time.Now()
		}
		if h.RetryFor > 0 && time.Since(firstFailure) >= h.RetryFor {
			return sshx.Permanent(err)
		}
		return err
	}
	err := sshx.Retry(ctx, b, func(ctx context.Context) error {
		c, err := h.Client(ctx)
		if err != nil {
			if IsPermanentDialError(err) {
				return sshx.Permanent(err)
			}
			return unreachable(err)
		}
		var stdout, stderr Buffer
		var stdin io.Reader
		if o.Stdin != nil {
			stdin = bytes.NewReader(o.Stdin)
		}
		cctx, cancel := withTimeout(ctx, timeout)
		defer cancel()
		code, err := c.RunInput(cctx, argv, stdin, &stdout, &stderr)
		switch {
		case err == nil:
			out = stdout.String()
			return nil
		case ctx.Err() != nil:
			return err
		case IsExit(err):
			cerr := &CommandError{Argv: argv, Status: code, Stderr: stderr.String(), Host: h.What, Err: err}
			if o.RetryExit {
				return cerr
			}
			return sshx.Permanent(cerr)
		}
		// The connection broke, or the command hung and may still hold
		// it: never use it again.
		h.Drop(c)
		if cctx.Err() != nil && !h.RetryTimeouts {
			return sshx.Permanent(&TimeoutError{Argv: argv, What: h.What, Timeout: timeout})
		}
		return unreachable(err)
	})
	if err == nil {
		return out, nil
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("%s on %s: %w", argv[0], h.What, ctx.Err())
	}
	var cerr *CommandError
	var terr *TimeoutError
	switch {
	case errors.As(err, &cerr):
		return "", cerr
	case errors.As(err, &terr):
		return "", terr
	}
	return "", &UnreachableError{What: h.What, Err: fmt.Errorf("running %s: %w", argv[0], err)}
}

// WriteFile writes content to file on the host as root: sudo mkdir -p
// for its directory, then sudo tee with content on standard input, then,
// when perm is not 0, sudo chmod. Errors are Run's, naming the step.
func (h *Host) WriteFile(ctx context.Context, file string, content []byte, perm os.FileMode) error {
	if _, err := h.Run(ctx, []string{"sudo", "mkdir", "-p", path.Dir(file)}, RunOptions{}); err != nil {
		return fmt.Errorf("creating the directory of %s: %w", file, err)
	}
	if content == nil {
		content = []byte{}
	}
	if _, err := h.Run(ctx, []string{"sudo", "tee", file}, RunOptions{Stdin: content}); err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	if perm != 0 {
		if _, err := h.Run(ctx, []string{"sudo", "chmod", fmt.Sprintf("%04o", perm.Perm()), file}, RunOptions{}); err != nil {
			return fmt.Errorf("setting the mode of %s: %w", file, err)
		}
	}
	return nil
}

// Output runs argv once on c and returns its standard output (at most
// MaxOutput); a command that exits non-zero gives a *CommandError.
func Output(ctx context.Context, c *sshx.Client, argv []string) (string, error) {
	var stdout, stderr Buffer
	code, err := c.Run(ctx, argv, &stdout, &stderr)
	if err != nil {
		if IsExit(err) {
			return stdout.String(), &CommandError{Argv: argv, Status: code, Stderr: stderr.String(), Err: err}
		}
		return "", err
	}
	return stdout.String(), nil
}

// Buffer is an io.Writer that keeps the first MaxOutput bytes written to
// it and discards the rest. It is safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write keeps what fits of p; it never fails.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := MaxOutput - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// String returns what was kept.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// withTimeout is context.WithTimeout, without a bound when d is not
// positive.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// lastLines returns the last n lines of s, joined with " / ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

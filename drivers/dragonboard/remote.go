package dragonboard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// remoteRetry is the backoff between attempts to reach a host whose
// connection broke.
var remoteRetry = sshx.Backoff{Initial: 250 * time.Millisecond, Max: 5 * time.Second, Multiplier: 2, Jitter: 0.2}

// maxOutput bounds what is kept of a command's output.
const maxOutput = 1 << 20

// remote runs commands on a host over SSH (the master image), connecting when
// needed and connecting again when the connection breaks. It is used by
// one goroutine at a time.
type remote struct {
	cfg     sshx.Config
	name    string        // the identity its host key is recorded under
	what    string        // how messages name it ("the master image linaro@10.0.0.2:22")
	timeout time.Duration // bounds each command, and the attempts to reach the host
	log     *slog.Logger
	c       *sshx.Client
}

// commandError reports that a command ran on the host and failed.
type commandError struct {
	argv   []string
	status int
	stderr string
	err    error
}

func (e *commandError) Error() string {
	msg := fmt.Sprintf("%s exited with status %d", strings.Join(e.argv, " "), e.status)
	if s := strings.TrimSpace(e.stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *commandError) Unwrap() error { return e.err }

// unreachableError reports that the host could not be reached (or did
// not let us in) within the time allowed.
type unreachableError struct {
	what string
	err  error
}

func (e *unreachableError) Error() string { return fmt.Sprintf("cannot reach %s: %v", e.what, e.err) }

func (e *unreachableError) Unwrap() error { return e.err }

// isHostKeyError reports whether err is a host key that is not the one
// recorded or pinned.
func isHostKeyError(err error) bool {
	var changed *sshx.HostKeyChangedError
	return errors.As(err, &changed) || errors.Is(err, sshx.ErrUnknownHost)
}

// connect returns the connection to the host, connecting first when there
// is none: attempts are retried with backoff for r.timeout, except a
// refused login or a host key that is not the one expected, which are
// returned at once. Failures are *unreachableError.
func (r *remote) connect(ctx context.Context) (*sshx.Client, error) {
	if r.c != nil {
		return r.c, nil
	}
	wctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	b := remoteRetry
	b.OnRetry = func(n int, err error, delay time.Duration) {
		r.log.Warn("dragonboard: cannot reach the host yet", "host", r.what, "attempt", n, "err", err, "retry_in", delay)
	}
	var c *sshx.Client
	err := sshx.Retry(wctx, b, func(ctx context.Context) error {
		cl, err := sshx.Dial(ctx, r.cfg, r.name)
		if err != nil {
			if isHostKeyError(err) || errors.Is(err, sshx.ErrAuth) {
				return sshx.Permanent(err)
			}
			return err
		}
		c = cl
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to %s: %w", r.what, ctx.Err())
		}
		return nil, &unreachableError{what: r.what, err: err}
	}
	r.c = c
	return c, nil
}

// drop closes the connection after it broke; the next command connects again.
func (r *remote) drop() {
	if r.c != nil {
		_ = r.c.Close()
		r.c = nil
	}
}

// close closes the connection.
func (r *remote) close() { r.drop() }

// run runs argv on the host with stdin (nil: none) and returns its
// standard output. Each attempt is bounded by r.timeout; when the
// connection breaks, the command is run again on a new one (every command
// run this way must be safe to repeat), for r.timeout from the first
// failure. A command that exits non-zero gives a *commandError, a host
// that cannot be reached an *unreachableError, cancellation an error
// wrapping ctx.Err().
func (r *remote) run(ctx context.Context, argv []string, stdin []byte) (string, error) {
	var giveUp time.Time
	for attempt := 1; ; attempt++ {
		c, err := r.connect(ctx)
		if err != nil {
			return "", err
		}
		var out, stderr limitedBuffer
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		var in *bytes.Reader
		if stdin != nil {
			in = bytes.NewReader(stdin)
		}
		var code int
		if in != nil {
			code, err = c.RunInput(cctx, argv, in, &out, &stderr)
		} else {
			code, err = c.Run(cctx, argv, &out, &stderr)
		}
		timedOut := cctx.Err() != nil
		cancel()
		var exit *sshx.ExitError
		switch {
		case err == nil:
			return out.String(), nil
		case ctx.Err() != nil:
			return "", fmt.Errorf("%s on %s: %w", argv[0], r.what, ctx.Err())
		case timedOut:
			// The command may still hold the connection: start afresh.
			r.drop()
			return "", fmt.Errorf("%s on %s did not finish within %s", strings.Join(argv, " "), r.what, r.timeout)
		case errors.As(err, &exit):
			return out.String(), &commandError{argv: argv, status: code, stderr: stderr.String(), err: err}
		}
		// The connection broke: connect again and repeat the command.
		r.drop()
		if giveUp.IsZero() {
			giveUp = time.Now().Add(r.timeout)
		}
		if time.Now().After(giveUp) {
			return "", &unreachableError{what: r.what, err: fmt.Errorf("running %s: %w", argv[0], err)}
		}
		delay := remoteRetry.Delay(attempt)
		r.log.Warn("dragonboard: the connection broke; running the command again", "host", r.what, "command", argv[0], "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("%s on %s: %w", argv[0], r.what, ctx.Err())
		case <-t.C:
		}
	}
}

// runOnce runs argv on the host once, on the current connection (or a
// new one), without running it again when the connection breaks: for
// commands that must not be repeated, such as reboot.
func (r *remote) runOnce(ctx context.Context, argv []string) error {
	c, err := r.connect(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var stderr limitedBuffer
	code, err := c.Run(cctx, argv, nil, &stderr)
	var exit *sshx.ExitError
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s on %s: %w", argv[0], r.what, ctx.Err())
	case errors.As(err, &exit):
		return &commandError{argv: argv, status: code, stderr: stderr.String(), err: err}
	}
	r.drop()
	return fmt.Errorf("%s on %s: %w", strings.Join(argv, " "), r.what, err)
}

// isExit reports whether err is a command that ran and failed (rather
// than one that could not be run).
func isExit(err error) bool {
	var ce *commandError
	return errors.As(err, &ce)
}

// limitedBuffer keeps the first maxOutput bytes written to it.
type limitedBuffer struct{ b bytes.Buffer }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return l.b.String() }

package sshx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"time"
)

// Defaults for the zero values of Backoff.
const (
	// DefaultBackoffInitial is the first delay.
	DefaultBackoffInitial = time.Second
	// DefaultBackoffMax caps each delay.
	DefaultBackoffMax = time.Minute
	// DefaultBackoffMultiplier is the growth of the delay between attempts.
	DefaultBackoffMultiplier = 2.0
	// DefaultBackoffJitter is the share of each delay that is random.
	DefaultBackoffJitter = 0.2
)

// Backoff says how Retry spaces its attempts: the delay after attempt n
// (from 1) is Initial*Multiplier^(n-1), capped at Max, of which a share
// Jitter is random (the delay is drawn from [d*(1-Jitter), d]). Zero fields
// take the defaults above.
type Backoff struct {
	// Initial is the delay after the first failed attempt.
	Initial time.Duration
	// Max caps each delay.
	Max time.Duration
	// Multiplier is how much each delay grows (1: constant delays).
	Multiplier float64
	// Jitter is the share of each delay that is random, between 0 and 1;
	// negative means none.
	Jitter float64
	// Attempts is the most attempts made (0: no limit, until ctx ends).
	Attempts int
	// AttemptTimeout bounds each attempt: the function is given a context
	// that ends after it (0: no bound but ctx's).
	AttemptTimeout time.Duration
	// OnRetry, when not nil, is called after each failed attempt that will
	// be retried, with the attempt's number (from 1), its error and the
	// delay before the next one, for example to tell a job's output.
	OnRetry func(attempt int, err error, delay time.Duration)
}

// withDefaults fills in zero fields.
func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Multiplier < 1 {
		b.Multiplier = DefaultBackoffMultiplier
	}
	switch {
	case b.Jitter == 0:
		b.Jitter = DefaultBackoffJitter
	case b.Jitter < 0:
		b.Jitter = 0
	case b.Jitter > 1:
		b.Jitter = 1
	}
	return b
}

// Delay returns the delay after failed attempt n (from 1), jitter included.
func (b Backoff) Delay(n int) time.Duration {
	b = b.withDefaults()
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(max(n-1, 0)))
	if d > float64(b.Max) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(b.Max)
	}
	d -= d * b.Jitter * rand.Float64()
	return time.Duration(d)
}

// permanentError marks an error Retry must not retry.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: Retry returns it at once
// (unwrapped). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// Retry calls fn until it returns nil, returns an error marked with
// Permanent, b.Attempts attempts have failed, or ctx is done, waiting
// between attempts as b says. It returns nil on success, fn's error when it
// was permanent, and otherwise an error wrapping fn's last error (and
// ctx.Err(), when ctx ended).
func Retry(ctx context.Context, b Backoff, fn func(ctx context.Context) error) error {
	b = b.withDefaults()
	var last error
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			if last == nil {
				return fmt.Errorf("before attempt %d: %w", n, err)
			}
			return fmt.Errorf("gave up after %d attempts: %w (last error: %w)", n-1, err, last)
		}
		err := attempt(ctx, b.AttemptTimeout, fn)
		if err == nil {
			return nil
		}
		var perm *permanentError
		if errors.As(err, &perm) {
			return perm.err
		}
		last = err
		if ctx.Err() != nil {
			return fmt.Errorf("gave up after %d attempts: %w (last error: %w)", n, ctx.Err(), last)
		}
		if b.Attempts > 0 && n >= b.Attempts {
			return fmt.Errorf("gave up after %d attempts: %w", n, last)
		}
		delay := b.Delay(n)
		if b.OnRetry != nil {
			b.OnRetry(n, err, delay)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("gave up after %d attempts: %w (last error: %w)", n, ctx.Err(), last)
		case <-t.C:
		}
	}
}

// attempt calls fn once, bounded by timeout when it is positive.
func attempt(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	if timeout <= 0 {
		return fn(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return fn(actx)
}

// DefaultWaitInterval is WaitForSSH's interval when it is given none.
const DefaultWaitInterval = 5 * time.Second

// WaitForSSH dials the device every interval (0: DefaultWaitInterval)
// until it accepts a login or ctx is done, for "wait until the device has
// booted", and returns the client. Refused logins are retried (a booting
// device may not have its keys or users yet); a changed or unknown host key
// and a bad Config are not: they are returned at once.
func WaitForSSH(ctx context.Context, cfg Config, device string, interval time.Duration) (*Client, error) {
	d, err := cfg.prepare()
	if err != nil {
		return nil, err
	}
	if interval <= 0 {
		interval = DefaultWaitInterval
	}
	start := time.Now()
	var c *Client
	err = Retry(ctx, Backoff{Initial: interval, Max: interval, Multiplier: 1, Jitter: 0.1}, func(ctx context.Context) error {
		cl, err := d.dial(ctx, device)
		if err != nil {
			var changed *HostKeyChangedError
			if errors.As(err, &changed) || errors.Is(err, ErrUnknownHost) {
				return Permanent(err)
			}
			d.log.Debug("ssh: device not reachable yet", "device", device, "addr", d.addr, "err", err)
			return err
		}
		c = cl
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for ssh on %s: %w", describe(device, d.addr), err)
	}
	d.log.Info("ssh: device reachable", "device", device, "addr", d.addr, "after", time.Since(start).Round(time.Millisecond))
	return c, nil
}

// Answers reports whether an SSH server answers at addr (host:port; a bare
// host means port 22): it must accept a TCP connection and send its
// version line ("SSH-...") within timeout. A port that accepts but says
// nothing (a machine shutting down or still booting, a port forward with
// nothing behind it) does not answer. No login is attempted.
func Answers(ctx context.Context, addr string, timeout time.Duration) error {
	addr, err := normalizeAddr(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	banner := make([]byte, 4)
	if _, err := io.ReadFull(c, banner); err != nil {
		return fmt.Errorf("%s accepts connections but sends no SSH version line: %w", addr, err)
	}
	if string(banner) != "SSH-" {
		return fmt.Errorf("%s answers, but not as an SSH server (%q)", addr, banner)
	}
	return nil
}

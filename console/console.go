// Package console captures a device's serial console served on TCP: a
// serial-to-network server such as ser2net, or a console server, at the
// serial_host and serial_port of a device configuration.
//
// A Capture reads the console for as long as its context lasts, across
// dropped connections and a server that is down for a while: it dials
// again with a bounded exponential backoff, and tells what happens to the
// connection through Options.Notice, so that the log it writes into shows
// where output may be missing. Console servers that speak telnet have
// their negotiation stripped from the stream (Options.Telnet).
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Defaults of Options.
const (
	DefaultMinBackoff  = time.Second
	DefaultMaxBackoff  = 30 * time.Second
	DefaultDialTimeout = 5 * time.Second
)

// replyTimeout bounds the write of a telnet negotiation reply.
const replyTimeout = 5 * time.Second

// readBuffer is the size of a read from the connection.
const readBuffer = 32 << 10

// Options tune a Capture. The zero value is ready to use.
type Options struct {
	// Dial connects (default: a net.Dialer with a 5 s timeout and TCP
	// keepalive).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// MinBackoff and MaxBackoff bound the wait between connection
	// attempts (default 1 s and 30 s): it starts at MinBackoff and
	// doubles after each failed attempt or dropped connection, up to
	// MaxBackoff, and starts again at MinBackoff after a connection that
	// delivered data or lasted more than MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Idle, when not zero, is how long a connection may deliver nothing
	// before it is taken as dead and dialled again. Serial consoles are
	// often silent for long, so the default is 0: never.
	Idle time.Duration
	// Telnet strips telnet (RFC 854) commands and option negotiation
	// from the stream, refusing every option but BINARY, ECHO and
	// SUPPRESS-GO-AHEAD offered by the server, and turns CR NUL into CR
	// (unless the server sends BINARY).
	// Leave it false for a raw TCP port (ser2net's raw mode), whose bytes
	// are passed through as they come.
	Telnet bool
	// Log receives diagnostics (default slog.Default()).
	Log *slog.Logger
	// Notice, when set, is called on each change of the connection's
	// state with a one-line message, such as "serial console
	// 10.0.0.5:7001 connected" or "serial console 10.0.0.5:7001 lost:
	// EOF; reconnecting in 2s", for the log to show. It is called from
	// the capture's goroutine, never at the same time as a write to the
	// capture's writer, and never after Stop returns.
	Notice func(msg string)
}

// Stats count what a Capture did.
type Stats struct {
	// Bytes is the number of bytes written to the writer.
	Bytes int64
	// Connects is the number of connections made.
	Connects int
	// Drops is the number of connections lost (not counting the one
	// closed by the end of the capture).
	Drops int
}

// Capture reads a serial console at a TCP address until its context
// ends, reconnecting when the connection drops or cannot be made. Its
// methods are safe for concurrent use.
type Capture struct {
	addr   string
	w      io.Writer
	opts   Options
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	stats     Stats
	writeErrs int
}

// ErrIdle is the cause of a connection dropped for delivering nothing for
// Options.Idle.
var ErrIdle = errors.New("no data received")

// Start begins capturing the console at addr ("host:port") into w, in a
// goroutine of its own, until ctx ends or Stop is called. Writes to w are
// serialized, and w is never written after Stop returns.
func Start(ctx context.Context, addr string, w io.Writer, opts Options) *Capture {
	if opts.Dial == nil {
		d := &net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 15 * time.Second}
		opts.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &Capture{
		addr: addr, w: w, opts: opts, cancel: cancel, done: make(chan struct{}),
		log: opts.Log.With("serial", addr),
	}
	go c.run(ctx)
	return c
}

// Stop ends the capture, closing its connection, waits for it to end and
// returns its Stats. It may be called more than once.
func (c *Capture) Stop() Stats {
	c.cancel()
	<-c.done
	return c.Stats()
}

// Done is closed once the capture has ended (its context ended or Stop
// was called) and will write no more.
func (c *Capture) Done() <-chan struct{} { return c.done }

// Stats returns what the capture did so far.
func (c *Capture) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Addr returns the address captured.
func (c *Capture) Addr() string { return c.addr }

func (c *Capture) notice(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	// The notice goes into the job's log; the worker's log keeps it at
	// debug level, since every job on a device with a console has them.
	c.log.Debug(msg)
	if c.opts.Notice != nil {
		c.opts.Notice(msg)
	}
}

// run dials, reads and dials again until ctx ends.
func (c *Capture) run(ctx context.Context) {
	defer close(c.done)
	b := backoff{min: c.opts.MinBackoff, max: c.opts.MaxBackoff}
	failing := false // the last attempt failed and was told
	for {
		conn, err := c.opts.Dial(ctx, c.addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := b.next()
			if !failing {
				c.notice("serial console %s unreachable: %v; retrying in %s", c.addr, err, wait)
				failing = true
			} else {
				c.log.Debug("serial console unreachable", "err", err, "retry", wait)
			}
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		failing = false
		c.mu.Lock()
		c.stats.Connects++
		c.mu.Unlock()
		c.notice("serial console %s connected", c.addr)
		began := time.Now()
		n, err := c.read(ctx, conn)
		_ = conn.Close()
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.stats.Drops++
		c.mu.Unlock()
		if n > 0 || time.Since(began) > c.opts.MaxBackoff {
			b.reset()
		}
		wait := b.next()
		c.notice("serial console %s lost: %s; reconnecting in %s", c.addr, reason(err), wait)
		if !sleep(ctx, wait) {
			return
		}
	}
}

// reason describes why a connection ended.
func reason(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return "EOF"
	}
	return err.Error()
}

// read copies conn to the writer until the connection fails, is idle for
// too long or ctx ends; it returns the number of bytes written.
func (c *Capture) read(ctx context.Context, conn net.Conn) (int64, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	var tn *telnet
	if c.opts.Telnet {
		tn = &telnet{}
	}
	buf := make([]byte, readBuffer)
	var total int64
	for {
		if c.opts.Idle > 0 {
			_ = conn.SetReadDeadline(time.Now().Add(c.opts.Idle))
		}
		n, err := conn.Read(buf)
		if n > 0 {
			data := buf[:n]
			if tn != nil {
				var reply []byte
				data, reply = tn.filter(data)
				if len(reply) > 0 {
					_ = conn.SetWriteDeadline(time.Now().Add(replyTimeout))
					if _, werr := conn.Write(reply); werr != nil {
						c.log.Debug("serial console: telnet reply", "err", werr)
					}
				}
			}
			total += c.write(data)
		}
		if err != nil {
			if c.opts.Idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				return total, fmt.Errorf("%w for %s", ErrIdle, c.opts.Idle)
			}
			return total, err
		}
	}
}

// write writes data to the writer, counting what was written; a failed
// write is logged (the first few times) and the capture goes on.
func (c *Capture) write(data []byte) int64 {
	if len(data) == 0 {
		return 0
	}
	n, err := c.w.Write(data)
	c.mu.Lock()
	c.stats.Bytes += int64(n)
	if err != nil {
		c.writeErrs++
	}
	errs := c.writeErrs
	c.mu.Unlock()
	if err != nil && errs <= 3 {
		c.log.Warn("serial console: writing the capture", "err", err)
	}
	return int64(n)
}

// sleep waits for d or until ctx ends; it reports whether ctx is still
// live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff is the wait between connection attempts: min, doubling at each
// next up to max, back to min on reset.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

// next returns the wait before the next attempt and doubles the one
// after.
func (b *backoff) next() time.Duration {
	if b.cur < b.min {
		b.cur = b.min
	}
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d
}

// reset makes the next wait min again.
func (b *backoff) reset() { b.cur = 0 }

// Addr validates a device configuration's serial_host and serial_port and
// joins them into an address for Start ("host:port", "[::1]:7001").
func Addr(host string, port int) (string, error) {
	if host == "" {
		return "", errors.New("serial_host: empty")
	}
	if strings.IndexFunc(host, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return "", fmt.Errorf("serial_host: %q holds a space or a control character", host)
	}
	h := host
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if strings.ContainsAny(h, ":[]") {
		if _, err := netip.ParseAddr(h); err != nil {
			return "", fmt.Errorf("serial_host: %q is neither a host name nor an IP address", host)
		}
	}
	if strings.ContainsAny(h, "/@?#") {
		return "", fmt.Errorf("serial_host: %q is not a host name", host)
	}
	if port < 1 || port > 65535 {
		return "", fmt.Errorf("serial_port: %d out of range (1-65535)", port)
	}
	return net.JoinHostPort(h, strconv.Itoa(port)), nil
}

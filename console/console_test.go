package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// wait bounds every wait of these tests: generous, for a loaded machine.
const wait = 10 * time.Second

var quiet = slog.New(slog.DiscardHandler)

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// notices records the messages of Options.Notice.
type notices struct {
	mu   sync.Mutex
	msgs []string
	ch   chan string
}

func newNotices() *notices { return &notices{ch: make(chan string, 100)} }

func (n *notices) add(msg string) {
	n.mu.Lock()
	n.msgs = append(n.msgs, msg)
	n.mu.Unlock()
	n.ch <- msg
}

func (n *notices) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

// await waits for a notice holding sub, skipping the others.
func (n *notices) await(t *testing.T, sub string) string {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case m := <-n.ch:
			if strings.Contains(m, sub) {
				return m
			}
		case <-timeout:
			t.Fatalf("no notice with %q; got %q", sub, n.all())
			return ""
		}
	}
}

// server is a TCP listener whose connections the test takes.
type server struct {
	ln    net.Listener
	conns chan net.Conn
}

func listen(t *testing.T, addr string) *server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, conns: make(chan net.Conn, 10)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- c
		}
	}()
	t.Cleanup(func() { _ = ln.Close() })
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { _ = c.Close() })
		return c
	case <-time.After(wait):
		t.Fatal("the capture did not connect")
		return nil
	}
}

func send(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

func stopWithin(t *testing.T, c *Capture) Stats {
	t.Helper()
	ch := make(chan Stats, 1)
	go func() { ch <- c.Stop() }()
	select {
	case st := <-ch:
		return st
	case <-time.After(wait):
		t.Fatal("Stop did not return")
		return Stats{}
	}
}

// TestCaptureAcrossReconnects: the server sends, drops the connection
// mid-line, refuses connections for a while, then accepts again; the
// capture holds everything sent, in order.
func TestCaptureAcrossReconnects(t *testing.T) {
	t.Parallel()
	srv := listen(t, "127.0.0.1:0")
	addr := srv.addr()
	var out syncBuffer
	n := newNotices()
	c := Start(t.Context(), addr, &out, Options{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Log: quiet, Notice: n.add})
	defer c.Stop()

	big := strings.Repeat("0123456789abcdef", 8<<10) // several reads' worth
	conn := srv.accept(t)
	n.await(t, "connected")
	send(t, conn, "U-Boot 2024.01\n")
	send(t, conn, big)
	send(t, conn, "Starting ker")
	_ = srv.ln.Close() // refuse the reconnection
	_ = conn.Close()
	if m := n.await(t, "lost"); m != "serial console "+addr+" lost: EOF; reconnecting in 20ms" {
		t.Errorf("notice %q", m)
	}
	if m := n.await(t, "unreachable"); !strings.HasPrefix(m, "serial console "+addr+" unreachable: ") || !strings.Contains(m, "; retrying in ") {
		t.Errorf("notice %q", m)
	}

	srv = listen(t, addr)
	conn = srv.accept(t)
	n.await(t, "connected")
	send(t, conn, "nel ...\nlogin: ")
	_ = conn.Close()
	if m := n.await(t, "lost"); !strings.HasSuffix(m, "lost: EOF; reconnecting in 20ms") {
		t.Errorf("notice %q: a connection that delivered data did not reset the backoff", m)
	}

	st := stopWithin(t, c)
	want := "U-Boot 2024.01\n" + big + "Starting kernel ...\nlogin: "
	if got := out.String(); got != want {
		t.Errorf("captured %d bytes, want %d; ends %q", len(got), len(want), got[max(0, len(got)-40):])
	}
	if st != (Stats{Bytes: int64(len(want)), Connects: 2, Drops: 2}) {
		t.Errorf("stats %+v, want %d bytes, 2 connects, 2 drops", st, len(want))
	}
	if c.Stats() != st {
		t.Errorf("Stats() = %+v after Stop returned %+v", c.Stats(), st)
	}
}

// TestStopPromptly: Stop returns at once whatever the capture is doing.
func TestStopPromptly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		dial func(ctx context.Context, addr string) (net.Conn, error)
		when string // the notice after which to stop, or "" for at once
	}{
		{"while dialing", func(ctx context.Context, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, ""},
		{"while waiting to dial again", func(context.Context, string) (net.Conn, error) {
			return nil, errors.New("connection refused")
		}, "unreachable: connection refused; retrying in 1h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNotices()
			dialed := make(chan struct{}, 1)
			dial := func(ctx context.Context, addr string) (net.Conn, error) {
				select {
				case dialed <- struct{}{}:
				default:
				}
				return tc.dial(ctx, addr)
			}
			c := Start(t.Context(), "192.0.2.1:7001", io.Discard, Options{Dial: dial, MinBackoff: time.Hour, Log: quiet, Notice: n.add})
			select {
			case <-dialed:
			case <-time.After(wait):
				t.Fatal("no dial")
			}
			if tc.when != "" {
				n.await(t, tc.when)
			}
			if st := stopWithin(t, c); st != (Stats{}) {
				t.Errorf("stats %+v", st)
			}
			select {
			case <-c.Done():
			default:
				t.Error("Done not closed after Stop")
			}
		})
	}
}

// TestContextEndsCapture: the end of the context closes the connection
// and ends the capture, which counts no drop.
func TestContextEndsCapture(t *testing.T) {
	t.Parallel()
	srv := listen(t, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(t.Context())
	var out syncBuffer
	c := Start(ctx, srv.addr(), &out, Options{Log: quiet})
	conn := srv.accept(t)
	send(t, conn, "hello\n")
	deadline := time.Now().Add(wait)
	for c.Stats().Bytes < 6 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-c.Done():
	case <-time.After(wait):
		t.Fatal("the capture outlived its context")
	}
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("server side read after the end: %v, want EOF", err)
	}
	if st := c.Stop(); st != (Stats{Bytes: 6, Connects: 1}) || out.String() != "hello\n" {
		t.Errorf("stats %+v, output %q", st, out.String())
	}
}

// stopWriter fails the test when written after stopped is set.
type stopWriter struct {
	t       *testing.T
	stopped atomic.Bool
	n       atomic.Int64
}

func (w *stopWriter) Write(p []byte) (int, error) {
	if w.stopped.Load() {
		w.t.Error("written after Stop returned")
	}
	w.n.Add(int64(len(p)))
	return len(p), nil
}

func TestNoWriteAfterStop(t *testing.T) {
	t.Parallel()
	srv := listen(t, "127.0.0.1:0")
	w := &stopWriter{t: t}
	c := Start(t.Context(), srv.addr(), w, Options{Log: quiet})
	conn := srv.accept(t)
	go func() {
		line := []byte(strings.Repeat("x", 100) + "\n")
		for {
			if _, err := conn.Write(line); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(wait)
	for w.n.Load() < 10_000 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	st := c.Stop()
	w.stopped.Store(true)
	time.Sleep(50 * time.Millisecond)
	if st.Bytes != w.n.Load() || st.Bytes < 10_000 {
		t.Errorf("stats %+v, writer got %d bytes", st, w.n.Load())
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	const s, ms = time.Second, time.Millisecond
	for _, tc := range []struct {
		min, max time.Duration
		ops      string // n: next, r: reset
		want     []time.Duration
	}{
		{s, 30 * s, "nnnnnnn", []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 30 * s, 30 * s}},
		{s, 30 * s, "nnnrnn", []time.Duration{s, 2 * s, 4 * s, s, 2 * s}},
		{10 * ms, 10 * ms, "nnn", []time.Duration{10 * ms, 10 * ms, 10 * ms}},
		{10 * ms, 25 * ms, "nnnn", []time.Duration{10 * ms, 20 * ms, 25 * ms, 25 * ms}},
	} {
		b := backoff{min: tc.min, max: tc.max}
		var got []time.Duration
		for _, op := range tc.ops {
			if op == 'r' {
				b.reset()
			} else {
				got = append(got, b.next())
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s..%s %s: %v, want %v", tc.min, tc.max, tc.ops, got, tc.want)
		}
	}
}

// TestBackoffBetweenDials: the waits between failed dials grow from
// MinBackoff and stop growing at MaxBackoff.
func TestBackoffBetweenDials(t *testing.T) {
	t.Parallel()
	const minB, maxB = 10 * time.Millisecond, 40 * time.Millisecond
	var mu sync.Mutex
	var times []time.Time
	enough := make(chan struct{})
	dial := func(context.Context, string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if len(times) == 7 {
			close(enough)
		}
		return nil, errors.New("connection refused")
	}
	c := Start(t.Context(), "192.0.2.1:7001", io.Discard, Options{Dial: dial, MinBackoff: minB, MaxBackoff: maxB, Log: quiet})
	select {
	case <-enough:
	case <-time.After(wait):
		t.Fatal("too few dials")
	}
	c.Stop()
	mu.Lock()
	defer mu.Unlock()
	nominal := []time.Duration{10, 20, 40, 40, 40, 40}
	for i, want := range nominal {
		gap := times[i+1].Sub(times[i])
		want *= time.Millisecond
		if gap < want || gap > want+2*time.Second {
			t.Errorf("wait %d: %s, want %s (a timer never fires early; 2s of slack for a loaded machine)", i, gap, want)
		}
	}
}

func TestIdleRedials(t *testing.T) {
	t.Parallel()
	srv := listen(t, "127.0.0.1:0")
	n := newNotices()
	c := Start(t.Context(), srv.addr(), io.Discard, Options{Idle: 50 * time.Millisecond, MinBackoff: 10 * time.Millisecond, Log: quiet, Notice: n.add})
	defer c.Stop()
	srv.accept(t) // silent
	if m := n.await(t, "lost"); !strings.Contains(m, "lost: no data received for 50ms; reconnecting in 10ms") {
		t.Errorf("notice %q", m)
	}
	srv.accept(t)
	n.await(t, "connected")
	if st := c.Stats(); st.Connects < 2 || st.Drops < 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestTelnetOption: with Telnet, negotiation is stripped and answered;
// without, the bytes pass as they are.
func TestTelnetOption(t *testing.T) {
	t.Parallel()
	const sent = "\xff\xfd\x18boot\xff\xff\r\n"
	for _, tc := range []struct {
		telnet     bool
		out, reply string
	}{
		{true, "boot\xff\r\n", "\xff\xfc\x18"},
		{false, sent, ""},
	} {
		t.Run(fmt.Sprint("telnet=", tc.telnet), func(t *testing.T) {
			t.Parallel()
			srv := listen(t, "127.0.0.1:0")
			var out syncBuffer
			c := Start(t.Context(), srv.addr(), &out, Options{Telnet: tc.telnet, Log: quiet})
			conn := srv.accept(t)
			send(t, conn, sent)
			deadline := time.Now().Add(wait)
			for out.String() != tc.out && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			c.Stop()
			if out.String() != tc.out {
				t.Errorf("captured %q, want %q", out.String(), tc.out)
			}
			_ = conn.SetReadDeadline(time.Now().Add(wait))
			reply, err := io.ReadAll(conn)
			if err != nil || string(reply) != tc.reply {
				t.Errorf("reply %q (%v), want %q", reply, err, tc.reply)
			}
		})
	}
}

func TestAddr(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		host string
		port int
		want string // the address, or a part of the error
		ok   bool
	}{
		{"console.lab", 7001, "console.lab:7001", true},
		{"10.0.0.5", 1, "10.0.0.5:1", true},
		{"::1", 65535, "[::1]:65535", true},
		{"[fe80::1]", 7001, "[fe80::1]:7001", true},
		{"", 7001, "serial_host: empty", false},
		{"console lab", 7001, "serial_host:", false},
		{"console\n", 7001, "serial_host:", false},
		{"a:b", 7001, "serial_host:", false},
		{"host/x", 7001, "serial_host:", false},
		{"console.lab", 0, "serial_port: 0 out of range", false},
		{"console.lab", 65536, "serial_port: 65536 out of range", false},
		{"console.lab", -1, "serial_port:", false},
	} {
		got, err := Addr(tc.host, tc.port)
		switch {
		case tc.ok && (err != nil || got != tc.want):
			t.Errorf("Addr(%q, %d) = %q, %v; want %q", tc.host, tc.port, got, err, tc.want)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("Addr(%q, %d) = %q, %v; want an error with %q", tc.host, tc.port, got, err, tc.want)
		}
	}
}

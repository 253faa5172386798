// Package broker connects Flinger's components to NATS: it runs the
// embedded nats-server that a one-machine lab uses, dials an external
// server or cluster with credentials and TLS, creates Flinger's streams and
// buckets idempotently, and offers the few JetStream operations every
// component shares (job records with compare-and-set, device status,
// events).
package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerOptions configures the embedded NATS server.
type ServerOptions struct {
	// DataDir holds the JetStream store. Required unless Memory is set.
	DataDir string
	// Listen is the client address, host:port; port 0 picks a free port,
	// "" means 127.0.0.1 on a free port.
	Listen string
	// Memory keeps JetStream in memory only (tests, benchmarks).
	Memory bool
	// Log receives the server's notices and errors (nil: discarded).
	Log *slog.Logger
	// ReadyTimeout bounds start-up (default 10 s).
	ReadyTimeout time.Duration
	// SyncAlways makes JetStream write each message to disk before it
	// acknowledges it (nats-server's sync_interval: always) instead of
	// flushing every two minutes.
	SyncAlways bool
}

// Embedded is an in-process nats-server with JetStream.
type Embedded struct {
	srv *server.Server
}

// StartEmbedded starts a nats-server with JetStream in this process and
// waits until it accepts connections.
func StartEmbedded(opts ServerOptions) (*Embedded, error) {
	host, port := "127.0.0.1", -1
	if opts.Listen != "" {
		h, p, err := net.SplitHostPort(opts.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: %w", opts.Listen, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return nil, fmt.Errorf("listen address %q: bad port", opts.Listen)
		}
		if n == 0 {
			n = -1 // nats-server: -1 is a random port
		}
		if h != "" {
			host = h
		}
		port = n
	}
	so := &server.Options{
		ServerName:         "flinger-embedded",
		Host:               host,
		Port:               port,
		JetStream:          true,
		NoSigs:             true,
		MaxPayload:         8 << 20,
		JetStreamMaxMemory: -1,
		JetStreamMaxStore:  -1,
		SyncAlways:         opts.SyncAlways,
	}
	if opts.Memory {
		so.JetStreamMaxStore = 0
		dir, err := os.MkdirTemp("", "flinger-nats-")
		if err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		so.StoreDir = dir
	} else {
		if opts.DataDir == "" {
			return nil, errors.New("embedded nats: a data directory is required")
		}
		dir := filepath.Join(opts.DataDir, "jetstream")
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("embedded nats: data directory: %w", err)
		}
		so.StoreDir = dir
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if opts.Log != nil {
		srv.SetLoggerV2(&slogAdapter{l: opts.Log}, false, false, false)
	}
	go srv.Start()
	wait := opts.ReadyTimeout
	if wait <= 0 {
		wait = 10 * time.Second
	}
	if !srv.ReadyForConnections(wait) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready after %s (is %s:%d in use?)", wait, host, port)
	}
	return &Embedded{srv: srv}, nil
}

// ClientURL is the URL clients connect to.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Stats are a server's message counters since it started.
type Stats struct {
	// InMsgs counts messages clients published to the server.
	InMsgs int64
	// OutMsgs counts messages the server delivered to clients.
	OutMsgs int64
	// SlowConsumers counts clients the server cut off for not keeping up.
	SlowConsumers int64
}

// Stats returns the server's message counters.
func (e *Embedded) Stats() (Stats, error) {
	v, err := e.srv.Varz(nil)
	if err != nil {
		return Stats{}, fmt.Errorf("embedded nats: %w", err)
	}
	return Stats{InMsgs: v.InMsgs, OutMsgs: v.OutMsgs, SlowConsumers: v.SlowConsumers}, nil
}

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// slogAdapter sends nats-server's log lines to slog.
type slogAdapter struct{ l *slog.Logger }

func (a *slogAdapter) Noticef(format string, v ...any) {
	a.l.Debug(fmt.Sprintf(format, v...), "component", "nats-server")
}
func (a *slogAdapter) Warnf(format string, v ...any) {
	a.l.Warn(fmt.Sprintf(format, v...), "component", "nats-server")
}
func (a *slogAdapter) Fatalf(format string, v ...any) {
	a.l.Error(fmt.Sprintf(format, v...), "component", "nats-server")
}
func (a *slogAdapter) Errorf(format string, v ...any) {
	a.l.Error(fmt.Sprintf(format, v...), "component", "nats-server")
}
func (a *slogAdapter) Debugf(format string, v ...any) {}
func (a *slogAdapter) Tracef(format string, v ...any) {}

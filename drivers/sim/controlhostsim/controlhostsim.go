// Package controlhostsim simulates a control host's REST API (Testflinger's
// DefaultControlHost API on port 8000) on loopback, together with the
// control host's SSH side (a sim.DUT), so that the control-host hooks
// (package drivers/controlhost) and the drivers that use them can be
// tested with no hardware: POST /api/v1/system/poweroff takes the host
// down (its API and its SSH port stop answering) until it is powered on
// again, by the Server's PowerOn (for example from a sim.Switch script
// standing for control_host_reboot_script) or by itself after DownTime;
// GET /health answers while it is up; POST
// /api/v1/system/setup/provisioning and /api/v1/system/setup/test are
// recorded with their bodies.
//
// Faults: the REST API down while the host is up, a host that never comes
// back once it went down, and setup requests that fail.
package controlhostsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
)

// The API's paths.
const (
	PathHealth            = "/health"
	PathPowerOff          = "/api/v1/system/poweroff"
	PathSetupProvisioning = "/api/v1/system/setup/provisioning"
	PathSetupTest         = "/api/v1/system/setup/test"
)

// Events the Server records besides the requests ("METHOD PATH").
const (
	EventDown    = "down"     // the host went down
	EventPowerOn = "power on" // the host was powered on
	EventUp      = "up"       // the host is up again, its API answering
)

// DefaultShutdownDelay is how long after answering a poweroff request the
// host goes down.
const DefaultShutdownDelay = 100 * time.Millisecond

// maxBody bounds a recorded request body.
const maxBody = 1 << 20

// How often, and how many times, the API tries to listen again on its
// port when the port is held.
const (
	relistenInterval = 50 * time.Millisecond
	relistenAttempts = 100
)

// Faults are the misbehaviours a Server can be given.
type Faults struct {
	// RESTDown keeps the REST API from answering (connections are
	// refused) while the host itself is up.
	RESTDown bool
	// NeverComesBack keeps the host from coming back once it went down: it
	// stays booting forever when powered on.
	NeverComesBack bool
	// SetupFails makes the setup requests answer 500.
	SetupFails bool
}

// Options configure a Server.
type Options struct {
	// Name is the control host's name (default "control-host-sim").
	Name string
	// Host is the DUT standing for the control host's SSH side; nil starts
	// one, with Users, AuthorizedKeys and BootTime. Power it only through
	// the Server's methods, so that the API follows.
	Host *sim.DUT
	// Users are the logins of the started host (default ubuntu/ubuntu).
	Users map[string]string
	// AuthorizedKeys are public keys the started host accepts for any user.
	AuthorizedKeys []ssh.PublicKey
	// BootTime is how long the started host boots after a power-on.
	BootTime time.Duration
	// ShutdownDelay is how long after answering a poweroff request the
	// host goes down (0: DefaultShutdownDelay).
	ShutdownDelay time.Duration
	// DownTime, when positive, powers the host on by itself this long
	// after it went down; 0 leaves it down until PowerOn.
	DownTime time.Duration
	// Faults are the faults injected from the start.
	Faults Faults
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
}

// Call is one request the API received.
type Call struct {
	// Method and Path are the request's.
	Method, Path string
	// Body is the request's body.
	Body []byte
	// At is when it arrived.
	At time.Time
}

// Server is a simulated control host. Its methods are safe for concurrent
// use.
type Server struct {
	name     string
	host     *sim.DUT
	ownHost  bool
	shutdown time.Duration
	downTime time.Duration
	log      *slog.Logger
	srv      *http.Server
	ctx      context.Context
	cancel   context.CancelFunc

	mu     sync.Mutex
	addr   string
	ln     net.Listener
	up     bool // powered and booted
	gen    uint64
	faults Faults
	calls  []Call
	events []string
	closed bool
}

// Start starts a simulated control host, up. It stops when ctx is done or
// Close is called.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Name == "" {
		opts.Name = "control-host-sim"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.ShutdownDelay <= 0 {
		opts.ShutdownDelay = DefaultShutdownDelay
	}
	s := &Server{
		name: opts.Name, host: opts.Host, shutdown: opts.ShutdownDelay, downTime: opts.DownTime,
		log: opts.Log.With("control_host", opts.Name), faults: opts.Faults, up: true,
	}
	if s.host == nil {
		users := opts.Users
		if len(users) == 0 && len(opts.AuthorizedKeys) == 0 {
			users = map[string]string{"ubuntu": "ubuntu"}
		}
		h, err := sim.StartDUT(ctx, sim.DUTOptions{Name: opts.Name, BootTime: opts.BootTime, Users: users,
			AuthorizedKeys: opts.AuthorizedKeys, Log: opts.Log})
		if err != nil {
			return nil, fmt.Errorf("controlhostsim: %w", err)
		}
		s.host, s.ownHost = h, true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		if s.ownHost {
			s.host.Close()
		}
		return nil, fmt.Errorf("controlhostsim: %w", err)
	}
	s.addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealth, s.health)
	mux.HandleFunc("POST "+PathPowerOff, s.powerOff)
	mux.HandleFunc("POST "+PathSetupProvisioning, s.setup)
	mux.HandleFunc("POST "+PathSetupTest, s.setup)
	s.srv = &http.Server{Handler: s.record(mux), ReadHeaderTimeout: 10 * time.Second}
	// Without keep-alives no connection outlives the host going down.
	s.srv.SetKeepAlivesEnabled(false)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.Lock()
	if s.faults.RESTDown {
		_ = ln.Close()
	} else {
		s.serveLocked(ln)
	}
	s.mu.Unlock()
	context.AfterFunc(ctx, s.Close)
	return s, nil
}

// serveLocked serves the API on ln.
func (s *Server) serveLocked(ln net.Listener) {
	s.ln = ln
	go func() { _ = s.srv.Serve(ln) }()
}

// listenLocked opens the API's listener again, on the same address, when
// the host is up and the API is not down. The port may be held for a
// moment (by another socket that was given it as its local port): then it
// is tried again in the background for a while.
func (s *Server) listenLocked() {
	if s.closed || !s.up || s.faults.RESTDown || s.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", s.addr)
	if err == nil {
		s.serveLocked(ln)
		return
	}
	s.log.Warn("controlhostsim: the API cannot listen again yet", "addr", s.addr, "err", err)
	gen := s.gen
	go func() {
		for range relistenAttempts {
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(relistenInterval):
			}
			s.mu.Lock()
			if s.gen != gen || s.closed || !s.up || s.faults.RESTDown || s.ln != nil {
				s.mu.Unlock()
				return
			}
			ln, err := net.Listen("tcp", s.addr)
			if err == nil {
				s.serveLocked(ln)
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
		}
		s.log.Error("controlhostsim: the API cannot listen again", "addr", s.addr)
	}()
}

// stopLocked closes the API's listener.
func (s *Server) stopLocked() {
	if s.ln != nil {
		_ = s.ln.Close()
		s.ln = nil
	}
}

// record records every request before handling it.
func (s *Server) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, maxBody))
		s.mu.Lock()
		s.calls = append(s.calls, Call{Method: r.Method, Path: r.URL.Path, Body: body, At: time.Now()})
		s.events = append(s.events, r.Method+" "+r.URL.Path)
		s.mu.Unlock()
		s.log.Info("controlhostsim: request", "method", r.Method, "path", r.URL.Path, "body", string(body))
		next.ServeHTTP(w, r)
	})
}

func reply(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, "{\"status\": %s}\n", strconv.Quote(msg))
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	reply(w, http.StatusOK, "ok")
}

func (s *Server) setup(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	fail := s.faults.SetupFails
	s.mu.Unlock()
	if fail {
		reply(w, http.StatusInternalServerError, "setup failed (simulated fault)")
		return
	}
	reply(w, http.StatusOK, "ok")
}

func (s *Server) powerOff(w http.ResponseWriter, _ *http.Request) {
	reply(w, http.StatusOK, "powering off")
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	time.AfterFunc(s.shutdown, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.gen == gen {
			s.downLocked()
		}
	})
}

// downLocked takes the host down, and schedules its return after DownTime.
func (s *Server) downLocked() {
	if s.closed || !s.up {
		return
	}
	s.gen++
	s.up = false
	s.stopLocked()
	s.host.PowerOff()
	s.events = append(s.events, EventDown)
	s.log.Info("controlhostsim: down")
	if s.downTime > 0 {
		gen := s.gen
		time.AfterFunc(s.downTime, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.gen == gen {
				s.powerOnLocked()
			}
		})
	}
}

// PowerOff takes the host down at once, as pulling its power.
func (s *Server) PowerOff() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.downLocked()
}

// PowerOn powers a host that is down on: it boots (the host's BootTime)
// and then answers again, unless it must never come back. It does nothing
// to a host that is up or booting.
func (s *Server) PowerOn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.powerOnLocked()
}

func (s *Server) powerOnLocked() {
	if s.closed || s.up || s.host.State() != sim.Off {
		return
	}
	s.gen++
	s.events = append(s.events, EventPowerOn)
	f := s.host.Faults()
	f.NeverBoots = s.faults.NeverComesBack
	s.host.SetFaults(f)
	s.host.PowerOn()
	gen := s.gen
	go func() {
		if err := s.host.WaitState(s.ctx, sim.Up); err != nil {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.gen != gen || s.closed {
			return
		}
		s.up = true
		s.listenLocked()
		s.events = append(s.events, EventUp)
		s.log.Info("controlhostsim: up")
	}()
}

// SetFaults replaces the injected faults. RESTDown applies at once;
// NeverComesBack at the next power-on.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	if f.RESTDown {
		s.stopLocked()
	} else {
		s.listenLocked()
	}
}

// Up reports whether the host is up (powered and booted).
func (s *Server) Up() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// Calls returns the requests received so far, in order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// CallsTo returns the requests received so far for path.
func (s *Server) CallsTo(path string) []Call {
	var out []Call
	for _, c := range s.Calls() {
		if c.Path == path {
			out = append(out, c)
		}
	}
	return out
}

// Events returns what happened so far, in order: each request as "METHOD
// PATH", EventDown, EventPowerOn, EventUp, and what Record added.
func (s *Server) Events() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}

// Record adds an event of the test harness (a switch action, a DUT's
// power) to Events, so that the order of everything can be checked.
func (s *Server) Record(event string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, event)
}

// Host returns the DUT standing for the control host's SSH side.
func (s *Server) Host() *sim.DUT { return s.host }

// APIAddr returns host:port of the REST API.
func (s *Server) APIAddr() string { return s.addr }

// APIPort returns the REST API's port.
func (s *Server) APIPort() int {
	_, port := sim.SplitAddr(s.addr)
	return port
}

// SSHPort returns the port of the host's SSH server.
func (s *Server) SSHPort() int {
	_, port := sim.SplitAddr(s.host.Addr())
	return port
}

// Config returns the device configuration keys that reach this control
// host: control_host, control_port and control_host_api_port.
func (s *Server) Config() map[string]any {
	host, _ := sim.SplitAddr(s.addr)
	return map[string]any{"control_host": host, "control_port": s.SSHPort(), "control_host_api_port": s.APIPort()}
}

// Close stops the API and the host it started.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.gen++
	s.stopLocked()
	s.mu.Unlock()
	s.cancel()
	if err := s.srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("controlhostsim: close", "err", err)
	}
	if s.ownHost {
		s.host.Close()
	}
}

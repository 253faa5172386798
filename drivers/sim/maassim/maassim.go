// Package maassim simulates a MAAS region controller for the maas2
// driver: the MAAS 2.0 REST API under <URL>/api/2.0/ over real HTTP, with
// OAuth 1.0 PLAINTEXT checked as MAAS checks it, and machines whose
// operating system is a sim.DUT reachable over SSH.
//
// # What it serves
//
//   - GET version/ (anonymous, as in MAAS): the version Options.Version
//     gives and MAAS's capabilities.
//   - machines/: GET (list); POST op=allocate (system_id=...).
//   - machines/{system_id}/: GET; POST op=release, deploy (distro_series,
//     hwe_kernel, user_data in base64, ephemeral_deploy from MAAS 3.5),
//     mark_broken, mark_fixed (administrators only), power_off, power_on,
//     set_storage_layout (flat or blank).
//   - nodes/{system_id}/blockdevices/ and .../{id}/: GET; PUT (name); POST
//     op=format, unformat, mount, unmount, set_boot_disk.
//   - .../{id}/partitions/: GET, POST (size); .../{id}/partition/{id}: GET,
//     DELETE, POST op=format, unformat, mount, unmount.
//   - nodes/{system_id}/results/?type=installation and
//     .../results/{id}/?op=download: the installation output of each
//     deployment.
//
// Answers have MAAS's shapes and MAAS's messages (409 for a state that
// forbids an operation, 400 with {"field": ["message"]} for a bad
// parameter, 401 "Authorization Error: ..." for a bad key, 403 for an
// operation the key's user may not do, "Unrecognised signature" for an
// unknown op).
//
// # Machines
//
// A machine's status follows MAAS: New, Ready, Allocated, Deploying,
// Deployed, Failed deployment, Releasing, Broken. Deploying takes
// MachineOptions.DeployTime; the machine then powers on its operating
// system, a sim.DUT answering SSH as ubuntu (password ubuntu, or the keys
// given), which boots in BootTime with the deployed release's
// /etc/os-release, the job's user data in
// /var/lib/cloud/instance/user-data.txt, and its address among the
// machine's ip_addresses. Releasing takes ReleaseTime and powers the DUT
// off. The machine has physical disks whose partitions, filesystems and
// mounts the API edits (sizes as MAAS counts them: 5 MiB kept for the
// partition table, partitions rounded up to 4 MiB), UEFI boot entries
// that efibootmgr shows and reorders, and a TPM whose physical presence
// request (/sys/class/tpm/tpm0/ppi/request, written with sudo tee) is
// carried out at the next power on.
//
// # Faults
//
// Server-wide (Faults): answers 500 to the next requests, closes the
// connection of the next requests without answering, answers slowly.
// Per machine (MachineFaults): the deployment fails (with an installation
// log saying why), the release hangs (until the machine is powered off),
// mark_broken is refused, the BMC ignores power requests, the machine
// never gets the expected address, its system never boots, it boots
// another release than the one asked for, its SSH host key changes on
// every boot, and its firmware puts the installed system first in the
// boot order after each deployment, after which MAAS cannot deploy it
// until the network boot entry is first again.
package maassim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultVersion is the MAAS version a Server reports by default.
const DefaultVersion = "3.5.0"

// DefaultUser is the name of the API key's user.
const DefaultUser = "flinger"

// APIPrefix is where the API is served.
const APIPrefix = "/MAAS/api/2.0/"

// timestampWindow is how far an OAuth timestamp may be from the server's
// clock (piston's default).
const timestampWindow = 300 * time.Second

// Faults are the server-wide misbehaviours.
type Faults struct {
	// FailRequests makes the next this many API requests answer 500.
	FailRequests int
	// DropRequests makes the next this many API requests end with the
	// connection closed and no answer.
	DropRequests int
	// SlowAnswers delays every answer by this long.
	SlowAnswers time.Duration
}

// Options configure a Server.
type Options struct {
	// Addr is where the server listens (default 127.0.0.1:0).
	Addr string
	// Version is the MAAS version reported (default DefaultVersion).
	// ephemeral_deploy is taken from 3.5 on and ignored before, as MAAS
	// ignores parameters it does not know.
	Version string
	// Key is the API key accepted (consumer:token:secret; "": one is made,
	// see Server.Key).
	Key string
	// User is the key's user name (default DefaultUser).
	User string
	// NotAdmin makes the key's user an ordinary user, who may not mark
	// machines fixed.
	NotAdmin bool
	// Faults are the server-wide faults injected from the start.
	Faults Faults
	// Log receives the server's diagnostics (nil: discarded).
	Log *slog.Logger
}

// Server is a simulated MAAS region controller. Its methods are safe for
// concurrent use.
type Server struct {
	version  string
	user     string
	admin    bool
	key      string
	consumer string
	token    string
	secret   string
	log      *slog.Logger
	srv      *http.Server
	ln       net.Listener
	url      string

	mu       sync.Mutex
	faults   Faults
	machines map[string]*Machine
	order    []string
	nonces   map[string]time.Time
	requests []string
	nextID   int // block devices, partitions, script results
	closed   bool
}

// Start starts a Server; it stops when ctx is done or Close is called.
func Start(ctx context.Context, opts Options) (*Server, error) {
	s := &Server{
		version:  opts.Version,
		user:     opts.User,
		admin:    !opts.NotAdmin,
		key:      opts.Key,
		log:      opts.Log,
		faults:   opts.Faults,
		machines: map[string]*Machine{},
		nonces:   map[string]time.Time{},
		nextID:   1,
	}
	if s.version == "" {
		s.version = DefaultVersion
	}
	if s.user == "" {
		s.user = DefaultUser
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.key == "" {
		s.key = randomHex(9) + ":" + randomHex(9) + ":" + randomHex(16)
	}
	parts := strings.Split(s.key, ":")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return nil, errors.New("maassim: Options.Key must be consumer:token:secret")
	}
	s.consumer, s.token, s.secret = parts[0], parts[1], parts[2]
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("maassim: %w", err)
	}
	s.ln = ln
	s.url = "http://" + ln.Addr().String() + "/MAAS"
	s.srv = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	context.AfterFunc(ctx, s.Close)
	s.log.Info("maassim: MAAS up", "url", s.url, "version", s.version)
	return s, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// URL returns the MAAS URL (http://127.0.0.1:PORT/MAAS), as a maas2
// device's maas_url gives it.
func (s *Server) URL() string { return s.url }

// Key returns the API key the server accepts.
func (s *Server) Key() string { return s.key }

// Version returns the version the server reports.
func (s *Server) Version() string { return s.version }

// SetFaults replaces the server-wide faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// Faults returns the server-wide faults (the request counts left).
func (s *Server) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// Requests returns the API requests received so far, in order, as
// "METHOD path" with the op ("POST machines/abc123/?op=deploy"); the
// path is under the API prefix.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Count returns how many requests Requests lists that contain substr.
func (s *Server) Count(substr string) int {
	n := 0
	for _, r := range s.Requests() {
		if strings.Contains(r, substr) {
			n++
		}
	}
	return n
}

// Machine returns the machine systemID, or nil.
func (s *Server) Machine(systemID string) *Machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.machines[systemID]
}

// Close stops the server and its machines.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	ms := make([]*Machine, 0, len(s.machines))
	for _, m := range s.machines {
		ms = append(ms, m)
		m.stopTimersLocked()
	}
	s.mu.Unlock()
	_ = s.srv.Close()
	for _, m := range ms {
		m.dut.Close()
	}
}

// idLocked returns a new object id.
func (s *Server) idLocked() int {
	id := s.nextID
	s.nextID++
	return id
}

// apiError is an answer other than success.
type apiError struct {
	status int
	body   any // a string, or validation errors
}

func (e *apiError) Error() string { return fmt.Sprint(e.body) }

func conflict(format string, args ...any) error {
	return &apiError{http.StatusConflict, fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func invalid(field, format string, args ...any) error {
	return &apiError{http.StatusBadRequest, map[string][]string{field: {fmt.Sprintf(format, args...)}}}
}

func forbidden(format string, args ...any) error {
	return &apiError{http.StatusForbidden, fmt.Sprintf(format, args...)}
}

var errNotFound = &apiError{http.StatusNotFound, "Not Found"}

// handlerFunc is an API handler: it returns the JSON (or text) answer.
type handlerFunc func(r *http.Request) (any, error)

// routes builds the API's routes.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	p := APIPrefix
	handle := func(pattern string, ops map[string]handlerFunc) {
		mux.Handle(pattern, s.api(ops))
	}
	mux.Handle("GET "+p+"version/", s.faulty(http.HandlerFunc(s.serveVersion)))
	handle("GET "+p+"machines/", map[string]handlerFunc{"": s.listMachines})
	handle("POST "+p+"machines/", map[string]handlerFunc{"allocate": s.allocate})
	handle("GET "+p+"machines/{id}/", map[string]handlerFunc{"": s.readMachine})
	handle("POST "+p+"machines/{id}/", map[string]handlerFunc{
		"release": s.release, "deploy": s.deploy, "mark_broken": s.markBroken, "mark_fixed": s.markFixed,
		"power_off": s.powerOff, "power_on": s.powerOn, "set_storage_layout": s.setStorageLayout,
	})
	handle("GET "+p+"nodes/{id}/blockdevices/", map[string]handlerFunc{"": s.listBlockDevices})
	handle("GET "+p+"nodes/{id}/blockdevices/{dev}/", map[string]handlerFunc{"": s.readBlockDevice})
	handle("PUT "+p+"nodes/{id}/blockdevices/{dev}/", map[string]handlerFunc{"": s.updateBlockDevice})
	handle("POST "+p+"nodes/{id}/blockdevices/{dev}/", map[string]handlerFunc{
		"format": s.formatBlockDevice, "unformat": s.unformatBlockDevice, "mount": s.mountBlockDevice,
		"unmount": s.unmountBlockDevice, "set_boot_disk": s.setBootDisk,
	})
	handle("GET "+p+"nodes/{id}/blockdevices/{dev}/partitions/", map[string]handlerFunc{"": s.listPartitions})
	handle("POST "+p+"nodes/{id}/blockdevices/{dev}/partitions/", map[string]handlerFunc{"": s.createPartition})
	handle("GET "+p+"nodes/{id}/blockdevices/{dev}/partition/{part}", map[string]handlerFunc{"": s.readPartition})
	handle("DELETE "+p+"nodes/{id}/blockdevices/{dev}/partition/{part}", map[string]handlerFunc{"": s.deletePartition})
	handle("POST "+p+"nodes/{id}/blockdevices/{dev}/partition/{part}", map[string]handlerFunc{
		"format": s.formatPartition, "unformat": s.unformatPartition, "mount": s.mountPartition, "unmount": s.unmountPartition,
	})
	handle("GET "+p+"nodes/{id}/results/", map[string]handlerFunc{"": s.listResults})
	handle("GET "+p+"nodes/{id}/results/{rid}/", map[string]handlerFunc{"download": s.downloadResult})
	mux.Handle("/", s.faulty(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "Not Found", http.StatusNotFound)
	})))
	return mux
}

// faulty applies the server-wide faults and records the request.
func (s *Server) faulty(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		what := r.Method + " " + strings.TrimPrefix(r.URL.Path, APIPrefix)
		if op := r.URL.Query().Get("op"); op != "" {
			what += "?op=" + op
		}
		s.mu.Lock()
		s.requests = append(s.requests, what)
		f := &s.faults
		delay := f.SlowAnswers
		drop, fail := false, false
		switch {
		case f.DropRequests > 0:
			f.DropRequests--
			drop = true
		case f.FailRequests > 0:
			f.FailRequests--
			fail = true
		}
		s.mu.Unlock()
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-r.Context().Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if drop {
			s.log.Info("maassim: dropping the connection (fault)", "request", what)
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					_ = c.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		if fail {
			s.log.Info("maassim: answering 500 (fault)", "request", what)
			http.Error(w, "Internal server error: the region's database connection was lost (simulated).", http.StatusInternalServerError)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// api serves the operations of one route: ops maps the op query
// parameter ("" for none) to its handler.
func (s *Server) api(ops map[string]handlerFunc) http.Handler {
	return s.faulty(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.authenticate(r); err != nil {
			writeError(w, err)
			return
		}
		op := r.URL.Query().Get("op")
		h, ok := ops[op]
		if !ok {
			writeError(w, badRequest("Unrecognised signature: method=%s op=%s", r.Method, op))
			return
		}
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			if err := r.ParseMultipartForm(1 << 20); err != nil && !errors.Is(err, http.ErrNotMultipart) {
				writeError(w, badRequest("Could not read the request: %v", err))
				return
			}
		}
		out, err := h(r)
		if err != nil {
			writeError(w, err)
			return
		}
		switch v := out.(type) {
		case nil:
			w.WriteHeader(http.StatusNoContent)
		case text:
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = w.Write([]byte(v))
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
	}))
}

// text is an answer sent as plain text.
type text string

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{http.StatusInternalServerError, err.Error()}
	}
	if s, ok := ae.body.(string); ok {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(ae.status)
		_, _ = w.Write([]byte(s))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.status)
	_ = json.NewEncoder(w).Encode(ae.body)
}

func (s *Server) serveVersion(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"capabilities": []string{"networks-management", "static-ipaddresses", "ipv6-deployment-ubuntu",
			"devices-management", "storage-deployment-ubuntu", "network-deployment-ubuntu", "bridging-interface-ubuntu",
			"bridging-automatic-ubuntu", "authenticate-api"},
		"version":    s.version,
		"subversion": "flinger-sim",
	})
}

// authenticate checks a request's OAuth signature as MAAS (piston) does,
// with MAAS's messages.
func (s *Server) authenticate(r *http.Request) error {
	h := r.Header.Get("Authorization")
	unauthorized := func(msg string) error { return &apiError{http.StatusUnauthorized, msg} }
	if h == "" {
		return unauthorized("Authorization required.")
	}
	if !strings.HasPrefix(h, "OAuth ") {
		return unauthorized("Authorization Error: 'Unsupported authorization scheme.'")
	}
	params := map[string]string{}
	for _, part := range strings.Split(strings.TrimPrefix(h, "OAuth "), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"`)
		dv, err := url.PathUnescape(v)
		if err != nil {
			return unauthorized("Authorization Error: 'Unable to parse OAuth parameters from Authorization header.'")
		}
		params[k] = dv
	}
	for _, k := range []string{"oauth_consumer_key", "oauth_token", "oauth_signature_method", "oauth_signature", "oauth_timestamp", "oauth_nonce"} {
		if _, ok := params[k]; !ok {
			return unauthorized(fmt.Sprintf("Authorization Error: 'Missing OAuth parameter: %s'", k))
		}
	}
	if params["oauth_consumer_key"] != s.consumer {
		return unauthorized("Authorization Error: Invalid API key.")
	}
	if params["oauth_token"] != s.token {
		return unauthorized(fmt.Sprintf("Authorization Error: 'Invalid access token: %s'", params["oauth_token"]))
	}
	if m := params["oauth_signature_method"]; m != "PLAINTEXT" {
		return unauthorized(fmt.Sprintf("Authorization Error: 'Signature method %s not supported try one of the following: PLAINTEXT'", m))
	}
	if params["oauth_signature"] != "&"+percentEncode(s.secret) {
		return unauthorized("Authorization Error: 'Invalid signature.'")
	}
	ts, err := strconv.ParseInt(params["oauth_timestamp"], 10, 64)
	now := time.Now()
	if err != nil || now.Sub(time.Unix(ts, 0)).Abs() > timestampWindow {
		return unauthorized(fmt.Sprintf("Authorization Error: 'Expired timestamp: given %s and now %d has a greater difference than threshold %d'",
			params["oauth_timestamp"], now.Unix(), int(timestampWindow.Seconds())))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, t := range s.nonces {
		if now.Sub(t) > 2*timestampWindow {
			delete(s.nonces, n)
		}
	}
	nonce := params["oauth_nonce"]
	if _, seen := s.nonces[nonce]; seen {
		return unauthorized(fmt.Sprintf("Authorization Error: 'Nonce already used: %s'", nonce))
	}
	s.nonces[nonce] = now
	return nil
}

// percentEncode encodes s as OAuth 1.0 does (RFC 5849, section 3.6).
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// Package netbootsim simulates a netboot device for the netboot driver: a
// board with two boot targets on one network address.
//
//   - The master image, the "Snappy Test Device Imager": an HTTP server on
//     the device's address and its own port (standing for port 8989) with
//     the imager's API: GET /check answers a page naming the imager; GET
//     /writeimage?server=HOST:PORT&dev=DEV connects to HOST:PORT, reads the
//     xz stream served there, decompresses it (github.com/ulikunitz/xz)
//     and writes it into the simulated disk at DEV, then answers with dd's
//     summary ("N bytes copied, ...", status 200) or with the error of
//     the step that failed (nc, unxz or dd; status 500); GET /reboot
//     answers and then reboots the device into the selected target.
//   - The test image: a sim.DUT (SSH) that boots from that disk
//     (sim.BootFromDisk), so it only comes up when the disk holds a
//     complete simulated image, and then reports that image's os-release.
//
// Which target boots is chosen by two sim.Switch scripts, the device's
// select_master_script and select_test_script; its reboot_script, also a
// Switch script, hard-resets it into the selected target, as /reboot does.
// While the master image runs, the DUT is off (SSH refused); while the
// test image runs, the imager's port refuses connections. A reboot run
// inside the test image (sudo reboot over SSH) reboots the test image.
//
// Faults (Faults, Rig.SetFaults): the test image never boots, the imager
// never comes up, the disk fails half way through a write, the imager's
// connection to the image server drops, a slow link, and a test image
// whose SSH host key changes on every boot. An image other than the one
// on the disk is simulated with Options.Image (what the disk holds at
// start) and the image a job serves.
package netbootsim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ulikunitz/xz"
	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
)

// CheckBanner is what the imager's /check page contains; the netboot
// driver looks for it to know that the master image is up.
const CheckBanner = "Snappy Test Device Imager"

// Defaults of Options.
const (
	DefaultTestDevice = "/dev/mmcblk0"
	DefaultDeviceIP   = "127.0.0.1"
	DefaultBootTime   = 200 * time.Millisecond
	// DefaultUser and DefaultPassword are the test image's login, the
	// netboot connector's defaults (admin/admin).
	DefaultUser     = "admin"
	DefaultPassword = "admin"
)

// Script names, in Options.Dir.
const (
	SelectMasterScript = "select-master"
	SelectTestScript   = "select-test"
	RebootScript       = "reboot"
)

// rebootDelay is how long after answering /reboot the device reboots, so
// that the answer reaches the client as it would from a real board.
const rebootDelay = 50 * time.Millisecond

// ddBlock is the block size the imager's dd writes with.
const ddBlock = 16 << 20

// dialTimeout bounds the imager's connection to the image server.
const dialTimeout = 10 * time.Second

// Target is a boot target of the device.
type Target int

// The boot targets.
const (
	// Test is the test image on the disk: the sim.DUT.
	Test Target = iota
	// Master is the master image: the imager's HTTP server.
	Master
)

// String names the target.
func (t Target) String() string {
	if t == Master {
		return "master"
	}
	return "test"
}

// Faults are the misbehaviours a Rig can be given.
type Faults struct {
	// NeverBoots keeps the test image booting forever.
	NeverBoots bool
	// ImagerNeverBoots keeps the master image from ever answering.
	ImagerNeverBoots bool
	// HostKeyChangesOnBoot gives the test image a new SSH host key on
	// every boot.
	HostKeyChangesOnBoot bool
	// WriteFailsAfter makes the disk fail with an I/O error once this many
	// bytes of a write went in (0: never), as a dying SD card.
	WriteFailsAfter int64
	// LinkDropsAfter cuts the imager's connection to the image server once
	// it has received this many bytes (0: never).
	LinkDropsAfter int64
	// SlowLink limits the imager's download from the image server to this
	// many bytes per second (0: no limit).
	SlowLink int64
}

// Options configure a Rig.
type Options struct {
	// Name is the device's name (the DUT's host name; default "netboot").
	Name string
	// Dir is where the Switch scripts go (required; it is created).
	Dir string
	// DeviceIP is the loopback address the device answers on and connects
	// from (default 127.0.0.1; any 127.x.y.z address works on Linux).
	DeviceIP string
	// TestDevice is the disk's device node (default /dev/mmcblk0).
	TestDevice string
	// DiskSize is the disk's size in bytes (0: no limit).
	DiskSize int64
	// BootTime is how long the test image takes to boot (default 200ms).
	BootTime time.Duration
	// MasterBootTime is how long the master image takes to boot (default
	// BootTime).
	MasterBootTime time.Duration
	// Users are the test image's logins (default admin/admin).
	Users map[string]string
	// AuthorizedKeys are public keys the test image accepts for any user.
	AuthorizedKeys []ssh.PublicKey
	// Image, if not nil, is written to the disk before the device starts:
	// the test image it boots.
	Image *sim.Image
	// OSRelease is what the test image reports when the disk was never
	// written and Image is nil.
	OSRelease string
	// Start is the target selected and running at start (default Test).
	Start Target
	// Faults are the faults injected from the start.
	Faults Faults
	// Log receives the simulator's diagnostics (nil: discarded).
	Log *slog.Logger
}

// Request is a request the imager received.
type Request struct {
	// Path is the request's path, such as /writeimage.
	Path string
	// Query is its raw query string, as received.
	Query string
	// Server and Dev are the writeimage parameters ("" for other paths).
	Server, Dev string
}

// Rig is a running simulated netboot device. Its methods are safe for
// concurrent use.
type Rig struct {
	dut        *sim.DUT
	disk       *sim.Disk
	sw         *sim.Switch
	log        *slog.Logger
	deviceIP   string
	testDevice string
	imagerAddr string
	masterBoot time.Duration
	scripts    map[string]string

	wg sync.WaitGroup // imager handlers and reboots in flight

	mu       sync.Mutex
	selected Target
	running  Target
	gen      uint64 // bumped on each reboot
	timer    *time.Timer
	im       *imager
	faults   Faults
	requests []Request
	writes   int
	closed   bool
}

// imager is one boot of the master image.
type imager struct {
	srv    *http.Server
	ctx    context.Context
	cancel context.CancelFunc
}

// Start starts a simulated netboot device running opts.Start. It stops
// when ctx is done or Close is called.
func Start(ctx context.Context, opts Options) (*Rig, error) {
	if opts.Dir == "" {
		return nil, errors.New("netbootsim: Options.Dir is required (the Switch scripts go there)")
	}
	if opts.Name == "" {
		opts.Name = "netboot"
	}
	if opts.DeviceIP == "" {
		opts.DeviceIP = DefaultDeviceIP
	}
	if opts.TestDevice == "" {
		opts.TestDevice = DefaultTestDevice
	}
	if opts.BootTime <= 0 {
		opts.BootTime = DefaultBootTime
	}
	if opts.MasterBootTime <= 0 {
		opts.MasterBootTime = opts.BootTime
	}
	if len(opts.Users) == 0 && len(opts.AuthorizedKeys) == 0 {
		opts.Users = map[string]string{DefaultUser: DefaultPassword}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	log := opts.Log.With("netbootsim", opts.Name)

	disk := sim.NewDisk(opts.TestDevice, opts.DiskSize)
	osRelease := opts.OSRelease
	if opts.Image != nil {
		if _, err := disk.CopyTo(ctx, opts.Image.Reader(), ddBlock); err != nil {
			return nil, fmt.Errorf("netbootsim: writing the initial image: %w", err)
		}
		osRelease = opts.Image.OSRelease
	}
	disk.FailWritesAfter(opts.Faults.WriteFailsAfter)

	// The imager's port is chosen once and kept across reboots.
	ln, err := net.Listen("tcp", net.JoinHostPort(opts.DeviceIP, "0"))
	if err != nil {
		return nil, fmt.Errorf("netbootsim: choosing the imager's port: %w", err)
	}
	imagerAddr := ln.Addr().String()
	_ = ln.Close()

	dut, err := sim.StartDUT(ctx, sim.DUTOptions{
		Name:           opts.Name,
		Addr:           net.JoinHostPort(opts.DeviceIP, "0"),
		BootTime:       opts.BootTime,
		Users:          opts.Users,
		AuthorizedKeys: opts.AuthorizedKeys,
		OSRelease:      osRelease,
		Faults:         sim.Faults{NeverBoots: opts.Faults.NeverBoots, HostKeyChangesOnBoot: opts.Faults.HostKeyChangesOnBoot},
		Disks:          map[string]*sim.Disk{opts.TestDevice: disk},
		BootCheck:      sim.BootFromDisk(disk),
		Log:            opts.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("netbootsim: %w", err)
	}
	r := &Rig{
		dut:        dut,
		disk:       disk,
		log:        log,
		deviceIP:   opts.DeviceIP,
		testDevice: opts.TestDevice,
		imagerAddr: imagerAddr,
		masterBoot: opts.MasterBootTime,
		scripts:    map[string]string{},
		selected:   opts.Start,
		running:    opts.Start,
		faults:     opts.Faults,
	}
	sw, err := sim.StartSwitch(ctx, opts.Dir, opts.Log)
	if err != nil {
		dut.Close()
		return nil, fmt.Errorf("netbootsim: %w", err)
	}
	r.sw = sw
	for name, action := range map[string]func() error{
		SelectMasterScript: func() error { return r.Select(Master) },
		SelectTestScript:   func() error { return r.Select(Test) },
		RebootScript:       func() error { r.Reboot(); return nil },
	} {
		path, err := sw.Script(name, action)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("netbootsim: %w", err)
		}
		r.scripts[name] = path
	}
	if opts.Start == Master {
		dut.PowerOff()
		r.mu.Lock()
		err := r.startImagerLocked()
		r.mu.Unlock()
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("netbootsim: %w", err)
		}
	}
	context.AfterFunc(ctx, r.Close)
	log.Info("netbootsim: started", "imager", imagerAddr, "ssh", dut.Addr(), "running", opts.Start)
	return r, nil
}

// DUT returns the test image's simulated device.
func (r *Rig) DUT() *sim.DUT { return r.dut }

// Disk returns the disk the imager writes and the test image boots from.
func (r *Rig) Disk() *sim.Disk { return r.disk }

// DeviceIP returns the address the device answers on.
func (r *Rig) DeviceIP() string { return r.deviceIP }

// TestDevice returns the disk's device node.
func (r *Rig) TestDevice() string { return r.testDevice }

// ImagerAddr returns the imager's host:port (refusing connections unless
// the master image is up).
func (r *Rig) ImagerAddr() string { return r.imagerAddr }

// Script returns the path of the Switch script name (SelectMasterScript,
// SelectTestScript or RebootScript).
func (r *Rig) Script(name string) string { return r.scripts[name] }

// Calls returns how many times the Switch script name was run.
func (r *Rig) Calls(name string) int { return r.sw.Calls(name) }

// Select chooses the target the next reboot boots.
func (r *Rig) Select(t Target) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("the device is closed")
	}
	r.log.Info("netbootsim: boot target selected", "target", t)
	r.selected = t
	return nil
}

// Selected returns the target the next reboot boots.
func (r *Rig) Selected() Target {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.selected
}

// Running returns the target the device last booted (or is booting), and
// whether it is up: the imager answering, or the DUT accepting SSH.
func (r *Rig) Running() (Target, bool) {
	r.mu.Lock()
	t, im := r.running, r.im
	r.mu.Unlock()
	if t == Master {
		return t, im != nil
	}
	return t, r.dut.State() == sim.Up
}

// Requests returns the requests the imager received, in order.
func (r *Rig) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.requests...)
}

// Writes returns how many writeimage requests the imager received.
func (r *Rig) Writes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

// Faults returns the injected faults.
func (r *Rig) Faults() Faults {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.faults
}

// SetFaults replaces the injected faults. The disk and link faults apply
// to the next write; NeverBoots, ImagerNeverBoots and
// HostKeyChangesOnBoot to the end of the next boot.
func (r *Rig) SetFaults(f Faults) {
	r.mu.Lock()
	r.faults = f
	r.mu.Unlock()
	r.disk.FailWritesAfter(f.WriteFailsAfter)
	df := r.dut.Faults()
	df.NeverBoots, df.HostKeyChangesOnBoot = f.NeverBoots, f.HostKeyChangesOnBoot
	r.dut.SetFaults(df)
}

// Reboot hard-resets the device into the selected target: the running
// target goes down at once (a write in progress is cut), and the selected
// one boots.
func (r *Rig) Reboot() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.gen++
	r.stopImagerLocked()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.running = r.selected
	r.log.Info("netbootsim: reboot", "target", r.selected)
	if r.selected == Test {
		r.dut.PowerCycle()
		return
	}
	r.dut.PowerOff()
	gen := r.gen
	r.timer = time.AfterFunc(r.masterBoot, func() { r.masterBooted(gen) })
}

// masterBooted ends the master image's boot started in generation gen.
func (r *Rig) masterBooted(gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.gen != gen {
		return
	}
	r.timer = nil
	if r.faults.ImagerNeverBoots {
		r.log.Info("netbootsim: the imager never comes up (fault)")
		return
	}
	if err := r.startImagerLocked(); err != nil {
		r.log.Error("netbootsim: the imager could not listen", "err", err)
	}
}

// startImagerLocked starts the imager's HTTP server on its port.
func (r *Rig) startImagerLocked() error {
	ln, err := net.Listen("tcp", r.imagerAddr)
	if err != nil {
		return fmt.Errorf("imager: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	im := &imager{ctx: ctx, cancel: cancel}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /check", r.handle(im, r.check))
	mux.HandleFunc("GET /writeimage", r.handle(im, r.writeImage))
	mux.HandleFunc("GET /reboot", r.handle(im, r.reboot))
	im.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	r.im = im
	go func() { _ = im.srv.Serve(ln) }()
	r.log.Info("netbootsim: imager up", "addr", r.imagerAddr)
	return nil
}

// stopImagerLocked takes the imager down: its port refuses connections
// and the requests being served are cut.
func (r *Rig) stopImagerLocked() {
	if r.im == nil {
		return
	}
	_ = r.im.srv.Close()
	r.im.cancel()
	r.im = nil
}

// handle wraps an imager handler: it records the request, counts it in
// the Rig's wait group, and gives it a context that ends when the request
// does or the imager goes down.
func (r *Rig) handle(im *imager, h func(ctx context.Context, w http.ResponseWriter, req *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		rec := Request{Path: req.URL.Path, Query: req.URL.RawQuery}
		if req.URL.Path == "/writeimage" {
			rec.Server, rec.Dev = q.Get("server"), q.Get("dev")
		}
		r.mu.Lock()
		if r.closed || r.im != im {
			r.mu.Unlock()
			http.Error(w, "the imager is going down", http.StatusServiceUnavailable)
			return
		}
		r.requests = append(r.requests, rec)
		r.wg.Add(1)
		r.mu.Unlock()
		defer r.wg.Done()
		ctx, cancel := context.WithCancel(req.Context())
		defer cancel()
		stop := context.AfterFunc(im.ctx, cancel)
		defer stop()
		h(ctx, w, req)
	}
}

func (r *Rig) check(_ context.Context, w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<html><head><title>%[1]s</title></head><body><h1>%[1]s</h1></body></html>\n", CheckBanner)
}

func (r *Rig) reboot(_ context.Context, w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintln(w, "Rebooting")
	r.mu.Lock()
	defer r.mu.Unlock()
	gen := r.gen
	r.wg.Add(1)
	time.AfterFunc(rebootDelay, func() {
		defer r.wg.Done()
		r.mu.Lock()
		same := r.gen == gen
		r.mu.Unlock()
		if same {
			r.Reboot()
		}
	})
}

// writeImage is GET /writeimage?server=HOST:PORT&dev=DEV: nc HOST PORT |
// unxz | dd of=DEV bs=16M, answered with the pipeline's messages.
func (r *Rig) writeImage(ctx context.Context, w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	server, dev := q.Get("server"), q.Get("dev")
	r.mu.Lock()
	r.writes++
	faults := r.faults
	r.mu.Unlock()
	fail := func(format string, args ...any) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, format, args...)
	}
	if server == "" || dev == "" {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintln(w, "writeimage: server=HOST:PORT and dev=DEVICE are required")
		return
	}
	disk := r.dut.Disk(dev)
	if disk == nil {
		fail("dd: failed to open '%s': No such file or directory\n", dev)
		return
	}
	host, port, err := net.SplitHostPort(server)
	if err != nil {
		fail("nc: %s: %v\n", server, err)
		return
	}
	d := net.Dialer{Timeout: dialTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(r.deviceIP)}}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		fail("nc: connect to %s port %s (tcp) failed: %v\n", host, port, err)
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	r.log.Info("netbootsim: writing an image", "from", server, "to", dev)

	var src io.Reader = &ncReader{r: conn, log: r.log}
	if faults.SlowLink > 0 {
		src = &slowReader{ctx: ctx, r: src, rate: faults.SlowLink, start: time.Now()}
	}
	if faults.LinkDropsAfter > 0 {
		src = &dropReader{r: src, left: faults.LinkDropsAfter, conn: conn}
	}
	// unxz reports its own error; dd sees the end of its input.
	unxz := &xzStage{src: bufio.NewReaderSize(src, 1<<20)}
	start := time.Now()
	n, werr := disk.CopyTo(ctx, unxz, ddBlock)
	if ctx.Err() != nil {
		// The request or the imager went away: a device going down sends
		// no answer.
		panic(http.ErrAbortHandler)
	}
	summary := sim.DDSummary(n, ddBlock, time.Since(start))
	switch {
	case unxz.err != nil:
		fail("unxz: (stdin): %v\n%s", unxz.err, summary)
	case werr != nil:
		fail("%s\n%s", sim.DDWriteError(dev, werr), summary)
	default:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, summary)
	}
}

// xzStage decompresses an xz stream, keeping its error for the answer:
// a damaged or incomplete stream is unxz's failure, not dd's.
type xzStage struct {
	src io.Reader
	r   *xz.Reader
	err error
}

func (s *xzStage) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.r == nil {
		r, err := xz.NewReader(s.src)
		if err != nil {
			s.err = xzError(err)
			return 0, s.err
		}
		s.r = r
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = xzError(err)
		return n, s.err
	}
	return n, err
}

// unxzError is an error as unxz words it.
type unxzError string

func (e unxzError) Error() string { return string(e) }

func xzError(err error) error {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return unxzError("Unexpected end of input")
	case strings.Contains(err.Error(), "magic"):
		return unxzError("File format not recognized")
	}
	return unxzError("Compressed data is corrupt (" + err.Error() + ")")
}

// ncReader is nc's output: the bytes received, ending when the connection
// does, however it ends.
type ncReader struct {
	r   io.Reader
	log *slog.Logger
}

func (n *ncReader) Read(p []byte) (int, error) {
	k, err := n.r.Read(p)
	if err != nil && err != io.EOF {
		n.log.Info("netbootsim: the image server's connection failed", "err", err)
		err = io.EOF
	}
	return k, err
}

// slowReader reads at most rate bytes per second.
type slowReader struct {
	ctx   context.Context
	r     io.Reader
	rate  int64
	start time.Time
	n     int64
}

func (s *slowReader) Read(p []byte) (int, error) {
	if chunk := max(s.rate/10, 1); int64(len(p)) > chunk {
		p = p[:chunk]
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	due := s.start.Add(time.Duration(float64(s.n) / float64(s.rate) * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return n, s.ctx.Err()
		}
	}
	return n, err
}

// dropReader cuts the connection once left bytes were read.
type dropReader struct {
	r    io.Reader
	left int64
	conn net.Conn
}

func (d *dropReader) Read(p []byte) (int, error) {
	if d.left <= 0 {
		_ = d.conn.Close()
		return 0, io.EOF // nc's output ends
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.r.Read(p)
	d.left -= int64(n)
	return n, err
}

// Config returns the device configuration keys that reach this device:
// device_ip, ssh_port, imager_port, test_device, select_master_script,
// select_test_script and reboot_script.
func (r *Rig) Config() map[string]any {
	_, sshPort := sim.SplitAddr(r.dut.Addr())
	_, imagerPort := sim.SplitAddr(r.imagerAddr)
	return map[string]any{
		"device_ip":            r.deviceIP,
		"ssh_port":             sshPort,
		"imager_port":          imagerPort,
		"test_device":          r.testDevice,
		"select_master_script": []any{r.scripts[SelectMasterScript]},
		"select_test_script":   []any{r.scripts[SelectTestScript]},
		"reboot_script":        []any{r.scripts[RebootScript]},
	}
}

// Close stops the device for good and waits for its goroutines.
func (r *Rig) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	r.gen++
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.stopImagerLocked()
	r.mu.Unlock()
	if r.sw != nil {
		r.sw.Close()
	}
	r.dut.Close()
	r.wg.Wait()
}

// Package workers runs a lab host: one process drives every device in its
// host file. Each idle device takes jobs from the JetStream subjects of the
// queues it serves as soon as they arrive (long-held pull requests, no
// polling interval), runs the phases in Testflinger's order with its skip
// rules, keeps the job's lease alive, streams output, publishes every event
// and keeps the device's status current.
package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/metrics"
)

// Config configures a worker.
type Config struct {
	// Client is the worker's NATS connection.
	Client *broker.Client
	// Host is the host file: the lab host's name and its devices.
	Host *drivers.HostConfig
	// RunDir is where job run directories are made (default: the host
	// file's run_dir, else flinger-runs under the system's temp dir).
	RunDir string
	// Lease is how long a job stays with a device that stops renewing it
	// before JetStream hands it to another (the queue consumers' AckWait;
	// default 60 s). It is set when a queue's consumer is first created.
	Lease time.Duration
	// Fence is how long a running job may go without its lease and record
	// being confirmed before the worker stops it itself (default
	// DefaultFence, and at most half the lease). It must stay below the
	// orchestrator's device timeout, after which the job may start on
	// another device.
	Fence time.Duration
	// Heartbeat is how often device status records are refreshed (default 15 s).
	Heartbeat time.Duration
	// DrainTimeout is how long, on shutdown, a running phase may take to
	// finish before it is stopped and its job handed back (default 30 s).
	DrainTimeout time.Duration
	// CleanupTimeout bounds the cleanup phase (default 10 min).
	CleanupTimeout time.Duration
	// KeepRunDirs keeps run directories after jobs end (default: removed).
	KeepRunDirs bool
	// MaxUnpacked bounds the bytes a job's attachment archive may unpack
	// to (default DefaultMaxUnpacked).
	MaxUnpacked int64
	// MaxArtifacts bounds a job's artifact archive (default
	// DefaultMaxArtifacts); a larger one is not stored.
	MaxArtifacts int64
	// Secrets resolves the test_data.secrets of jobs (nil: the host
	// file's secrets_file, or the lab's secrets bucket with secrets_kv;
	// else jobs with secrets fail).
	Secrets SecretStore
	// Images is the image cache the host's devices share. Nil: Run opens
	// the one the host file's image_cache section describes, and closes it
	// when it returns (none when it is disabled, or when its directory is
	// held by another process, which is logged).
	Images *image.Cache
	// Metrics, when not nil, counts what the worker's events tell
	// (metrics.Worker.Observe sees each event it publishes).
	Metrics *metrics.Worker
	// Log is the worker's logger (nil: slog.Default()).
	Log *slog.Logger
}

// Default durations.
const (
	DefaultLease          = 60 * time.Second
	DefaultFence          = 25 * time.Second
	DefaultHeartbeat      = 15 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	DefaultCleanupTimeout = 10 * time.Minute
	pullWait              = 30 * time.Second
)

// Worker drives the devices of one lab host.
type Worker struct {
	cfg     Config
	c       *broker.Client
	log     *slog.Logger
	devices []*device
	images  *image.Cache // the host's image cache, or nil; set by Run

	mu   sync.Mutex
	idle map[*device]bool
	wake map[string]chan struct{}
	// leases holds each queue consumer's AckWait, the lease its jobs must renew.
	leases map[string]time.Duration
	// running maps the subject token of each job being run to its run, for
	// cancel signals (one subscription per worker, not one per job).
	running sync.Map

	draining chan struct{}
	jobs     sync.WaitGroup
}

// New checks the configuration and builds a driver for every device.
func New(cfg Config) (*Worker, error) {
	if cfg.Client == nil {
		return nil, errors.New("worker: a NATS client is required")
	}
	if cfg.Host == nil || len(cfg.Host.Devices) == 0 {
		return nil, errors.New("worker: the host file has no devices")
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.CleanupTimeout <= 0 {
		cfg.CleanupTimeout = DefaultCleanupTimeout
	}
	if cfg.RunDir == "" {
		cfg.RunDir = cfg.Host.RunDir
	}
	if cfg.MaxUnpacked <= 0 {
		cfg.MaxUnpacked = DefaultMaxUnpacked
	}
	if cfg.MaxArtifacts <= 0 {
		cfg.MaxArtifacts = DefaultMaxArtifacts
	}
	if cfg.RunDir == "" {
		cfg.RunDir = filepath.Join(os.TempDir(), "flinger-runs")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	host := cfg.Host.Host
	if host == "" {
		host, _ = os.Hostname()
	}
	w := &Worker{
		cfg:      cfg,
		c:        cfg.Client,
		log:      cfg.Log.With("component", "worker", "host", host),
		idle:     map[*device]bool{},
		wake:     map[string]chan struct{}{},
		leases:   map[string]time.Duration{},
		draining: make(chan struct{}),
	}
	w.cfg.Host.Host = host
	switch {
	case w.cfg.Secrets != nil:
	case cfg.Host.SecretsFile != "":
		w.cfg.Secrets = FileSecrets{Path: cfg.Host.SecretsFile}
	case cfg.Host.SecretsKV:
		w.cfg.Secrets = KVSecrets{Client: cfg.Client}
	}
	for _, dc := range cfg.Host.Devices {
		drv, err := drivers.New(dc)
		if err != nil {
			return nil, fmt.Errorf("worker: device %s: %w", dc.Name, err)
		}
		d := &device{w: w, cfg: dc, drv: drv, log: w.log.With("device", dc.Name)}
		w.devices = append(w.devices, d)
		for _, q := range dc.Queues {
			if _, ok := w.wake[q]; !ok {
				w.wake[q] = make(chan struct{}, 1)
			}
		}
	}
	return w, nil
}

// fence is the fence time of a job whose lease is lease.
func (w *Worker) fence(lease time.Duration) time.Duration {
	f := w.cfg.Fence
	if f <= 0 {
		f = DefaultFence
	}
	return min(f, lease/2)
}

// Host returns the lab host's name.
func (w *Worker) Host() string { return w.cfg.Host.Host }

// Run drives the devices until ctx is done, then shuts down cleanly: no new
// job is taken, a running phase gets DrainTimeout to finish, and a job that
// cannot finish is handed back to its queue. Run returns when every job has
// been finished or handed back.
func (w *Worker) Run(ctx context.Context) error {
	if err := os.MkdirAll(w.cfg.RunDir, 0o750); err != nil {
		return fmt.Errorf("worker: run directory: %w", err)
	}
	if ic := w.cfg.Host.ImageCache; w.cfg.Images == nil && !ic.Disabled && ic.Dir != "" {
		c, err := image.NewCache(ic.Dir, ic.Size, nil, w.log.With("component", "image-cache"))
		if err != nil {
			w.log.Warn("no image cache: every device downloads its images", "dir", ic.Dir, "err", err)
		} else {
			w.images = c
			defer func() { _ = c.Close() }()
		}
	} else {
		w.images = w.cfg.Images
	}
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	consumers := map[string]jetstream.Consumer{}
	for q := range w.wake {
		cons, err := w.queueConsumer(setupCtx, q)
		if err != nil {
			return err
		}
		consumers[q] = cons
		w.leases[q] = cons.CachedInfo().Config.AckWait
	}
	disp, err := w.startDispatch(setupCtx, consumers)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer disp.close()
	cancelSub, err := w.c.NC.Subscribe(w.c.Subj.CancelSignals(), w.onCancel)
	if err != nil {
		return fmt.Errorf("worker: listen for cancel signals: %w", err)
	}
	defer func() { _ = cancelSub.Unsubscribe() }()
	reserveSub, err := w.c.NC.Subscribe(w.c.Subj.ReserveSignals(), w.onReserve)
	if err != nil {
		return fmt.Errorf("worker: listen for reservation signals: %w", err)
	}
	defer func() { _ = reserveSub.Unsubscribe() }()
	if err := w.c.NC.FlushWithContext(setupCtx); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	for _, d := range w.devices {
		if err := d.start(setupCtx); err != nil {
			return err
		}
	}
	watchCtx, stopWatching := context.WithCancel(context.Background())
	defer stopWatching()
	watchDone, err := w.watchDevices(watchCtx)
	if err != nil {
		return err
	}
	for _, d := range w.devices {
		d.ready()
	}
	w.log.Info("worker started", "devices", len(w.devices), "queues", len(consumers))

	pullCtx, stopPulling := context.WithCancel(context.Background())
	var pullers sync.WaitGroup
	for q := range consumers {
		pullers.Add(1)
		go func() {
			defer pullers.Done()
			disp.puller(q).run(pullCtx)
		}()
	}
	pullers.Add(1)
	go func() {
		defer pullers.Done()
		disp.run(pullCtx)
	}()
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		w.heartbeat(pullCtx)
	}()

	<-ctx.Done()
	w.log.Info("worker stopping: no new jobs; running jobs get the drain timeout", "drain", w.cfg.DrainTimeout)
	stopPulling()
	pullers.Wait()
	stopWatching()
	<-watchDone
	close(w.draining)
	w.jobs.Wait()
	<-hbDone
	final, cancelFinal := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelFinal()
	for _, d := range w.devices {
		d.heartbeatNow(final)
	}
	w.log.Info("worker stopped")
	return nil
}

// queueConsumer returns the durable pull consumer shared by every device
// serving queue q, creating it when it does not exist yet.
func (w *Worker) queueConsumer(ctx context.Context, q string) (jetstream.Consumer, error) {
	stream, name := w.c.Subj.QueueStreamOf(q), w.c.Subj.QueueConsumer(q)
	cons, err := w.c.JS.Consumer(ctx, stream, name)
	if err == nil {
		return cons, nil
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("queue %s: %w", q, err)
	}
	cons, err = w.c.JS.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "Devices serving queue " + q,
		FilterSubject: w.c.Subj.Queue(q),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       w.cfg.Lease,
		MaxDeliver:    -1,
		MaxAckPending: -1,
		MaxWaiting:    4096,
	})
	if err != nil {
		return nil, fmt.Errorf("queue %s: create consumer: %w", q, err)
	}
	return cons, nil
}

// onCancel stops the job a cancel signal names, if this worker runs it.
func (w *Worker) onCancel(m *nats.Msg) {
	token := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	v, ok := w.running.Load(token)
	if !ok {
		return
	}
	detail := strings.TrimSpace(string(m.Data))
	if detail == "" {
		detail = "cancelled on request"
	}
	v.(*jobRun).cancel(&cancelRequest{detail: detail})
}

// onReserve tells the job a reservation signal names, if this worker runs
// it, that its reservation's end moved.
func (w *Worker) onReserve(m *nats.Msg) {
	token := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	if v, ok := w.running.Load(token); ok {
		select {
		case v.(*jobRun).extended <- struct{}{}:
		default:
		}
	}
}

func (w *Worker) hasIdle(q string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for d := range w.idle {
		if slices.Contains(d.cfg.Queues, q) {
			return true
		}
	}
	return false
}

// take removes and returns an idle device serving q that is not in
// exclude, preferring the one serving the fewest queues so that the others
// stay free for theirs.
func (w *Worker) take(q string, exclude []string) *device {
	w.mu.Lock()
	defer w.mu.Unlock()
	var best *device
	for d := range w.idle {
		if !slices.Contains(d.cfg.Queues, q) || slices.Contains(exclude, d.cfg.Name) {
			continue
		}
		if best == nil || len(d.cfg.Queues) < len(best.cfg.Queues) ||
			(len(d.cfg.Queues) == len(best.cfg.Queues) && d.cfg.Name < best.cfg.Name) {
			best = d
		}
	}
	if best != nil {
		delete(w.idle, best)
		best.inJob = true
	}
	return best
}

// setIdle makes d available and wakes the pullers of its queues, unless
// it runs a job or a health check.
func (w *Worker) setIdle(d *device) {
	w.mu.Lock()
	if d.inJob {
		w.mu.Unlock()
		return
	}
	w.idle[d] = true
	w.mu.Unlock()
	for _, q := range d.cfg.Queues {
		select {
		case w.wake[q] <- struct{}{}:
		default:
		}
	}
}

// withdraw takes d out of the idle set: it takes no new job.
func (w *Worker) withdraw(d *device) {
	w.mu.Lock()
	delete(w.idle, d)
	w.mu.Unlock()
}

// reserve takes d for a health check, as take does for a job; it reports
// false when d already runs one or the other.
func (w *Worker) reserve(d *device) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if d.inJob {
		return false
	}
	delete(w.idle, d)
	d.inJob = true
	return true
}

// endJob records that d's job or health check has ended.
func (w *Worker) endJob(d *device) {
	w.mu.Lock()
	d.inJob = false
	w.mu.Unlock()
}

func (w *Worker) heartbeat(ctx context.Context) {
	t := time.NewTicker(w.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, d := range w.devices {
				d.heartbeatNow(ctx)
			}
		}
	}
}

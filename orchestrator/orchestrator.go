// Package orchestrator coordinates jobs across devices. It keeps no state
// of its own: everything lives in JetStream, so several orchestrators run
// at once. For now it does intake (validate, assign the id, record, route
// to the queue) and answers control requests (cancel).
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/metrics"
)

// Config configures an orchestrator.
type Config struct {
	// Client is its NATS connection.
	Client *broker.Client
	// MaxJobBytes is the largest job accepted (default events.DefaultMaxJobBytes).
	MaxJobBytes int
	// MaxAttempts bounds how many devices may start one job: after a
	// recovery failure or a lost worker the job is requeued to another
	// device until this many have tried (default 3; 1 never requeues).
	MaxAttempts int
	// LostJobPolicy says what happens to the job of a device whose worker
	// stopped renewing its lease: "requeue" (default) or "fail".
	LostJobPolicy string
	// DeviceTimeout is how long a device's heartbeat may be missing before
	// its health becomes unknown and its job is handled as lost (default
	// 45 s: three missed heartbeats of workers.DefaultHeartbeat). It must
	// be longer than the workers' fence (workers.DefaultFence), so that a
	// cut-off worker has stopped its job before another device starts it.
	DeviceTimeout time.Duration
	// MaxReservation caps how long a reservation may last in all, from the
	// start of its reserve phase, when `reserve extend` moves its end
	// (default 6 h, Testflinger's limit without extra permission).
	MaxReservation time.Duration
	// WebhookHosts lists the hosts (host or host:port) job_status_webhook
	// URLs may point at; empty: no webhook is called.
	WebhookHosts []string
	// WebhookToken, when set, is sent as a bearer token to webhooks.
	WebhookToken string
	// MaxAttachmentBytes is the largest attachment archive a job may
	// carry (default DefaultMaxAttachmentBytes); a larger one fails the
	// job before it is queued.
	MaxAttachmentBytes int64
	// Metrics, when not nil, receives the orchestrator's metrics.
	Metrics *metrics.Orchestrator
	// Log is its logger (nil: slog.Default()).
	Log *slog.Logger
}

// Defaults for Config's zero values.
const (
	DefaultMaxAttempts    = 3
	DefaultDeviceTimeout  = 45 * time.Second
	DefaultMaxReservation = 6 * time.Hour
	// DefaultMaxAttachmentBytes is 4 GiB: a compressed desktop image.
	DefaultMaxAttachmentBytes = 4 << 30
	LostJobRequeue            = "requeue"
	LostJobFail               = "fail"
)

// Orchestrator runs intake and the control service.
type Orchestrator struct {
	cfg     Config
	devices deviceCache
	c       *broker.Client
	log     *slog.Logger
	max     int
	wg      sync.WaitGroup
	svc     micro.Service
	stop    context.CancelFunc
}

// IntakeConsumer is the durable consumer name shared by every orchestrator's intake.
const IntakeConsumer = "intake"

// New returns an orchestrator; Start runs it.
func New(cfg Config) (*Orchestrator, error) {
	if cfg.Client == nil {
		return nil, errors.New("orchestrator: a NATS client is required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	switch cfg.LostJobPolicy {
	case "":
		cfg.LostJobPolicy = LostJobRequeue
	case LostJobRequeue, LostJobFail:
	default:
		return nil, fmt.Errorf("orchestrator: lost-job policy %q: use %s or %s", cfg.LostJobPolicy, LostJobRequeue, LostJobFail)
	}
	if cfg.DeviceTimeout <= 0 {
		cfg.DeviceTimeout = DefaultDeviceTimeout
	}
	if cfg.MaxReservation <= 0 {
		cfg.MaxReservation = DefaultMaxReservation
	}
	if cfg.MaxAttachmentBytes <= 0 {
		cfg.MaxAttachmentBytes = DefaultMaxAttachmentBytes
	}
	return &Orchestrator{cfg: cfg, c: cfg.Client, log: log.With("component", "orchestrator"), max: cfg.MaxJobBytes}, nil
}

// Start begins intake and the control service; ctx bounds only the
// start-up, and they run until Stop is called.
func (o *Orchestrator) Start(ctx context.Context) error {
	cons, err := o.c.JS.CreateOrUpdateConsumer(ctx, o.c.Subj.SubmitStream(), jetstream.ConsumerConfig{
		Durable:       IntakeConsumer,
		Description:   "Orchestrators' intake of submitted jobs",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 10000,
		MaxDeliver:    10,
	})
	if err != nil {
		return fmt.Errorf("intake consumer: %w", err)
	}
	svc, err := o.startControl()
	if err != nil {
		return err
	}
	o.svc = svc
	var runCtx context.Context
	runCtx, o.stop = context.WithCancel(context.Background())
	o.goLoop(func() { o.intakeLoop(runCtx, cons) })
	// Each reactor starts its own consumers and loops with goLoop.
	for _, start := range []func(context.Context, context.Context) error{o.startRequeue, o.startWebhooks, o.startMetrics, o.startDevices, o.startMulti} {
		if err := start(ctx, runCtx); err != nil {
			o.Stop()
			return err
		}
	}
	return nil
}

// goLoop runs fn in a goroutine that Stop waits for.
func (o *Orchestrator) goLoop(fn func()) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		fn()
	}()
}

// Stop ends intake and the control service and waits for them.
func (o *Orchestrator) Stop() {
	if o.stop != nil {
		o.stop()
	}
	if o.svc != nil {
		_ = o.svc.Stop()
	}
	o.wg.Wait()
}

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
)

// Config configures an orchestrator.
type Config struct {
	// Client is its NATS connection.
	Client *broker.Client
	// MaxJobBytes is the largest job accepted (default events.DefaultMaxJobBytes).
	MaxJobBytes int
	// Log is its logger (nil: slog.Default()).
	Log *slog.Logger
}

// Orchestrator runs intake and the control service.
type Orchestrator struct {
	c    *broker.Client
	log  *slog.Logger
	max  int
	wg   sync.WaitGroup
	svc  micro.Service
	stop context.CancelFunc
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
	return &Orchestrator{c: cfg.Client, log: log.With("component", "orchestrator"), max: cfg.MaxJobBytes}, nil
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
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.intakeLoop(runCtx, cons)
	}()
	return nil
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

package orchestrator

import (
	"context"
	"fmt"
)

// startMetrics binds the orchestrator's metrics, when it has any, to its
// NATS connection (their gauges read queues and devices on scrape) and
// starts counting events from the shared count consumer.
func (o *Orchestrator) startMetrics(ctx, runCtx context.Context) error {
	if o.cfg.Metrics == nil {
		return nil
	}
	run, err := o.cfg.Metrics.Start(ctx, o.c)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	o.goLoop(func() { run(runCtx) })
	return nil
}

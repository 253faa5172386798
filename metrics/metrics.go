// Package metrics holds Flinger's Prometheus metrics: what a worker and an
// orchestrator count, and the HTTP endpoint that serves them.
package metrics

// Orchestrator is the orchestrator's metrics.
type Orchestrator struct{}

// Worker is a worker's metrics.
type Worker struct{}

package metrics

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flingerlab/flinger/events"
)

// PhaseBuckets are the upper bounds, in seconds, of the phase-duration
// histogram: from a skipped-fast setup to a four-hour test.
var PhaseBuckets = []float64{0.5, 1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400}

// Worker is a worker's metrics. It learns everything from the events the
// worker publishes (Observe), so that what it counts is what the event
// stream says happened:
//
//   - flinger_worker_jobs_total{outcome}: jobs that ended on this worker's
//     devices, by outcome (job_end's outcome: pass, test_fail, fail,
//     recovery_fail, cancelled, timeout);
//   - flinger_worker_phase_duration_seconds{phase}: how long each phase
//     that ran took, from its _start to its _success, _fail or
//     recovery_fail (skipped phases are not observed);
//   - flinger_worker_recovery_failures_total{device}: recovery failures
//     (exit 46), which take the device offline;
//   - flinger_worker_devices{state,health}: this worker's devices by state
//     and health, from their latest device_state event.
//
// A nil *Worker observes nothing, so callers need no check.
type Worker struct {
	reg      *Registry
	jobs     *prometheus.CounterVec
	phases   *prometheus.HistogramVec
	recovery *prometheus.CounterVec

	mu      sync.Mutex
	devices map[string]stateHealth
	running map[string]*phaseRun // by device: the phase it runs
}

// phaseRun is the phase a device runs, since when, and whether its
// recovery failure has been counted.
type phaseRun struct {
	job       string
	phase     events.Phase
	start     time.Time
	recovered bool // a recovery failure was counted for it
}

// NewWorker returns a worker's metrics in a registry of their own; log
// receives scrape errors (nil: slog.Default()).
func NewWorker(log *slog.Logger) *Worker {
	reg := newRegistry(log)
	w := &Worker{
		reg: reg,
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flinger_worker_jobs_total",
			Help: "Jobs that ended on this worker's devices, by outcome.",
		}, []string{"outcome"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flinger_worker_phase_duration_seconds",
			Help:    "How long the phases that ran took, by phase.",
			Buckets: slices.Clone(PhaseBuckets),
		}, []string{"phase"}),
		recovery: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flinger_worker_recovery_failures_total",
			Help: "Recovery failures (exit 46) that took a device offline, by device.",
		}, []string{"device"}),
		devices: map[string]stateHealth{},
		running: map[string]*phaseRun{},
	}
	reg.own.MustRegister(w.jobs, w.phases, w.recovery, &workerDevices{
		w: w,
		desc: prometheus.NewDesc("flinger_worker_devices",
			"This worker's devices by state and health.", []string{"state", "health"}, nil),
	})
	return w
}

// Registry returns the registry holding the worker's metrics.
func (w *Worker) Registry() *Registry {
	if w == nil {
		return nil
	}
	return w.reg
}

// Observe counts what an event the worker publishes says.
func (w *Worker) Observe(ev *events.Event) {
	if w == nil || ev == nil {
		return
	}
	switch {
	case ev.Name == events.EventDeviceState:
		w.mu.Lock()
		w.devices[ev.Device] = stateHealth{state: dataString(ev, "state"), health: dataString(ev, "health")}
		w.mu.Unlock()
	case ev.Name == events.EventJobEnd:
		outcome := dataString(ev, "outcome")
		if outcome == "" {
			outcome = "unknown"
		}
		w.jobs.WithLabelValues(label(outcome)).Inc()
		w.mu.Lock()
		if r := w.running[ev.Device]; r != nil && r.job == ev.JobID {
			delete(w.running, ev.Device)
		}
		w.mu.Unlock()
	case ev.Name == events.EventRecoveryFail:
		w.endPhase(ev, true)
	case ev.Phase == "" || ev.Device == "":
	case ev.Name == events.PhaseStart(ev.Phase):
		w.mu.Lock()
		w.running[ev.Device] = &phaseRun{job: ev.JobID, phase: ev.Phase, start: ev.Time}
		w.mu.Unlock()
	case ev.Name == events.PhaseSuccess(ev.Phase), ev.Name == events.PhaseFail(ev.Phase):
		w.endPhase(ev, ev.Name == events.PhaseFail(ev.Phase) && ev.ExitCode != nil && *ev.ExitCode == exitRecoveryFailed)
	}
}

// exitRecoveryFailed is the exit status of a phase after which the device
// could not be recovered (Testflinger's 46).
const exitRecoveryFailed = 46

// endPhase observes the duration of the phase ev ends, and counts a
// recovery failure once per phase run (a recovery_fail and a _fail with
// exit 46 of the same phase are one failure).
func (w *Worker) endPhase(ev *events.Event, recoveryFailed bool) {
	w.mu.Lock()
	r := w.running[ev.Device]
	mine := r != nil && r.job == ev.JobID && r.phase == ev.Phase
	countRecovery := recoveryFailed && !(mine && r.recovered)
	var d time.Duration
	observe := false
	if mine {
		if recoveryFailed {
			r.recovered = true
		}
		if !r.start.IsZero() && !strings.HasPrefix(ev.Detail, "skipped: ") {
			d, observe = ev.Time.Sub(r.start), true
		}
		// Keep the run until the phase's last word: a recovery_fail may
		// be followed by the phase's _fail.
		r.start = time.Time{}
		if !recoveryFailed || ev.Name != events.EventRecoveryFail {
			delete(w.running, ev.Device)
		}
	}
	w.mu.Unlock()
	if observe && d >= 0 {
		w.phases.WithLabelValues(label(string(ev.Phase))).Observe(d.Seconds())
	}
	if countRecovery {
		w.recovery.WithLabelValues(label(ev.Device)).Inc()
	}
}

// workerDevices is the flinger_worker_devices gauge, counted from the
// worker's latest device_state events on each scrape.
type workerDevices struct {
	w    *Worker
	desc *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *workerDevices) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *workerDevices) Collect(ch chan<- prometheus.Metric) {
	counts := map[stateHealth]float64{}
	c.w.mu.Lock()
	for _, d := range c.w.devices {
		counts[d]++
	}
	c.w.mu.Unlock()
	sendDevices(ch, c.desc, counts)
}

// dataString returns ev.Data[key] when it is a string.
func dataString(ev *events.Event, key string) string {
	s, _ := ev.Data[key].(string)
	return s
}

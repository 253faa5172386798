package metrics

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// Orchestrator is an orchestrator's metrics.
//
// Counters, from the event stream: orchestrators keep nothing of their own
// and several run at once, so what they count is read from the events they
// and the workers publish, through one durable consumer (CountConsumer)
// shared by every orchestrator that has metrics. Each event is delivered to
// one of them, so the counters of all orchestrators add up to the lab's
// totals (use sum() across instances):
//
//   - flinger_orchestrator_jobs_submitted_total{queue}: jobs accepted by
//     intake (job_submitted);
//   - flinger_orchestrator_jobs_rejected_total: submissions intake refused
//     (job_rejected);
//   - flinger_orchestrator_job_requeues_total: jobs put back in their queue
//     for another device (job_requeued);
//   - flinger_orchestrator_webhook_deliveries_total{result}: job-status
//     webhook calls by this orchestrator: delivered, failed (after its
//     retries) or refused (host not allowed).
//
// Gauges, read from JetStream on each scrape (cached for CacheFor, so that
// frequent scrapes cost little); every orchestrator reports the whole lab:
//
//   - flinger_orchestrator_queue_depth{queue}: jobs waiting in a queue;
//   - flinger_orchestrator_queue_in_progress{queue}: jobs of a queue that a
//     device holds (delivered, not yet acknowledged);
//   - flinger_orchestrator_devices{state,health}: every device by state and
//     health, from the device bucket.
//
// A nil *Orchestrator counts nothing, so callers need no check.
type Orchestrator struct {
	reg       *Registry
	log       *slog.Logger
	submitted *prometheus.CounterVec
	rejected  prometheus.Counter
	requeues  prometheus.Counter
	webhooks  *prometheus.CounterVec

	mu      sync.Mutex
	c       *broker.Client
	queues  cached[map[string]*queueCount]
	devices cached[map[stateHealth]float64]
}

// CountConsumer is the durable consumer of the event stream, shared by the
// orchestrators, through which their metrics count events.
const CountConsumer = "metrics"

// CacheFor is how long the gauges read from JetStream are reused.
const CacheFor = 5 * time.Second

// countInactive is how long the count consumer outlives the last
// orchestrator that reads it, so that a lab that turns metrics off does
// not keep it (and its backlog) for ever.
const countInactive = time.Hour

// Webhook delivery results.
const (
	WebhookDelivered = "delivered"
	WebhookFailed    = "failed"
	WebhookRefused   = "refused"
)

// counted are the events the orchestrator's counters count.
var counted = []string{events.EventJobSubmitted, events.EventJobRejected, events.EventJobRequeued}

// queueCount is what a queue holds: jobs stored (waiting or held) and held.
type queueCount struct{ stored, held uint64 }

// NewOrchestrator returns an orchestrator's metrics in a registry of their
// own; log receives errors (nil: slog.Default()). Its gauges report
// nothing until Start binds it to a NATS client.
func NewOrchestrator(log *slog.Logger) *Orchestrator {
	if log == nil {
		log = slog.Default()
	}
	reg := newRegistry(log)
	m := &Orchestrator{
		reg: reg,
		log: log.With("component", "metrics"),
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flinger_orchestrator_jobs_submitted_total",
			Help: "Jobs accepted by intake, by queue.",
		}, []string{"queue"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flinger_orchestrator_jobs_rejected_total",
			Help: "Submissions intake refused.",
		}),
		requeues: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flinger_orchestrator_job_requeues_total",
			Help: "Jobs put back in their queue for another device.",
		}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flinger_orchestrator_webhook_deliveries_total",
			Help: "Job-status webhook calls by result: delivered, failed or refused.",
		}, []string{"result"}),
	}
	reg.own.MustRegister(m.submitted, m.rejected, m.requeues, m.webhooks, &labGauges{
		m: m,
		depth: prometheus.NewDesc("flinger_orchestrator_queue_depth",
			"Jobs waiting in a queue for a device.", []string{"queue"}, nil),
		inProgress: prometheus.NewDesc("flinger_orchestrator_queue_in_progress",
			"Jobs of a queue that a device holds (delivered, not yet acknowledged).", []string{"queue"}, nil),
		devices: prometheus.NewDesc("flinger_orchestrator_devices",
			"Devices by state and health, from the device bucket.", []string{"state", "health"}, nil),
	})
	return m
}

// Registry returns the registry holding the orchestrator's metrics.
func (m *Orchestrator) Registry() *Registry {
	if m == nil {
		return nil
	}
	return m.reg
}

// Observe counts an event of the kinds the counters count; others are ignored.
func (m *Orchestrator) Observe(ev *events.Event) {
	if m == nil || ev == nil {
		return
	}
	switch ev.Name {
	case events.EventJobSubmitted:
		m.submitted.WithLabelValues(label(ev.Queue)).Inc()
	case events.EventJobRejected:
		m.rejected.Inc()
	case events.EventJobRequeued:
		m.requeues.Inc()
	}
}

// WebhookDelivery counts one webhook call's result (WebhookDelivered,
// WebhookFailed or WebhookRefused).
func (m *Orchestrator) WebhookDelivery(result string) {
	if m == nil {
		return
	}
	m.webhooks.WithLabelValues(label(result)).Inc()
}

// Start binds the metrics to c: the gauges read it on scrape, and the
// returned function counts events from the shared count consumer until its
// context is done. ctx bounds the set-up only.
func (m *Orchestrator) Start(ctx context.Context, c *broker.Client) (run func(context.Context), err error) {
	if m == nil {
		return func(context.Context) {}, nil
	}
	base := strings.TrimSuffix(c.Subj.Events(), ">") + "job.*."
	filters := make([]string, len(counted))
	for i, name := range counted {
		filters[i] = base + events.Token(name)
	}
	cons, err := c.JS.CreateOrUpdateConsumer(ctx, c.Subj.EventStream(), jetstream.ConsumerConfig{
		Durable:           CountConsumer,
		Description:       "Orchestrators' metrics: counts of submitted, rejected and requeued jobs",
		FilterSubjects:    filters,
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: countInactive,
	})
	if err != nil {
		return nil, fmt.Errorf("metrics consumer: %w", err)
	}
	m.mu.Lock()
	m.c = c
	m.mu.Unlock()
	return func(ctx context.Context) { m.count(ctx, cons) }, nil
}

// count feeds the counters from the count consumer until ctx is done.
func (m *Orchestrator) count(ctx context.Context, cons jetstream.Consumer) {
	broker.ConsumeEach(ctx, cons, 256, m.log, "metrics", func(msg jetstream.Msg) {
		var ev events.Event
		if err := events.Decode(msg.Data(), &ev); err != nil {
			m.log.Warn("metrics: undecodable event", "subject", msg.Subject(), "err", err)
			return
		}
		m.Observe(&ev)
	})
}

func (m *Orchestrator) client() *broker.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.c
}

// labGauges are the orchestrator's gauges, read from JetStream on each
// scrape (through the caches): queue depth, queue jobs in progress, and
// devices by state and health.
type labGauges struct {
	m                          *Orchestrator
	depth, inProgress, devices *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (g *labGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.depth
	ch <- g.inProgress
	ch <- g.devices
}

// Collect implements prometheus.Collector. Before Start it sends nothing;
// a family that cannot be read is sent as an invalid metric, which leaves
// it out of the scrape and reports the error.
func (g *labGauges) Collect(ch chan<- prometheus.Metric) {
	c := g.m.client()
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	queues, err := g.m.queues.get(ctx, func(ctx context.Context) (map[string]*queueCount, error) { return readQueues(ctx, c) })
	if err != nil {
		ch <- prometheus.NewInvalidMetric(g.depth, err)
		ch <- prometheus.NewInvalidMetric(g.inProgress, err)
	} else {
		for q, n := range queues {
			var waiting uint64
			if n.stored > n.held {
				waiting = n.stored - n.held
			}
			sendGauge(ch, g.depth, float64(waiting), q)
			sendGauge(ch, g.inProgress, float64(n.held), q)
		}
	}
	devices, err := g.m.devices.get(ctx, func(ctx context.Context) (map[stateHealth]float64, error) { return readDevices(ctx, c) })
	if err != nil {
		ch <- prometheus.NewInvalidMetric(g.devices, err)
		return
	}
	sendDevices(ch, g.devices, devices)
}

// readQueues counts, for every queue, the jobs its subjects hold (from the
// queue streams' per-subject counts, so that a queue no device serves yet
// is reported too) and those its consumers have handed to a device. It
// costs a few requests per queue stream, whatever the number of jobs.
func readQueues(ctx context.Context, c *broker.Client) (map[string]*queueCount, error) {
	counts := map[string]*queueCount{}
	at := func(q string) *queueCount {
		n := counts[q]
		if n == nil {
			n = &queueCount{}
			counts[q] = n
		}
		return n
	}
	for p := range events.QueuePartitions {
		name := c.Subj.QueueStream(p)
		st, err := c.JS.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("queue stream %s: %w", name, err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(c.Subj.Queues(p)))
		if err != nil {
			return nil, fmt.Errorf("queue stream %s: %w", name, err)
		}
		for subj, n := range info.State.Subjects {
			if q, ok := queueOf(subj); ok {
				at(q).stored += n
			}
		}
		lister := st.ListConsumers(ctx)
		for ci := range lister.Info() {
			filter := ci.Config.FilterSubject
			if filter == "" && len(ci.Config.FilterSubjects) == 1 {
				filter = ci.Config.FilterSubjects[0]
			}
			if q, ok := queueOf(filter); ok {
				at(q).held += uint64(ci.NumAckPending)
			}
		}
		if err := lister.Err(); err != nil {
			return nil, fmt.Errorf("consumers of %s: %w", name, err)
		}
	}
	return counts, nil
}

// queueOf returns the queue a queue subject (<prefix>.queue.<NN>.<queue
// token>, with perhaps more tokens after it) belongs to.
func queueOf(subject string) (string, bool) {
	parts := strings.Split(subject, ".")
	if len(parts) < 4 || parts[1] != "queue" {
		return "", false
	}
	tok := parts[3]
	if tok == "" || strings.ContainsAny(tok, "*>") {
		return "", false
	}
	if rest, ok := strings.CutPrefix(tok, "~"); ok {
		b, err := base64.RawURLEncoding.DecodeString(rest)
		if err != nil {
			return "", false
		}
		return string(b), true
	}
	return tok, true
}

// readDevices counts the lab's devices by state and health, from the
// device bucket.
func readDevices(ctx context.Context, c *broker.Client) (map[stateHealth]float64, error) {
	devs, _, err := c.ListDevices(ctx)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	counts := map[stateHealth]float64{}
	for _, d := range devs {
		counts[stateHealth{state: string(d.State), health: string(d.Health)}]++
	}
	return counts, nil
}

// cached keeps the last value fetched for CacheFor.
type cached[T any] struct {
	mu  sync.Mutex
	at  time.Time
	val T
}

// get returns the cached value, or fetches a fresh one when it is older
// than CacheFor. Concurrent scrapes wait for one fetch.
func (c *cached[T]) get(ctx context.Context, fetch func(context.Context) (T, error)) (T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < CacheFor {
		return c.val, nil
	}
	v, err := fetch(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	c.val, c.at = v, time.Now()
	return v, nil
}

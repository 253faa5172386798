package metrics_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/metrics"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// parseSamples parses the text exposition format and returns each sample's
// value by its name and labels, the labels sorted by name, as
// `name{a="b",le="1"}` (histograms give _bucket, _sum and _count samples).
func parseSamples(r io.Reader) (map[string]float64, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := func(suffix string, extra ...string) string {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, l.GetName()+"="+strconv.Quote(l.GetValue()))
				}
				ls = append(ls, extra...)
				if len(ls) == 0 {
					return name + suffix
				}
				slices.Sort(ls)
				return name + suffix + "{" + strings.Join(ls, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key("")] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key("")] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				out[key("")] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					le := strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)
					if math.IsInf(b.GetUpperBound(), 1) {
						le = "+Inf"
					}
					out[key("_bucket", "le="+strconv.Quote(le))] = float64(b.GetCumulativeCount())
				}
				out[key("_sum")] = h.GetSampleSum()
				out[key("_count")] = float64(h.GetSampleCount())
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				out[key("_sum")] = s.GetSampleSum()
				out[key("_count")] = float64(s.GetSampleCount())
			}
		}
	}
	return out, nil
}

// scrape answers one GET with h and returns the response and its samples.
func scrape(t *testing.T, h http.Handler) (*http.Response, map[string]float64) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	resp := rec.Result()
	got, err := parseSamples(resp.Body)
	if err != nil {
		t.Fatalf("status %d: %v", resp.StatusCode, err)
	}
	return resp, got
}

// check reports the samples of want that got lacks or has with another
// value, and those of absent that it has.
func check(t *testing.T, got, want map[string]float64, absent []string) {
	t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	for _, k := range absent {
		if _, ok := got[k]; ok {
			t.Errorf("%s is present", k)
		}
	}
	if t.Failed() {
		t.Logf("scraped: %v", got)
	}
}

// logBuffer returns a logger that writes into the buffer returned.
func logBuffer() (*slog.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

func TestHandler(t *testing.T) {
	wlog, wbuf := logBuffer()
	w := metrics.NewWorker(wlog)
	o := metrics.NewOrchestrator(discard())
	w.Observe(&events.Event{Name: events.EventJobEnd, JobID: "j", Device: "d", Data: map[string]any{"outcome": "pass"}})
	o.Observe(&events.Event{Name: events.EventJobRejected})
	tests := []struct {
		name   string
		regs   []*metrics.Registry
		want   map[string]float64
		absent []string
	}{
		{
			name: "a worker's registry",
			regs: []*metrics.Registry{w.Registry()},
			want: map[string]float64{`flinger_worker_jobs_total{outcome="pass"}`: 1},
			absent: []string{`flinger_orchestrator_jobs_rejected_total`,
				`flinger_orchestrator_job_requeues_total`},
		},
		{
			name: "a lab's two registries, nil and repeated ones skipped",
			regs: []*metrics.Registry{w.Registry(), nil, o.Registry(), w.Registry()},
			want: map[string]float64{
				`flinger_worker_jobs_total{outcome="pass"}`: 1,
				`flinger_orchestrator_jobs_rejected_total`:  1,
				`flinger_orchestrator_job_requeues_total`:   0,
			},
		},
		{
			name:   "an orchestrator's registry, before Start: no gauges",
			regs:   []*metrics.Registry{o.Registry()},
			want:   map[string]float64{`flinger_orchestrator_jobs_rejected_total`: 1},
			absent: []string{`flinger_worker_jobs_total{outcome="pass"}`},
		},
		{
			name: "no registry",
			regs: []*metrics.Registry{nil},
			absent: []string{`flinger_worker_jobs_total{outcome="pass"}`,
				`flinger_orchestrator_jobs_rejected_total`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wbuf.Reset()
			resp, got := scrape(t, metrics.Handler(tt.regs...))
			if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
				t.Fatalf("status %d, Content-Type %q", resp.StatusCode, ct)
			}
			check(t, got, tt.want, tt.absent)
			hasRegistry := slices.ContainsFunc(tt.regs, func(r *metrics.Registry) bool { return r != nil })
			for _, runtime := range []string{"go_goroutines", "process_cpu_seconds_total"} {
				if _, ok := got[runtime]; ok != hasRegistry {
					t.Errorf("%s present: %v, want %v", runtime, ok, hasRegistry)
				}
			}
			for name := range got {
				if strings.HasPrefix(name, "flinger_orchestrator_queue") || strings.HasPrefix(name, "flinger_orchestrator_devices") {
					t.Errorf("gauge %s served before Start", name)
				}
			}
			if wbuf.Len() > 0 {
				t.Errorf("scrape errors logged: %s", wbuf.String())
			}
		})
	}
}

func TestListenServesRegistries(t *testing.T) {
	w, o := metrics.NewWorker(discard()), metrics.NewOrchestrator(discard())
	o.WebhookDelivery(metrics.WebhookDelivered)
	w.Observe(&events.Event{Name: events.EventJobEnd, Data: map[string]any{"outcome": "timeout"}})
	srv, err := metrics.Listen("127.0.0.1:0", discard(), w.Registry(), o.Registry())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		method string
		status int
		want   map[string]float64
	}{
		{http.MethodGet, http.StatusOK, map[string]float64{
			`flinger_worker_jobs_total{outcome="timeout"}`:                      1,
			`flinger_orchestrator_webhook_deliveries_total{result="delivered"}`: 1,
		}},
		{http.MethodPost, http.StatusMethodNotAllowed, nil},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, tt.method, srv.URL(), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.want == nil {
				return
			}
			got, err := parseSamples(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			check(t, got, tt.want, nil)
		})
	}
}

// ev builds an event of a job on a device, at t0 plus at seconds.
func ev(name string, phase events.Phase, at float64, mod ...func(*events.Event)) *events.Event {
	e := &events.Event{Name: name, JobID: "j1", Device: "d1", Phase: phase,
		Time: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC).Add(time.Duration(at * float64(time.Second)))}
	for _, m := range mod {
		m(e)
	}
	return e
}

func exit(rc int) func(*events.Event) { return func(e *events.Event) { e.ExitCode = &rc } }

func data(kv ...string) func(*events.Event) {
	return func(e *events.Event) {
		e.Data = map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			e.Data[kv[i]] = kv[i+1]
		}
	}
}

// Sample names of the worker's families, for the tables below.
const (
	jobsTotal = "flinger_worker_jobs_total"
	phaseDur  = "flinger_worker_phase_duration_seconds"
	recovery  = `flinger_worker_recovery_failures_total{device="d1"}`
)

func TestWorkerObserve(t *testing.T) {
	ps, pv, pt, pc := events.PhaseSetup, events.PhaseProvision, events.PhaseTest, events.PhaseCleanup
	tests := []struct {
		name   string
		evs    []*events.Event
		want   map[string]float64
		absent []string
	}{
		{
			name: "a job that passes",
			evs: []*events.Event{
				ev("job_start", "", 0),
				ev("setup_start", ps, 0), ev("setup_success", ps, 1, exit(0)),
				ev("provision_start", pv, 1), ev("provision_success", pv, 31, exit(0)),
				ev("firmware_update_start", events.PhaseFirmwareUpdate, 31),
				ev("firmware_update_success", events.PhaseFirmwareUpdate, 31, func(e *events.Event) { e.Detail = "skipped: no firmware_update_data" }),
				ev("test_start", pt, 31), ev("test_success", pt, 91, exit(0)),
				ev("cleanup_start", pc, 91), ev("cleanup_success", pc, 92, exit(0)),
				ev("job_end", "", 92, data("outcome", "pass")),
			},
			want: map[string]float64{
				jobsTotal + `{outcome="pass"}`:         1,
				phaseDur + `_count{phase="setup"}`:     1,
				phaseDur + `_sum{phase="setup"}`:       1,
				phaseDur + `_count{phase="provision"}`: 1,
				phaseDur + `_sum{phase="provision"}`:   30,
				phaseDur + `_count{phase="test"}`:      1,
				phaseDur + `_sum{phase="test"}`:        60,
				phaseDur + `_count{phase="cleanup"}`:   1,
				// Buckets are cumulative, over PhaseBuckets.
				phaseDur + `_bucket{le="15",phase="provision"}`:   0,
				phaseDur + `_bucket{le="30",phase="provision"}`:   1,
				phaseDur + `_bucket{le="+Inf",phase="provision"}`: 1,
				phaseDur + `_bucket{le="30",phase="test"}`:        0,
				phaseDur + `_bucket{le="60",phase="test"}`:        1,
				phaseDur + `_bucket{le="14400",phase="test"}`:     1,
			},
			absent: []string{phaseDur + `_count{phase="firmware_update"}`, recovery,
				jobsTotal + `{outcome="test_fail"}`},
		},
		{
			name: "a failing test",
			evs: []*events.Event{
				ev("test_start", pt, 0), ev("test_fail", pt, 5, exit(3)),
				ev("job_end", "", 6, data("outcome", "test_fail")),
			},
			want: map[string]float64{
				jobsTotal + `{outcome="test_fail"}`: 1,
				phaseDur + `_count{phase="test"}`:   1,
				phaseDur + `_sum{phase="test"}`:     5,
			},
			absent: []string{jobsTotal + `{outcome="pass"}`, recovery},
		},
		{
			name: "a recovery failure followed by the phase's failure counts once",
			evs: []*events.Event{
				ev("provision_start", pv, 0), ev("recovery_fail", pv, 10, exit(46)), ev("provision_fail", pv, 10, exit(46)),
				ev("cleanup_start", pc, 10), ev("cleanup_success", pc, 11, exit(0)),
				ev("job_end", "", 12, data("outcome", "recovery_fail")),
			},
			want: map[string]float64{
				jobsTotal + `{outcome="recovery_fail"}`: 1,
				phaseDur + `_count{phase="provision"}`:  1,
				phaseDur + `_sum{phase="provision"}`:    10,
				phaseDur + `_count{phase="cleanup"}`:    1,
				recovery:                                1,
			},
		},
		{
			name: "a recovery failure in cleanup (exit 46, no recovery_fail event)",
			evs: []*events.Event{
				ev("cleanup_start", pc, 0), ev("cleanup_fail", pc, 2, exit(46)),
			},
			want: map[string]float64{
				phaseDur + `_count{phase="cleanup"}`: 1,
				recovery:                             1,
			},
		},
		{
			name:   "a recovery_fail without a phase start seen",
			evs:    []*events.Event{ev("recovery_fail", pv, 3, exit(46))},
			want:   map[string]float64{recovery: 1},
			absent: []string{phaseDur + `_count{phase="provision"}`},
		},
		{
			name: "job_end without an outcome",
			evs:  []*events.Event{ev("job_end", "", 0)},
			want: map[string]float64{jobsTotal + `{outcome="unknown"}`: 1},
		},
		{
			name: "a label value that is not UTF-8 is repaired, not refused",
			evs:  []*events.Event{ev("job_end", "", 0, data("outcome", "bad\xffoutcome"))},
			want: map[string]float64{jobsTotal + "{outcome=\"bad\ufffdoutcome\"}": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { observeAndCheck(t, tt.evs, tt.want, tt.absent) })
	}
}

func TestWorkerDevices(t *testing.T) {
	state := func(dev, st, health string) *events.Event {
		return &events.Event{Name: events.EventDeviceState, Device: dev, Data: map[string]any{"state": st, "health": health}}
	}
	const dev = "flinger_worker_devices"
	tests := []struct {
		name   string
		evs    []*events.Event
		want   map[string]float64
		absent []string
	}{
		{
			name: "each device counted in its latest state",
			evs: []*events.Event{
				state("a", "idle", "unknown"), state("b", "idle", "unknown"), state("c", "idle", "unknown"),
				state("a", "busy", "unknown"), state("a", "idle", "good"), state("c", "offline", "bad"),
			},
			want: map[string]float64{
				dev + `{health="good",state="idle"}`:    1,
				dev + `{health="unknown",state="idle"}`: 1,
				dev + `{health="bad",state="offline"}`:  1,
			},
			absent: []string{dev + `{health="unknown",state="busy"}`},
		},
		{
			name: "no device seen",
			absent: []string{dev + `{health="unknown",state="idle"}`,
				dev + `{health="good",state="idle"}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { observeAndCheck(t, tt.evs, tt.want, tt.absent) })
	}
}

// observeAndCheck feeds evs to a new worker's metrics and checks the
// scraped values (want) and the series that must be missing (absent).
func observeAndCheck(t *testing.T, evs []*events.Event, want map[string]float64, absent []string) {
	t.Helper()
	w := metrics.NewWorker(discard())
	for _, e := range evs {
		w.Observe(e)
	}
	_, got := scrape(t, metrics.Handler(w.Registry()))
	check(t, got, want, absent)
}

func TestNilMetrics(t *testing.T) {
	var w *metrics.Worker
	var o *metrics.Orchestrator
	w.Observe(&events.Event{Name: events.EventJobEnd}) // must not panic
	o.Observe(&events.Event{Name: events.EventJobRejected})
	o.WebhookDelivery(metrics.WebhookFailed)
	if w.Registry() != nil || o.Registry() != nil {
		t.Error("a nil Worker or Orchestrator has a registry")
	}
	run, err := o.Start(context.Background(), nil)
	if err != nil || run == nil {
		t.Fatalf("Start of a nil Orchestrator: %v", err)
	}
}

func TestOrchestratorCounters(t *testing.T) {
	const (
		submitted = "flinger_orchestrator_jobs_submitted_total"
		rejected  = "flinger_orchestrator_jobs_rejected_total"
		requeues  = "flinger_orchestrator_job_requeues_total"
		webhooks  = "flinger_orchestrator_webhook_deliveries_total"
	)
	sub := func(queue string) *events.Event {
		return &events.Event{Name: events.EventJobSubmitted, Queue: queue}
	}
	tests := []struct {
		name     string
		evs      []*events.Event
		webhooks []string
		want     map[string]float64
		absent   []string
	}{
		{
			name: "nothing counted: unlabelled counters show 0",
			want: map[string]float64{rejected: 0, requeues: 0},
			absent: []string{submitted + `{queue="a"}`,
				webhooks + `{result="delivered"}`},
		},
		{
			name: "events and webhook calls counted by label",
			evs: []*events.Event{
				sub("a"), sub("b"), sub("a"),
				{Name: events.EventJobRejected}, {Name: events.EventJobRequeued},
				{Name: events.EventJobRequeued}, {Name: events.EventJobEnd, Queue: "a"},
			},
			webhooks: []string{metrics.WebhookDelivered, metrics.WebhookFailed, metrics.WebhookDelivered, metrics.WebhookRefused},
			want: map[string]float64{
				submitted + `{queue="a"}`:         2,
				submitted + `{queue="b"}`:         1,
				rejected:                          1,
				requeues:                          2,
				webhooks + `{result="delivered"}`: 2,
				webhooks + `{result="failed"}`:    1,
				webhooks + `{result="refused"}`:   1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := metrics.NewOrchestrator(discard())
			for _, e := range tt.evs {
				o.Observe(e)
			}
			for _, r := range tt.webhooks {
				o.WebhookDelivery(r)
			}
			_, got := scrape(t, metrics.Handler(o.Registry()))
			check(t, got, tt.want, tt.absent)
		})
	}
}

// TestOrchestratorGaugesUnreadable scrapes an orchestrator whose NATS
// connection is gone: the gauges read from JetStream are left out and the
// error logged, the counters still served.
func TestOrchestratorGaugesUnreadable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := broker.StartEmbedded(broker.ServerOptions{Memory: true, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	c, err := broker.SetupAndConnect(ctx, broker.ConnOptions{URL: srv.ClientURL(), Name: "metrics-test", Log: discard()}, events.StoreOptions{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	log, buf := logBuffer()
	o := metrics.NewOrchestrator(log)
	if _, err := o.Start(ctx, c); err != nil {
		t.Fatal(err)
	}
	o.Observe(&events.Event{Name: events.EventJobSubmitted, Queue: "q"})
	c.NC.Close()

	resp, got := scrape(t, metrics.Handler(o.Registry()))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	check(t, got, map[string]float64{`flinger_orchestrator_jobs_submitted_total{queue="q"}`: 1}, nil)
	for name := range got {
		if strings.HasPrefix(name, "flinger_orchestrator_queue") || strings.HasPrefix(name, "flinger_orchestrator_devices") {
			t.Errorf("%s served without NATS", name)
		}
	}
	for _, family := range []string{"flinger_orchestrator_queue_depth", "flinger_orchestrator_queue_in_progress", "flinger_orchestrator_devices"} {
		if !strings.Contains(buf.String(), family) {
			t.Errorf("the failure of %s is not logged: %s", family, buf.String())
		}
	}
}

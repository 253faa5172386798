// Package metrics holds Flinger's Prometheus metrics: what a worker and an
// orchestrator count, and the HTTP endpoint that serves them.
//
// The metrics are kept with github.com/prometheus/client_golang. Each
// Worker and Orchestrator keeps them in a Registry of its own, never in the
// process-wide default one, so that several of them (a `flinger lab`, or
// the tests) live side by side in one process. Every Registry also holds
// the Go runtime's and the process's collectors (go_*, process_*).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Registry holds the metrics of one Worker or Orchestrator, with the Go
// runtime's and the process's. It is a prometheus.Gatherer.
type Registry struct {
	// own holds Flinger's families.
	own *prometheus.Registry
	// runtime holds the Go and process collectors; kept apart so that an
	// endpoint serving several registries of one process serves them once.
	runtime *prometheus.Registry
	log     *slog.Logger
}

// newRegistry returns a registry holding only the Go and process
// collectors; log receives scrape errors (nil: slog.Default()).
func newRegistry(log *slog.Logger) *Registry {
	if log == nil {
		log = slog.Default()
	}
	rt := prometheus.NewRegistry()
	rt.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return &Registry{own: prometheus.NewRegistry(), runtime: rt, log: log}
}

// Gather implements prometheus.Gatherer: it returns Flinger's families and
// the Go runtime's and the process's.
func (r *Registry) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := prometheus.Gatherers{r.runtime, r.own}.Gather()
	if err != nil {
		return mfs, fmt.Errorf("gather metrics: %w", err)
	}
	return mfs, nil
}

// Handler returns an http.Handler that answers GET and HEAD with the
// metrics of every registry given, merged (their Flinger family names must
// differ; the Go and process families are served once). A family that
// cannot be gathered, such as a gauge read from an unreachable NATS, is
// left out and logged to the first registry's logger; the others are
// served.
func Handler(regs ...*Registry) http.Handler {
	var (
		g    prometheus.Gatherers
		log  = slog.Default()
		seen = map[*Registry]bool{}
	)
	for _, r := range regs {
		if r == nil || seen[r] {
			continue
		}
		if len(seen) == 0 {
			g = append(g, r.runtime)
			log = r.log
		}
		seen[r] = true
		g = append(g, r.own)
	}
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      errorLog{log},
		ErrorHandling: promhttp.ContinueOnError,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, req)
	})
}

// errorLog passes promhttp's error lines to a slog.Logger.
type errorLog struct{ log *slog.Logger }

// Println logs v as a warning.
func (l errorLog) Println(v ...any) {
	l.log.Warn("metrics: scrape incomplete", "err", strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// scrapeTimeout bounds the collectors that ask NATS during a scrape.
const scrapeTimeout = 10 * time.Second

// Server is a running /metrics endpoint.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// Listen serves GET /metrics on addr (host:port; port 0 picks one) with
// the metrics of regs until Close.
func Listen(addr string, log *slog.Logger, regs ...*Registry) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(regs...))
	s := &Server{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	log.Info("metrics served", "url", "http://"+ln.Addr().String()+"/metrics")
	return s, nil
}

// Addr is the address the endpoint listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the endpoint's URL.
func (s *Server) URL() string { return "http://" + s.Addr() + "/metrics" }

// Close stops the endpoint, letting a scrape in progress finish for up to
// five seconds.
func (s *Server) Close() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
}

// Serve runs a /metrics endpoint on addr until ctx is done.
func Serve(ctx context.Context, addr string, log *slog.Logger, regs ...*Registry) error {
	s, err := Listen(addr, log, regs...)
	if err != nil {
		return err
	}
	<-ctx.Done()
	s.Close()
	return nil
}

// label makes s a valid label value: client_golang refuses (panics on)
// values that are not UTF-8, and names from events are not checked.
func label(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// sendGauge sends one gauge sample of desc, or the error that makes it
// invalid (which leaves it out of the scrape).
func sendGauge(ch chan<- prometheus.Metric, desc *prometheus.Desc, v float64, labels ...string) {
	for i, l := range labels {
		labels[i] = label(l)
	}
	m, err := prometheus.NewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(desc, err)
	}
	ch <- m
}

// stateHealth is a device's state and health, the labels of the device
// gauges.
type stateHealth struct{ state, health string }

// sendDevices sends a device gauge: one sample per state and health.
func sendDevices(ch chan<- prometheus.Metric, desc *prometheus.Desc, counts map[stateHealth]float64) {
	for k, n := range counts {
		sendGauge(ch, desc, n, k.state, k.health)
	}
}

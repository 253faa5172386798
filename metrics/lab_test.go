package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	_ "github.com/flingerlab/flinger/drivers/fake"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/metrics"
	"github.com/flingerlab/flinger/workers"
)

const waitLong = 60 * time.Second

// scrapeURL reads the endpoint and returns its samples (see parseSamples).
func scrapeURL(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return parseSamples(resp.Body)
}

// TestLabMetrics runs a passing, a failing and a rejected job, and a job
// on a queue no device serves, then scrapes the lab's worker and
// orchestrator metrics and checks the counts and their labels.
func TestLabMetrics(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	host, err := drivers.ParseHost([]byte(`host: m-host
devices:
  - agent_name: m-1
    provision_type: fake_connector
    device_ip: 127.0.0.1
    job_queues: [mq]
  - agent_name: m-2
    provision_type: fake_connector
    device_ip: 127.0.0.1
    job_queues: [mq]
`), "m-host.yaml")
	if err != nil {
		t.Fatal(err)
	}
	wm, om := metrics.NewWorker(log), metrics.NewOrchestrator(log)
	opts := lab.Options{
		Server: broker.ServerOptions{Memory: true, Listen: "127.0.0.1:0"},
		Store:  events.StoreOptions{Memory: true},
		Host:   host,
		Worker: workers.Config{RunDir: t.TempDir(), Metrics: wm},
		Log:    log,
	}
	opts.Orchestrator.Metrics = om
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	defer cancel()
	l, err := lab.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	defer l.Stop()
	srv, err := metrics.Listen("127.0.0.1:0", log, wm.Registry(), om.Registry())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	jobs := map[string]string{
		"pass":      "job_queue: mq\nprovision_data: {url: http://example.com/i}\ntest_data: {test_cmds: 'echo ok'}\n",
		"test_fail": "job_queue: mq\nprovision_data: {url: http://example.com/i}\ntest_data: {test_cmds: 'exit 3'}\n",
	}
	var ids []string
	for _, job := range jobs {
		reply, err := client.Submit(ctx, l.Client, []byte(job), events.FormatYAML)
		if err != nil {
			t.Fatalf("submit: %v", err)
		}
		ids = append(ids, reply.JobID)
	}
	if _, err := client.Submit(ctx, l.Client, []byte("job_queue: mq\nprovison_data: {}\n"), events.FormatYAML); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("a job with a typo: %v, want a rejection", err)
	}
	if _, err := client.Submit(ctx, l.Client, []byte("job_queue: nobody-serves\n"), events.FormatYAML); err != nil {
		t.Fatalf("submit: %v", err)
	}
	for _, id := range ids {
		if _, err := client.Follow(ctx, l.Client, id, nil, nil); err != nil {
			t.Fatalf("follow %s: %v", id, err)
		}
	}

	want := map[string]float64{
		`flinger_worker_jobs_total{outcome="pass"}`:                            1,
		`flinger_worker_jobs_total{outcome="test_fail"}`:                       1,
		`flinger_worker_phase_duration_seconds_count{phase="setup"}`:           2,
		`flinger_worker_phase_duration_seconds_count{phase="provision"}`:       2,
		`flinger_worker_phase_duration_seconds_count{phase="test"}`:            2,
		`flinger_worker_phase_duration_seconds_count{phase="cleanup"}`:         2,
		`flinger_worker_phase_duration_seconds_bucket{le="+Inf",phase="test"}`: 2,
		`flinger_worker_devices{health="good",state="idle"}`:                   2,
		`flinger_orchestrator_jobs_submitted_total{queue="mq"}`:                2,
		`flinger_orchestrator_jobs_submitted_total{queue="nobody-serves"}`:     1,
		`flinger_orchestrator_jobs_rejected_total`:                             1,
		`flinger_orchestrator_queue_depth{queue="nobody-serves"}`:              1,
		`flinger_orchestrator_queue_depth{queue="mq"}`:                         0,
		`flinger_orchestrator_queue_in_progress{queue="mq"}`:                   0,
		`flinger_orchestrator_devices{health="good",state="idle"}`:             2,
		`flinger_orchestrator_job_requeues_total`:                              0,
	}
	absent := []string{
		`flinger_worker_phase_duration_seconds_count{phase="firmware_update"}`, // skipped
		`flinger_worker_recovery_failures_total{device="m-1"}`,
	}
	var got map[string]float64
	var diff []string
	deadline := time.Now().Add(waitLong)
	for {
		if got, err = scrapeURL(ctx, srv.URL()); err != nil {
			t.Fatalf("scrape: %v", err)
		}
		diff = diff[:0]
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				diff = append(diff, fmt.Sprintf("%s = %v (present %v), want %v", k, g, ok, v))
			}
		}
		for _, k := range absent {
			if _, ok := got[k]; ok {
				diff = append(diff, k+" is present")
			}
		}
		// Counters and the device gauge settle a little after the jobs
		// end (events are counted as they arrive; gauges are cached).
		if len(diff) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, d := range diff {
		t.Error(d)
	}
	if t.Failed() {
		t.Logf("scraped: %v", got)
	}
}

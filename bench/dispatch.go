package bench

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	_ "github.com/flingerlab/flinger/drivers/all" // the fake connector
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/workers"
)

func init() {
	Register(Figure{Name: "dispatch", Title: "Dispatch latency: submit → setup_start on an idle device", Order: 10, Run: runDispatch})
}

// fakeHost is a host file of n fake devices, each serving queue and its own.
func fakeHost(host, queue string, n int) (*drivers.HostConfig, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "host: %s\ndevices:\n", host)
	for i := range n {
		fmt.Fprintf(&b, "  - agent_name: %s-%03d\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [%s]\n", host, i, queue)
	}
	return drivers.ParseHost([]byte(b.String()), host+".yaml")
}

// dispatchLatencies submits n no-op jobs one at a time, each once the
// previous has ended (so a device is always idle), and returns submit →
// setup_start for each.
func dispatchLatencies(ctx context.Context, c *broker.Client, queue string, n int) ([]time.Duration, error) {
	tr, err := trackJobs(c)
	if err != nil {
		return nil, err
	}
	defer tr.close()
	lat := make([]time.Duration, 0, n)
	for range n {
		id := uuid.NewString()
		t0 := time.Now()
		if _, err := client.Submit(ctx, c, []byte("job_id: "+id+"\njob_queue: "+queue+"\n"), events.FormatYAML); err != nil {
			return nil, err
		}
		if err := tr.waitEnded(ctx, map[string]bool{id: true}); err != nil {
			return nil, err
		}
		st, ok := tr.startedAt(id)
		if !ok {
			return nil, fmt.Errorf("job %s ended without setup_start", id)
		}
		lat = append(lat, st.Sub(t0))
	}
	return lat, nil
}

func runDispatch(ctx context.Context, env *Env) (*Result, error) {
	n, trials := env.scale(2000, 50), env.Trials
	host, err := fakeHost("dispatch", "lat", 4)
	if err != nil {
		return nil, err
	}
	quiet := slog.New(slog.DiscardHandler)
	l, err := lab.Start(ctx, lab.Options{
		Server: broker.ServerOptions{DataDir: filepath.Join(env.Dir, "dispatch"), Listen: "127.0.0.1:0"},
		Host:   host, Worker: workers.Config{RunDir: filepath.Join(env.Dir, "dispatch-runs")}, Log: quiet,
	})
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	var rawP50, rawP99, p50, p99 []float64
	for trial := range trials {
		raw, err := rawLatency(ctx, l.URL, n)
		if err != nil {
			return nil, fmt.Errorf("raw baseline: %w", err)
		}
		lat, err := dispatchLatencies(ctx, l.Client, "lat", n)
		if err != nil {
			return nil, err
		}
		rawP50, rawP99 = append(rawP50, ms(percentile(raw, .5))), append(rawP99, ms(percentile(raw, .99)))
		p50, p99 = append(p50, ms(percentile(lat, .5))), append(p99, ms(percentile(lat, .99)))
		env.Log.Info("dispatch trial", "trial", trial+1, "jobs", n, "p50", percentile(lat, .5), "p99", percentile(lat, .99),
			"raw_p50", percentile(raw, .5), "raw_p99", percentile(raw, .99))
	}
	res := &Result{Rows: []Row{
		row("dispatch p50", "ms", p50, "raw JetStream publish→pull receive p50", rawP50, "≤ 20× raw p50",
			func(_, ratio float64) bool { return ratio <= 20 }),
		row("dispatch p99", "ms", p99, "raw JetStream publish→pull receive p99", rawP99, "≤ 5 ms",
			func(v, _ float64) bool { return v <= 5 }),
	}}
	res.Notes = append(res.Notes, fmt.Sprintf("%d no-op jobs per trial, submitted one at a time (each after the previous ended) to 4 idle devices of an in-process lab (embedded NATS, store on disk); latency is from the submit call to the setup_start event's time. The baseline is %d messages published one at a time to a work-queue stream on the same server and received by a waiting pull consumer.", n, n))
	return res, nil
}

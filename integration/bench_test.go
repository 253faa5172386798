package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/workers"
)

// benchJobs is how many jobs (and raw messages) a latency benchmark sends;
// FLINGER_BENCH_JOBS overrides it.
func benchJobs() int {
	if n, err := strconv.Atoi(os.Getenv("FLINGER_BENCH_JOBS")); err == nil && n > 0 {
		return n
	}
	return 2000
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// startFileLab starts a lab on an embedded server with its store on disk,
// as `flinger lab` runs by default.
func startFileLab(b *testing.B, devices int) *lab.Lab {
	b.Helper()
	var specs []string
	for i := range devices {
		specs = append(specs, fmt.Sprintf("bench-%03d:lat", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{
		Server: broker.ServerOptions{DataDir: b.TempDir(), Listen: "127.0.0.1:0"},
		Host:   hostFile(b, "bench", specs...),
		Worker: workers.Config{RunDir: b.TempDir()},
		Log:    testLog(b),
	})
	if err != nil {
		b.Fatalf("start lab: %v", err)
	}
	b.Cleanup(l.Stop)
	return l
}

// rawLatency measures the floor: JetStream publish to pull-consumer
// receive on the same server, one message at a time.
func rawLatency(b *testing.B, url string, n int) []time.Duration {
	b.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "RAWBENCH", Subjects: []string{"rawbench.>"}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = js.DeleteStream(context.Background(), "RAWBENCH") }()
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan time.Time, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		_ = m.Ack()
		got <- now
	}, jetstream.PullMaxMessages(1))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	lat := make([]time.Duration, 0, n)
	for i := range n {
		t0 := time.Now()
		if _, err := js.Publish(ctx, "rawbench.x", []byte(strconv.Itoa(i))); err != nil {
			b.Fatal(err)
		}
		select {
		case t1 := <-got:
			lat = append(lat, t1.Sub(t0))
		case <-ctx.Done():
			b.Fatal("raw message not received")
		}
	}
	return lat
}

// BenchmarkDispatchLatency measures submit → setup_start on an idle device
// for no-op jobs, one at a time, beside the raw JetStream floor measured on
// the same server in the same run. It reports p50 and p99 of both and the
// ratio of the p50s.
func BenchmarkDispatchLatency(b *testing.B) {
	n := benchJobs()
	l := startFileLab(b, 4)
	c := l.Client
	for b.Loop() {
		raw := rawLatency(b, l.URL, n)

		var mu sync.Mutex
		started := map[string]time.Time{}
		ended := make(chan string, 16)
		sub, err := c.NC.Subscribe(c.Subj.Prefix()+".events.job.*.*", func(m *nats.Msg) {
			var ev events.Event
			if events.Decode(m.Data, &ev) != nil {
				return
			}
			switch ev.Name {
			case events.PhaseStart(events.PhaseSetup):
				mu.Lock()
				started[ev.JobID] = ev.Time
				mu.Unlock()
			case events.EventJobEnd:
				ended <- ev.JobID
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, 0, n)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		for range n {
			id := uuid.NewString()
			job := []byte("job_id: " + id + "\njob_queue: lat\n")
			t0 := time.Now()
			if _, err := client.Submit(ctx, c, job, events.FormatYAML); err != nil {
				b.Fatal(err)
			}
			for done := false; !done; {
				select {
				case e := <-ended:
					done = e == id
				case <-ctx.Done():
					b.Fatal("job did not end")
				}
			}
			mu.Lock()
			lat = append(lat, started[id].Sub(t0))
			mu.Unlock()
		}
		cancel()
		_ = sub.Unsubscribe()

		rawP50, rawP99 := percentile(raw, 0.5), percentile(raw, 0.99)
		p50, p99 := percentile(lat, 0.5), percentile(lat, 0.99)
		b.ReportMetric(float64(rawP50.Microseconds()), "raw-p50-µs")
		b.ReportMetric(float64(rawP99.Microseconds()), "raw-p99-µs")
		b.ReportMetric(float64(p50.Microseconds()), "dispatch-p50-µs")
		b.ReportMetric(float64(p99.Microseconds()), "dispatch-p99-µs")
		b.ReportMetric(float64(p50)/float64(rawP50), "p50-ratio")
		b.Logf("%d jobs: dispatch p50 %s p99 %s; raw JetStream p50 %s p99 %s; p50 ratio %.1f",
			n, p50, p99, rawP50, rawP99, float64(p50)/float64(rawP50))
	}
}

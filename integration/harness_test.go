package integration

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	_ "github.com/flingerlab/flinger/drivers/all"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/workers"
)

// waitLong bounds every wait in these tests: generous, so that a loaded
// machine slows them down without failing them.
const waitLong = 60 * time.Second

func testLog(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// hostFile builds a host config of fake devices: name → queues.
func hostFile(t testing.TB, host string, devices ...string) *drivers.HostConfig {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "host: %s\ndevices:\n", host)
	for _, d := range devices {
		name, queues, _ := strings.Cut(d, ":")
		fmt.Fprintf(&b, "  - agent_name: %s\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [%s]\n", name, queues)
	}
	h, err := drivers.ParseHost([]byte(b.String()), "test-host.yaml")
	if err != nil {
		t.Fatalf("host file: %v", err)
	}
	return h
}

// startLab starts an in-memory lab with an orchestrator and, when host is
// not nil, a worker for it.
func startLab(t testing.TB, host *drivers.HostConfig, wcfg workers.Config) *lab.Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if wcfg.RunDir == "" {
		wcfg.RunDir = t.TempDir()
	}
	l, err := lab.Start(ctx, labOptions(t, host, wcfg, ""))
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(l.Stop)
	return l
}

// labOptions are the options of an in-memory lab for host; simImages is
// the address of its server of simulated images ("": none).
func labOptions(t testing.TB, host *drivers.HostConfig, wcfg workers.Config, simImages string) lab.Options {
	return lab.Options{
		Server:    broker.ServerOptions{Memory: true, Listen: "127.0.0.1:0"},
		Store:     events.StoreOptions{Memory: true},
		Host:      host,
		Worker:    wcfg,
		SimImages: simImages,
		Log:       testLog(t),
	}
}

// connect opens another client to the lab's server.
func connect(t testing.TB, l *lab.Lab, name string) *broker.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	c, err := broker.Connect(ctx, broker.ConnOptions{URL: l.URL, Name: name, Log: testLog(t)})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// runningWorker is a worker started by a test, with its own connection.
type runningWorker struct {
	w      *workers.Worker
	c      *broker.Client
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startWorker starts a worker for host on its own connection.
func startWorker(t testing.TB, l *lab.Lab, host *drivers.HostConfig, cfg workers.Config) *runningWorker {
	t.Helper()
	c := connect(t, l, "worker-"+host.Host)
	cfg.Client, cfg.Host, cfg.Log = c, host, testLog(t)
	if cfg.RunDir == "" {
		cfg.RunDir = t.TempDir()
	}
	w, err := workers.New(cfg)
	if err != nil {
		t.Fatalf("worker: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rw := &runningWorker{w: w, c: c, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	t.Cleanup(func() { rw.stop(t) })
	return rw
}

// stop shuts the worker down gracefully and waits for it.
func (rw *runningWorker) stop(t testing.TB) {
	rw.once.Do(func() {
		rw.cancel()
		select {
		case <-rw.done:
		case <-time.After(waitLong):
			t.Errorf("worker did not stop within %s", waitLong)
		}
	})
}

// crash cuts the worker off NATS at once, as a killed process would be:
// nothing is finished or handed back.
func (rw *runningWorker) crash() { rw.c.NC.Close() }

// submit submits a job written in YAML and returns its id.
func submit(t testing.TB, c *broker.Client, job string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	reply, err := client.Submit(ctx, c, []byte(job), events.FormatYAML)
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, job)
	}
	return reply.JobID
}

// waitEnd waits for job id's job_end event and returns its final record.
func waitEnd(t testing.TB, c *broker.Client, id string) *events.JobRecord {
	t.Helper()
	return waitEndWithin(t, c, id, waitLong)
}

// waitEndWithin is waitEnd with its own bound.
func waitEndWithin(t testing.TB, c *broker.Client, id string, within time.Duration) *events.JobRecord {
	t.Helper()
	waitEventWithin(t, c, id, events.EventJobEnd, within)
	rec, _, err := c.GetJob(context.Background(), id)
	if err != nil {
		t.Fatalf("job record: %v", err)
	}
	return rec
}

// waitEvent waits for an event named name about job id and returns it.
func waitEvent(t testing.TB, c *broker.Client, id, name string) *events.Event {
	t.Helper()
	return waitEventWithin(t, c, id, name, waitLong)
}

// waitEventWithin is waitEvent with its own bound.
func waitEventWithin(t testing.TB, c *broker.Client, id, name string, within time.Duration) *events.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	seq, err := client.Watch(ctx, c, client.WatchOptions{JobID: id})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	for ev, err := range seq {
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if ev.Name == name {
			return ev
		}
	}
	t.Fatalf("job %s: no %s event within %s", id, name, within)
	return nil
}

// readStream returns every message stored in stream under filter, in order.
func readStream(t testing.TB, c *broker.Client, stream, filter string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	cons, err := c.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	var out []jetstream.Msg
	for {
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			out = append(out, m)
		}
		if n == 0 {
			return out
		}
	}
}

// jobEvents returns every stored event of job id, in order.
func jobEvents(t testing.TB, c *broker.Client, id string) []*events.Event {
	t.Helper()
	var out []*events.Event
	for _, m := range readStream(t, c, c.Subj.EventStream(), c.Subj.JobEvents(id)) {
		var ev events.Event
		if err := events.Decode(m.Data(), &ev); err != nil {
			t.Fatalf("event: %v", err)
		}
		out = append(out, &ev)
	}
	return out
}

func names(evs []*events.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Name
	}
	return out
}

// output returns all of job id's output so far.
func output(t testing.TB, c *broker.Client, id string) string {
	t.Helper()
	var b strings.Builder
	for _, m := range readStream(t, c, c.Subj.LogStream(), c.Subj.Logs(id)) {
		var ch events.LogChunk
		if err := events.Decode(m.Data(), &ch); err != nil {
			t.Fatalf("log chunk: %v", err)
		}
		b.Write(ch.Data)
	}
	return b.String()
}

// eventually polls cond until it holds or waitLong passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, waitLong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

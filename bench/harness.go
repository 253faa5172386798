package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
)

// server is an embedded NATS server with its store on disk, as `flinger
// lab` runs by default, with Flinger's streams and an orchestrator.
type server struct {
	emb  *broker.Embedded
	url  string
	c    *broker.Client
	orch *orchestrator.Orchestrator
}

func startServer(ctx context.Context, env *Env, name string) (*server, error) {
	dir := filepath.Join(env.Dir, name)
	emb, err := broker.StartEmbedded(broker.ServerOptions{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		return nil, err
	}
	s := &server{emb: emb, url: emb.ClientURL()}
	quiet := slog.New(slog.DiscardHandler)
	if s.c, err = broker.SetupAndConnect(ctx, broker.ConnOptions{URL: s.url, Name: "bench", Log: quiet}, events.StoreOptions{}); err != nil {
		s.stop()
		return nil, err
	}
	oc, err := broker.Connect(ctx, broker.ConnOptions{URL: s.url, Name: "bench-orchestrator", Log: quiet})
	if err != nil {
		s.stop()
		return nil, err
	}
	if s.orch, err = orchestrator.New(orchestrator.Config{Client: oc, Log: quiet}); err == nil {
		err = s.orch.Start(ctx)
	}
	if err != nil {
		oc.Close()
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *server) stop() {
	if s.orch != nil {
		s.orch.Stop()
	}
	if s.c != nil {
		s.c.Close()
	}
	s.emb.Shutdown()
}

// runDir is where the workers' job run directories go: on tmpfs when the
// machine has one, so that the figures measure Flinger rather than the
// file system the benchmark happens to run on.
func (e *Env) runDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return filepath.Join("/dev/shm", "flinger-bench-runs-"+filepath.Base(e.Dir))
	}
	return filepath.Join(e.Dir, "runs")
}

// workerProcs are `flinger worker` processes started by a figure.
type workerProcs struct {
	cmds []*exec.Cmd
	errs []*strings.Builder
}

// deviceName names device i of process p.
func deviceName(p, i int) string { return fmt.Sprintf("w%02d-d%04d", p, i) }

// startWorkers starts procs worker processes with perProc fake devices
// each; every device serves the shared queue and a queue of its own, as
// Testflinger agents usually do. It waits until every device is idle.
func startWorkers(ctx context.Context, env *Env, s *server, procs, perProc int, shared string, extraArgs ...string) (*workerProcs, error) {
	w := &workerProcs{}
	for p := range procs {
		var b strings.Builder
		fmt.Fprintf(&b, "host: bench-host-%02d\nrun_dir: %s\ndevices:\n", p, env.runDir())
		for i := range perProc {
			name := deviceName(p, i)
			fmt.Fprintf(&b, "  - agent_name: %s\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [%s, %s]\n", name, shared, name)
		}
		file := filepath.Join(env.Dir, fmt.Sprintf("host-%02d.yaml", p))
		if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
		args := append([]string{"worker", "--host", file, "--nats", s.url, "--log-level", "warn"}, extraArgs...)
		for i, a := range args {
			args[i] = strings.ReplaceAll(a, "{p}", strconv.Itoa(p))
		}
		cmd := exec.Command(env.Flinger, args...)
		errb := &strings.Builder{}
		cmd.Stderr = errb
		if err := cmd.Start(); err != nil {
			w.stop()
			return nil, fmt.Errorf("start worker: %w", err)
		}
		w.cmds, w.errs = append(w.cmds, cmd), append(w.errs, errb)
	}
	want := procs * perProc
	deadline := time.Now().Add(2 * time.Minute)
	for {
		devs, _, err := s.c.ListDevices(ctx)
		idle := 0
		if err == nil {
			for _, d := range devs {
				if d.State == events.StateIdle && strings.HasPrefix(d.Host, "bench-host-") && time.Since(d.Heartbeat) < time.Minute {
					idle++
				}
			}
		}
		if idle >= want {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			w.stop()
			return nil, fmt.Errorf("only %d of %d devices came up: %s", idle, want, w.stderr())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Let every queue's pull request reach the server.
	time.Sleep(500 * time.Millisecond)
	return w, nil
}

func (w *workerProcs) stderr() string {
	var all []string
	for _, e := range w.errs {
		if s := strings.TrimSpace(e.String()); s != "" {
			all = append(all, s)
		}
	}
	return strings.Join(all, "\n")
}

// stop ends the workers with SIGTERM, as an operator would.
func (w *workerProcs) stop() {
	for _, c := range w.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range w.cmds {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = c.Process.Kill()
		}
	}
	w.cmds = nil
}

// rss returns a process's resident memory in bytes.
func rss(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// rawStream makes a stream of its own on the server for a baseline.
func rawStream(ctx context.Context, js jetstream.JetStream, name string, retention jetstream.RetentionPolicy) (jetstream.Stream, error) {
	_ = js.DeleteStream(ctx, name)
	return js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{strings.ToLower(name) + ".>"}, Retention: retention})
}

// rawLatency measures the floor of dispatch: JetStream publish to
// pull-consumer receive on the same server, one message at a time.
func rawLatency(ctx context.Context, url string, n int) ([]time.Duration, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	stream, err := rawStream(ctx, js, "RAWLAT", jetstream.WorkQueuePolicy)
	if err != nil {
		return nil, err
	}
	defer func() { _ = js.DeleteStream(context.Background(), "RAWLAT") }()
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return nil, err
	}
	got := make(chan time.Time, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		_ = m.Ack()
		got <- now
	}, jetstream.PullMaxMessages(1))
	if err != nil {
		return nil, err
	}
	defer cc.Stop()
	lat := make([]time.Duration, 0, n)
	for i := range n {
		t0 := time.Now()
		if _, err := js.Publish(ctx, "rawlat.x", []byte(strconv.Itoa(i))); err != nil {
			return nil, err
		}
		select {
		case t1 := <-got:
			lat = append(lat, t1.Sub(t0))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return lat, nil
}

// rawRates measures JetStream's own message rates on the server: async
// publish of n messages of size bytes into a stream on disk, and pull
// consumption of them.
func rawRates(ctx context.Context, url string, n, size int) (pubPerSec, consPerSec float64, err error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return 0, 0, err
	}
	stream, err := rawStream(ctx, js, "RAWRATE", jetstream.LimitsPolicy)
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = js.DeleteStream(context.Background(), "RAWRATE") }()
	payload := make([]byte, size)
	start := time.Now()
	for i := range n {
		for {
			_, err := js.PublishAsync(fmt.Sprintf("rawrate.%d", i%16), payload)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return 0, 0, err
			}
			// The server is behind (a slow disk): let the acknowledgements
			// catch up, as any publisher must.
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Second):
			case <-ctx.Done():
				return 0, 0, ctx.Err()
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	pubPerSec = float64(n) / time.Since(start).Seconds()

	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		return 0, 0, err
	}
	var got atomic.Int64
	done := make(chan struct{})
	start = time.Now()
	cc, err := cons.Consume(func(jetstream.Msg) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	}, jetstream.PullMaxMessages(1000))
	if err != nil {
		return 0, 0, err
	}
	defer cc.Stop()
	select {
	case <-done:
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	return pubPerSec, float64(n) / time.Since(start).Seconds(), nil
}

// jobTracker counts job_end events (and records setup_start times) of
// every job on the server, from a plain subscription.
type jobTracker struct {
	mu      sync.Mutex
	started map[string]time.Time
	endedAt map[string]time.Time
	// lastAccepted is when intake last accepted a job (job_submitted).
	lastAccepted time.Time
	ended        chan string
	sub          *nats.Subscription
}

func trackJobs(c *broker.Client) (*jobTracker, error) {
	t := &jobTracker{started: map[string]time.Time{}, endedAt: map[string]time.Time{}, ended: make(chan string, 65536)}
	var err error
	t.sub, err = c.NC.Subscribe(c.Subj.Prefix()+".events.job.*.*", func(m *nats.Msg) {
		name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		if name == events.EventJobSubmitted {
			t.mu.Lock()
			t.lastAccepted = time.Now()
			t.mu.Unlock()
			return
		}
		if name != events.PhaseStart(events.PhaseSetup) && name != events.EventJobEnd {
			return
		}
		var ev events.Event
		if events.Decode(m.Data, &ev) != nil {
			return
		}
		t.mu.Lock()
		if name == events.EventJobEnd {
			t.endedAt[ev.JobID] = time.Now()
		} else {
			t.started[ev.JobID] = ev.Time
		}
		t.mu.Unlock()
		if name == events.EventJobEnd {
			t.ended <- ev.JobID
		}
	})
	if err != nil {
		return nil, err
	}
	_ = t.sub.SetPendingLimits(-1, -1)
	return t, nil
}

func (t *jobTracker) close() { _ = t.sub.Unsubscribe() }

// accepted returns when intake last accepted a job.
func (t *jobTracker) accepted() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastAccepted
}

func (t *jobTracker) startedAt(id string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.started[id]
	return s, ok
}

// waitEnded waits until every job in ids has ended.
func (t *jobTracker) waitEnded(ctx context.Context, ids map[string]bool) error {
	left := len(ids)
	t.mu.Lock()
	for id := range ids {
		if _, ok := t.endedAt[id]; ok {
			left--
		}
	}
	t.mu.Unlock()
	for left > 0 {
		select {
		case id := <-t.ended:
			if ids[id] {
				left--
			}
		case <-ctx.Done():
			return fmt.Errorf("%d jobs did not end: %w", left, ctx.Err())
		}
	}
	return nil
}

// submitAsync submits n no-op jobs to queue as fast as the server takes
// them (JSON, without waiting for intake's replies) and returns their ids.
func submitAsync(ctx context.Context, c *broker.Client, queue string, n int) (map[string]bool, error) {
	ids := make(map[string]bool, n)
	for range n {
		id := uuid.NewString()
		ids[id] = true
		m := nats.NewMsg(c.Subj.Submit())
		m.Data = []byte(`{"job_id":"` + id + `","job_queue":"` + queue + `"}`)
		m.Header.Set(events.HeaderSubmitFormat, string(events.FormatJSON))
		m.Header.Set(events.HeaderMsgID, id)
		for {
			_, err := c.JS.PublishMsgAsync(m)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return nil, err
			}
			// The server is behind: let the acknowledgements catch up.
			select {
			case <-c.JS.PublishAsyncComplete():
			case <-time.After(time.Second):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	select {
	case <-c.JS.PublishAsyncComplete():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return ids, nil
}

// eventCount returns how many messages the event stream holds.
func eventCount(ctx context.Context, c *broker.Client) (uint64, error) {
	st, err := c.JS.Stream(ctx, c.Subj.EventStream())
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// pprofTop returns the top functions of a CPU profile, by flat time.
func pprofTop(ctx context.Context, profile string, n int) string {
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount", strconv.Itoa(n), profile).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(pprof failed: %v)", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i, l := range lines {
		if strings.Contains(l, "flat%") {
			return strings.Join(lines[i:], "\n")
		}
	}
	return string(out)
}

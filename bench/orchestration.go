package bench

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

func init() {
	Register(Figure{Name: "requeue", Title: "Requeue latency: recovery_fail → setup_start on another device", Order: 15, Run: runRequeue})
	Register(Figure{Name: "cancel", Title: "Cancel latency: cancel sent → phase stopped", Order: 16, Run: runCancel})
}

// eventWatch records when each job event it is asked about is seen, with
// the event's own time, from a plain subscription.
type eventWatch struct {
	sub *nats.Subscription
	ch  chan *events.Event
}

func watchEvents(c *broker.Client, names ...string) (*eventWatch, error) {
	w := &eventWatch{ch: make(chan *events.Event, 4096)}
	var err error
	w.sub, err = c.NC.Subscribe(c.Subj.Prefix()+".events.job.*.*", func(m *nats.Msg) {
		name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		for _, n := range names {
			if n == name {
				var ev events.Event
				if events.Decode(m.Data, &ev) == nil {
					w.ch <- &ev
				}
				return
			}
		}
	})
	if err != nil {
		return nil, err
	}
	_ = w.sub.SetPendingLimits(-1, -1)
	return w, nil
}

func (w *eventWatch) close() { _ = w.sub.Unsubscribe() }

// next returns the next watched event of job id called name.
func (w *eventWatch) next(ctx context.Context, id, name string, attempt int) (*events.Event, error) {
	for {
		select {
		case ev := <-w.ch:
			if ev.JobID == id && ev.Name == name && (attempt == 0 || ev.Attempt == attempt) {
				return ev, nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("job %s: no %s: %w", id, name, ctx.Err())
		}
	}
}

// requeueHost has n fake devices that fail recovery (broken-NNN) and one
// that works (good), all serving queue.
func requeueHost(queue string, n int) (*drivers.HostConfig, error) {
	var b strings.Builder
	b.WriteString("host: requeue\ndevices:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - agent_name: broken-%04d\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [%s]\n    fail: recovery\n", i, queue)
	}
	fmt.Fprintf(&b, "  - agent_name: good\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [%s]\n", queue)
	return drivers.ParseHost([]byte(b.String()), "requeue.yaml")
}

func orchestrationLab(ctx context.Context, env *Env, name string, host *drivers.HostConfig) (*lab.Lab, error) {
	quiet := slog.New(slog.DiscardHandler)
	return lab.Start(ctx, lab.Options{
		Server:       broker.ServerOptions{DataDir: filepath.Join(env.Dir, name), Listen: "127.0.0.1:0"},
		Host:         host,
		Worker:       workers.Config{RunDir: filepath.Join(env.Dir, name+"-runs")},
		Orchestrator: orchestrator.Config{MaxAttempts: 2},
		Log:          quiet,
	})
}

// runRequeue measures, for jobs whose first device fails recovery, the
// time from that device's recovery_fail event to the setup_start of the
// job's second attempt on another device. Each job excludes every broken
// device but one, so that exactly one attempt fails.
func runRequeue(ctx context.Context, env *Env) (*Result, error) {
	n, trials := env.scale(100, 5), env.Trials
	host, err := requeueHost("rq", n*trials)
	if err != nil {
		return nil, err
	}
	l, err := orchestrationLab(ctx, env, "requeue", host)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	w, err := watchEvents(l.Client, events.EventRecoveryFail, events.PhaseStart(events.PhaseSetup), events.EventJobEnd)
	if err != nil {
		return nil, err
	}
	defer w.close()
	var rawP50, rawP99, p50, p99 []float64
	next := 0
	for trial := range trials {
		raw, err := rawLatency(ctx, l.URL, 1000)
		if err != nil {
			return nil, fmt.Errorf("raw baseline: %w", err)
		}
		lat := make([]time.Duration, 0, n)
		for range n {
			var exclude []string
			for j := range n * trials {
				if j != next {
					exclude = append(exclude, fmt.Sprintf("broken-%04d", j))
				}
			}
			next++
			id := uuid.NewString()
			job := fmt.Sprintf(`{"job_id":%q,"job_queue":"rq","provision_data":{"output_lines":1},"exclude_agents":["%s"]}`, id, strings.Join(exclude, `","`))
			if _, err := client.Submit(ctx, l.Client, []byte(job), events.FormatJSON); err != nil {
				return nil, err
			}
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			failed, err := w.next(wctx, id, events.EventRecoveryFail, 1)
			var second, end *events.Event
			if err == nil {
				second, err = w.next(wctx, id, events.PhaseStart(events.PhaseSetup), 2)
			}
			if err == nil {
				end, err = w.next(wctx, id, events.EventJobEnd, 0)
			}
			cancel()
			if err != nil {
				return nil, err
			}
			if end.Data["outcome"] != string(events.OutcomePass) || second.Device != "good" {
				return nil, fmt.Errorf("job %s: second attempt on %s ended %v", id, second.Device, end.Data["outcome"])
			}
			lat = append(lat, second.Time.Sub(failed.Time))
		}
		rawP50, rawP99 = append(rawP50, ms(percentile(raw, .5))), append(rawP99, ms(percentile(raw, .99)))
		p50, p99 = append(p50, ms(percentile(lat, .5))), append(p99, ms(percentile(lat, .99)))
		env.Log.Info("requeue trial", "trial", trial+1, "jobs", n, "p50", percentile(lat, .5), "p99", percentile(lat, .99))
	}
	res := &Result{Rows: []Row{
		row("requeue p50", "ms", p50, "raw JetStream publish→pull receive p50", rawP50, "", nil),
		row("requeue p99", "ms", p99, "raw JetStream publish→pull receive p99", rawP99, "≤ 100 ms",
			func(v, _ float64) bool { return v <= 100 }),
	}}
	res.Notes = append(res.Notes, fmt.Sprintf("%d jobs per trial, one at a time, on an in-process lab (embedded NATS, store on disk) with %d fake devices that fail recovery and one that works. Each job's first device fails recovery in provision; the orchestrator reads recovery_fail from the event stream, records the attempt, queues the job again without that device, and the working device starts it. Latency is between the two events' own times (same clock). The baseline is raw JetStream publish→pull receive on the same server.", n, n*trials))
	return res, nil
}

// runCancel measures, for jobs cancelled while provisioning and while
// testing, the time from sending the cancel request to the phase's _fail
// event.
func runCancel(ctx context.Context, env *Env) (*Result, error) {
	n, trials := env.scale(100, 5), env.Trials
	host, err := fakeHost("cancel", "cx", 2)
	if err != nil {
		return nil, err
	}
	l, err := orchestrationLab(ctx, env, "cancel", host)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	phases := []struct {
		phase events.Phase
		job   string
	}{
		{events.PhaseProvision, `"provision_data":{"delay":"10m"}`},
		{events.PhaseTest, `"test_data":{"test_cmds":"sleep 600"}`},
	}
	w, err := watchEvents(l.Client, events.PhaseStart(events.PhaseProvision), events.PhaseStart(events.PhaseTest),
		events.PhaseFail(events.PhaseProvision), events.PhaseFail(events.PhaseTest), events.EventJobEnd)
	if err != nil {
		return nil, err
	}
	defer w.close()
	res := &Result{}
	for _, ph := range phases {
		var p50, p99 []float64
		for trial := range trials {
			lat := make([]time.Duration, 0, n)
			for range n {
				id := uuid.NewString()
				job := fmt.Sprintf(`{"job_id":%q,"job_queue":"cx",%s}`, id, ph.job)
				if _, err := client.Submit(ctx, l.Client, []byte(job), events.FormatJSON); err != nil {
					return nil, err
				}
				wctx, cancel := context.WithTimeout(ctx, time.Minute)
				_, err := w.next(wctx, id, events.PhaseStart(ph.phase), 0)
				var stopped *events.Event
				var t0 time.Time
				if err == nil {
					// The phase's process or transfer is under way once its start is published.
					time.Sleep(20 * time.Millisecond)
					t0 = time.Now()
					if _, err = client.Cancel(wctx, l.Client, id, "benchmark"); err == nil {
						stopped, err = w.next(wctx, id, events.PhaseFail(ph.phase), 0)
					}
				}
				if err == nil {
					_, err = w.next(wctx, id, events.EventJobEnd, 0)
				}
				cancel()
				if err != nil {
					return nil, err
				}
				lat = append(lat, stopped.Time.Sub(t0))
			}
			p50, p99 = append(p50, ms(percentile(lat, .5))), append(p99, ms(percentile(lat, .99)))
			env.Log.Info("cancel trial", "phase", ph.phase, "trial", trial+1, "jobs", n, "p50", percentile(lat, .5), "p99", percentile(lat, .99))
		}
		res.Rows = append(res.Rows,
			row(fmt.Sprintf("cancel in %s p50", ph.phase), "ms", p50, "", nil, "", nil),
			row(fmt.Sprintf("cancel in %s p99", ph.phase), "ms", p99, "", nil, "≤ 100 ms", func(v, _ float64) bool { return v <= 100 }))
	}
	res.Notes = append(res.Notes, fmt.Sprintf("%d jobs per phase per trial on an in-process lab (embedded NATS, store on disk) with 2 fake devices. Provision is a fake provisioning of 10 minutes; test is `sleep 600`. Latency runs from just before the cancel request is sent (`flinger cancel`: a request to the orchestrator, which records it and signals the worker) to the time on the phase's _fail event, after the driver or the test's process group has stopped. No baseline: the figure is held to its target.", n))
	return res, nil
}

package bench

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/workers"
)

func init() {
	Register(Figure{Name: "sync", Title: "Durability: JetStream writing each message to disk (sync_interval: always)", Order: 18, Run: runSync})
}

// runSync measures what deploy/cluster's sync_interval: always costs: the
// same no-op jobs through a lab whose JetStream fsyncs every write before
// acknowledging it, beside one with JetStream's default (a flush every two
// minutes), and raw JetStream publishes on each.
func runSync(ctx context.Context, env *Env) (*Result, error) {
	n := env.scale(2000, 100)
	var always, deflt, rawAlways, rawDefault []float64
	for trial := range env.Trials {
		for _, sync := range []bool{false, true} {
			host, err := fakeHost("sync", "sq", 8)
			if err != nil {
				return nil, err
			}
			name := fmt.Sprintf("sync-%d-%v", trial, sync)
			l, err := lab.Start(ctx, lab.Options{
				Server: broker.ServerOptions{DataDir: filepath.Join(env.Dir, name), Listen: "127.0.0.1:0", SyncAlways: sync},
				Host:   host,
				Worker: workers.Config{RunDir: filepath.Join(env.Dir, name+"-runs")},
				Log:    slog.New(slog.DiscardHandler),
			})
			if err != nil {
				return nil, err
			}
			pub, _, err := rawRates(ctx, l.URL, 20000, 256)
			if err != nil {
				l.Stop()
				return nil, fmt.Errorf("raw baseline: %w", err)
			}
			tr, err := trackJobs(l.Client)
			if err != nil {
				l.Stop()
				return nil, err
			}
			start := time.Now()
			ids, err := submitAsync(ctx, l.Client, "sq", n)
			if err == nil {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
				err = tr.waitEnded(wctx, ids)
				cancel()
			}
			took := time.Since(start)
			tr.close()
			l.Stop()
			if err != nil {
				return nil, err
			}
			rate := float64(n) / took.Seconds()
			if sync {
				always, rawAlways = append(always, rate), append(rawAlways, pub)
			} else {
				deflt, rawDefault = append(deflt, rate), append(rawDefault, pub)
			}
			env.Log.Info("sync trial", "trial", trial+1, "sync_always", sync, "jobs_per_s", rate, "raw_pub", pub)
		}
	}
	res := &Result{Rows: []Row{
		row("jobs per second, sync always", "jobs/s", always, "jobs per second, default flush", deflt, "", nil),
		row("raw JetStream async publish, sync always", "msgs/s", rawAlways, "raw async publish, default flush", rawDefault, "", nil),
	}}
	res.Notes = append(res.Notes, fmt.Sprintf("%d no-op jobs submitted at once to 8 fake devices of an in-process lab (embedded NATS, store on disk), once with JetStream's default (writes flushed every two minutes) and once with sync_interval: always (each write on disk before it is acknowledged), as deploy/cluster sets it; and 20,000 raw async publishes of 256 bytes on each server. The ratio is what durability against a power cut costs on this machine's disk.", n))
	return res, nil
}

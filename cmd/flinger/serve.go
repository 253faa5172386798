package main

import (
	"cmp"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/metrics"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// workerFlags are the worker's tuning flags, shared by `worker` and `lab`.
type workerFlags struct {
	runDir    string
	lease     time.Duration
	heartbeat time.Duration
	drain     time.Duration
	fence     time.Duration
	keep      bool
}

func (w *workerFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&w.runDir, "run-dir", "", "where job run directories go (default: the host file's run_dir, else a temp dir)")
	f.DurationVar(&w.lease, "lease", workers.DefaultLease, "how long a job stays with a device that stops renewing it (set when a queue is first served)")
	f.DurationVar(&w.heartbeat, "heartbeat", workers.DefaultHeartbeat, "how often device status is refreshed")
	f.DurationVar(&w.drain, "drain", workers.DefaultDrainTimeout, "on SIGTERM, how long a running phase may take to finish before its job is handed back")
	f.DurationVar(&w.fence, "fence", workers.DefaultFence,
		"stop a running job when its lease cannot be confirmed for this long (cut off from NATS); keep it below the orchestrators' --device-timeout")
	f.BoolVar(&w.keep, "keep-run-dirs", false, "keep job run directories after jobs end")
}

// orchestratorFlags are the orchestrator's policy flags, shared by
// `orchestrator` and `lab`.
type orchestratorFlags struct {
	maxAttempts    int
	lostPolicy     string
	deviceTimeout  time.Duration
	maxReservation time.Duration
	maxAttachment  int64
}

func (o *orchestratorFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&o.maxAttempts, "max-attempts", orchestrator.DefaultMaxAttempts,
		"how many devices may try a job: after a recovery failure or a lost worker it is requeued to another device until this many have (1: never)")
	f.StringVar(&o.lostPolicy, "lost-job-policy", orchestrator.LostJobRequeue,
		"what happens to the job of a device whose worker is lost: requeue or fail")
	f.DurationVar(&o.deviceTimeout, "device-timeout", orchestrator.DefaultDeviceTimeout,
		"how long a device's heartbeat may be missing before its health becomes unknown and its job is handled as lost (longer than the workers' --heartbeat and --fence)")
	f.DurationVar(&o.maxReservation, "max-reservation", orchestrator.DefaultMaxReservation,
		"the longest a reservation may last in all, when reserve extend moves its end")
	f.Int64Var(&o.maxAttachment, "max-attachment-bytes", orchestrator.DefaultMaxAttachmentBytes,
		"the largest attachment archive a job may carry, in bytes")
}

func (o *orchestratorFlags) apply(cfg *orchestrator.Config) {
	cfg.MaxAttempts, cfg.LostJobPolicy, cfg.DeviceTimeout, cfg.MaxReservation = o.maxAttempts, o.lostPolicy, o.deviceTimeout, o.maxReservation
	cfg.MaxAttachmentBytes = o.maxAttachment
}

func (w *workerFlags) config() workers.Config {
	return workers.Config{RunDir: w.runDir, Lease: w.lease, Heartbeat: w.heartbeat, DrainTimeout: w.drain, Fence: w.fence, KeepRunDirs: w.keep}
}

func defaultDataDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "flinger")
}

func newLabCmd(g *globals) *cobra.Command {
	var (
		dataDir, listen, labFile, examples, simImages string
		demo                                          bool
		wf                                            workerFlags
		store                                         events.StoreOptions
	)
	var hooks webhookFlags
	var mf metricsFlag
	var of orchestratorFlags
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a whole lab in one process: embedded NATS, orchestrator, and a worker for the lab file",
		Long: `Run a whole lab in one process: an embedded NATS server with JetStream
(listening on --listen so that other flinger commands and the nats CLI can
connect), the orchestrator, and a worker for the devices of the lab file.
With --nats given explicitly, use that server instead of an embedded one.

With --demo, also submit the example jobs, show their progress live, print
a table of their outcomes and exit 0 only if each reached the outcome it
expects. Without --data, the demo uses a fresh temporary store.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			host, err := drivers.LoadHost(labFile)
			if err != nil {
				return err
			}
			opts := lab.Options{Host: host, Worker: wf.config(), Store: store, SimImages: simImages, Log: slog.Default()}
			of.apply(&opts.Orchestrator)
			if err := hooks.apply(&opts.Orchestrator); err != nil {
				return err
			}
			if mf.addr != "" {
				opts.Worker.Metrics, opts.Orchestrator.Metrics = metrics.NewWorker(slog.Default()), metrics.NewOrchestrator(slog.Default())
			}
			if cmd.Flags().Changed("nats") {
				opts.NATS = g.nats
			} else {
				opts.NATS = g.nats
				opts.NATS.URL = ""
				if demo && !cmd.Flags().Changed("data") {
					tmp, err := os.MkdirTemp("", "flinger-demo-")
					if err != nil {
						return err
					}
					defer os.RemoveAll(tmp)
					dataDir = tmp
				}
				opts.Server = broker.ServerOptions{DataDir: dataDir, Listen: listen}
			}
			l, err := lab.Start(ctx, opts)
			if err != nil {
				return err
			}
			defer l.Stop()
			stopMetrics, err := mf.serve(opts.Worker.Metrics.Registry(), opts.Orchestrator.Metrics.Registry())
			if err != nil {
				return err
			}
			defer stopMetrics()
			if l.Server != nil {
				slog.Info("lab running", "nats", l.URL, "data", dataDir, "devices", len(host.Devices))
			} else {
				slog.Info("lab running", "nats", l.URL, "devices", len(host.Devices))
			}
			if demo {
				return runDemo(ctx, cmd.OutOrStdout(), l, examples)
			}
			<-ctx.Done()
			slog.Info("lab stopping")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data", defaultDataDir(), "data directory of the embedded NATS server")
	f.StringVar(&listen, "listen", "127.0.0.1:4222", "client address of the embedded NATS server")
	f.StringVar(&labFile, "lab", "deploy/lab.yaml", "lab file: the devices to drive (host file format)")
	f.BoolVar(&demo, "demo", false, "submit the example jobs, show them run, and check their outcomes")
	f.StringVar(&simImages, "sim-images", "127.0.0.1:8470", "with simulated devices: address of the server of simulated OS images (\"\": none)")
	f.StringVar(&examples, "examples", "deploy/examples/jobs", "with --demo: the example jobs and their expected.yaml")
	f.DurationVar(&store.EventMaxAge, "event-max-age", events.DefaultMaxAge, "how long events are kept")
	f.DurationVar(&store.LogMaxAge, "log-max-age", events.DefaultMaxAge, "how long output and serial logs are kept")
	f.DurationVar(&store.AttachmentMaxAge, "attachment-max-age", events.DefaultMaxAge, "how long jobs' attachment archives are kept")
	f.DurationVar(&store.ArtifactMaxAge, "artifact-max-age", events.DefaultMaxAge, "how long jobs' artifact archives are kept")
	f.Int32Var(&store.MaxJobBytes, "max-job-bytes", events.DefaultMaxJobBytes, "largest job accepted, in bytes")
	wf.add(cmd)
	of.add(cmd)
	hooks.add(cmd)
	mf.add(cmd)
	return cmd
}

func newWorkerCmd(g *globals) *cobra.Command {
	var hostFile string
	var wf workerFlags
	var mf metricsFlag
	cmd := &cobra.Command{
		Use:   "worker --host HOST.yaml",
		Short: "Drive the devices of one lab host",
		Long: `Drive every device of a host file: each idle device takes jobs from the
queues it serves as soon as they arrive. SIGTERM stops taking jobs, lets a
running phase finish (--drain) and hands unfinished jobs back to their queue.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, err := drivers.LoadHost(hostFile)
			if err != nil {
				return err
			}
			c, err := g.connect(cmd.Context(), "flinger-worker-"+host.Host)
			if err != nil {
				return err
			}
			defer c.Close()
			cfg := wf.config()
			cfg.Client, cfg.Host = c, host
			simDir := filepath.Join(cmp.Or(host.RunDir, cfg.RunDir, filepath.Join(os.TempDir(), "flinger-runs")), "sim")
			sims, err := lab.StartSimulators(cmd.Context(), host, simDir, slog.Default())
			if err != nil {
				return err
			}
			defer sims.Close()
			if mf.addr != "" {
				cfg.Metrics = metrics.NewWorker(slog.Default())
			}
			w, err := workers.New(cfg)
			if err != nil {
				return err
			}
			stopMetrics, err := mf.serve(cfg.Metrics.Registry())
			if err != nil {
				return err
			}
			defer stopMetrics()
			return w.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&hostFile, "host", "", "host file: this lab host's devices (required)")
	_ = cmd.MarkFlagRequired("host")
	wf.add(cmd)
	mf.add(cmd)
	return cmd
}

func newOrchestratorCmd(g *globals) *cobra.Command {
	var store events.StoreOptions
	var setup bool
	var of orchestratorFlags
	var hooks webhookFlags
	var mf metricsFlag
	cmd := &cobra.Command{
		Use:   "orchestrator",
		Short: "Run an orchestrator: intake and control (run two or more for availability)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			o := g.nats
			o.Name = "flinger-orchestrator"
			var c *broker.Client
			var err error
			if setup {
				c, err = broker.SetupAndConnect(ctx, o, store)
			} else {
				c, err = broker.Connect(ctx, o)
			}
			if err != nil {
				return err
			}
			defer c.Close()
			ocfg := orchestrator.Config{Client: c, MaxJobBytes: int(store.Limits().MaxJobBytes)}
			of.apply(&ocfg)
			if err := hooks.apply(&ocfg); err != nil {
				return err
			}
			if mf.addr != "" {
				ocfg.Metrics = metrics.NewOrchestrator(slog.Default())
			}
			orch, err := orchestrator.New(ocfg)
			if err != nil {
				return err
			}
			if err := orch.Start(ctx); err != nil {
				return err
			}
			stopMetrics, err := mf.serve(ocfg.Metrics.Registry())
			if err != nil {
				orch.Stop()
				return err
			}
			defer stopMetrics()
			slog.Info("orchestrator running", "nats", c.NC.ConnectedUrlRedacted())
			<-ctx.Done()
			orch.Stop()
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&setup, "setup", true, "create or update the streams and buckets at start")
	f.IntVar(&store.Replicas, "replicas", 1, "replicas of every stream and bucket (3 on a cluster)")
	f.DurationVar(&store.EventMaxAge, "event-max-age", events.DefaultMaxAge, "how long events are kept")
	f.DurationVar(&store.LogMaxAge, "log-max-age", events.DefaultMaxAge, "how long output and serial logs are kept")
	f.DurationVar(&store.AttachmentMaxAge, "attachment-max-age", events.DefaultMaxAge, "how long jobs' attachment archives are kept")
	f.DurationVar(&store.ArtifactMaxAge, "artifact-max-age", events.DefaultMaxAge, "how long jobs' artifact archives are kept")
	f.Int32Var(&store.MaxJobBytes, "max-job-bytes", events.DefaultMaxJobBytes, "largest job accepted, in bytes")
	of.add(cmd)
	hooks.add(cmd)
	mf.add(cmd)
	return cmd
}

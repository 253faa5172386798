// Package lab runs a whole Flinger lab in one process: an embedded NATS
// server with JetStream (or an external one), the orchestrator and a
// worker for the devices of one host file. It is what `flinger lab` runs
// and what the in-process tests start.
package lab

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// Options configures a lab.
type Options struct {
	// NATS reaches an external server; when its URL is empty an embedded
	// server is started instead.
	NATS broker.ConnOptions
	// Server configures the embedded server.
	Server broker.ServerOptions
	// Store sizes the streams and buckets.
	Store events.StoreOptions
	// Host is the devices to drive; nil runs no worker.
	Host *drivers.HostConfig
	// Worker tunes the worker (its Client and Host are filled in).
	Worker workers.Config
	// SimDir is where the simulators of the host's simulated devices (those
	// with a sim key) keep their files (default: sim under the host's
	// run_dir, else under the worker's run directory).
	SimDir string
	// SimImages, when not empty, is the address of an HTTP server of
	// simulated OS images (sim.ImageServer) started along with the
	// simulated devices, for their jobs' provision_data.url.
	SimImages string
	// SimImageSize is the size of the simulated images served (0:
	// sim.DefaultImageSize).
	SimImageSize int64
	// NoOrchestrator runs no orchestrator (for tests that start their own).
	NoOrchestrator bool
	// Orchestrator tunes the orchestrator (its Client and Log are filled
	// in, and MaxJobBytes from Store when it is zero).
	Orchestrator orchestrator.Config
	// Log is the lab's logger (nil: slog.Default()).
	Log *slog.Logger
}

// Lab is a running lab.
type Lab struct {
	// Server is the embedded NATS server, nil with an external one.
	Server *broker.Embedded
	// URL is the NATS URL clients use.
	URL string
	// Client is a connection for the lab's own use (submitting, watching).
	Client *broker.Client
	// Orchestrator is the lab's orchestrator, if it runs one.
	Orchestrator *orchestrator.Orchestrator
	// Worker is the lab's worker, if it runs one.
	Worker *workers.Worker
	// Simulators are the simulated devices the lab started.
	Simulators *Simulators
	// Images is the server of simulated images, if the lab started one.
	Images *sim.ImageServer

	conns      []*broker.Client
	stopWorker context.CancelFunc
	workerDone chan error
}

// Start starts the lab; Stop ends it.
func Start(ctx context.Context, o Options) (l *Lab, err error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	l = &Lab{}
	defer func() {
		if err != nil {
			l.Stop()
		}
	}()
	conn := o.NATS
	if conn.URL == "" {
		so := o.Server
		if so.Log == nil {
			so.Log = log
		}
		if l.Server, err = broker.StartEmbedded(so); err != nil {
			return nil, err
		}
		conn.URL = l.Server.ClientURL()
	}
	l.URL = conn.URL
	if conn.Log == nil {
		conn.Log = log
	}
	dial := func(name string) (*broker.Client, error) {
		co := conn
		co.Name = name
		c, err := broker.Connect(ctx, co)
		if err != nil {
			return nil, err
		}
		l.conns = append(l.conns, c)
		return c, nil
	}
	setup := conn
	setup.Name = "flinger-lab"
	if l.Client, err = broker.SetupAndConnect(ctx, setup, o.Store); err != nil {
		return nil, err
	}
	l.conns = append(l.conns, l.Client)
	if !o.NoOrchestrator {
		oc, err := dial("flinger-orchestrator")
		if err != nil {
			return nil, err
		}
		ocfg := o.Orchestrator
		ocfg.Client, ocfg.Log = oc, log
		if ocfg.MaxJobBytes == 0 {
			ocfg.MaxJobBytes = int(o.Store.Limits().MaxJobBytes)
		}
		if l.Orchestrator, err = orchestrator.New(ocfg); err != nil {
			return nil, err
		}
		if err = l.Orchestrator.Start(ctx); err != nil {
			return nil, err
		}
	}
	if o.Host != nil && len(o.Host.Devices) > 0 {
		dir := o.SimDir
		if dir == "" {
			dir = o.Host.RunDir
			if dir == "" {
				dir = o.Worker.RunDir
			}
			if dir == "" {
				dir = filepath.Join(os.TempDir(), "flinger-runs")
			}
			dir = filepath.Join(dir, "sim")
		}
		// The simulators live until Stop, not as long as ctx.
		simCtx := context.WithoutCancel(ctx)
		if l.Simulators, err = StartSimulators(simCtx, o.Host, dir, log); err != nil {
			return nil, err
		}
		if l.Simulators.Len() > 0 && o.SimImages != "" {
			if l.Images, err = sim.StartImageServer(simCtx, o.SimImages, o.SimImageSize, log.With("sim", "images")); err != nil {
				return nil, err
			}
			log.Info("simulated images served", "url", l.Images.URL())
		}
		wc, err := dial("flinger-worker-" + o.Host.Host)
		if err != nil {
			return nil, err
		}
		wcfg := o.Worker
		wcfg.Client, wcfg.Host = wc, o.Host
		if wcfg.Log == nil {
			wcfg.Log = log
		}
		if l.Worker, err = workers.New(wcfg); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithCancel(context.Background())
		l.stopWorker = cancel
		l.workerDone = make(chan error, 1)
		go func() { l.workerDone <- l.Worker.Run(wctx) }()
	}
	return l, nil
}

// WorkerErr returns the worker's error if it stopped on its own.
func (l *Lab) WorkerErr() error {
	if l.workerDone == nil {
		return nil
	}
	select {
	case err := <-l.workerDone:
		l.workerDone <- err
		if err == nil {
			return errors.New("worker stopped")
		}
		return err
	default:
		return nil
	}
}

// Stop ends the worker (finishing or handing back its jobs), the
// orchestrator, the connections and the embedded server.
func (l *Lab) Stop() {
	if l == nil {
		return
	}
	if l.stopWorker != nil {
		l.stopWorker()
		select {
		case <-l.workerDone:
		case <-time.After(2 * time.Minute):
		}
		l.stopWorker = nil
	}
	if l.Orchestrator != nil {
		l.Orchestrator.Stop()
		l.Orchestrator = nil
	}
	l.Simulators.Close()
	if l.Images != nil {
		l.Images.Close()
	}
	for i := len(l.conns) - 1; i >= 0; i-- {
		l.conns[i].Close()
	}
	l.conns = nil
	if l.Server != nil {
		l.Server.Shutdown()
		l.Server = nil
	}
}

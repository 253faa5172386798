package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/broker"
)

// globals are the flags every subcommand shares.
type globals struct {
	nats       broker.ConnOptions
	logLevel   string
	logFormat  string
	cpuProfile string
	stopProf   func()
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "flinger",
		Short: "Flinger: a device lab on NATS JetStream, compatible with Testflinger",
		Long: `Flinger runs Testflinger jobs on lab devices through NATS JetStream.

Try it on one machine:   flinger lab --demo
Run a one-host lab:      flinger lab --lab deploy/lab.yaml
Submit and follow a job: flinger submit job.yaml --follow`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.setupLog(); err != nil {
				return err
			}
			return g.startProfile()
		},
		PersistentPostRun: func(*cobra.Command, []string) { g.stopProfile() },
	}
	f := root.PersistentFlags()
	f.StringVar(&g.nats.URL, "nats", envOr("FLINGER_NATS", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated ($FLINGER_NATS)")
	f.StringVar(&g.nats.Creds, "creds", os.Getenv("FLINGER_NATS_CREDS"), "NATS credentials file ($FLINGER_NATS_CREDS)")
	f.StringVar(&g.nats.NKeySeed, "nkey", "", "file holding an NKey seed")
	f.StringVar(&g.nats.User, "user", os.Getenv("FLINGER_NATS_USER"), "NATS user ($FLINGER_NATS_USER)")
	f.StringVar(&g.nats.Password, "password", os.Getenv("FLINGER_NATS_PASSWORD"), "NATS password ($FLINGER_NATS_PASSWORD)")
	f.StringVar(&g.nats.Token, "token", os.Getenv("FLINGER_NATS_TOKEN"), "NATS token ($FLINGER_NATS_TOKEN)")
	f.StringVar(&g.nats.TLSCA, "tls-ca", "", "PEM file of CAs to trust for the NATS server")
	f.StringVar(&g.nats.TLSCert, "tls-cert", "", "client certificate (PEM) for NATS")
	f.StringVar(&g.nats.TLSKey, "tls-key", "", "client certificate key (PEM) for NATS")
	f.StringVar(&g.nats.Domain, "js-domain", os.Getenv("FLINGER_JS_DOMAIN"), "JetStream domain of the lab's servers, for a process on a leaf node without JetStream (a remote site) ($FLINGER_JS_DOMAIN)")
	f.StringVar(&g.nats.Prefix, "prefix", envOr("FLINGER_PREFIX", "flinger"), "prefix of every subject, stream and bucket ($FLINGER_PREFIX)")
	f.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&g.cpuProfile, "cpuprofile", "", "write a CPU profile of this command to the file (for benchmarks)")
	_ = f.MarkHidden("cpuprofile")

	root.AddCommand(
		newLabCmd(g), newWorkerCmd(g), newOrchestratorCmd(g),
		newSubmitCmd(g), newStatusCmd(g), newCancelCmd(g), newReserveCmd(g), newLogsCmd(g), newResultsCmd(g), newSecretCmd(g), newAuthCmd(g), newWatchCmd(g), newEventsCmd(g), newDevicesCmd(g), newDeviceCmd(g), newValidateCmd(), newConnectorCmd(), newSimCmd(),
	)
	return root
}

func (g *globals) setupLog() error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(g.logFormat) {
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return fmt.Errorf("--log-format %q: use text or json", g.logFormat)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

func (g *globals) startProfile() error {
	if g.cpuProfile == "" {
		return nil
	}
	f, err := os.Create(g.cpuProfile)
	if err != nil {
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	g.stopProf = func() {
		pprof.StopCPUProfile()
		f.Close()
	}
	return nil
}

func (g *globals) stopProfile() {
	if g.stopProf != nil {
		g.stopProf()
		g.stopProf = nil
	}
}

// connect dials NATS with the shared flags.
func (g *globals) connect(ctx context.Context, name string) (*broker.Client, error) {
	o := g.nats
	o.Name = name
	return broker.Connect(ctx, o)
}

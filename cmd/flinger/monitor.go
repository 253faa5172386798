package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/metrics"
	"github.com/flingerlab/flinger/orchestrator"
)

// webhookFlags are the orchestrator's job-status webhook settings, shared
// by `orchestrator` and `lab`.
type webhookFlags struct {
	hosts     []string
	tokenFile string
}

func (h *webhookFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&h.hosts, "webhook-host", nil,
		"a host (or host:port) that jobs' job_status_webhook may call; repeat for more (none: no webhook is called)")
	f.StringVar(&h.tokenFile, "webhook-token-file", "",
		"file holding the bearer token sent to webhooks (default: $FLINGER_WEBHOOK_TOKEN)")
}

// apply puts the webhook settings into cfg, reading the token file.
func (h *webhookFlags) apply(cfg *orchestrator.Config) error {
	cfg.WebhookHosts = h.hosts
	cfg.WebhookToken = os.Getenv("FLINGER_WEBHOOK_TOKEN")
	if h.tokenFile != "" {
		data, err := os.ReadFile(h.tokenFile)
		if err != nil {
			return fmt.Errorf("--webhook-token-file: %w", err)
		}
		cfg.WebhookToken = strings.TrimSpace(string(data))
		if cfg.WebhookToken == "" {
			return fmt.Errorf("--webhook-token-file %s is empty", h.tokenFile)
		}
	}
	return nil
}

// metricsFlag is the address of the Prometheus endpoint, shared by
// `worker`, `orchestrator` and `lab`.
type metricsFlag struct{ addr string }

func (m *metricsFlag) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&m.addr, "metrics-addr", "",
		`serve Prometheus metrics at http://ADDR/metrics, such as 127.0.0.1:9464 ("": none)`)
}

// serve starts the endpoint for regs when an address is set; stop ends it.
func (m *metricsFlag) serve(regs ...*metrics.Registry) (stop func(), err error) {
	if m.addr == "" {
		return func() {}, nil
	}
	srv, err := metrics.Listen(m.addr, slog.Default(), regs...)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return srv.Close, nil
}

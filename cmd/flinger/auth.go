package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/access"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

func newAuthCmd(g *globals) *cobra.Command {
	var (
		hosts       []string
		out         string
		maxPriority int
		tlsNames    []string
	)
	cmd := &cobra.Command{
		Use:   "auth --host HOST.yaml... --out DIR",
		Short: "Write the NATS users of a lab: one per role, one per lab host",
		Long: `Write the NATS users of a lab and what each may do, derived from its host
files: DIR/auth.conf, an authorization block for nats-server's configuration
(include auth.conf), with bcrypt-hashed passwords; and DIR/<user>.env, the
FLINGER_NATS_USER and FLINGER_NATS_PASSWORD each process is started with
(mode 600).

  orchestrator        everything under the lab's prefix
  worker-<host>       that host's queues and devices only; job events, logs,
                      artifacts; reads secrets and attachments
  submitter           submits, cancels and extends jobs, sends attachments,
                      reads jobs, events, logs and artifacts
  observer            reads events, logs, jobs and devices; publishes nothing

With --tls NAMES it also writes a new CA and certificates to DIR/tls:
ca.pem, server.pem and server-key.pem for the servers (valid for NAMES:
host names or addresses), <user>.pem and <user>-key.pem for each user,
and DIR/tls.conf, which makes the servers require a client certificate
signed by that CA (include tls.conf). Start each process with --tls-ca,
--tls-cert and --tls-key.

A worker may take jobs of job_priority up to --max-priority: each level
is a consumer of its own, named in its permissions. Run it again when a
host file's devices or queues change, and reload the servers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(hosts) == 0 {
				return fmt.Errorf("--host: give at least one host file")
			}
			if out == "" {
				return fmt.Errorf("--out: give the directory to write to")
			}
			var hcs []*drivers.HostConfig
			for _, h := range hosts {
				hc, err := drivers.LoadHost(h)
				if err != nil {
					return err
				}
				hcs = append(hcs, hc)
			}
			subj, err := events.NewSubjects(g.nats.Prefix)
			if err != nil {
				return err
			}
			users, err := access.LabUsers(hcs)
			if err != nil {
				return err
			}
			conf, err := access.Config(users, access.Options{Subjects: subj, MaxPriority: maxPriority})
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(out, "auth.conf"), []byte(conf), 0o600); err != nil {
				return err
			}
			for _, u := range users {
				env := fmt.Sprintf("FLINGER_NATS_USER=%s\nFLINGER_NATS_PASSWORD=%s\n", u.Name, u.Password)
				if err := os.WriteFile(filepath.Join(out, u.Name+".env"), []byte(env), 0o600); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-24s %s\n", u.Name, filepath.Join(out, u.Name+".env"))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%-24s %s\n", "(servers)", filepath.Join(out, "auth.conf"))
			if len(tlsNames) == 0 {
				return nil
			}
			names := make([]string, len(users))
			for i, u := range users {
				names[i] = u.Name
			}
			tlsDir, err := filepath.Abs(filepath.Join(out, "tls"))
			if err != nil {
				return err
			}
			if err := access.WriteLabTLS(tlsDir, tlsNames, names); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(out, "tls.conf"), []byte(access.TLSConfig(tlsDir)), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%-24s %s\n", "(servers, TLS)", filepath.Join(out, "tls.conf"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&hosts, "host", nil, "a lab host's host file (repeat for each host)")
	f.StringVar(&out, "out", "", "directory to write auth.conf and the users' .env files to")
	f.IntVar(&maxPriority, "max-priority", access.DefaultMaxPriority, "highest job_priority workers take jobs of")
	f.StringSliceVar(&tlsNames, "tls", nil, "also write a CA and certificates, the servers' valid for these names (host names or addresses, comma-separated)")
	return cmd
}

package main

import (
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/connector"
)

// newConnectorCmd is Testflinger's device connector command line
// (testflinger-device-connector TYPE STAGE -c CONFIG JOB) on Flinger's
// drivers. It never connects to NATS.
func newConnectorCmd() *cobra.Command {
	var config, dir string
	cmd := &cobra.Command{
		Use:   "connector TYPE STAGE -c DEVICE.yaml JOB.json",
		Short: "Run one stage of a job on a device, as testflinger-device-connector does",
		Long: `Run one stage of a job on one device with Flinger's driver for TYPE, with
the command line, files and exit statuses of Testflinger's
testflinger-device-connector, so that an existing Testflinger agent can use
Flinger's drivers: point its phase scripts (tf-provision, tf-test, ...) at

  flinger connector $provision_type provision -c default.yaml testflinger.json

TYPE is a connector type (` + strings.Join(drivers.Types(), ", ") + `).
STAGE is one of ` + strings.Join(connector.Stages, ", ") + `.
-c/--config is the device's Testflinger configuration (default.yaml:
agent_name, device_ip, reboot_script, env, ...); JOB.json is the job as the
agent writes it (fields the server adds are ignored).

As Testflinger's connector does, it writes device-info.json in the working
directory on every invocation ({"device_info": {"device_ip", "agent_name"}};
allocate writes the device information its driver returns), prints the
stage's output as it happens, and records a failure under
"<stage>_exception_info" in device-connector-error.json (exception_name,
exception_message, exception_cause), merged with what the file holds.
reserve holds the device for reserve_data.timeout seconds (default 3600) or
until SIGINT/SIGTERM.

Exit status:
  0   the stage succeeded (runtest: the test's own exit status instead)
  1   the stage failed, the files could not be read, or TYPE/STAGE is unknown
  46  the device could not be recovered (RecoveryError): take it out of service

It does not connect to NATS.`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			code := connector.Run(cmd.Context(), connector.Options{
				Type:       args[0],
				Stage:      args[1],
				ConfigPath: config,
				JobPath:    args[2],
				Dir:        dir,
				Stdout:     cmd.OutOrStdout(),
				Stderr:     cmd.ErrOrStderr(),
				Log:        slog.Default().With("cmd", "connector"),
			})
			if code != 0 {
				return &exitError{code: code} // connector.Run printed why
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&config, "config", "c", "", "the device's Testflinger configuration file (default.yaml)")
	f.StringVar(&dir, "dir", ".", "working directory: device-info.json and device-connector-error.json go there, commands run there, relative paths start there")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

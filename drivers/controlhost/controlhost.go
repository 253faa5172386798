// Package controlhost drives the control host of a device (the machine
// that flashes it, switches its storage and powers it) through the control
// host's REST API, and runs Testflinger's hooks around it: the
// pre_provision_hook that power-cycles the control host and readies it for
// provisioning, and the pre_test_hook that readies it for the test phase
// (DefaultDevice and DefaultControlHost in
// device-connectors/src/testflinger_device_connectors/devices/__init__.py
// of canonical/testflinger).
//
// # The pre-provision hook
//
// For a device with a control_host, unless the environment of the phase
// sets DISABLE_CONTROL_HOST_POWERCYCLE (to anything but the empty string)
// or the device has no control_host_reboot_script:
//
//  1. when the connector manages the DUT's power during the reboot (muxpi
//     and control_host_iot in Testflinger; the device key
//     control_host_manage_dut_power) and both poweroff_script and
//     poweron_script are configured, poweroff_script is run;
//  2. POST /api/v1/system/poweroff; when the API does not take it (it is
//     down, or it refuses), the SSH fallback: if the control host's SSH
//     port accepts a connection nothing more is done, else
//     control_host_reboot_script is run and the SSH port must accept a
//     connection within control_host_online_timeout;
//  3. otherwise wait up to control_host_offline_timeout for the control
//     host to go down, then control_host_shutdown_wait more, run
//     control_host_reboot_script and wait up to control_host_online_timeout
//     for GET /health to answer 200;
//  4. poweron_script, whatever happened (when poweroff_script was run),
//     unless the phase was cancelled.
//
// Then, whether or not the host was power-cycled, POST
// /api/v1/system/setup/provisioning, with the connector's JSON body (such
// as oemrecovery's {"usb": "DUT"}) or control_host_setup_provisioning_data;
// its failure is reported and ignored, as in Testflinger.
//
// Each script command is split on white space and run on this machine
// without a shell, in the job's directory with the phase's environment,
// each within control_host_script_timeout; a command that fails or times
// out is reported and the next one runs, as in Testflinger.
//
// # The pre-test hook
//
// POST /api/v1/system/setup/test, whose failure is reported and ignored.
//
// # Device configuration keys
//
// Testflinger's: control_host (a name or address; a :port suffix, or
// control_port, is its SSH port, default 22), control_host_reboot_script,
// poweroff_script, poweron_script (each a list of commands, or one command
// as a string). Flinger's, durations in seconds or as "90s", "500ms":
//
//	control_host_api_port: 8000            # the REST API's port
//	control_host_manage_dut_power: true    # default: the connector's choice
//	control_host_setup_provisioning_data: {usb: DUT}  # default: the connector's
//	control_host_offline_timeout: 30       # wait for the host to go down
//	control_host_shutdown_wait: 10         # then wait this long more
//	control_host_online_timeout: 300       # wait for it to come back
//	control_host_script_timeout: 60        # each script command's limit
//	control_host_check_interval: 2         # between checks while waiting
//	control_host_request_timeout: 10       # each REST request's limit
//
// # Where Flinger differs from Testflinger
//
//   - "Has the host gone down" is a TCP connection to the control host's
//     SSH port, not ICMP ping, which needs privileges or a setuid binary
//     and says nothing of the host's services; the SSH fallback checks the
//     same port, as Testflinger's nc -z does.
//   - A control host that does not come back (the REST API after a
//     shutdown, or the SSH port in the fallback) is a *NotBackError, which
//     the drivers package turns into a recovery failure (exit 46), so that
//     the device is taken out of service: every later job would fail on
//     it. Testflinger raises a TimeoutError (exit 1) for the API and only
//     logs the SSH fallback's timeout.
//   - Script commands are never given to a shell (Testflinger runs them
//     with shell=True); a command that needs one must be a script file.
//   - Requests that did not reach the API, or that it answered 502, 503 or
//     504, are retried a few times; the shutdown request is retried only
//     when it cannot have reached the API.
package controlhost

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/events"
)

// DisablePowerCycleEnv is the environment variable that, set to anything
// but the empty string, skips the power cycle of the pre-provision hook.
const DisablePowerCycleEnv = "DISABLE_CONTROL_HOST_POWERCYCLE"

// Defaults of the device keys (Testflinger's values).
const (
	DefaultOfflineTimeout = 30 * time.Second
	DefaultShutdownWait   = 10 * time.Second
	DefaultOnlineTimeout  = 300 * time.Second
	DefaultScriptTimeout  = 60 * time.Second
	DefaultCheckInterval  = 2 * time.Second
	// DefaultCheckTimeout bounds one check that the host is up (a health
	// request or a TCP connection), Testflinger's 3 s.
	DefaultCheckTimeout = 3 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 2 * time.Hour

// Keys are the device configuration keys this package reads, beyond
// control_host and control_port.
var Keys = []string{
	"control_host_reboot_script", "poweroff_script", "poweron_script",
	"control_host_api_port", "control_host_manage_dut_power", "control_host_setup_provisioning_data",
	"control_host_offline_timeout", "control_host_shutdown_wait", "control_host_online_timeout",
	"control_host_script_timeout", "control_host_check_interval", "control_host_request_timeout",
}

// Defaults are what a connector type says when the device configuration
// does not.
type Defaults struct {
	// ManageDUTPower: run poweroff_script before and poweron_script after
	// the power cycle (Testflinger's MANAGE_DUT_POWER_DURING_REBOOT, set
	// by muxpi and control_host_iot).
	ManageDUTPower bool
	// SetupProvisioningData is the JSON body of the setup/provisioning
	// request (Testflinger's SETUP_PROVISIONING_DATA; nil: no body).
	SetupProvisioningData map[string]any
}

// Settings are a device's control-host settings.
type Settings struct {
	// Host is control_host without a port.
	Host string
	// SSHAddr is host:port of its SSH server, whose port tells whether the
	// host is up when the REST API does not answer.
	SSHAddr string
	// APIPort is control_host_api_port.
	APIPort int
	// RebootScript is control_host_reboot_script, each command split on
	// white space.
	RebootScript [][]string
	// PowerOffScript and PowerOnScript are the DUT's poweroff_script and
	// poweron_script.
	PowerOffScript, PowerOnScript [][]string
	// ManageDUTPower is control_host_manage_dut_power.
	ManageDUTPower bool
	// SetupProvisioningData is control_host_setup_provisioning_data.
	SetupProvisioningData map[string]any
	// The waits and limits of the hooks (see the package documentation).
	OfflineTimeout, ShutdownWait, OnlineTimeout, ScriptTimeout, CheckInterval, RequestTimeout time.Duration
}

// ParseSettings reads the control-host settings of a device whose
// control_host is controlHost (empty: the device has none, and the
// settings are the zero value) from its configuration raw, with the
// connector's defaults. Each error names its key.
func ParseSettings(controlHost string, raw events.Data, def Defaults) (Settings, error) {
	if controlHost == "" {
		return Settings{}, nil
	}
	s := Settings{ManageDUTPower: def.ManageDUTPower, SetupProvisioningData: def.SetupProvisioningData}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	host, sshPort := controlHost, 22
	if h, p, err := net.SplitHostPort(controlHost); err == nil {
		n, perr := strconv.Atoi(p)
		if perr != nil || n < 1 || n > 65535 {
			add(fmt.Errorf("control_host: %q: bad port", controlHost))
		} else {
			host, sshPort = h, n
		}
	}
	if host == "" || strings.ContainsAny(host, "/ \t\n") {
		add(fmt.Errorf("control_host: %q is not a host name or address", controlHost))
	}
	s.Host = host
	port, err := raw.Int("control_port", 0)
	add(err)
	if port != 0 {
		if port < 1 || port > 65535 {
			add(fmt.Errorf("control_port: %d out of range (1-65535)", port))
		} else {
			sshPort = port
		}
	}
	s.SSHAddr = net.JoinHostPort(host, strconv.Itoa(sshPort))
	s.APIPort, err = raw.Int("control_host_api_port", DefaultAPIPort)
	add(err)
	if s.APIPort < 1 || s.APIPort > 65535 {
		add(fmt.Errorf("control_host_api_port: %d out of range (1-65535)", s.APIPort))
	}

	for _, k := range []struct {
		key string
		dst *[][]string
	}{
		{"control_host_reboot_script", &s.RebootScript},
		{"poweroff_script", &s.PowerOffScript},
		{"poweron_script", &s.PowerOnScript},
	} {
		*k.dst, err = devconf.Commands(raw, k.key)
		add(err)
	}

	s.ManageDUTPower, err = raw.Bool("control_host_manage_dut_power", def.ManageDUTPower)
	add(err)
	if v, ok := raw["control_host_setup_provisioning_data"]; ok && v != nil {
		m, ok := v.(map[string]any)
		if !ok {
			add(fmt.Errorf("control_host_setup_provisioning_data: must be a mapping (sent as a JSON object), got %s", events.TypeName(v)))
		} else {
			s.SetupProvisioningData = m
		}
	}

	add(devconf.Durations(raw, MaxDuration,
		devconf.DurationKey{Key: "control_host_offline_timeout", Default: DefaultOfflineTimeout, Dst: &s.OfflineTimeout, ZeroOK: true},
		devconf.DurationKey{Key: "control_host_shutdown_wait", Default: DefaultShutdownWait, Dst: &s.ShutdownWait, ZeroOK: true},
		devconf.DurationKey{Key: "control_host_online_timeout", Default: DefaultOnlineTimeout, Dst: &s.OnlineTimeout},
		devconf.DurationKey{Key: "control_host_script_timeout", Default: DefaultScriptTimeout, Dst: &s.ScriptTimeout},
		devconf.DurationKey{Key: "control_host_check_interval", Default: DefaultCheckInterval, Dst: &s.CheckInterval},
		devconf.DurationKey{Key: "control_host_request_timeout", Default: DefaultRequestTimeout, Dst: &s.RequestTimeout},
	))
	if len(errs) > 0 {
		return Settings{}, errors.Join(errs...)
	}
	return s, nil
}

// NotBackError reports that the control host did not come back within
// the time allowed after it was shut down or rebooted.
type NotBackError struct {
	// Host is the control host.
	Host string
	// What is what was waited for ("its REST API", "its SSH port").
	What string
	// Timeout is how long it was waited for.
	Timeout time.Duration
	// Err is the last check's error.
	Err error
}

// Error says what did not come back.
func (e *NotBackError) Error() string {
	msg := fmt.Sprintf("control host %s did not come back: %s did not answer within %s", e.Host, e.What, e.Timeout)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the last check's error.
func (e *NotBackError) Unwrap() error { return e.Err }

// Package maas2 is the maas2 driver: machines that a MAAS region
// controller deploys. It follows Testflinger's maas2 connector
// (devices/maas2/maas2.py and maas_storage.py in canonical/testflinger)
// step by step, speaking the MAAS 2.0 REST API directly (package
// maasapi) where Testflinger shells out to a logged-in maas command line:
//
//  1. drivers.Base.PreProvision (the control-host hook, for a device with
//     a control_host), then the job's provision_data is checked, and so is
//     its storage layout against the machine's disks (read from MAAS,
//     nothing changed yet), and ephemeral against the MAAS version.
//  2. With reset_efi, the UEFI boot order of the system running on the
//     machine is fixed over SSH so that the network (IPv4 PXE) boots
//     first (efibootmgr). With clear_tpm, the TPM is asked to clear itself
//     at the next boot (5 written to /sys/class/tpm/tpm0/ppi/request with
//     sudo tee); if that cannot be done on the running system, the machine
//     is first deployed with the default release and it is done there.
//  3. The machine is released and must reach Ready within
//     release_timeout; if it does not, it is marked broken then fixed, and
//     if it is still not Ready, powered off and released again. A machine
//     none of this brings back is a recovery failure (exit 46).
//  4. Its storage is set: provision_data.disks, else the device's
//     default_disks (both in Testflinger's format: disk, partition, format
//     and mount entries), else MAAS's flat layout.
//  5. It is allocated by system id and deployed with distro (default
//     jammy), kernel (hwe_kernel), user_data (sent in base64 as MAAS
//     wants) and, from MAAS 3.5, ephemeral.
//  6. Its status is polled, the wait between polls growing from
//     poll_interval to poll_max, until Deployed, for up to timeout_min
//     minutes. A Failed deployment fails the phase with MAAS's installation
//     output written to the job's output.
//  7. Once Deployed, device_ip must be among the addresses MAAS reports
//     for the machine and the system must answer SSH as ubuntu (the user
//     MAAS creates) within boot_timeout; /etc/os-release is then checked
//     against the release asked for.
//
// Cleanup (with reset_efi, after fixing the boot order) releases the
// machine as step 3 does. The other phases are drivers.Base's.
//
// # Keys
//
// provision_data (Testflinger's): distro, kernel, user_data, disks,
// ephemeral. Any other key is refused, naming it.
//
// Device configuration, Testflinger's keys: node_id (the machine's system
// id; required), device_ip (required), timeout_min (60), reset_efi,
// clear_tpm, default_disks, agent_name, and maas_user (accepted for
// compatibility and not used: Flinger does not use the maas command
// line's profiles). Flinger's keys (durations in seconds or as "90s",
// "1m30s", "500ms"):
//
//	maas_url: http://maas.lab:5240/MAAS    # the region controller (required)
//	maas_credentials: /etc/flinger/maas.key # a file holding the API key (consumer:token:secret),
//	                                       # as `maas apikey --username USER` prints it; mode 0600
//	maas_api_key: consumer:token:secret    # or the key itself (prefer maas_credentials)
//	release_timeout: 300     # wait for Ready after a release
//	fallback_timeout: 120    # wait for Ready after each fallback (mark broken/fixed, power off)
//	poll_interval: 10        # the first wait between two polls of the machine's status
//	poll_max: 60             # the waits grow to this
//	boot_timeout: 600        # once Deployed: wait for device_ip in MAAS's addresses and for SSH
//	ssh_check_interval: 10   # between two SSH attempts
//	maas_request_timeout: 60 # each API request
//	maas_retries: 5          # attempts of a request that fails with 5xx or a connection error
//	maas_retry_interval: 5   # the first wait between two attempts (doubling, up to 12 times it)
//
// The API key is read at each phase, never from the job, and never
// printed, logged or put in an error or event: MAAS's own messages, which
// may quote the key's token, are masked.
//
// # Where Flinger differs from Testflinger
//
//   - The REST API is used directly (OAuth 1.0 PLAINTEXT), every request
//     bounded by maas_request_timeout and retried with backoff on 5xx and
//     connection errors; a refused key is a clear failure naming the
//     server, not a retry loop. Testflinger polls every 60 s (deployments)
//     and 10 s (releases); Flinger's waits start short and back off.
//   - The storage layout is checked before MAAS is touched: a reference
//     to a missing entry, an unknown type or filesystem, a bad size or
//     alloc_pct, a layout without a root (/) mount (unless ephemeral), and
//     partitions that do not fit the machine's disks are refused, naming
//     the entry. Disks are matched to the layout's disk entries in order,
//     each taking the first free disk of the machine (in MAAS's order) big
//     enough for its partitions, as in Testflinger, but trying the other
//     choices when that leaves a later entry without a disk. Sizes count
//     as MAAS counts them (5 MiB of each disk kept for the partition
//     table, partitions rounded up to 4 MiB), so alloc_pct is taken of the
//     space a disk can hold (a partition with both size and alloc_pct
//     gets the larger of the two) and percentages that add up to 100 fit.
//     Sizes may have a decimal point ("1.5G"; Testflinger drops it).
//     Partitions are created in the order of their number when given.
//     A disk entry's boot: true makes it the boot disk, as does a mount
//     under /boot on it (Testflinger only looks at the mounts). The disk
//     key is accepted and, as in Testflinger, not used to choose the disk;
//     ptable is checked and left to MAAS.
//   - ephemeral on a MAAS older than 3.5 is refused before the machine is
//     touched (Testflinger deploys to disk instead).
//   - Once MAAS reports Deployed, device_ip is checked against the
//     machine's ip_addresses (a failure names the addresses MAAS reports),
//     then SSH; Testflinger only searches the installation log for the
//     address when SSH fails. The release the machine runs is checked
//     against distro.
//   - A provisioning cancelled once the machine is allocated releases it
//     (without waiting for Ready, so that cancelling stays prompt): it is
//     never left allocated to a cancelled job. A provisioning that fails
//     leaves the machine as MAAS has it (Failed deployment, Deployed),
//     releasable, for the job's cleanup to release, as in Testflinger.
//   - The SSH host key recorded for the device is forgotten after each
//     deployment (a new installation has a new key); Testflinger ignores
//     host keys. reset_efi and clear_tpm log in with the recorded key.
//   - reset_efi does not install the efi-tools snap when efibootmgr is
//     missing (it reports it and carries on, as when the machine does not
//     answer); a failure to reorder is reported, not fatal, as in
//     Testflinger. reset_efi runs once per provisioning (Testflinger runs
//     it twice).
//   - A machine that MAAS cannot bring back to Ready is a recovery
//     failure; a deployment that fails or times out, or a deployed machine
//     that does not answer, is a provisioning failure, as in Testflinger
//     (the next provisioning releases and redeploys it). A MAAS that
//     cannot be reached or refuses the key fails the phase (exit 1).
package maas2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
	"github.com/flingerlab/flinger/events"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "maas2"

// DefaultDistro is the release deployed when provision_data gives none
// (Testflinger's default).
const DefaultDistro = "jammy"

// Defaults of the device keys: Testflinger's values where it has one.
const (
	DefaultTimeoutMin       = 60
	DefaultReleaseTimeout   = 300 * time.Second
	DefaultFallbackTimeout  = 120 * time.Second
	DefaultPollInterval     = 10 * time.Second
	DefaultPollMax          = 60 * time.Second
	DefaultBootTimeout      = 600 * time.Second
	DefaultSSHCheckInterval = 10 * time.Second
	DefaultRequestTimeout   = 60 * time.Second
	DefaultRetries          = 5
	DefaultRetryInterval    = 5 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 6 * time.Hour

// MachineUser is the user MAAS creates on the machines it deploys, which
// the driver logs in as (as Testflinger does).
const MachineUser = "ubuntu"

// cancelReleaseTimeout bounds the release sent when a provisioning is
// cancelled after the machine was allocated, so that cancelling stays
// prompt.
const cancelReleaseTimeout = 1500 * time.Millisecond

func init() {
	drivers.Register(Type, New)
}

// Driver is the maas2 driver.
type Driver struct {
	drivers.Base
	cfg  *drivers.DeviceConfig
	opts options
}

var _ drivers.Driver = (*Driver)(nil)

// options are the device keys, read once by New.
type options struct {
	url, credentials, inlineKey string
	nodeID                      string
	deployTimeout               time.Duration
	resetEFI, clearTPM          bool
	defaultDisks                *layout

	releaseTimeout, fallbackTimeout, pollInterval, pollMax  time.Duration
	bootTimeout, sshInterval, requestTimeout, retryInterval time.Duration
	retries                                                 int
}

// New returns the maas2 driver of the device cfg describes. Missing or
// malformed keys are errors naming them.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("maas2: no device configuration")
	}
	var o options
	raw := cfg.Raw
	var err error
	if o.url, err = raw.String("maas_url", ""); err != nil {
		return nil, err
	}
	if o.url == "" {
		return nil, errors.New("maas_url: required (the MAAS URL, such as http://maas:5240/MAAS)")
	}
	if err := maasapi.CheckURL(o.url); err != nil {
		return nil, fmt.Errorf("maas_url: %w", err)
	}
	if o.credentials, err = raw.String("maas_credentials", ""); err != nil {
		return nil, err
	}
	if o.inlineKey, err = raw.String("maas_api_key", ""); err != nil {
		return nil, errors.New("maas_api_key: must be a string (consumer:token:secret)")
	}
	switch {
	case o.credentials == "" && o.inlineKey == "":
		return nil, errors.New("maas_credentials: required (a file holding the MAAS API key), or maas_api_key")
	case o.credentials != "" && o.inlineKey != "":
		return nil, errors.New("maas_credentials and maas_api_key: give one of them")
	case o.inlineKey != "":
		if _, err := maasapi.ParseKey(o.inlineKey); err != nil {
			return nil, fmt.Errorf("maas_api_key: %w", err)
		}
	}
	switch v := raw["node_id"].(type) {
	case string:
		o.nodeID = v
	case nil:
	default:
		if n, ok := events.AsInt(v); ok {
			o.nodeID = strconv.Itoa(n)
		} else {
			return nil, fmt.Errorf("node_id: must be a string (the machine's system id), got %s", events.TypeName(v))
		}
	}
	if o.nodeID == "" {
		return nil, errors.New("node_id: required (the machine's system id in MAAS)")
	}
	if strings.ContainsFunc(o.nodeID, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' }) {
		return nil, fmt.Errorf("node_id: %q is not a system id", o.nodeID)
	}
	if cfg.DeviceIP == "" {
		return nil, errors.New("device_ip: required (the address the deployed machine answers SSH on)")
	}
	minutes, err := raw.Int("timeout_min", DefaultTimeoutMin)
	if err != nil {
		return nil, err
	}
	if minutes <= 0 || time.Duration(minutes)*time.Minute > MaxDuration {
		return nil, fmt.Errorf("timeout_min: %d out of range (1 to %d)", minutes, int(MaxDuration/time.Minute))
	}
	o.deployTimeout = time.Duration(minutes) * time.Minute
	if o.resetEFI, err = raw.Bool("reset_efi", false); err != nil {
		return nil, err
	}
	if o.clearTPM, err = raw.Bool("clear_tpm", false); err != nil {
		return nil, err
	}
	if v, ok := raw["default_disks"]; ok && v != nil {
		if o.defaultDisks, err = parseLayout(v, "default_disks", false); err != nil {
			return nil, err
		}
	}
	if err := devconf.Durations(raw, MaxDuration,
		devconf.DurationKey{Key: "release_timeout", Default: DefaultReleaseTimeout, Dst: &o.releaseTimeout},
		devconf.DurationKey{Key: "fallback_timeout", Default: DefaultFallbackTimeout, Dst: &o.fallbackTimeout},
		devconf.DurationKey{Key: "poll_interval", Default: DefaultPollInterval, Dst: &o.pollInterval},
		devconf.DurationKey{Key: "poll_max", Default: DefaultPollMax, Dst: &o.pollMax},
		devconf.DurationKey{Key: "boot_timeout", Default: DefaultBootTimeout, Dst: &o.bootTimeout},
		devconf.DurationKey{Key: "ssh_check_interval", Default: DefaultSSHCheckInterval, Dst: &o.sshInterval},
		devconf.DurationKey{Key: "maas_request_timeout", Default: DefaultRequestTimeout, Dst: &o.requestTimeout},
		devconf.DurationKey{Key: "maas_retry_interval", Default: DefaultRetryInterval, Dst: &o.retryInterval},
	); err != nil {
		return nil, err
	}
	o.pollMax = max(o.pollMax, o.pollInterval)
	if o.retries, err = raw.Int("maas_retries", DefaultRetries); err != nil {
		return nil, err
	}
	if o.retries < 1 || o.retries > 100 {
		return nil, fmt.Errorf("maas_retries: %d out of range (1 to 100)", o.retries)
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// device returns the run's device configuration.
func (d *Driver) device(run *drivers.Run) *drivers.DeviceConfig {
	if run.Device != nil {
		return run.Device
	}
	return d.cfg
}

// session is one phase's conversation with MAAS about the machine.
type session struct {
	d    *Driver
	run  *drivers.Run
	dev  *drivers.DeviceConfig
	api  *maasapi.Client
	w    io.Writer
	log  *slog.Logger
	node string
}

// printf writes a line of the job's output, with the key masked.
func (s *session) printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if s.api != nil {
		msg = s.api.Mask(msg)
	}
	fmt.Fprintln(s.w, msg)
}

// Provision deploys the machine as the package documentation says.
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("maas2 provision: %w", err)
	}
	if err := d.PreProvision(ctx, run); err != nil {
		return err
	}
	var pd events.Data
	if run.Job != nil {
		pd = run.Job.ProvisionData
	}
	req, err := parseProvisionData(pd)
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	s, err := d.newSession(run)
	if err != nil {
		return err
	}
	return s.provision(ctx, req)
}

// Cleanup releases the machine (after fixing its boot order, with
// reset_efi), as Testflinger's cleanup does. A machine that cannot be
// brought back to Ready is a *drivers.RecoveryError.
func (d *Driver) Cleanup(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("maas2 cleanup: %w", err)
	}
	s, err := d.newSession(run)
	if err != nil {
		return err
	}
	if d.opts.resetEFI {
		s.resetEFI(ctx)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("maas2 cleanup: %w", err)
		}
	}
	if err := s.release(ctx); err != nil {
		return s.wrap("cleanup", ctx, err)
	}
	return nil
}

// wrap returns the error a phase ends with: ctx's when it is done,
// errors already typed as they are, others as plain failures naming the
// phase.
func (s *session) wrap(phase string, ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("maas2 %s: %w", phase, ctx.Err())
	}
	var pe *drivers.ProvisioningError
	if drivers.IsRecovery(err) || errors.As(err, &pe) {
		return err
	}
	return fmt.Errorf("maas2 %s: %w", phase, s.keyNote(err))
}

// comment is the comment the driver leaves in the machine's event log.
func (s *session) comment(what string) string {
	job := ""
	if s.run.Job != nil && s.run.Job.JobID != "" {
		job = " for job " + s.run.Job.JobID
	}
	c := "Flinger " + what + job + " on " + s.dev.Name
	c = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, c)
	if len(c) > 200 {
		c = c[:200]
	}
	return c
}

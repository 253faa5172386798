// Package muxpi is the muxpi driver: a device that boots from an SD card
// (or a USB stick) which a control host can take over through a mux (a
// MuxPi, or a Zapper's SDWire and Type-C mux), write an image to, and hand
// back. It does what Testflinger's muxpi connector does
// (device-connectors/src/testflinger_device_connectors/devices/muxpi/muxpi.py
// in canonical/testflinger), over SSH to control_user@control_host:
//
//  0. Testflinger's pre-provision hook runs first, as for every connector
//     (drivers.Base.PreProvision, package drivers/controlhost): the
//     control host is power-cycled through its REST API, the device
//     powered off meanwhile (poweroff_script, poweron_script) as
//     Testflinger's muxpi asks, and the control host is readied for
//     provisioning.
//  1. Unless control_switch_local_cmd drives a mux CLI (its words hold
//     sdwire or typecmux): run control_host_reboot_script here (each command
//     split on white space, 60 s each), hard-reset the device
//     (reboot_script) and wait up to control_host_reboot_timeout for the
//     control host to come back. With no control_host_reboot_script,
//     neither is rebooted.
//  2. The image is provision_data.url, or the attachment
//     attachments/provision/<use_attachment> of the job.
//  3. The storage is switched to the control host: control_switch_local_cmd
//     (default "stm -ts"), then test_device is written; or, with
//     provision_data.media sd or usb, "CLI sdwire plug_to_self" and
//     "CLI typecmux plug_to_self", CLI being the words of
//     control_switch_local_cmd before sdwire or typecmux (as Testflinger
//     reads it), and the block node the chosen one prints is written.
//  4. Partitions of that device still mounted are unmounted, the image is
//     written with dd (sudo, bs=16M), then sync and hdparm -z.
//  5. Unless provision_data.create_user is false: the partitions are
//     mounted under /mnt/<agent_name>/<label>, the image type is detected
//     from the files there as Testflinger does (ce-oem-iot, tegra,
//     pi-desktop, ubuntu, core, core20, ubuntu-cpc) and the cloud-init
//     seed that creates the user ubuntu (password ubuntu, passwordless
//     sudo), and the sudoers file where Testflinger writes one, are
//     installed for that type.
//  6. post_provision_script runs on the control host, each line a command.
//  7. The storage is switched back (control_switch_device_cmd, default
//     "stm -dut"; with media, "CLI sdwire|typecmux set DUT"), the device is
//     hard-reset, and the phase waits up to boot_timeout for it:
//     provision_data.boot_check_url (with $DEVICE_IP replaced by device_ip)
//     must answer HTTP 200, or else test_username@device_ip must accept an
//     SSH login and run /bin/true.
//
// Every control-host command is retried every control_retry_interval for
// control_retry_timeout when the connection fails; switching commands and
// sync are also retried when they fail, as Testflinger retries every
// command.
//
// # Keys read
//
// Device configuration (Testflinger's names): control_host, control_user
// (default ubuntu), test_device, control_switch_local_cmd,
// control_switch_device_cmd, control_host_reboot_script,
// control_host_reboot_timeout (seconds, default 120), reboot_script,
// post_provision_script, device_ip, ssh_port, agent_name, and those of
// the pre-provision hook (poweroff_script, poweron_script, and package
// drivers/controlhost's control_host_* keys). Flinger's own
// (durations in seconds or as "90s", "500ms"): control_port,
// control_password, reboot_script_timeout (120 s), boot_timeout (1200 s),
// boot_check_interval (10 s), control_retry_timeout (60 s),
// control_retry_interval (5 s), control_command_timeout (60 s),
// flash_timeout (50 m), partition_wait (10 s), decompress (auto, local,
// remote: where the image is decompressed, see package flash).
//
// provision_data (Testflinger's names): url, use_attachment, media (sd or
// usb), create_user (default true), boot_check_url; Flinger adds sha256,
// the expected sha256 of the image as served.
//
// # Where Flinger differs
//
// Better than Testflinger: the image is streamed from the server (or the
// lab host's shared image cache, so that devices provisioned with one
// image download it once, resuming a dropped download) through the
// decompressor into dd, where Testflinger downloads the whole image to a
// local file first; provision_data.sha256 is checked; progress is
// reported as it goes; the phase can be cancelled at any point, and then
// hands the storage back to the device; outcomes are typed. Bad job data
// (a missing url, an attachment that does not exist or escapes
// attachments/provision, a media that is not sd or usb) is refused before
// any hardware is touched. After a control-host reboot the host counts as
// back once its boot_id changed, instead of after a fixed sleep.
//
// Also different: a failing reboot_script or control_host_reboot_script,
// a control host that cannot be reached or whose mux cannot be switched
// are recovery failures (exit 46; Testflinger raises ProvisioningError
// for control_host_reboot_script); an image that could not be fetched,
// was corrupt or could not be written, a device that does not boot the
// image written (as in Testflinger: the image is the likely culprit, and
// the next provisioning rewrites the card through the control host) and
// a device that boots but refuses the login are provisioning failures, so
// the device stays in service. Commands from the device configuration (switch commands,
// post_provision_script) are split on white space and run without a shell
// on the control host, never through one as Testflinger's ssh does. Files
// are written with sudo tee, their content on standard input. Only the
// SD or USB mux chosen by media is probed with retries; the other one is
// tried once. The mux is not re-switched to the control host when its
// plug_to_self fails: that is a recovery failure. An image type that is
// not recognised gets the files of an Ubuntu classic image, as in
// Testflinger.
package muxpi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/localcmd"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "muxpi"

// Defaults of the device keys, Testflinger's values where it has them.
const (
	DefaultControlSwitchLocalCmd    = "stm -ts"
	DefaultControlSwitchDeviceCmd   = "stm -dut"
	DefaultControlHostRebootTimeout = 120 * time.Second
	DefaultRebootScriptTimeout      = 120 * time.Second
	DefaultBootTimeout              = 1200 * time.Second
	DefaultBootCheckInterval        = 10 * time.Second
	DefaultControlRetryTimeout      = 60 * time.Second
	DefaultControlRetryInterval     = 5 * time.Second
	DefaultControlCommandTimeout    = 60 * time.Second
	DefaultFlashTimeout             = 50 * time.Minute
	DefaultPartitionWait            = 10 * time.Second
)

// MaxDuration bounds every duration key.
const MaxDuration = 4 * time.Hour

// Fixed limits.
const (
	// controlHostScriptTimeout bounds each control_host_reboot_script
	// command, as in Testflinger.
	controlHostScriptTimeout = 60 * time.Second
	// hdparmTimeout bounds hdparm -z, as in Testflinger.
	hdparmTimeout = 40 * time.Second
	// probeTimeout bounds a look at the control host's boot_id.
	probeTimeout = 10 * time.Second
	// checkTimeout bounds one boot check (an SSH login or an HTTP request).
	checkTimeout = 30 * time.Second
	// httpCheckTimeout bounds one boot_check_url request, as in Testflinger.
	httpCheckTimeout = 5 * time.Second
	// cancelCleanup bounds handing the storage back after a cancellation,
	// so that the phase still returns promptly.
	cancelCleanup = 1500 * time.Millisecond
	// failCleanup bounds handing the storage back after a failure.
	failCleanup = 60 * time.Second
	// progressEvery is how often the write's progress is printed.
	progressEvery = 10 * time.Second
)

func init() {
	drivers.Register(Type, New)
}

// Driver is the muxpi driver. Phases other than Provision are
// drivers.Base's.
type Driver struct {
	drivers.Base
	cfg  *drivers.DeviceConfig
	opts options
}

var _ drivers.Driver = (*Driver)(nil)

// options are the device keys, checked.
type options struct {
	testDevice           string
	localCmd, deviceCmd  []string
	muxCLI               []string // the words before sdwire/typecmux; nil: no mux CLI
	controlReboot        localcmd.Script
	reboot               localcmd.Script
	postProvision        [][]string
	controlRebootTimeout time.Duration
	bootTimeout          time.Duration
	bootCheckInterval    time.Duration
	controlRetry         time.Duration
	controlRetryInterval time.Duration
	controlTimeout       time.Duration
	flashTimeout         time.Duration
	partitionWait        time.Duration
	decompress           flash.Mode
}

// New returns the muxpi driver of the device cfg describes. Bad duration
// keys, empty commands and commands that are not strings are errors naming
// the key.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("muxpi: no device configuration")
	}
	o, err := parseOptions(cfg)
	if err != nil {
		return nil, fmt.Errorf("muxpi: device %s: %w", cfg.Name, err)
	}
	// As Testflinger's muxpi, the device is kept powered off while the
	// pre-provision hook power-cycles its control host.
	return &Driver{Base: drivers.Base{Hooks: drivers.HookOptions{ManageDUTPower: true}}, cfg: cfg, opts: o}, nil
}

func parseOptions(cfg *drivers.DeviceConfig) (options, error) {
	d := cfg.Raw
	var o options
	var err error
	if o.testDevice, err = d.String("test_device", ""); err != nil {
		return o, err
	}
	local, err := d.String("control_switch_local_cmd", DefaultControlSwitchLocalCmd)
	if err != nil {
		return o, err
	}
	if o.localCmd = strings.Fields(local); len(o.localCmd) == 0 {
		return o, errors.New("control_switch_local_cmd: empty command")
	}
	device, err := d.String("control_switch_device_cmd", DefaultControlSwitchDeviceCmd)
	if err != nil {
		return o, err
	}
	if o.deviceCmd = strings.Fields(device); len(o.deviceCmd) == 0 {
		return o, errors.New("control_switch_device_cmd: empty command")
	}
	for i, w := range o.localCmd {
		if w == "sdwire" || w == "typecmux" {
			o.muxCLI = o.localCmd[:i]
			break
		}
	}
	var rebootScriptTimeout time.Duration
	if err := devconf.Durations(d, MaxDuration,
		devconf.DurationKey{Key: "control_host_reboot_timeout", Default: DefaultControlHostRebootTimeout, Dst: &o.controlRebootTimeout},
		devconf.DurationKey{Key: "reboot_script_timeout", Default: DefaultRebootScriptTimeout, Dst: &rebootScriptTimeout},
		devconf.DurationKey{Key: "boot_timeout", Default: DefaultBootTimeout, Dst: &o.bootTimeout},
		devconf.DurationKey{Key: "boot_check_interval", Default: DefaultBootCheckInterval, Dst: &o.bootCheckInterval},
		devconf.DurationKey{Key: "control_retry_timeout", Default: DefaultControlRetryTimeout, Dst: &o.controlRetry},
		devconf.DurationKey{Key: "control_retry_interval", Default: DefaultControlRetryInterval, Dst: &o.controlRetryInterval},
		devconf.DurationKey{Key: "control_command_timeout", Default: DefaultControlCommandTimeout, Dst: &o.controlTimeout},
		devconf.DurationKey{Key: "flash_timeout", Default: DefaultFlashTimeout, Dst: &o.flashTimeout},
		devconf.DurationKey{Key: "partition_wait", Default: DefaultPartitionWait, Dst: &o.partitionWait},
	); err != nil {
		return o, err
	}
	if o.reboot, err = localcmd.New("reboot_script", cfg.RebootScript, rebootScriptTimeout); err != nil {
		return o, err
	}
	controlReboot, err := devconf.Commands(d, "control_host_reboot_script")
	if err != nil {
		return o, err
	}
	o.controlReboot = localcmd.Script{Key: "control_host_reboot_script", Cmds: controlReboot, Timeout: controlHostScriptTimeout}
	if o.postProvision, err = devconf.Commands(d, "post_provision_script"); err != nil {
		return o, err
	}
	mode, err := d.String("decompress", "")
	if err != nil {
		return o, err
	}
	if o.decompress, err = flash.ParseMode(mode); err != nil {
		return o, err
	}
	return o, nil
}

// Provision writes the job's image to the device's storage and boots it
// (see the package documentation). A device that cannot be brought back
// gives a *drivers.RecoveryError; a bad image, job or write a
// *drivers.ProvisioningError; cancellation an error wrapping ctx.Err(),
// after the storage was handed back to the device.
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("muxpi provision: %w", err)
	}
	dev := run.Device
	opts := d.opts
	if dev == nil {
		dev = d.cfg
	} else if dev != d.cfg {
		o, err := parseOptions(dev)
		if err != nil {
			return drivers.Recovery("device %s: %w", dev.Name, err)
		}
		opts = o
	}
	p := &provisioning{
		opts: opts,
		run:  run,
		dev:  dev,
		out:  run.Output(),
		log:  run.Logger().With("device", dev.Name, "type", Type),
		pre:  d.PreProvision,
	}
	err := p.provision(ctx)
	if err != nil && ctx.Err() != nil {
		// Whatever the step that was cut short said, the phase was cancelled.
		return fmt.Errorf("muxpi provision: cancelled: %w", ctx.Err())
	}
	return err
}

// provisioning is one run of Provision.
type provisioning struct {
	opts options
	run  *drivers.Run
	dev  *drivers.DeviceConfig
	out  io.Writer
	log  *slog.Logger
	pd   provisionData
	ctl  *remote.Host
	// pre is the pre-provision hook every connector runs first.
	pre func(ctx context.Context, run *drivers.Run) error

	// target is the block device written.
	target string
	// back switches the storage back to the device; nil when it is not
	// switched to the control host.
	back []string
	// mounts are the mount points in use on the control host.
	mounts []string
}

func (p *provisioning) printf(format string, args ...any) {
	fmt.Fprintf(p.out, format+"\n", args...)
}

// provision runs the steps; the storage is handed back to the device
// whatever happens once it was taken.
func (p *provisioning) provision(ctx context.Context) (err error) {
	if p.pd, err = parseProvisionData(p.run); err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	if err := p.checkDevice(); err != nil {
		return err
	}
	p.printf("Provisioning %s with %s", display.Printable(p.dev.Name), display.Printable(p.pd.src.String()))
	if err := p.pre(ctx, p.run); err != nil {
		return err
	}
	cfg, hostKeyName, err := p.dev.SSHSettings().ControlHostConfig(p.dev, p.log)
	if err != nil {
		return drivers.Recovery("%w", err)
	}
	cfg.DialTimeout = min(checkTimeout, p.opts.controlTimeout)
	// As Testflinger: every command is tried every control_retry_interval
	// for control_retry_timeout (13 times, every 5 s for 60 s).
	interval := p.opts.controlRetryInterval
	p.ctl = &remote.Host{
		Config: cfg, Name: hostKeyName, What: "the control host", Log: p.log,
		Timeout:       p.opts.controlTimeout,
		Backoff:       sshx.Backoff{Initial: interval, Max: interval, Multiplier: 1, Jitter: -1, Attempts: 1 + int(p.opts.controlRetry/interval)},
		RetryTimeouts: true,
	}
	defer p.ctl.Close()
	defer func() { p.cleanup(ctx, err) }()

	if p.opts.muxCLI == nil {
		if err := p.rebootControlHost(ctx); err != nil {
			return err
		}
	}
	if _, err := p.ctl.Connect(ctx); err != nil {
		return p.controlFailure("connecting to the control host", err)
	}
	if err := p.takeStorage(ctx); err != nil {
		return err
	}
	if err := p.write(ctx); err != nil {
		return err
	}
	if p.pd.createUser {
		if err := p.createUser(ctx); err != nil {
			return err
		}
	} else {
		p.printf("Not creating the test user (provision_data.create_user is false)")
	}
	p.postProvision(ctx)
	if err := p.giveStorageBack(ctx); err != nil {
		return err
	}
	p.printf("Booting the test image")
	if p.opts.reboot.Empty() {
		p.printf("Warning: reboot_script is not set: the device is not reset and must boot the new image by itself")
	}
	if err := p.script(ctx, p.opts.reboot); err != nil {
		return err
	}
	return p.waitForBoot(ctx)
}

// checkDevice checks the device keys this job needs.
func (p *provisioning) checkDevice() error {
	if p.pd.media == "" && p.opts.testDevice == "" {
		return drivers.Recovery("device %s: test_device is not configured (the block device the control host writes)", display.Printable(p.dev.Name))
	}
	if p.pd.media != "" && p.opts.muxCLI == nil {
		return &drivers.ProvisioningError{Err: fmt.Errorf("provision_data.media %s needs a device whose control_switch_local_cmd drives a mux CLI (CLI sdwire|typecmux ...); device %s has %q",
			p.pd.media, display.Printable(p.dev.Name), strings.Join(p.opts.localCmd, " "))}
	}
	if p.dev.DeviceIP == "" {
		return drivers.Recovery("device %s: device_ip is not configured (needed to check that the device booted)", display.Printable(p.dev.Name))
	}
	return nil
}

// controlFailure turns a control-host failure while doing what into the
// phase's error: a host that cannot be reached is a recovery failure.
func (p *provisioning) controlFailure(what string, err error) error {
	var ue *remote.UnreachableError
	if errors.As(err, &ue) {
		return drivers.Recovery("%s: the control host %s could not be reached: %w", what, p.ctl.Config.Addr, ue.Err)
	}
	return &drivers.ProvisioningError{Err: fmt.Errorf("%s: %w", what, err)}
}

// takeStorage switches the storage to the control host and sets p.target.
func (p *provisioning) takeStorage(ctx context.Context) error {
	if p.pd.media == "" {
		p.printf("Switching the storage to the control host: %s", display.Printable(strings.Join(p.opts.localCmd, " ")))
		p.back = p.opts.deviceCmd
		if _, err := p.ctl.Run(ctx, p.opts.localCmd, remote.RunOptions{RetryExit: true}); err != nil {
			return p.switchFailure("control_switch_local_cmd", err)
		}
		p.target = p.opts.testDevice
		return nil
	}
	// As Testflinger: both muxes go to the control host, whichever the
	// device booted from before; the node of the chosen one is written.
	var node string
	for _, mux := range []string{"sdwire", "typecmux"} {
		chosen := mux == muxOf(p.pd.media)
		argv := append(append([]string(nil), p.opts.muxCLI...), mux, "plug_to_self")
		if chosen {
			p.printf("Switching the %s to the control host: %s", mediaName(p.pd.media), display.Printable(strings.Join(argv, " ")))
			p.back = append(append([]string(nil), p.opts.muxCLI...), mux, "set", "DUT")
		}
		out, err := p.ctl.Run(ctx, argv, remote.RunOptions{RetryExit: chosen})
		switch {
		case err != nil && chosen:
			return p.switchFailure(strings.Join(argv, " "), err)
		case err != nil:
			if ctx.Err() != nil {
				return err
			}
			p.log.Info("muxpi: switching the other mux failed", "command", strings.Join(argv, " "), "err", err)
		case chosen:
			node = firstLine(out)
		}
	}
	if !blockNode.MatchString(node) {
		return drivers.Recovery("the %s mux printed %q, not the block device of the %s", muxOf(p.pd.media), node, mediaName(p.pd.media))
	}
	p.target = node
	return nil
}

// switchFailure is the error of a switch command that failed: the device
// cannot be provisioned until an operator looks at its mux.
func (p *provisioning) switchFailure(what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return drivers.Recovery("switching the storage (%s): %w", display.Printable(what), err)
}

// giveStorageBack switches the storage back to the device.
func (p *provisioning) giveStorageBack(ctx context.Context) error {
	if p.back == nil {
		return nil
	}
	p.printf("Switching the storage back to the device: %s", display.Printable(strings.Join(p.back, " ")))
	if _, err := p.ctl.Run(ctx, p.back, remote.RunOptions{RetryExit: true}); err != nil {
		return p.switchFailure(strings.Join(p.back, " "), err)
	}
	p.back = nil
	return nil
}

// cleanup unmounts what is still mounted and hands the storage back to
// the device when the phase ends early (failed or cancelled), within a
// short bound after a cancellation so that the phase returns promptly.
func (p *provisioning) cleanup(ctx context.Context, err error) {
	if p.back == nil && len(p.mounts) == 0 {
		return
	}
	limit := failCleanup
	if ctx.Err() != nil {
		limit = cancelCleanup
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), limit)
	defer cancel()
	p.unmountAll(cctx)
	if p.back == nil {
		return
	}
	p.printf("Handing the storage back to the device after: %v", err)
	if _, berr := p.ctl.Run(cctx, p.back, remote.RunOptions{RetryExit: ctx.Err() == nil}); berr != nil {
		p.printf("Warning: could not switch the storage back to the device: %v", berr)
		p.log.Warn("muxpi: storage not handed back", "err", berr)
		return
	}
	p.back = nil
}

// postProvision runs post_provision_script on the control host; a command
// that fails is reported and the next one runs, as in Testflinger.
func (p *provisioning) postProvision(ctx context.Context) {
	for i, argv := range p.opts.postProvision {
		p.printf("Running post_provision_script[%d] on the control host: %s", i, display.Printable(strings.Join(argv, " ")))
		if _, err := p.ctl.Run(ctx, argv, remote.RunOptions{}); err != nil {
			if ctx.Err() != nil {
				return
			}
			p.printf("Warning: post_provision_script[%d] failed: %v", i, err)
		}
	}
}

// muxOf returns the mux that switches media.
func muxOf(media string) string {
	if media == "usb" {
		return "typecmux"
	}
	return "sdwire"
}

// mediaName names media for messages.
func mediaName(media string) string {
	if media == "usb" {
		return "USB storage"
	}
	return "SD card"
}

// firstLine returns the first non-empty line of s, trimmed.
func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

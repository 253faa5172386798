// Package oemscript is the oemscript driver and its dell_oemscript,
// hp_oemscript and lenovo_oemscript variants: an OEM laptop that installs
// the ISO of provision_data.url by a factory reset from its recovery
// partition. Testflinger's connectors (devices/oemscript/ in
// canonical/testflinger) run the bundled recovery-from-iso.sh, which makes
// the device download the ISO and then drives it over ssh; Flinger does
// the script's work itself, step by step over one SSH connection, and
// streams the ISO from the lab host:
//
//  0. Run the control-host hook every connector runs first
//     (drivers.Base.PreProvision; nothing for a device without
//     control_host).
//  1. Log in to the device as the job's test_username (package oemdut:
//     when it does not answer, reboot_script resets it), then reboot it
//     with sudo reboot and wait for it, as Testflinger does first.
//  2. Free journal space (journalctl --rotate --vacuum-size=100M), find the
//     recovery partition (the EFI system partition's name with a 2 at the
//     end, as the script finds it; or recovery_partition) and unmount
//     /cdrom and /mnt.
//  3. Stream the ISO from the lab host (its image cache, when it has one)
//     through the SSH connection into iso_path on the device with dd,
//     reporting progress; then check that it fits the recovery partition
//     and loop-mount it on /mnt. Until here the recovery partition is
//     untouched, so a bad URL, a 404, a corrupt, truncated or
//     mismatching ISO, or a file that is not an ISO, fails the phase with
//     the device as it was.
//  4. Mount the recovery partition on /cdrom and copy the ISO into it
//     (rsync -a --delete --exclude=efi, then .disk/ubuntu_dist_channel),
//     then copy the files of preseed_dir, when configured, into it.
//  5. Per vendor (the table vendors): with dell-recovery (Dell, and the
//     generic oemscript), start the recovery with dell-restore-system -y;
//     with ubuntu-recovery (HP and Lenovo, the script's --ubr, also chosen
//     when the ISO's name holds "stella" or "sutton", as the script does),
//     first write what ubuntu-recovery needs (preseed/ubuntu-recovery.cfg;
//     project.cfg set to reboot, not power off, at the end of the install;
//     the scripts that make the ISO's packages an apt source during the
//     install; label the partition PQSERVICE; a GRUB entry "ubuntu-recovery
//     restore" searching the partition by its UUID), then make that entry
//     GRUB's default and reboot.
//  6. Wait for the device to go down, forget its host key (a reinstalled
//     system has new ones), wait up to recovery_timeout for the
//     reinstalled system to accept a login as recovery_username with
//     recovery_password (the OEM automation's ubuntu/u), install the lab
//     host's public key (ssh.key_file's .pub) in it, wait for ubiquity's
//     OEM configuration to end (systemctl is-active ubiquity says
//     inactive), purge ubiquity, and check that the job's test_username
//     logs in; then check that the device rebooted (its kernel's boot_id
//     changed) and that the system installed is the ISO's (its os-release
//     VERSION_ID appears in the ISO's .disk/info).
//
// Every command is an argument vector quoted for the device's shell; file
// contents go on standard input; nothing from the job is ever part of a
// command line other than as a quoted argument.
//
// provision_data keys: url (required; http or https), sha256 (optional,
// Flinger's: the sha256 of the ISO as served, checked as it streams).
//
// Device configuration keys (durations in seconds, or as "90s", "500ms"),
// beyond those of package oemdut (reboot_script, reboot_script_timeout,
// boot_timeout, boot_check_interval, shutdown_timeout):
//
//	recovery_timeout: 5400       # wait for the reinstalled system (Testflinger's 5400 s)
//	recovery_poll_interval: 90   # between checks meanwhile (Testflinger's 90 s)
//	iso_timeout: 3600            # streaming the ISO to the device
//	command_timeout: 600         # each other step on the device (mount, rsync, update-grub)
//	iso_path: /var/tmp/flinger-recovery.iso  # where the ISO is put on the device
//	recovery_partition: ""       # the recovery partition (default: found from the EFI partition)
//	recovery_username: ubuntu    # the user of a reinstalled system (the script's)
//	recovery_password: u         # its password (the script's)
//	preseed_dir: ""              # a directory on the lab host copied into the recovery partition
//
// Where Flinger differs from Testflinger, and why: the ISO is streamed
// from the lab host (cached there for every device) instead of being
// downloaded by each device, so the device needs no route to the image
// server and an image error is reported as such before the recovery
// partition is touched; file URLs are refused (a job must not read the lab
// host's files); the script's fixes cloned from git.launchpad.net at every
// run (skip-oobe, misc-for-automation, no-secureboot,
// skip-storage-selecting) are taken from preseed_dir, kept on the lab
// host, so that provisioning does not depend on Launchpad; a device that
// does not come back from its recovery within recovery_timeout is a
// recovery failure (exit 46; Testflinger raises a ProvisioningError), so
// that it is taken out of service; host keys are checked (Testflinger
// disables the check): the key is forgotten only once the device went
// down into its recovery, and a key that changes at any other time is
// refused (with keys pinned in ssh.host_keys, the reinstalled system's
// keys must be pinned there); and the system that comes back is checked
// to be the ISO's.
package oemscript

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/oemrecovery/oemdut"
	"github.com/flingerlab/flinger/events"
)

// The connector types of this package, as in Testflinger.
const (
	Type       = "oemscript"
	TypeDell   = "dell_oemscript"
	TypeHP     = "hp_oemscript"
	TypeLenovo = "lenovo_oemscript"
)

// Vendor is what one connector type does its own way.
type Vendor struct {
	// Name names the laptops' maker, for messages.
	Name string
	// UbuntuRecovery: the laptops restore with ubuntu-recovery (the
	// script's --ubr): the recovery partition gets ubuntu-recovery's
	// preseed and the PQSERVICE label, and the recovery is started by
	// making GRUB boot its "ubuntu-recovery restore" entry. Otherwise they
	// restore with dell-recovery, started by dell-restore-system -y.
	UbuntuRecovery bool
}

// vendors is the per-vendor table: Testflinger's HP and Lenovo
// connectors pass --ubr to recovery-from-iso.sh; Dell's and the generic
// one pass nothing.
var vendors = map[string]Vendor{
	Type:       {Name: "OEM", UbuntuRecovery: false},
	TypeDell:   {Name: "Dell", UbuntuRecovery: false},
	TypeHP:     {Name: "HP", UbuntuRecovery: true},
	TypeLenovo: {Name: "Lenovo", UbuntuRecovery: true},
}

// VendorOf returns the vendor of connector type typ.
func VendorOf(typ string) (Vendor, bool) {
	v, ok := vendors[typ]
	return v, ok
}

// ubrNames are the words in an ISO's file name that make
// recovery-from-iso.sh use ubuntu-recovery whatever the connector.
var ubrNames = []string{"stella", "sutton"}

// Defaults of the device keys.
const (
	DefaultRecoveryTimeout      = 5400 * time.Second
	DefaultRecoveryPollInterval = 90 * time.Second
	DefaultISOTimeout           = time.Hour
	DefaultCommandTimeout       = 600 * time.Second
	DefaultISOPath              = "/var/tmp/flinger-recovery.iso"
	DefaultRecoveryUsername     = "ubuntu"
	DefaultRecoveryPassword     = "u"
)

func init() {
	for typ := range vendors {
		drivers.Register(typ, New)
	}
}

// Driver is the oemscript driver of one device and vendor.
type Driver struct {
	drivers.Base
	cfg    *drivers.DeviceConfig
	vendor Vendor
	dut    oemdut.Settings
	opts   options
}

var _ drivers.Driver = (*Driver)(nil)

// options are the device keys of this package.
type options struct {
	recoveryTimeout, pollInterval, isoTimeout, commandTimeout time.Duration
	isoPath, partition, recoveryUser, recoveryPassword        string
	preseedDir                                                string
}

// New returns the driver of the device cfg describes, for the vendor of
// cfg.Type. Bad keys are errors naming them.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("oemscript: no device configuration")
	}
	v, ok := vendors[cfg.Type]
	if !ok {
		return nil, fmt.Errorf("oemscript: unknown connector type %q", cfg.Type)
	}
	d := &Driver{cfg: cfg, vendor: v}
	var err error
	if d.dut, err = oemdut.ParseSettings(cfg); err != nil {
		return nil, err
	}
	o := &d.opts
	if err := devconf.Durations(cfg.Raw, oemdut.MaxDuration,
		devconf.DurationKey{Key: "recovery_timeout", Default: DefaultRecoveryTimeout, Dst: &o.recoveryTimeout},
		devconf.DurationKey{Key: "recovery_poll_interval", Default: DefaultRecoveryPollInterval, Dst: &o.pollInterval},
		devconf.DurationKey{Key: "iso_timeout", Default: DefaultISOTimeout, Dst: &o.isoTimeout},
		devconf.DurationKey{Key: "command_timeout", Default: DefaultCommandTimeout, Dst: &o.commandTimeout},
	); err != nil {
		return nil, err
	}
	for _, k := range []struct {
		key, def string
		dst      *string
	}{
		{"iso_path", DefaultISOPath, &o.isoPath},
		{"recovery_partition", "", &o.partition},
		{"recovery_username", DefaultRecoveryUsername, &o.recoveryUser},
		{"recovery_password", DefaultRecoveryPassword, &o.recoveryPassword},
		{"preseed_dir", "", &o.preseedDir},
	} {
		if *k.dst, err = cfg.Raw.String(k.key, k.def); err != nil {
			return nil, err
		}
	}
	if !path.IsAbs(o.isoPath) || strings.ContainsAny(o.isoPath, "\x00\n") || strings.HasSuffix(o.isoPath, "/") {
		return nil, fmt.Errorf("iso_path: %q must be an absolute file path", o.isoPath)
	}
	if o.partition != "" && !devicePath.MatchString(o.partition) {
		return nil, fmt.Errorf("recovery_partition: %q is not a device such as /dev/nvme0n1p2", o.partition)
	}
	if o.recoveryUser == "" {
		return nil, errors.New("recovery_username: must not be empty")
	}
	if o.preseedDir != "" {
		if st, err := os.Stat(o.preseedDir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("preseed_dir: %q is not a directory", o.preseedDir)
		}
	}
	return d, nil
}

// Vendor returns the driver's vendor.
func (d *Driver) Vendor() Vendor { return d.vendor }

// Provision installs the ISO of provision_data.url through the device's
// recovery partition (see the package documentation).
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s provision: %w", d.cfg.Type, err)
	}
	dev := run.Device
	if dev == nil {
		dev = d.cfg
	}
	src, err := Source(run.Job)
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	t, err := oemdut.NewTarget(run, dev, d.dut)
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	if err := d.PreProvision(ctx, run); err != nil {
		return err
	}
	p := &provisioning{d: d, t: t, job: run, dev: dev, src: src, ubr: d.vendor.UbuntuRecovery || ubrImage(src.URL)}
	return p.provision(ctx)
}

// Source returns the ISO a job asks for: provision_data.url (http or
// https) and the optional provision_data.sha256.
func Source(job *events.Job) (image.Source, error) {
	return drivers.ImageSource(job, "provision_data.url: required: the URL of the ISO to install")
}

// ubrImage reports whether the ISO's file name makes recovery-from-iso.sh
// use ubuntu-recovery.
func ubrImage(u string) bool {
	pu, err := url.Parse(u)
	if err != nil {
		return false
	}
	base := strings.ToLower(path.Base(pu.Path))
	for _, w := range ubrNames {
		if strings.Contains(base, w) {
			return true
		}
	}
	return false
}

// workerKey returns the lab host's public key as an authorized_keys line:
// the .pub beside the key file, or the key derived from the key file; ""
// when the host has no key file.
func workerKey(keyFile string) (string, error) {
	if keyFile == "" {
		return "", nil
	}
	if b, err := os.ReadFile(keyFile + ".pub"); err == nil {
		k, comment, _, _, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			return "", fmt.Errorf("reading %s.pub: %w", keyFile, err)
		}
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
		if comment != "" {
			line += " " + comment
		}
		return line, nil
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return "", fmt.Errorf("reading the ssh key file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return "", fmt.Errorf("reading the ssh key file %s: %w", keyFile, err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " flinger", nil
}

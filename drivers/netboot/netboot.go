// Package netboot is the netboot driver: a device that boots either a
// "master" image, the Snappy Test Device Imager, which writes test images
// to the device's disk on request over HTTP, or the test image on that
// disk. It follows Testflinger's netboot connector
// (devices/netboot/netboot.py and devices/netboot/__init__.py in
// canonical/testflinger) step by step and keeps the imager's HTTP API
// exactly, so that a lab's existing master image keeps working:
//
//  1. If GET http://<device_ip>:<imager_port>/check does not answer a page
//     containing "Snappy Test Device Imager", run select_master_script and
//     reset the device with reboot_script, then poll /check every
//     boot_check_interval for up to master_boot_timeout. A device whose
//     master image does not come up is a recovery failure.
//  2. Serve the image on a one-shot TCP listener and trigger GET
//     /writeimage?server=<ip>:<port>&dev=<test_device>; the imager fetches
//     the image (xz), decompresses it and writes it to test_device, then
//     answers. Its answer (status and body) is checked.
//  3. Run post_flash_cmds, then select_test_script and GET /reboot, and
//     wait for the test image to accept an SSH login for up to
//     boot_timeout. A test image that does not come up is a provisioning
//     failure.
//
// Provision first runs drivers.Base.PreProvision (Testflinger's
// pre_provision_hook, for a device with a control_host), once the job's
// url has been checked. The other phases are drivers.Base's.
//
// # Keys
//
// provision_data: url (required, http or https), as in Testflinger;
// sha256 (Flinger: the sha256 of the file served, checked when it has
// been read). The URL is checked before the device is touched.
//
// Device configuration, Testflinger's keys: device_ip, test_device (the
// disk the imager writes, such as /dev/mmcblk0; required),
// select_master_script, select_test_script, post_flash_cmds and
// reboot_script (each a command or a list of commands, run on this
// machine). The test image is logged in to as test_data.test_username and
// test_password, defaulting to admin/admin as in Testflinger. Flinger's
// keys (durations in seconds or as "90s", "1m30s", "500ms"):
//
//	imager_port: 8989               # the imager's HTTP port
//	serve_address: ""               # the address the imager fetches the image from
//	                                # (default: this host's address on the route to device_ip)
//	master_boot_timeout: 600        # wait for the imager after a reset
//	boot_timeout: 900               # wait for the test image after the write
//	boot_check_interval: 10         # between checks of either
//	write_timeout: 1800             # the whole write (GET /writeimage)
//	imager_timeout: 10              # each GET /check and GET /reboot
//	imager_shutdown_timeout: 60     # wait for the imager to go down after /reboot
//	script_timeout: 60              # each select_*_script and post_flash_cmds command
//	reboot_script_timeout: 120      # each reboot_script command
//
// # Serving the image
//
// The image is served from this host on a TCP listener bound to
// serve_address (or the local address of the route to device_ip) on a
// port the kernel chooses. It accepts exactly one connection, from the
// device's address (a connection from anywhere else is closed and logged,
// and the listener keeps waiting), and is closed as soon as that
// connection has been served, the imager has answered, or the phase ends.
// Progress (provision_progress events) is reported from the bytes served.
//
// The imager pipes what it fetches into unxz, so the image must be served
// as xz. With the lab host's image cache (the worker's normal case) the
// image is fetched into the cache first, as Testflinger downloads it
// first, which also means that a bad URL fails before the device is
// touched; an xz image is then served from the cache as it is, with no
// other copy and no recompression. Anything else (gzip, zstd, bzip2, raw)
// is decompressed and compressed again to xz on the fly with
// github.com/ulikunitz/xz: a compressor goroutine between the
// decompressor and the socket, no temporary file. Without a cache (the
// connector command line), the image is streamed from the network as it
// is served and every image, xz included, is recompressed, since
// drivers/image streams decompressed bytes only.
//
// Recompressing costs CPU, not disk: ulikunitz/xz compresses about 12 to
// 18 MB of image per second on one core (measured on a 2-core x86-64 host
// with a 1 MiB dictionary, on images a quarter of which is incompressible;
// an 8 MiB dictionary is a third slower), so a 4 GiB raw image takes four
// to six minutes, about the time an SD card takes to write it, and a
// mostly-empty disk image compresses faster. The 1 MiB dictionary keeps
// the imager's memory use small (unxz needs about that much). qcow2 images
// (magic "QFI\xfb"), which Testflinger converts with qemu-img, are refused
// with a provisioning failure: Flinger does not shell out to qemu-img
// (it is not installed on lab hosts, and converting needs a full copy of
// the raw image on disk); convert the image to raw and compress it.
//
// # Where Flinger differs from Testflinger
//
//   - The image is streamed (and cached per host) instead of being
//     downloaded to install.img and recompressed to install.img.xz in the
//     run directory; see above.
//   - Testflinger first tries to boot the test image (up to 15 minutes)
//     before selecting the master image; Flinger selects the master image
//     and resets the device at once, which is all that detour achieves.
//   - The writeimage URL is Testflinger's without the stray backslash
//     before &dev (Testflinger builds it with r"...\&dev="), and only the
//     characters that need it are percent-encoded. The imager's answer is
//     checked: a status other than 2xx, a body that reports an error, or a
//     byte count other than the image's (when Flinger knows it) fail the
//     phase with the imager's message; Testflinger only logs the body.
//   - select_master_script, select_test_script, post_flash_cmds and
//     reboot_script run without a shell: each command is split on white
//     space and run as its words, in the run directory with the job's
//     environment (Testflinger runs the first three with sh -c and an empty
//     environment). A command that needs a shell must be a script.
//   - select_test_script is run before GET /reboot, so the reboot lands in
//     the test image (Testflinger reboots first and resets the device
//     again after selecting). If the imager does not take /reboot, or is
//     still up imager_shutdown_timeout later, the device is reset with
//     reboot_script.
//   - A failing select script is a recovery failure (exit 46): the lab's
//     boot-select hardware is broken. A test image that does not come up
//     after a complete write is a provisioning failure (exit 1), as in
//     Testflinger: the image is the likely culprit, and the next
//     provisioning starts again from the master image, so the device
//     stays in service.
//   - The SSH host key recorded for the device (trust on first use) is
//     forgotten once a new image has been written, since a new image
//     legitimately has a new key; Testflinger ignores host keys.
//   - provision_data.url must be http or https: a file URL, which
//     Testflinger's urlretrieve accepts, would let a job have the lab host
//     serve its own files to the device.
//   - Every HTTP call and every command is bounded by a timeout, and the
//     phase can be cancelled at any point: the one-shot listener closes at
//     once and the device is left in the imager, where the next
//     provisioning finds it.
package netboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/localcmd"
)

// Type is the connector type of this driver, as in Testflinger.
const Type = "netboot"

// Defaults of the device keys: Testflinger's values where it has one.
const (
	DefaultImagerPort            = 8989
	DefaultMasterBootTimeout     = 600 * time.Second
	DefaultBootTimeout           = 900 * time.Second
	DefaultBootCheckInterval     = 10 * time.Second
	DefaultWriteTimeout          = 1800 * time.Second
	DefaultImagerTimeout         = 10 * time.Second
	DefaultImagerShutdownTimeout = 60 * time.Second
	DefaultScriptTimeout         = 60 * time.Second
	DefaultRebootScriptTimeout   = 120 * time.Second
)

// DefaultUsername and DefaultPassword are the test image's login when the
// job gives none (Testflinger's netboot defaults).
const (
	DefaultUsername = "admin"
	DefaultPassword = "admin"
)

// MaxDuration bounds every duration key.
const MaxDuration = 4 * time.Hour

// Banner is what the imager's /check page must contain.
const Banner = "Snappy Test Device Imager"

func init() {
	drivers.Register(Type, New)
}

// Driver is the netboot driver.
type Driver struct {
	drivers.Base
	cfg  *drivers.DeviceConfig
	opts options
}

var _ drivers.Driver = (*Driver)(nil)

// options are the device keys, read once by New.
type options struct {
	testDevice   string
	imagerPort   int
	serveAddress netip.Addr // zero: the route's local address

	selectMaster, selectTest, postFlash, reboot localcmd.Script

	masterBootTimeout, bootTimeout, interval, writeTimeout time.Duration
	imagerTimeout, shutdownTimeout                         time.Duration
}

// New returns the netboot driver of the device cfg describes. A missing
// device_ip or test_device, a bad port, address or duration, and an empty
// command are errors.
func New(cfg *drivers.DeviceConfig) (drivers.Driver, error) {
	if cfg == nil {
		return nil, errors.New("netboot: no device configuration")
	}
	if cfg.DeviceIP == "" {
		return nil, errors.New("netboot: device_ip: required")
	}
	var o options
	var err error
	if o.testDevice, err = cfg.Raw.String("test_device", ""); err != nil {
		return nil, fmt.Errorf("netboot: %w", err)
	}
	if o.testDevice == "" {
		return nil, errors.New("netboot: test_device: required (the disk the imager writes, such as /dev/mmcblk0)")
	}
	if strings.ContainsAny(o.testDevice, "\x00\n\r") {
		return nil, fmt.Errorf("netboot: test_device: %q must not contain control characters", o.testDevice)
	}
	if o.imagerPort, err = cfg.Raw.Int("imager_port", DefaultImagerPort); err != nil {
		return nil, fmt.Errorf("netboot: %w", err)
	}
	if o.imagerPort < 1 || o.imagerPort > 65535 {
		return nil, fmt.Errorf("netboot: imager_port: %d out of range (1-65535)", o.imagerPort)
	}
	sa, err := cfg.Raw.String("serve_address", "")
	if err != nil {
		return nil, fmt.Errorf("netboot: %w", err)
	}
	if sa != "" {
		if o.serveAddress, err = netip.ParseAddr(sa); err != nil {
			return nil, fmt.Errorf("netboot: serve_address: %q is not an IP address of this host", sa)
		}
	}
	var scriptTimeout, rebootScriptTimeout time.Duration
	if err := devconf.Durations(cfg.Raw, MaxDuration,
		devconf.DurationKey{Key: "master_boot_timeout", Default: DefaultMasterBootTimeout, Dst: &o.masterBootTimeout},
		devconf.DurationKey{Key: "boot_timeout", Default: DefaultBootTimeout, Dst: &o.bootTimeout},
		devconf.DurationKey{Key: "boot_check_interval", Default: DefaultBootCheckInterval, Dst: &o.interval},
		devconf.DurationKey{Key: "write_timeout", Default: DefaultWriteTimeout, Dst: &o.writeTimeout},
		devconf.DurationKey{Key: "imager_timeout", Default: DefaultImagerTimeout, Dst: &o.imagerTimeout},
		devconf.DurationKey{Key: "imager_shutdown_timeout", Default: DefaultImagerShutdownTimeout, Dst: &o.shutdownTimeout},
		devconf.DurationKey{Key: "script_timeout", Default: DefaultScriptTimeout, Dst: &scriptTimeout},
		devconf.DurationKey{Key: "reboot_script_timeout", Default: DefaultRebootScriptTimeout, Dst: &rebootScriptTimeout},
	); err != nil {
		return nil, fmt.Errorf("netboot: %w", err)
	}
	for _, k := range []struct {
		key string
		dst *localcmd.Script
	}{
		{"select_master_script", &o.selectMaster},
		{"select_test_script", &o.selectTest},
		{"post_flash_cmds", &o.postFlash},
	} {
		cmds, err := devconf.Commands(cfg.Raw, k.key)
		if err != nil {
			return nil, fmt.Errorf("netboot: %w", err)
		}
		*k.dst = localcmd.Script{Key: k.key, Cmds: cmds, Timeout: scriptTimeout}
	}
	if o.reboot, err = localcmd.New("reboot_script", cfg.RebootScript, rebootScriptTimeout); err != nil {
		return nil, fmt.Errorf("netboot: %w", err)
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// provisioning wraps err, formatted as by fmt.Errorf, in a
// *drivers.ProvisioningError.
func provisioning(format string, args ...any) error {
	return &drivers.ProvisioningError{Err: fmt.Errorf(format, args...)}
}

// Provision writes provision_data.url to the device through its master
// image and boots it (see the package documentation). A device that cannot
// be brought to the master image or to the test image gives a
// *drivers.RecoveryError; a bad image, a failed write and bad job data a
// *drivers.ProvisioningError.
func (d *Driver) Provision(ctx context.Context, run *drivers.Run) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("netboot provision: %w", err)
	}
	src, err := drivers.ImageSource(run.Job, "provision_data.url: required (the image to write, such as https://example.com/ubuntu.img.xz)")
	if err != nil {
		return &drivers.ProvisioningError{Err: err}
	}
	// Testflinger's pre_provision_hook (a control host, when the device
	// has one), once the job is known to be worth it.
	if err := d.PreProvision(ctx, run); err != nil {
		return err
	}
	p := &provision{d: d, run: run, dev: run.Device, w: run.Output(), src: src}
	if p.dev == nil {
		p.dev = d.cfg
	}
	p.log = run.Logger().With("device", p.dev.Name, "driver", Type)
	p.imager = newImager(p.dev.DeviceIP, d.opts.imagerPort)
	defer p.imager.close()
	err = p.do(ctx)
	if cerr := ctx.Err(); err != nil && cerr != nil {
		// Cancelled: never a device failure, whatever it cut short.
		if errors.Is(err, cerr) && !drivers.IsRecovery(err) {
			return fmt.Errorf("netboot provision: %w", err)
		}
		return fmt.Errorf("netboot provision: %w (%v)", cerr, err)
	}
	return err
}

// provision is one run of Provision.
type provision struct {
	d      *Driver
	run    *drivers.Run
	dev    *drivers.DeviceConfig
	w      io.Writer
	log    *slog.Logger
	src    image.Source
	imager *imagerClient
}

// do runs the steps of Provision.
func (p *provision) do(ctx context.Context) error {
	fmt.Fprintf(p.w, "Provisioning %s with %s\n", display.Printable(p.dev.Name), display.Printable(p.src.String()))
	img, err := p.prepare(ctx)
	if err != nil {
		return err
	}
	defer img.close()
	if err := p.ensureMaster(ctx); err != nil {
		return err
	}
	if err := p.write(ctx, img); err != nil {
		return err
	}
	if !p.d.opts.postFlash.Empty() {
		fmt.Fprintln(p.w, "Running post_flash_cmds")
		if err := p.commands(ctx, p.d.opts.postFlash); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return &drivers.ProvisioningError{Err: err}
		}
	}
	// A new image legitimately comes with a new host key.
	if err := p.dev.SSHSettings().Policy().Reset(p.dev.Name); err != nil {
		p.log.Info("netboot: could not forget the device's host key", "err", err)
	}
	if err := p.bootTest(ctx); err != nil {
		return err
	}
	fmt.Fprintln(p.w, "Provisioning done")
	return nil
}

// allowedAddrs returns the addresses the device may connect from:
// device_ip, resolved when it is a name.
func allowedAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving device_ip %s: %w", display.Printable(host), err)
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	return addrs, nil
}

// serveIP returns the address to serve the image on: serve_address, or
// this host's address on the route to the device.
func (p *provision) serveIP(ctx context.Context) (netip.Addr, error) {
	if p.d.opts.serveAddress.IsValid() {
		return p.d.opts.serveAddress, nil
	}
	var dl net.Dialer
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// A UDP "connection" sends nothing: it only picks the route.
	c, err := dl.DialContext(rctx, "udp", net.JoinHostPort(p.dev.DeviceIP, fmt.Sprint(p.d.opts.imagerPort)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("finding this host's address on the route to %s (set serve_address): %w", display.Printable(p.dev.DeviceIP), err)
	}
	defer c.Close()
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("finding this host's address on the route to %s (set serve_address): %w", display.Printable(p.dev.DeviceIP), err)
	}
	return ap.Addr().Unmap(), nil
}

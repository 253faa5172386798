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
	"net/url"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/events"
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

	selectMaster, selectTest, postFlash, reboot [][]string

	masterBootTimeout, bootTimeout, interval, writeTimeout time.Duration
	imagerTimeout, shutdownTimeout                         time.Duration
	scriptTimeout, rebootScriptTimeout                     time.Duration
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
	for _, k := range []struct {
		key string
		def time.Duration
		dst *time.Duration
	}{
		{"master_boot_timeout", DefaultMasterBootTimeout, &o.masterBootTimeout},
		{"boot_timeout", DefaultBootTimeout, &o.bootTimeout},
		{"boot_check_interval", DefaultBootCheckInterval, &o.interval},
		{"write_timeout", DefaultWriteTimeout, &o.writeTimeout},
		{"imager_timeout", DefaultImagerTimeout, &o.imagerTimeout},
		{"imager_shutdown_timeout", DefaultImagerShutdownTimeout, &o.shutdownTimeout},
		{"script_timeout", DefaultScriptTimeout, &o.scriptTimeout},
		{"reboot_script_timeout", DefaultRebootScriptTimeout, &o.rebootScriptTimeout},
	} {
		v, err := duration(cfg.Raw, k.key, k.def)
		if err != nil {
			return nil, fmt.Errorf("netboot: %w", err)
		}
		if v <= 0 || v > MaxDuration {
			return nil, fmt.Errorf("netboot: %s: %s out of range (more than 0s, at most %s)", k.key, v, MaxDuration)
		}
		*k.dst = v
	}
	for _, k := range []struct {
		key string
		dst *[][]string
	}{
		{"select_master_script", &o.selectMaster},
		{"select_test_script", &o.selectTest},
		{"post_flash_cmds", &o.postFlash},
	} {
		if *k.dst, err = commands(cfg.Raw, k.key); err != nil {
			return nil, fmt.Errorf("netboot: %w", err)
		}
	}
	for i, c := range cfg.RebootScript {
		argv := strings.Fields(c)
		if len(argv) == 0 {
			return nil, fmt.Errorf("netboot: reboot_script[%d]: empty command", i)
		}
		o.reboot = append(o.reboot, argv)
	}
	return &Driver{cfg: cfg, opts: o}, nil
}

// duration reads a duration key: whole seconds, a Go duration ("500ms",
// "1m30s") or a Flinger duration ("2h30m", "1d").
func duration(d events.Data, key string, def time.Duration) (time.Duration, error) {
	if s, ok := d[key].(string); ok {
		if v, err := time.ParseDuration(s); err == nil {
			return v, nil
		}
	}
	return d.Duration(key, def)
}

// commands reads a list of commands (a single string is one command),
// each split on white space as Testflinger's cmd.split() does.
func commands(d events.Data, key string) ([][]string, error) {
	var lines []string
	switch v := d[key].(type) {
	case nil:
	case string:
		lines = []string{v}
	case []any:
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s[%d]: must be a string, got %s", key, i, events.TypeName(e))
			}
			lines = append(lines, s)
		}
	case []string:
		lines = v
	default:
		return nil, fmt.Errorf("%s: must be a command or a list of commands, got %s", key, events.TypeName(v))
	}
	var out [][]string
	for i, l := range lines {
		argv := strings.Fields(l)
		if len(argv) == 0 {
			return nil, fmt.Errorf("%s[%d]: empty command", key, i)
		}
		out = append(out, argv)
	}
	return out, nil
}

// out returns run.Out, or a writer that discards when it is nil.
func out(run *drivers.Run) io.Writer {
	if run.Out == nil {
		return io.Discard
	}
	return run.Out
}

// provisioning wraps err, formatted as by fmt.Errorf, in a
// *drivers.ProvisioningError.
func provisioning(format string, args ...any) error {
	return &drivers.ProvisioningError{Err: fmt.Errorf(format, args...)}
}

// source reads provision_data: url (required) and sha256.
func source(job *events.Job) (image.Source, error) {
	var pd events.Data
	if job != nil {
		pd = job.ProvisionData
	}
	raw, err := pd.String("url", "")
	if err != nil {
		return image.Source{}, provisioning("provision_data.%w", err)
	}
	if raw == "" {
		return image.Source{}, provisioning("provision_data.url: required (the image to write, such as https://example.com/ubuntu.img.xz)")
	}
	// Refuse a malformed URL before the device is touched.
	u, err := url.Parse(raw)
	if err != nil {
		return image.Source{}, provisioning("provision_data.url: %q is not a URL: %w", raw, err)
	}
	// Not file: a job must not have this host serve its own files.
	if u.Scheme != "http" && u.Scheme != "https" {
		return image.Source{}, provisioning("provision_data.url: %q: must be an http or https URL", raw)
	}
	sum, err := pd.String("sha256", "")
	if err != nil {
		return image.Source{}, provisioning("provision_data.%w", err)
	}
	return image.Source{URL: raw, SHA256: sum}, nil
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
	src, err := source(run.Job)
	if err != nil {
		return err
	}
	// Testflinger's pre_provision_hook (a control host, when the device
	// has one), once the job is known to be worth it.
	if err := d.PreProvision(ctx, run); err != nil {
		return err
	}
	p := &provision{d: d, run: run, dev: run.Device, w: out(run), src: src}
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
	fmt.Fprintf(p.w, "Provisioning %s with %s\n", quote(p.dev.Name), quote(p.src.String()))
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
	if len(p.d.opts.postFlash) > 0 {
		fmt.Fprintln(p.w, "Running post_flash_cmds")
		if err := p.commands(ctx, "post_flash_cmds", p.d.opts.postFlash, p.d.opts.scriptTimeout); err != nil {
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
		return nil, fmt.Errorf("resolving device_ip %s: %w", quote(host), err)
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
		return netip.Addr{}, fmt.Errorf("finding this host's address on the route to %s (set serve_address): %w", quote(p.dev.DeviceIP), err)
	}
	defer c.Close()
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("finding this host's address on the route to %s (set serve_address): %w", quote(p.dev.DeviceIP), err)
	}
	return ap.Addr().Unmap(), nil
}

// quote quotes s when it holds control characters, so that a configured or
// job value cannot forge lines of output.
func quote(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}

package netboot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/localcmd"
	"github.com/flingerlab/flinger/drivers/osrelease"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// answerGrace is how long, once the imager has answered that the write
// succeeded, the image server may take to report how the serving ended
// (it has finished by then: the imager read the end of the stream).
const answerGrace = 5 * time.Second

// sshTimeout bounds one SSH dial and the command run after the boot.
const sshTimeout = 30 * time.Second

// imageFailure reports a failure to fetch or read the image: a
// provisioning failure, unless the phase was cancelled.
func imageFailure(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("fetching the image: %w", err)
	}
	return &drivers.ProvisioningError{Err: err}
}

// ensureMaster makes sure the master image is up: if /check does not
// answer, it runs select_master_script and reboot_script and waits for
// it. A master image that cannot be brought up is a recovery failure.
func (p *provision) ensureMaster(ctx context.Context) error {
	o := p.d.opts
	fmt.Fprintf(p.w, "Checking that the master image answers on %s/check\n", p.imager.base)
	err := p.imager.check(ctx, o.imagerTimeout)
	if err == nil {
		fmt.Fprintln(p.w, "The master image ("+Banner+") is up")
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("checking the master image: %w", ctx.Err())
	}
	fmt.Fprintf(p.w, "The master image is not up (%v): selecting it and resetting the device\n", err)
	if err := p.commands(ctx, o.selectMaster); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return drivers.Recovery("selecting the master image: %w", err)
	}
	if o.reboot.Empty() {
		return drivers.Recovery("the master image is not up and device %s has no reboot_script to reset it: %w", display.Printable(p.dev.Name), err)
	}
	if err := p.hardReset(ctx); err != nil {
		return err
	}
	fmt.Fprintf(p.w, "Waiting up to %s for the master image\n", o.masterBootTimeout)
	if err := p.waitImager(ctx, o.masterBootTimeout, o.interval, true); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for the master image: %w", ctx.Err())
		}
		return drivers.Recovery("the master image did not come up within %s of the reset: %w", o.masterBootTimeout, err)
	}
	fmt.Fprintln(p.w, "The master image is up")
	return nil
}

// waitImager polls /check every interval, for at most timeout, until the
// imager answers (up) or stops answering (!up).
func (p *provision) waitImager(ctx context.Context, timeout, interval time.Duration, up bool) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return sshx.Retry(wctx, sshx.Backoff{Initial: interval, Max: interval, Multiplier: 1, Jitter: 0.1}, func(ctx context.Context) error {
		err := p.imager.check(ctx, p.d.opts.imagerTimeout)
		switch {
		case up:
			return err
		case err == nil:
			return errors.New("the imager still answers")
		}
		return nil
	})
}

// write serves the image on a one-shot listener and has the imager write
// it to test_device, checking its answer. Every failure is a provisioning
// failure: the device is still in the imager and can be provisioned again.
func (p *provision) write(ctx context.Context, img *preparedImage) error {
	o := p.d.opts
	ip, err := p.serveIP(ctx)
	if err != nil {
		return fmt.Errorf("serving the image: %w", err)
	}
	allowed, err := allowedAddrs(ctx, p.dev.DeviceIP)
	if err != nil {
		return fmt.Errorf("serving the image: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return fmt.Errorf("serving the image on %s (see serve_address): %w", ip, err)
	}
	srv := serveOnce(ctx, ln, allowed, func(ctx context.Context, w io.Writer) sent {
		return img.send(ctx, w, p.run.ReportProgress)
	}, p.w, p.log)
	defer srv.close()
	server := srv.Addr().String()
	fmt.Fprintf(p.w, "Serving the image on %s (one connection, from %s only)\n", server, display.Printable(p.dev.DeviceIP))
	fmt.Fprintf(p.w, "Asking the imager to write it to %s: GET %s%s\n", display.Printable(o.testDevice), p.imager.base, writeImagePath(server, o.testDevice))
	start := time.Now()
	ans, aerr := p.imager.writeImage(ctx, server, o.testDevice, o.writeTimeout)
	grace := time.Duration(0)
	if aerr == nil && ans.status/100 == 2 {
		grace = answerGrace
	}
	res := srv.wait(grace)
	if ctx.Err() != nil {
		return fmt.Errorf("writing the image: %w", ctx.Err())
	}
	if aerr == nil {
		fmt.Fprintf(p.w, "The imager answered HTTP %d:\n", ans.status)
		printAnswer(p.w, ans.body)
	}
	if res.connected {
		how := "as it is"
		if res.raw >= 0 {
			how = fmt.Sprintf("recompressed from %s, %d bytes of image", res.format, res.raw)
		}
		fmt.Fprintf(p.w, "Served %d bytes of xz to %s (%s)\n", res.bytes, res.from, how)
	}
	dev := display.Printable(o.testDevice)
	var ie *image.Error
	switch {
	case errors.As(res.err, &ie) && ie.Kind != image.Canceled:
		return provisioning("%w", res.err)
	case errors.Is(res.err, errQcow2):
		return provisioning("image %s: %w", display.Printable(p.src.String()), errQcow2)
	case aerr != nil && errors.Is(aerr, context.DeadlineExceeded):
		return provisioning("the imager did not finish writing the image to %s within write_timeout (%s)", dev, o.writeTimeout)
	case aerr != nil:
		return provisioning("asking the imager to write the image to %s: %w", dev, aerr)
	case ans.status/100 != 2:
		return provisioning("the imager failed to write the image to %s (HTTP %d): %s", dev, ans.status, summary(ans.body))
	}
	if line, bad := reportsFailure(ans.body); bad {
		return provisioning("the imager reported a failure writing the image to %s: %s", dev, display.Printable(line))
	}
	if !res.connected {
		return provisioning("the imager answered without fetching the image (%v): %s", res.err, summary(ans.body))
	}
	if res.err != nil {
		return provisioning("serving the image to the imager failed after %d bytes: %w", res.bytes, res.err)
	}
	n, counted := copiedBytes(ans.body)
	if counted && res.raw >= 0 && n != res.raw {
		return provisioning("the imager wrote %d bytes to %s, but the image is %d bytes", n, dev, res.raw)
	}
	fmt.Fprintf(p.w, "Image written to %s in %s\n", dev, time.Since(start).Round(time.Millisecond))
	return nil
}

// printAnswer writes an imager's answer to w, each line prefixed.
func printAnswer(w io.Writer, body string) {
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 4096), maxAnswer)
	for sc.Scan() {
		if line := strings.TrimRight(sc.Text(), "\r"); line != "" {
			fmt.Fprintf(w, "  imager: %s\n", display.Printable(line))
		}
	}
}

// bootTest selects the test image, reboots into it and waits for it to
// accept an SSH login. A device that does not come up in the test image is
// a recovery failure.
func (p *provision) bootTest(ctx context.Context) error {
	o := p.d.opts
	if !o.selectTest.Empty() {
		fmt.Fprintln(p.w, "Selecting the test image")
		if err := p.commands(ctx, o.selectTest); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return drivers.Recovery("selecting the test image: %w", err)
		}
	}
	fmt.Fprintln(p.w, "Rebooting the device into the test image")
	reset := false
	if err := p.imager.reboot(ctx, o.imagerTimeout); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("rebooting the device: %w", ctx.Err())
		}
		fmt.Fprintf(p.w, "The imager did not take the reboot request (%v)\n", err)
		reset = true
	} else if err := p.waitImager(ctx, o.shutdownTimeout, min(o.interval, time.Second), false); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for the device to reboot: %w", ctx.Err())
		}
		fmt.Fprintf(p.w, "The imager still answers %s after the reboot request\n", o.shutdownTimeout)
		reset = true
	}
	if reset {
		if o.reboot.Empty() {
			return drivers.Recovery("device %s did not reboot into the test image and has no reboot_script to reset it", display.Printable(p.dev.Name))
		}
		if err := p.hardReset(ctx); err != nil {
			return err
		}
	}

	cfg, err := p.dev.SSHSettings().DeviceConfig(p.dev, p.run.Job, p.run.Logger())
	if err != nil {
		return fmt.Errorf("waiting for the test image: %w", err)
	}
	cfg.User, cfg.Password = credentials(p.run.Job)
	cfg.DialTimeout = min(sshTimeout, o.bootTimeout)
	who := fmt.Sprintf("%s@%s", display.Printable(cfg.User), cfg.Addr)
	fmt.Fprintf(p.w, "Waiting up to %s for the test image to accept ssh as %s\n", o.bootTimeout, who)
	wctx, cancel := context.WithTimeout(ctx, o.bootTimeout)
	defer cancel()
	c, err := sshx.WaitForSSH(wctx, cfg, p.dev.Name, o.interval)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("waiting for the test image: %w", ctx.Err())
		case sshx.IsHostKeyError(err):
			// Resetting the device would not help: an operator must look.
			return provisioning("the test image's ssh host key is not the one expected: %w", err)
		}
		// The image was written in full: one that does not boot is the
		// image's fault as far as anyone can tell, and the next
		// provisioning starts again from the master image.
		return provisioning("the image was written, but the test image did not accept ssh as %s within %s of the reboot (is it a bootable image for this device?): %w", who, o.bootTimeout, err)
	}
	defer c.Close()
	if name := p.osName(ctx, c); name != "" {
		fmt.Fprintf(p.w, "The test image is up: %s\n", display.Printable(name))
	} else {
		fmt.Fprintln(p.w, "The test image is up")
	}
	return nil
}

// osName returns the PRETTY_NAME of the test image's os-release, or "".
func (p *provision) osName(ctx context.Context, c *sshx.Client) string {
	ctx, cancel := context.WithTimeout(ctx, sshTimeout)
	defer cancel()
	osr, err := remote.Output(ctx, c, []string{"cat", "/etc/os-release"})
	if err != nil {
		p.log.Info("netboot: could not read the test image's os-release", "err", err)
		return ""
	}
	return osrelease.PrettyName(osr)
}

// credentials returns the test image's login: test_data.test_username and
// test_password, each defaulting to admin as in Testflinger's netboot.
func credentials(job *events.Job) (user, password string) {
	user, password = DefaultUsername, DefaultPassword
	if job != nil && job.TestData != nil {
		if job.TestData.TestUsername != "" {
			user = job.TestData.TestUsername
		}
		if job.TestData.TestPassword != "" {
			password = job.TestData.TestPassword
		}
	}
	return user, password
}

// hardReset runs reboot_script; a command that fails or times out is a
// recovery failure.
func (p *provision) hardReset(ctx context.Context) error {
	fmt.Fprintln(p.w, "Resetting the device with reboot_script")
	if err := p.commands(ctx, p.d.opts.reboot); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return drivers.Recovery("resetting device %s: %w", display.Printable(p.dev.Name), err)
	}
	return nil
}

// commands runs the commands of a script on this machine (see package
// localcmd), their output going to the phase's output.
func (p *provision) commands(ctx context.Context, s localcmd.Script) error {
	return localcmd.Runner{Dir: p.run.Dir, Env: p.run.Env, Out: p.w}.Run(ctx, s)
}

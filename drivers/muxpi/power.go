package muxpi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// hardReset runs a script of local commands (reboot_script,
// control_host_reboot_script) on this machine, each split on white space
// and run without a shell, in the run directory with the run's
// environment, each within timeout. A command that fails or times out is
// a recovery failure: the device's power control does not work.
func hardReset(ctx context.Context, run *drivers.Run, w io.Writer, script [][]string, timeout time.Duration, key string) error {
	for i, argv := range script {
		fmt.Fprintf(w, "Running %s[%d]: %s\n", key, i, printable(strings.Join(argv, " ")))
		cctx, cancel := context.WithTimeout(ctx, timeout)
		cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
		cmd.Dir = run.Dir
		cmd.Env = run.Env
		cmd.Stdout, cmd.Stderr = w, w
		cmd.WaitDelay = waitDelay
		err := cmd.Run()
		timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%s[%d]: %w", key, i, ctx.Err())
		case timedOut:
			return drivers.Recovery("%s[%d] %s timed out after %s", key, i, printable(argv[0]), timeout)
		case err != nil:
			return drivers.Recovery("%s[%d] %s failed: %w", key, i, printable(argv[0]), err)
		}
	}
	return nil
}

// bootID returns the control host's boot_id, or "" when it cannot be read.
func (p *provisioning) bootID(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	c, err := p.ctl.client(ctx)
	if err != nil {
		return ""
	}
	var out limitedBuffer
	if _, err := c.Run(ctx, []string{"cat", "/proc/sys/kernel/random/boot_id"}, &out, nil); err != nil {
		p.ctl.drop(c)
		return ""
	}
	return strings.TrimSpace(out.String())
}

// rebootControlHost reboots the control host and the device so that the
// mux starts from a known state (Testflinger's reboot_sdwire), and waits
// for the control host to come back: its boot_id must change, or, when it
// could not be read before, the host must answer.
func (p *provisioning) rebootControlHost(ctx context.Context) error {
	if len(p.opts.controlReboot) == 0 {
		p.printf("control_host_reboot_script is not set: not rebooting the control host")
		return nil
	}
	before := p.bootID(ctx)
	p.ctl.close()
	p.printf("Rebooting the control host")
	if err := hardReset(ctx, p.run, p.out, p.opts.controlReboot, controlHostScriptTimeout, "control_host_reboot_script"); err != nil {
		return err
	}
	p.printf("Rebooting the device")
	if err := hardReset(ctx, p.run, p.out, p.opts.reboot, p.opts.rebootScriptTimeout, "reboot_script"); err != nil {
		return err
	}
	p.printf("Waiting up to %s for the control host to come back", p.opts.controlRebootTimeout)
	wctx, cancel := context.WithTimeout(ctx, p.opts.controlRebootTimeout)
	defer cancel()
	interval := p.opts.controlRetryInterval
	err := sshx.Retry(wctx, sshx.Backoff{Initial: interval, Max: interval, Multiplier: 1, Jitter: -1}, func(ctx context.Context) error {
		id := p.bootID(ctx)
		switch {
		case id == "" && before == "":
			if _, err := p.ctl.client(ctx); err != nil {
				if permanentDialError(err) {
					return sshx.Permanent(err)
				}
				return err
			}
			return nil
		case id == "":
			return errors.New("the control host does not answer yet")
		case id == before:
			p.ctl.close()
			return errors.New("the control host has not rebooted yet")
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return drivers.Recovery("the control host %s did not come back within control_host_reboot_timeout (%s) of control_host_reboot_script: %w",
			p.ctl.cfg.Addr, p.opts.controlRebootTimeout, err)
	}
	p.printf("The control host is back")
	return nil
}

// waitForBoot waits up to boot_timeout for the device to boot the new
// image: boot_check_url answers 200, or test_username@device_ip accepts
// an SSH login and runs /bin/true. Checks start one boot_check_interval
// after the reset, as in Testflinger, so that a device still going down
// is not taken for the new image.
func (p *provisioning) waitForBoot(ctx context.Context) error {
	var check func(ctx context.Context) error
	what := ""
	if p.pd.bootCheckURL != "" {
		u := strings.ReplaceAll(p.pd.bootCheckURL, "$DEVICE_IP", p.dev.DeviceIP)
		what = "boot_check_url " + printable(u) + " to answer 200"
		check = func(ctx context.Context) error { return httpCheck(ctx, u) }
	} else {
		cfg, err := p.dev.SSHSettings().DeviceConfig(p.dev, p.run.Job, p.log)
		if err != nil {
			return drivers.Recovery("%w", err)
		}
		cfg.DialTimeout = min(checkTimeout, p.opts.bootTimeout)
		what = fmt.Sprintf("%s@%s to accept an ssh login", printable(cfg.User), cfg.Addr)
		check = func(ctx context.Context) error {
			err := sshCheck(ctx, cfg, p.dev.Name)
			var changed *sshx.HostKeyChangedError
			if errors.As(err, &changed) || errors.Is(err, sshx.ErrUnknownHost) {
				return sshx.Permanent(err)
			}
			return err
		}
	}
	p.printf("Waiting up to %s for %s", p.opts.bootTimeout, what)
	wctx, cancel := context.WithTimeout(ctx, p.opts.bootTimeout)
	defer cancel()
	interval := p.opts.bootCheckInterval
	t := time.NewTimer(interval)
	select {
	case <-wctx.Done():
		t.Stop()
	case <-t.C:
	}
	var last error
	err := sshx.Retry(wctx, sshx.Backoff{Initial: interval, Max: interval, Multiplier: 1, Jitter: 0.1, AttemptTimeout: checkTimeout},
		func(ctx context.Context) error {
			last = check(ctx)
			if last != nil {
				p.log.Debug("muxpi: not booted yet", "err", last)
			}
			return last
		})
	if err == nil {
		p.printf("The device booted the test image")
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	var changed *sshx.HostKeyChangedError
	switch {
	case errors.As(err, &changed) || errors.Is(err, sshx.ErrUnknownHost):
		return &drivers.ProvisioningError{Err: fmt.Errorf("checking that the device booted: %w", err)}
	case errors.Is(last, sshx.ErrAuth):
		return &drivers.ProvisioningError{Err: fmt.Errorf("the device booted but refuses the login as %s (did the image get its test user? create_user: false needs an image that has one): %w",
			p.testUser(), last)}
	}
	// The image was written in full: one that does not boot is the image's
	// fault as far as anyone can tell, and the card can be written again
	// through the control host.
	return &drivers.ProvisioningError{Err: fmt.Errorf("the image was written, but the device did not boot it within boot_timeout (%s) (waiting for %s; is it a bootable image for this device?): %w", p.opts.bootTimeout, what, err)}
}

// testUser names the user the boot check logs in as.
func (p *provisioning) testUser() string {
	user, _ := drivers.TestCredentials(p.run.Job)
	return printable(user)
}

// sshCheck logs in to the device and runs /bin/true.
func sshCheck(ctx context.Context, cfg sshx.Config, device string) error {
	c, err := sshx.Dial(ctx, cfg, device)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Run(ctx, []string{"/bin/true"}, nil, nil)
	return err
}

// httpCheck asks url and wants 200.
func httpCheck(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, httpCheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return sshx.Permanent(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}

package muxpi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/localcmd"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// script runs a script of local commands (reboot_script,
// control_host_reboot_script; see package localcmd). A command that fails
// or times out is a recovery failure: the device's power control does not
// work.
func (p *provisioning) script(ctx context.Context, s localcmd.Script) error {
	err := localcmd.Runner{Dir: p.run.Dir, Env: p.run.Env, Out: p.out}.Run(ctx, s)
	var le *localcmd.Error
	if errors.As(err, &le) {
		return drivers.Recovery("%w", err)
	}
	return err
}

// bootID returns the control host's boot_id, or "" when it cannot be read.
func (p *provisioning) bootID(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	c, err := p.ctl.Client(ctx)
	if err != nil {
		return ""
	}
	out, err := remote.Output(ctx, c, []string{"cat", "/proc/sys/kernel/random/boot_id"})
	if err != nil {
		p.ctl.Drop(c)
		return ""
	}
	return strings.TrimSpace(out)
}

// rebootControlHost reboots the control host and the device so that the
// mux starts from a known state (Testflinger's reboot_sdwire), and waits
// for the control host to come back: its boot_id must change, or, when it
// could not be read before, the host must answer.
func (p *provisioning) rebootControlHost(ctx context.Context) error {
	if p.opts.controlReboot.Empty() {
		p.printf("control_host_reboot_script is not set: not rebooting the control host")
		return nil
	}
	before := p.bootID(ctx)
	p.ctl.Close()
	p.printf("Rebooting the control host")
	if err := p.script(ctx, p.opts.controlReboot); err != nil {
		return err
	}
	p.printf("Rebooting the device")
	if err := p.script(ctx, p.opts.reboot); err != nil {
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
			if _, err := p.ctl.Client(ctx); err != nil {
				if remote.IsPermanentDialError(err) {
					return sshx.Permanent(err)
				}
				return err
			}
			return nil
		case id == "":
			return errors.New("the control host does not answer yet")
		case id == before:
			p.ctl.Close()
			return errors.New("the control host has not rebooted yet")
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return drivers.Recovery("the control host %s did not come back within control_host_reboot_timeout (%s) of control_host_reboot_script: %w",
			p.ctl.Config.Addr, p.opts.controlRebootTimeout, err)
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
		what = "boot_check_url " + display.Printable(u) + " to answer 200"
		check = func(ctx context.Context) error { return httpCheck(ctx, u) }
	} else {
		cfg, err := p.dev.SSHSettings().DeviceConfig(p.dev, p.run.Job, p.log)
		if err != nil {
			return drivers.Recovery("%w", err)
		}
		cfg.DialTimeout = min(checkTimeout, p.opts.bootTimeout)
		what = fmt.Sprintf("%s@%s to accept an ssh login", display.Printable(cfg.User), cfg.Addr)
		check = func(ctx context.Context) error {
			err := sshCheck(ctx, cfg, p.dev.Name)
			if sshx.IsHostKeyError(err) {
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
	switch {
	case sshx.IsHostKeyError(err):
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
	return display.Printable(user)
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

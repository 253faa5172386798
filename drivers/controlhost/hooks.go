package controlhost

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/localcmd"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// Hooks runs the hooks of one phase of one device.
type Hooks struct {
	// Settings are the device's control-host settings.
	Settings Settings
	// Client calls the control host's REST API.
	Client *Client
	// Dir is where script commands run (the job's directory).
	Dir string
	// Env is the phase's environment (KEY=VALUE), given to script commands
	// and checked for DisablePowerCycleEnv.
	Env []string
	// Out receives what the hooks do, for the job's output (nil: discarded).
	Out io.Writer
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
}

// New returns the hooks of a device with settings s, running commands in
// dir with env and writing to out.
func New(s Settings, dir string, env []string, out io.Writer, log *slog.Logger) *Hooks {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := NewClient(s.Host, s.APIPort, log)
	c.RequestTimeout = s.RequestTimeout
	return &Hooks{Settings: s, Client: c, Dir: dir, Env: env, Out: out, Log: log}
}

func (h *Hooks) out() io.Writer {
	if h.Out == nil {
		return io.Discard
	}
	return h.Out
}

func (h *Hooks) logger() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}

func (h *Hooks) printf(format string, args ...any) {
	fmt.Fprintf(h.out(), format+"\n", args...)
}

// PreProvision runs Testflinger's pre_provision_hook (see the package
// documentation). It returns nil when the host has no control host, an
// error wrapping ctx.Err() when ctx ends, a *NotBackError when the control
// host does not come back, and nil otherwise: the best-effort steps report
// their failures in the output.
func (h *Hooks) PreProvision(ctx context.Context) error {
	if h.Settings.Host == "" {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("control host: %w", err)
	}
	switch {
	case envSet(h.Env, DisablePowerCycleEnv):
		h.printf("Not power-cycling control host %s: %s is set", h.Settings.Host, DisablePowerCycleEnv)
	case len(h.Settings.RebootScript) == 0:
		h.printf("Not power-cycling control host %s: no control_host_reboot_script is configured", h.Settings.Host)
	default:
		if err := h.PowerCycle(ctx); err != nil {
			return err
		}
	}
	return h.SetupProvisioning(ctx)
}

// PreTest runs Testflinger's pre_test_hook: it asks the control host to
// ready its hardware for the test phase. A failure is reported and
// ignored; only the end of ctx is returned.
func (h *Hooks) PreTest(ctx context.Context) error {
	if h.Settings.Host == "" {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("control host: %w", err)
	}
	h.printf("Setting up control host %s for the test phase", h.Settings.Host)
	if err := h.Client.SetupTest(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("control host: setting up for the test phase: %w", ctx.Err())
		}
		h.printf("Could not set up control host %s for the test phase (continuing): %v", h.Settings.Host, err)
		h.logger().Warn("controlhost: setup/test failed", "host", h.Settings.Host, "err", err)
	}
	return nil
}

// SetupProvisioning asks the control host to ready its hardware for
// provisioning, with the settings' body. A failure is reported and
// ignored; only the end of ctx is returned.
func (h *Hooks) SetupProvisioning(ctx context.Context) error {
	h.printf("Setting up control host %s for provisioning", h.Settings.Host)
	var body any
	if h.Settings.SetupProvisioningData != nil {
		body = h.Settings.SetupProvisioningData
	}
	if err := h.Client.SetupProvisioning(ctx, body); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("control host: setting up for provisioning: %w", ctx.Err())
		}
		h.printf("Could not set up control host %s for provisioning (continuing): %v", h.Settings.Host, err)
		h.logger().Warn("controlhost: setup/provisioning failed", "host", h.Settings.Host, "err", err)
	}
	return nil
}

// PowerCycle shuts the control host down through its API and reboots it
// with control_host_reboot_script, falling back to the SSH check when the
// API does not answer, with the DUT powered off meanwhile when the
// settings say so (see the package documentation).
func (h *Hooks) PowerCycle(ctx context.Context) error {
	s := h.Settings
	h.printf("Power-cycling control host %s", s.Host)
	dutPower := false
	if s.ManageDUTPower {
		if len(s.PowerOffScript) > 0 && len(s.PowerOnScript) > 0 {
			dutPower = true
		} else {
			h.printf("Warning: poweroff_script and poweron_script are not both configured: the device stays powered while its control host reboots")
		}
	}
	if dutPower {
		if err := h.runScript(ctx, "poweroff_script", s.PowerOffScript); err != nil {
			return err
		}
		defer func() {
			if ctx.Err() == nil {
				_ = h.runScript(ctx, "poweron_script", s.PowerOnScript)
			}
		}()
	}

	h.printf("Asking the REST API of control host %s to shut it down", s.Host)
	if err := h.Client.PowerOff(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("control host: shutting down: %w", ctx.Err())
		}
		h.printf("The REST API of control host %s does not take the shutdown (%v): checking its SSH port instead", s.Host, err)
		h.logger().Warn("controlhost: poweroff failed, SSH fallback", "host", s.Host, "err", err)
		return h.sshFallback(ctx)
	}

	h.printf("Waiting up to %s for control host %s to go down (its SSH port %s to stop answering)", s.OfflineTimeout, s.Host, s.SSHAddr)
	down, err := h.waitFor(ctx, s.OfflineTimeout, false, h.checkSSH)
	if err != nil {
		return err
	}
	if down {
		if s.ShutdownWait > 0 {
			h.printf("Control host %s is down; waiting %s for its shutdown to finish", s.Host, s.ShutdownWait)
			if err := sleep(ctx, s.ShutdownWait); err != nil {
				return fmt.Errorf("control host: waiting for the shutdown: %w", err)
			}
		} else {
			h.printf("Control host %s is down", s.Host)
		}
	} else {
		h.printf("Control host %s still answers on its SSH port after %s; rebooting it anyway", s.Host, s.OfflineTimeout)
	}
	if err := h.runScript(ctx, "control_host_reboot_script", s.RebootScript); err != nil {
		return err
	}
	h.printf("Waiting up to %s for the REST API of control host %s", s.OnlineTimeout, s.Host)
	start := time.Now()
	up, err := h.waitFor(ctx, s.OnlineTimeout, true, h.checkAPI)
	if err != nil {
		return err
	}
	if !up {
		return &NotBackError{Host: s.Host, What: "its REST API (" + h.Client.BaseURL + PathHealth + ")", Timeout: s.OnlineTimeout, Err: h.checkAPI(ctx)}
	}
	h.printf("Control host %s is back after %s", s.Host, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// sshFallback is what PowerCycle does when the API does not answer: a
// control host whose SSH port accepts a connection is left alone; one
// whose port does not is rebooted and must come back.
func (h *Hooks) sshFallback(ctx context.Context) error {
	s := h.Settings
	if err := h.checkSSH(ctx); err == nil {
		h.printf("Control host %s answers on its SSH port (%s): not rebooting it", s.Host, s.SSHAddr)
		return nil
	} else if ctx.Err() != nil {
		return fmt.Errorf("control host: %w", ctx.Err())
	} else {
		h.printf("Control host %s does not answer on its SSH port either (%v): rebooting it", s.Host, err)
	}
	if err := h.runScript(ctx, "control_host_reboot_script", s.RebootScript); err != nil {
		return err
	}
	h.printf("Waiting up to %s for control host %s to answer on its SSH port", s.OnlineTimeout, s.Host)
	start := time.Now()
	up, err := h.waitFor(ctx, s.OnlineTimeout, true, h.checkSSH)
	if err != nil {
		return err
	}
	if !up {
		return &NotBackError{Host: s.Host, What: "its SSH port (" + s.SSHAddr + ")", Timeout: s.OnlineTimeout, Err: h.checkSSH(ctx)}
	}
	h.printf("Control host %s answers on its SSH port after %s", s.Host, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// checkAPI checks the API's health.
func (h *Hooks) checkAPI(ctx context.Context) error {
	return h.Client.Health(ctx, min(DefaultCheckTimeout, h.Settings.RequestTimeout))
}

// checkSSH checks that an SSH server answers on the control host's SSH
// port (sshx.Answers: a TCP connection and a version line).
func (h *Hooks) checkSSH(ctx context.Context) error {
	return sshx.Answers(ctx, h.Settings.SSHAddr, DefaultCheckTimeout)
}

// waitFor runs check every CheckInterval, for up to timeout (and one
// check's time more), until it succeeds (wantUp) or fails (!wantUp). It
// reports whether that happened, and returns an error only when ctx ends.
func (h *Hooks) waitFor(ctx context.Context, timeout time.Duration, wantUp bool, check func(context.Context) error) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, DefaultCheckTimeout)
		err := check(cctx)
		cancel()
		if ctx.Err() != nil {
			return false, fmt.Errorf("control host: waiting for %s: %w", h.Settings.Host, ctx.Err())
		}
		if (err == nil) == wantUp {
			return true, nil
		}
		wait := min(h.Settings.CheckInterval, time.Until(deadline))
		if wait <= 0 {
			return false, nil
		}
		if err := sleep(ctx, wait); err != nil {
			return false, fmt.Errorf("control host: waiting for %s: %w", h.Settings.Host, err)
		}
	}
}

// runScript runs the commands of a script one after the other (see the
// package documentation). A failing command is reported and the next one
// runs; only the end of ctx stops it, with an error.
func (h *Hooks) runScript(ctx context.Context, name string, script [][]string) error {
	s := localcmd.Script{Key: name, Cmds: script, Timeout: h.Settings.ScriptTimeout}
	err := localcmd.Runner{Dir: h.Dir, Env: h.Env, Out: h.out()}.RunEach(ctx, s, func(e *localcmd.Error) {
		if e.Timeout > 0 {
			h.printf("%s[%d] timed out after %s (continuing)", name, e.Index, e.Timeout)
			h.logger().Warn("controlhost: script command timed out", "script", name, "index", e.Index, "timeout", e.Timeout)
			return
		}
		h.printf("%s[%d] failed: %v (continuing)", name, e.Index, e.Err)
		h.logger().Warn("controlhost: script command failed", "script", name, "index", e.Index, "err", e.Err)
	})
	if err != nil {
		return fmt.Errorf("control host: %w", err)
	}
	return nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// envSet reports whether env sets key to a non-empty value (the last
// setting wins, as for a process).
func envSet(env []string, key string) bool {
	val := ""
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			val = v
		}
	}
	return val != ""
}

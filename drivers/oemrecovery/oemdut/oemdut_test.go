package oemdut_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/oemrecovery/oemdut"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

func TestStrings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		v    any
		want []string
		err  bool
	}{
		{"absent", nil, nil, false},
		{"one string", "sudo reboot", []string{"sudo reboot"}, false},
		{"YAML list", []any{"a", "b"}, []string{"a", "b"}, false},
		{"Go list", []string{"a"}, []string{"a"}, false},
		{"not a string", []any{"a", 3}, nil, true},
		{"empty command", []any{"a", "  "}, nil, true},
		{"a map", map[string]any{}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := events.Data{}
			if tc.v != nil {
				d["recovery_cmds"] = tc.v
			}
			got, err := oemdut.Strings(d, "recovery_cmds")
			if (err != nil) != tc.err || strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("Strings(%v) = %q, %v; want %q, error %v", tc.v, got, err, tc.want, tc.err)
			}
			if err != nil && !strings.Contains(err.Error(), "recovery_cmds") {
				t.Errorf("error %v does not name the key", err)
			}
		})
	}
}

func TestParseSettings(t *testing.T) {
	t.Parallel()
	s, err := oemdut.ParseSettings(&drivers.DeviceConfig{RebootScript: []string{"pdu  cycle 3"}, Raw: events.Data{"boot_timeout": "2m"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.BootTimeout != 2*time.Minute || s.ShutdownTimeout != oemdut.DefaultShutdownTimeout || s.BootCheckInterval != oemdut.DefaultBootCheckInterval {
		t.Errorf("settings %+v", s)
	}
	if len(s.RebootScript) != 1 || strings.Join(s.RebootScript[0], ",") != "pdu,cycle,3" {
		t.Errorf("reboot_script split as %q, want on white space", s.RebootScript)
	}
	if _, err := oemdut.ParseSettings(&drivers.DeviceConfig{RebootScript: []string{" "}}); err == nil {
		t.Error("an empty reboot_script command was accepted")
	}
	if _, err := oemdut.ParseSettings(&drivers.DeviceConfig{Raw: events.Data{"shutdown_timeout": "forever"}}); err == nil {
		t.Error("a bad shutdown_timeout was accepted")
	}
}

func TestTail(t *testing.T) {
	t.Parallel()
	var sink strings.Builder
	tail := &oemdut.Tail{W: &sink}
	_, _ = io.WriteString(tail, strings.Repeat("x", 5000))
	_, _ = io.WriteString(tail, "\x1b[31mend\n")
	if sink.Len() != 5009 {
		t.Errorf("passed on %d bytes, want 5009", sink.Len())
	}
	s := tail.String()
	if len(s) > 2048 || !strings.HasSuffix(s, "?[31mend") {
		t.Errorf("tail (%d bytes) ends %q", len(s), s[max(0, len(s)-10):])
	}
}

func target(t *testing.T, addr string, script ...string) *oemdut.Target {
	t.Helper()
	s, err := oemdut.ParseSettings(&drivers.DeviceConfig{RebootScript: script, Raw: events.Data{
		"reboot_script_timeout": "300ms", "boot_timeout": "3s", "boot_check_interval": "50ms",
	}})
	if err != nil {
		t.Fatal(err)
	}
	policy := sshx.TOFU(t.TempDir())
	return &oemdut.Target{
		Name:     "dut",
		Login:    sshx.Config{Addr: addr, User: "ubuntu", Password: "ubuntu", HostKeys: policy},
		Policy:   policy,
		Settings: s,
		Dir:      t.TempDir(),
		Env:      os.Environ(),
		Out:      io.Discard,
		Log:      nil,
	}
}

func dut(t *testing.T) *sim.DUT {
	t.Helper()
	d, err := sim.StartDUT(t.Context(), sim.DUTOptions{Name: "dut", BootTime: 100 * time.Millisecond, Users: map[string]string{"ubuntu": "ubuntu"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func TestHardReset(t *testing.T) {
	t.Parallel()
	flag := filepath.Join(t.TempDir(), "reset")
	for _, tc := range []struct {
		name     string
		script   []string
		recovery bool
	}{
		{"succeeds", []string{"touch " + flag}, false},
		{"fails", []string{"false"}, true},
		{"times out", []string{"sleep 10"}, true},
		{"not found", []string{"/nonexistent/pdu cycle"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := target(t, "127.0.0.1:1", tc.script...)
			start := time.Now()
			err := tg.HardReset(t.Context())
			if drivers.IsRecovery(err) != tc.recovery || (!tc.recovery && err != nil) {
				t.Errorf("HardReset = %v; want a recovery failure: %v", err, tc.recovery)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("HardReset took %s with a 300ms limit", time.Since(start))
			}
		})
	}
	if _, err := os.Stat(flag); err != nil {
		t.Errorf("the reboot_script did not run: %v", err)
	}
}

func TestHardResetCancelled(t *testing.T) {
	t.Parallel()
	tg := target(t, "127.0.0.1:1", "sleep 10")
	tg.Settings.RebootScriptTimeout = time.Minute
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err := tg.HardReset(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || drivers.IsRecovery(err) {
		t.Errorf("HardReset cancelled = %v, want the context's error, not a recovery failure", err)
	}
}

func TestReachAndWaitDown(t *testing.T) {
	t.Parallel()
	d := dut(t)
	tg := target(t, d.Addr())
	c, err := tg.Reach(t.Context())
	if err != nil {
		t.Fatalf("Reach: %v", err)
	}
	if err := oemdut.WaitDown(t.Context(), c, 200*time.Millisecond); !errors.Is(err, oemdut.ErrStillUp) {
		t.Errorf("WaitDown of a device that stays up = %v, want ErrStillUp", err)
	}
	c, err = tg.Check(t.Context(), tg.Login)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run(t.Context(), []string{"sudo", "reboot"}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := oemdut.WaitDown(t.Context(), c, 5*time.Second); err != nil {
		t.Errorf("WaitDown of a rebooting device = %v", err)
	}
	c, err = tg.WaitUp(t.Context(), tg.Login, 5*time.Second, "a reboot")
	if err != nil {
		t.Fatalf("WaitUp: %v", err)
	}
	_ = c.Close()
}

func TestReachResets(t *testing.T) {
	t.Parallel()
	d := dut(t)
	d.PowerOff()
	sw, err := sim.StartSwitch(t.Context(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	script, err := sw.Script("power-on", func() error { d.PowerOn(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	c, err := target(t, d.Addr(), script).Reach(t.Context())
	if err != nil {
		t.Fatalf("Reach of a device its reboot_script powers on: %v", err)
	}
	_ = c.Close()
	if sw.Calls("power-on") != 1 {
		t.Errorf("reboot_script ran %d times", sw.Calls("power-on"))
	}

	d.PowerOff()
	_, err = target(t, d.Addr()).Reach(t.Context())
	if !drivers.IsRecovery(err) {
		t.Errorf("Reach of a device down with no reboot_script = %v, want a recovery failure", err)
	}
}

func TestReachRefusedLogin(t *testing.T) {
	t.Parallel()
	d := dut(t)
	tg := target(t, d.Addr(), "false")
	tg.Login.Password = "wrong"
	_, err := tg.Reach(t.Context())
	var pe *drivers.ProvisioningError
	if !errors.As(err, &pe) || !errors.Is(err, sshx.ErrAuth) {
		t.Errorf("Reach with a wrong password = %v, want a ProvisioningError wrapping ErrAuth (and no reset)", err)
	}
}

func TestBootID(t *testing.T) {
	t.Parallel()
	d := dut(t)
	d.WriteFile(oemdut.BootIDPath, []byte("7c0c2f4e-41c5-4a53-9a43-5f0e4b3c7d11\n"))
	c, err := target(t, d.Addr()).Check(t.Context(), target(t, d.Addr()).Login)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := oemdut.BootID(t.Context(), c); got != "7c0c2f4e-41c5-4a53-9a43-5f0e4b3c7d11" {
		t.Errorf("BootID = %q", got)
	}
	d.RemoveFile(oemdut.BootIDPath)
	if got := oemdut.BootID(t.Context(), c); got != "" {
		t.Errorf("BootID without the file = %q, want \"\"", got)
	}
}

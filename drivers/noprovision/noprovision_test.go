package noprovision_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/noprovision"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
	"github.com/flingerlab/flinger/events"
)

// device returns the configuration of a device reached at srv, with the
// given extra keys, and its driver.
func device(t *testing.T, srv *sshtest.Server, raw events.Data, reboot ...string) (*noprovision.Driver, *drivers.DeviceConfig) {
	t.Helper()
	_, portStr, err := net.SplitHostPort(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &drivers.DeviceConfig{
		Name:         "np-1",
		Type:         noprovision.Type,
		Queues:       []string{"np"},
		DeviceIP:     "127.0.0.1",
		SSHPort:      port,
		RebootScript: reboot,
		Raw:          raw,
		SSH:          &drivers.SSHSettings{HostKeys: srv.KnownHostsFile(), KeyFile: srv.KeyFile},
	}
	d, err := noprovision.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d.(*noprovision.Driver), cfg
}

// job logs in as the user sshtest lets in.
func job(srv *sshtest.Server) *events.Job {
	return &events.Job{JobID: "j-np", JobQueue: "np", ProvisionData: events.Data{}, TestData: &events.TestData{TestUsername: srv.User}}
}

func TestConformance(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
		d, cfg := device(t, srv, nil)
		return d, cfg
	})
}

func TestProvisionAnswers(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	flag := filepath.Join(t.TempDir(), "rebooted")
	d, cfg := device(t, srv, nil, "touch "+flag)
	run, out := drivertest.NewRun(t, cfg, job(srv))
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "nothing to provision") {
		t.Errorf("output:\n%s", out)
	}
	if _, err := os.Stat(flag); err == nil {
		t.Error("reboot_script ran for a device that answers")
	}
}

func TestProvisionLoginRefused(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	flag := filepath.Join(t.TempDir(), "rebooted")
	d, cfg := device(t, srv, nil, "touch "+flag)
	j := job(srv)
	j.TestData.TestUsername = "nobody-here"
	run, out := drivertest.NewRun(t, cfg, j)
	err := d.Provision(t.Context(), run)
	var pe *drivers.ProvisioningError
	if !errors.As(err, &pe) || drivers.IsRecovery(err) || !strings.Contains(err.Error(), "refuses the login as nobody-here@") {
		t.Fatalf("Provision = %v, want a provisioning failure (not a recovery one) naming the user\n%s", err, out)
	}
	if _, err := os.Stat(flag); err == nil {
		t.Error("reboot_script ran for a device that answers")
	}
}

func TestProvisionRebootBringsBack(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	srv.Stop()
	flag := filepath.Join(t.TempDir(), "rebooted")
	d, cfg := device(t, srv, events.Data{"reboot_wait": 0, "boot_timeout": "20s", "boot_check_interval": "200ms"},
		"echo resetting", "touch "+flag)
	// The "power switch": when the reboot script has run, the device comes back.
	go func() {
		for range 400 {
			if _, err := os.Stat(flag); err == nil {
				srv.Restart()
				return
			}
			time.Sleep(25 * time.Millisecond)
		}
	}()
	run, out := drivertest.NewRun(t, cfg, job(srv))
	if err := d.Provision(t.Context(), run); err != nil {
		t.Fatalf("Provision: %v\n%s", err, out)
	}
	for _, s := range []string{"does not answer", "Running reboot_script[0]: echo resetting", "resetting\n", "The device is back"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
}

func TestProvisionNeverBack(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	srv.Stop()
	d, cfg := device(t, srv, events.Data{"reboot_wait": "100ms", "boot_timeout": "1s", "boot_check_interval": "200ms"}, "true")
	run, out := drivertest.NewRun(t, cfg, job(srv))
	start := time.Now()
	err := d.Provision(t.Context(), run)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Provision took %s with a 1s boot_timeout", took)
	}
	if !drivers.IsRecovery(err) || drivers.ExitCode(err) != drivers.ExitRecoveryFailed {
		t.Fatalf("Provision = %v (exit %d), want a recovery failure (46)\n%s", err, drivers.ExitCode(err), out)
	}
	if !strings.Contains(err.Error(), "did not answer ssh") {
		t.Errorf("error %q does not say what happened", err)
	}
}

func TestProvisionRebootScriptFails(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	srv.Stop()
	for _, tc := range []struct {
		name   string
		script []string
		raw    events.Data
		want   string
	}{
		{"exit status", []string{"false"}, nil, "reboot_script[0] false failed"},
		{"timeout", []string{"sleep 30"}, events.Data{"reboot_script_timeout": "300ms"}, "timed out after 300ms"},
		{"missing program", []string{"/nonexistent/pdu-reset port1"}, nil, "reboot_script[0] /nonexistent/pdu-reset failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg := device(t, srv, tc.raw, tc.script...)
			run, out := drivertest.NewRun(t, cfg, job(srv))
			err := d.Provision(t.Context(), run)
			if drivers.ExitCode(err) != drivers.ExitRecoveryFailed || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Provision = %v (exit %d), want a recovery failure with %q\n%s", err, drivers.ExitCode(err), tc.want, out)
			}
		})
	}
}

func TestRebootScriptNoShell(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	srv.Stop()
	dir := t.TempDir()
	pwned := filepath.Join(dir, "PWNED")
	script := "echo $(touch " + pwned + ") ; touch " + pwned + " && touch " + pwned + " `touch " + pwned + "` | touch " + pwned
	d, cfg := device(t, srv, events.Data{"reboot_wait": 0, "boot_timeout": "300ms", "boot_check_interval": "100ms"}, script)
	run, out := drivertest.NewRun(t, cfg, job(srv))
	err := d.Provision(t.Context(), run)
	if !drivers.IsRecovery(err) {
		t.Errorf("Provision = %v, want a recovery failure (the device stays down)", err)
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("reboot_script went through a shell: %s created", pwned)
	}
	// echo got every word as an argument.
	if !strings.Contains(out.String(), "$(touch "+pwned+") ; touch "+pwned+" && touch") {
		t.Errorf("echo did not print its arguments verbatim:\n%s", out)
	}
}

func TestNewRejectsBadKeys(t *testing.T) {
	for _, tc := range []struct {
		raw    events.Data
		script []string
		want   string
	}{
		{events.Data{"boot_timeout": 0}, nil, "boot_timeout: 0s out of range"},
		{events.Data{"reboot_wait": "soon"}, nil, "reboot_wait"},
		{events.Data{"boot_check_interval": "3h"}, nil, "boot_check_interval: 3h0m0s out of range"},
		{nil, []string{"pdu on", "  "}, "reboot_script[1]: empty command"},
	} {
		_, err := noprovision.New(&drivers.DeviceConfig{Name: "x", Raw: tc.raw, RebootScript: tc.script})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%v, %q) = %v, want an error with %q", tc.raw, tc.script, err, tc.want)
		}
	}
}

func TestProvisionCancelledWhileWaiting(t *testing.T) {
	t.Parallel()
	srv := sshtest.Start(t, sshtest.Options{NoSFTP: true})
	srv.Stop()
	d, cfg := device(t, srv, events.Data{"reboot_wait": "1m"}, "true")
	run, _ := drivertest.NewRun(t, cfg, job(srv))
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	err := d.Provision(ctx, run)
	if !errors.Is(err, context.DeadlineExceeded) || drivers.IsRecovery(err) {
		t.Errorf("Provision cancelled = %v, want a context error, not a recovery failure", err)
	}
}

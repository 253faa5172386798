package fake_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/fake"
	"github.com/flingerlab/flinger/events"
)

func device(t *testing.T) *drivers.DeviceConfig {
	t.Helper()
	hc, err := drivers.ParseHost([]byte(`
host: test
devices:
  - agent_name: fake-001
    provision_type: fake
    job_queues: [fake, fake-001]
    device_ip: 127.0.0.1
    env: {FOO: bar}
`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return hc.Devices[0]
}

func newDriver(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) {
	cfg := device(t)
	d, err := drivers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d, cfg
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, newDriver)
}

func TestRegistered(t *testing.T) {
	for _, name := range []string{fake.Type, fake.Alias} {
		if c, ok := drivers.Canonical(name); !ok || c != fake.Type {
			t.Errorf("Canonical(%q) = %q, %v; want %q, true", name, c, ok, fake.Type)
		}
	}
	if cfg := device(t); cfg.Type != fake.Type {
		t.Errorf("provision_type fake parsed as %q, want %q", cfg.Type, fake.Type)
	}
}

func TestProvision(t *testing.T) {
	for _, tc := range []struct {
		name      string
		data      events.Data
		recovery  bool
		provError bool     // a *drivers.ProvisioningError
		errText   string   // in the error ("" for no error)
		output    []string // in the output
		absent    []string // not in the output
	}{
		{name: "prints provision_data", data: events.Data{"url": "http://example.com/image.img.xz", "nested": map[string]any{"a": 1}},
			output: []string{"This is a fake device connector!", `"url": "http://example.com/image.img.xz"`, `"a": 1`, "Fake provisioning done"}},
		{name: "no escaping of html characters", data: events.Data{"url": "http://x/?a=1&b=<2>"}, output: []string{`"http://x/?a=1&b=<2>"`}},
		{name: "output_lines", data: events.Data{"output_lines": 3},
			output: []string{"fake provision output line 1 of 3", "fake provision output line 3 of 3"}, absent: []string{"line 4 of"}},
		{name: "delay", data: events.Data{"delay": "1s"}, output: []string{"Fake provisioning will take 1s", "100% done", "Fake provisioning done"}},
		{name: "fail provision", data: events.Data{"fail": "provision"}, provError: true, errText: `provision_data.fail: "provision"`},
		{name: "fail recovery", data: events.Data{"fail": "recovery"}, recovery: true, errText: "could not be recovered"},
		{name: "fail firmware_update does not fail provision", data: events.Data{"fail": "firmware_update"}, output: []string{"Fake provisioning done"}},
		{name: "fail cleanup does not fail provision", data: events.Data{"fail": "cleanup"}, output: []string{"Fake provisioning done"}},
		{name: "unknown fail", data: events.Data{"fail": "explode"}, provError: true, errText: `fail: unknown value "explode" (known: provision, recovery, firmware_update, cleanup)`},
		{name: "fail not a string", data: events.Data{"fail": true}, provError: true, errText: "fail: must be a string"},
		{name: "bad delay", data: events.Data{"delay": "soon"}, provError: true, errText: "delay: invalid duration"},
		{name: "negative delay", data: events.Data{"delay": -3}, provError: true, errText: "delay: must not be negative"},
		{name: "bad output_lines", data: events.Data{"output_lines": "many"}, provError: true, errText: "output_lines: must be an integer"},
		{name: "too many output_lines", data: events.Data{"output_lines": fake.MaxOutputLines + 1}, provError: true, errText: "output_lines: 1000001 out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg := newDriver(t)
			run, out := drivertest.NewRun(t, cfg, &events.Job{JobQueue: "fake", ProvisionData: tc.data})
			err := d.Provision(t.Context(), run)
			if tc.errText == "" {
				if err != nil {
					t.Fatalf("Provision: %v", err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("Provision = %v, want an error containing %q", err, tc.errText)
				}
				var pe *drivers.ProvisioningError
				if got := errors.As(err, &pe); got != tc.provError {
					t.Errorf("Provision error %v: ProvisioningError = %v, want %v", err, got, tc.provError)
				}
				if got := drivers.IsRecovery(err); got != tc.recovery {
					t.Errorf("Provision error %v: IsRecovery = %v, want %v", err, got, tc.recovery)
				}
				wantCode := drivers.ExitFailed
				if tc.recovery {
					wantCode = drivers.ExitRecoveryFailed
				}
				if code := drivers.ExitCode(err); code != wantCode {
					t.Errorf("ExitCode(%v) = %d, want %d", err, code, wantCode)
				}
			}
			for _, s := range tc.output {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(out.String(), s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
		})
	}
}

func TestProvisionDelayIsCancellable(t *testing.T) {
	d, cfg := newDriver(t)
	run, out := drivertest.NewRun(t, cfg, &events.Job{JobQueue: "fake", ProvisionData: events.Data{"delay": 3600}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Provision(ctx, run) }()
	if !out.WaitFor("Fake provisioning will take 1h0m0s", 10*time.Second) {
		t.Fatalf("no delay announced; output:\n%s", out)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Provision cancelled = %v, want an error wrapping context.Canceled", err)
		}
		if !strings.Contains(out.String(), "interrupted") {
			t.Errorf("output does not say the delay was interrupted:\n%s", out)
		}
	case <-time.After(drivertest.CancelDeadline):
		t.Fatal("Provision did not return after cancellation")
	}
}

func TestFirmwareUpdate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pd, fw  events.Data
		errText string
		output  []string
	}{
		{"succeeds", nil, events.Data{"version": "1.2.3"}, "", []string{"Fake firmware update to version 1.2.3", "Fake firmware update done"}},
		{"no version", nil, events.Data{"ignore_failure": false}, "", []string{"gives no version"}},
		{"fails", events.Data{"fail": "firmware_update"}, events.Data{"version": "latest"}, `fake firmware update to version "latest" failed`, []string{"failed, as fail asks"}},
		{"fails, ignored", events.Data{"fail": "firmware_update"}, events.Data{"version": "latest", "ignore_failure": true}, "", []string{"ignore_failure: true; continuing"}},
		{"other fail mode", events.Data{"fail": "cleanup"}, events.Data{"version": "latest"}, "", []string{"Fake firmware update done"}},
		{"bad ignore_failure", nil, events.Data{"version": "latest", "ignore_failure": "yes"}, "firmware_update_data: ignore_failure: must be true or false", nil},
		{"bad version", nil, events.Data{"version": 3}, "firmware_update_data: version: must be a string", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg := newDriver(t)
			run, out := drivertest.NewRun(t, cfg, &events.Job{JobQueue: "fake", ProvisionData: tc.pd, FirmwareUpdateData: tc.fw})
			err := d.FirmwareUpdate(t.Context(), run)
			checkErr(t, "FirmwareUpdate", err, tc.errText)
			for _, s := range tc.output {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
		})
	}
}

func TestCleanup(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pd      events.Data
		errText string
	}{
		{"succeeds", nil, ""},
		{"other fail mode", events.Data{"fail": "provision"}, ""},
		{"fails", events.Data{"fail": "cleanup"}, `fake cleanup failed (provision_data.fail: "cleanup")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg := newDriver(t)
			run, _ := drivertest.NewRun(t, cfg, &events.Job{JobQueue: "fake", ProvisionData: tc.pd})
			checkErr(t, "Cleanup", d.Cleanup(t.Context(), run), tc.errText)
		})
	}
}

func checkErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: %v", what, err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("%s = %v, want an error containing %q", what, err, want)
	case want != "" && drivers.IsRecovery(err):
		t.Errorf("%s = %v: a recovery failure, want an ordinary failure", what, err)
	}
}

func TestReserveListsKeysWithoutNetwork(t *testing.T) {
	d, err := fake.New(&drivers.DeviceConfig{Name: "f-1", Type: fake.Type, DeviceIP: "192.0.2.9"})
	if err != nil {
		t.Fatal(err)
	}
	job := &events.Job{JobID: "j-f", ReserveData: &events.ReserveData{SSHKeys: []string{"lp:someone", "gh:other"}, Timeout: 60}}
	run, out := drivertest.NewRun(t, &drivers.DeviceConfig{Name: "f-1", Type: fake.Type, DeviceIP: "192.0.2.9"}, job)
	if err := d.Reserve(t.Context(), run); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	for _, s := range []string{"*** TESTFLINGER SYSTEM RESERVED ***", "SSH keys for this reservation: lp:someone, gh:other", "keys are not installed", "flinger cancel j-f"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
}

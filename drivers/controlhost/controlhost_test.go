package controlhost_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/controlhost"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sim/controlhostsim"
	"github.com/flingerlab/flinger/events"
)

func TestParseSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		host    string
		raw     events.Data
		def     controlhost.Defaults
		want    func(s *controlhost.Settings)
		wantErr []string
	}{
		{name: "no control host", host: "", raw: events.Data{"control_host_api_port": "bad"}, want: func(s *controlhost.Settings) { *s = controlhost.Settings{} }},
		{name: "defaults", host: "ch.lab", want: func(*controlhost.Settings) {}},
		{name: "host:port and keys", host: "ch.lab:2222",
			raw: events.Data{"control_host_api_port": 8080, "control_host_reboot_script": []any{"pdu off 4", "pdu  on 4"},
				"poweroff_script": "relay off", "control_host_online_timeout": "500ms", "control_host_shutdown_wait": 0,
				"control_host_setup_provisioning_data": map[string]any{"usb": "DUT"}, "control_host_manage_dut_power": true},
			want: func(s *controlhost.Settings) {
				s.SSHAddr, s.APIPort = "ch.lab:2222", 8080
				s.RebootScript = [][]string{{"pdu", "off", "4"}, {"pdu", "on", "4"}}
				s.PowerOffScript = [][]string{{"relay", "off"}}
				s.OnlineTimeout, s.ShutdownWait = 500*time.Millisecond, 0
				s.SetupProvisioningData = map[string]any{"usb": "DUT"}
				s.ManageDUTPower = true
			}},
		{name: "control_port wins", host: "ch.lab:2222", raw: events.Data{"control_port": 2200}, want: func(s *controlhost.Settings) { s.SSHAddr = "ch.lab:2200" }},
		{name: "connector defaults", host: "ch.lab", def: controlhost.Defaults{ManageDUTPower: true, SetupProvisioningData: map[string]any{"usb": "DUT"}},
			want: func(s *controlhost.Settings) {
				s.ManageDUTPower, s.SetupProvisioningData = true, map[string]any{"usb": "DUT"}
			}},
		{name: "device keys override the connector's", host: "ch.lab", def: controlhost.Defaults{ManageDUTPower: true},
			raw: events.Data{"control_host_manage_dut_power": false}, want: func(*controlhost.Settings) {}},
		{name: "bad values", host: "ch.lab",
			raw: events.Data{"control_host_api_port": 70000, "poweron_script": []any{"ok", 3}, "control_host_reboot_script": []any{"  "},
				"control_host_online_timeout": "0s", "control_host_check_interval": "soon", "control_host_setup_provisioning_data": "usb",
				"control_host_manage_dut_power": "yes"},
			wantErr: []string{"control_host_api_port: 70000 out of range", "poweron_script[1]: must be a string", "control_host_reboot_script[0]: empty command",
				"control_host_online_timeout: 0s out of range", "control_host_check_interval:", "control_host_setup_provisioning_data: must be a mapping",
				"control_host_manage_dut_power: must be true or false"}},
		{name: "bad host", host: "ch lab", wantErr: []string{`control_host: "ch lab" is not a host name`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := controlhost.ParseSettings(tc.host, tc.raw, tc.def)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("ParseSettings = %+v, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSettings: %v", err)
			}
			want := controlhost.Settings{
				Host: "ch.lab", SSHAddr: "ch.lab:22", APIPort: controlhost.DefaultAPIPort,
				OfflineTimeout: controlhost.DefaultOfflineTimeout, ShutdownWait: controlhost.DefaultShutdownWait,
				OnlineTimeout: controlhost.DefaultOnlineTimeout, ScriptTimeout: controlhost.DefaultScriptTimeout,
				CheckInterval: controlhost.DefaultCheckInterval, RequestTimeout: controlhost.DefaultRequestTimeout,
			}
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ParseSettings =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestClientRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		status   []int // answers, in order (the last repeats)
		call     func(context.Context, *controlhost.Client) error
		attempts int
		wantErr  bool
	}{
		{"setup retried on 503", []int{503, 503, 200}, func(ctx context.Context, c *controlhost.Client) error { return c.SetupTest(ctx) }, 3, false},
		{"setup not retried on 400", []int{400}, func(ctx context.Context, c *controlhost.Client) error { return c.SetupTest(ctx) }, 1, true},
		{"setup gives up", []int{502}, func(ctx context.Context, c *controlhost.Client) error { return c.SetupProvisioning(ctx, nil) }, 3, true},
		{"poweroff never repeated once sent", []int{503}, func(ctx context.Context, c *controlhost.Client) error { return c.PowerOff(ctx) }, 1, true},
		{"health", []int{200}, func(ctx context.Context, c *controlhost.Client) error { return c.Health(ctx, time.Second) }, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				w.WriteHeader(tc.status[min(i, len(tc.status)-1)])
				_, _ = w.Write([]byte(`{"status":"x"}`))
			}))
			defer srv.Close()
			c := &controlhost.Client{BaseURL: srv.URL, HTTP: srv.Client()}
			c.Backoff.Initial, c.Backoff.Max = time.Millisecond, time.Millisecond
			err := tc.call(t.Context(), c)
			if (err != nil) != tc.wantErr {
				t.Errorf("err = %v, want an error: %v", err, tc.wantErr)
			}
			var api *controlhost.APIError
			if err != nil && !errors.As(err, &api) {
				t.Errorf("err = %v (%T), want an *APIError", err, err)
			}
			if got := int(n.Load()); got != tc.attempts {
				t.Errorf("%d requests, want %d", got, tc.attempts)
			}
		})
	}
}

func TestClientRefused(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c := &controlhost.Client{BaseURL: url}
	c.Backoff.Initial, c.Backoff.Max = time.Millisecond, time.Millisecond
	start := time.Now()
	if err := c.PowerOff(t.Context()); err == nil {
		t.Fatal("PowerOff to a closed port succeeded")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("PowerOff to a closed port took %s", took)
	}
}

// rig is a simulated control host with a switch whose scripts stand for
// the device's control_host_reboot_script, poweroff_script and
// poweron_script.
type rig struct {
	ch  *controlhostsim.Server
	sw  *sim.Switch
	raw events.Data
}

// fast are short waits for the tests.
var fast = events.Data{
	"control_host_offline_timeout": "3s", "control_host_shutdown_wait": "50ms", "control_host_online_timeout": "5s",
	"control_host_check_interval": "50ms", "control_host_request_timeout": "2s", "control_host_script_timeout": "10s",
}

func newRig(t *testing.T, opts controlhostsim.Options, failReboot bool) *rig {
	t.Helper()
	if opts.BootTime == 0 {
		opts.BootTime = 100 * time.Millisecond
	}
	ch, err := controlhostsim.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	sw, err := sim.StartSwitch(t.Context(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	reboot, err := sw.Script("ch-reboot", func() error {
		ch.Record("reboot script")
		if failReboot {
			return errors.New("the PDU does not answer")
		}
		ch.PowerOn()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	off, err := sw.Script("dut-off", func() error { ch.Record("dut off"); return nil })
	if err != nil {
		t.Fatal(err)
	}
	on, err := sw.Script("dut-on", func() error { ch.Record("dut on"); return nil })
	if err != nil {
		t.Fatal(err)
	}
	raw := events.Data{"control_port": ch.SSHPort(), "control_host_api_port": ch.APIPort(),
		"control_host_reboot_script": []any{reboot}, "poweroff_script": []any{off}, "poweron_script": []any{on}}
	for k, v := range fast {
		raw[k] = v
	}
	return &rig{ch: ch, sw: sw, raw: raw}
}

func (r *rig) hooks(t *testing.T, def controlhost.Defaults, env ...string) (*controlhost.Hooks, *drivertest.Output) {
	t.Helper()
	s, err := controlhost.ParseSettings("127.0.0.1", r.raw, def)
	if err != nil {
		t.Fatal(err)
	}
	out := &drivertest.Output{}
	return controlhost.New(s, t.TempDir(), append([]string{"PATH=/usr/bin:/bin"}, env...), out, nil), out
}

// squeeze drops consecutive repeats (the health checks).
func squeeze(ev []string) []string { return slices.Compact(ev) }

func TestPreProvision(t *testing.T) {
	t.Parallel()
	const (
		poweroff = "POST " + controlhostsim.PathPowerOff
		health   = "GET " + controlhostsim.PathHealth
		setup    = "POST " + controlhostsim.PathSetupProvisioning
	)
	for _, tc := range []struct {
		name       string
		opts       controlhostsim.Options
		down       bool // the host is down before the hook
		failReboot bool
		def        controlhost.Defaults
		raw        events.Data
		env        []string
		events     []string
		notBack    string // the *NotBackError's What, if one is expected
		output     []string
	}{
		{name: "power cycle", events: []string{poweroff, "down", "reboot script", "power on", "up", health, setup},
			output: []string{"Asking the REST API of control host 127.0.0.1 to shut it down", "Control host 127.0.0.1 is down", "Running control_host_reboot_script[0]", "is back after", "for provisioning"}},
		{name: "DUT powered off meanwhile", def: controlhost.Defaults{ManageDUTPower: true},
			events: []string{"dut off", poweroff, "down", "reboot script", "power on", "up", health, "dut on", setup}},
		{name: "DUT power needs both scripts", def: controlhost.Defaults{ManageDUTPower: true}, raw: events.Data{"poweron_script": nil},
			events: []string{poweroff, "down", "reboot script", "power on", "up", health, setup}, output: []string{"not both configured"}},
		{name: "disabled", env: []string{controlhost.DisablePowerCycleEnv + "=1"}, events: []string{setup},
			output: []string{"Not power-cycling control host 127.0.0.1: DISABLE_CONTROL_HOST_POWERCYCLE is set"}},
		{name: "disabled, then enabled again", env: []string{controlhost.DisablePowerCycleEnv + "=1", controlhost.DisablePowerCycleEnv + "="},
			events: []string{poweroff, "down", "reboot script", "power on", "up", health, setup}},
		{name: "no reboot script", raw: events.Data{"control_host_reboot_script": nil}, events: []string{setup},
			output: []string{"no control_host_reboot_script is configured"}},
		{name: "REST down, SSH up", opts: controlhostsim.Options{Faults: controlhostsim.Faults{RESTDown: true}}, events: nil,
			output: []string{"does not take the shutdown", "answers on its SSH port", "not rebooting it", "Could not set up control host 127.0.0.1 for provisioning (continuing)"}},
		{name: "REST down, host down", opts: controlhostsim.Options{Faults: controlhostsim.Faults{RESTDown: true}}, down: true,
			events: []string{"down", "reboot script", "power on", "up"}, output: []string{"does not answer on its SSH port either", "answers on its SSH port after"}},
		{name: "never comes back", opts: controlhostsim.Options{Faults: controlhostsim.Faults{NeverComesBack: true}}, raw: events.Data{"control_host_online_timeout": "1s"},
			events: []string{poweroff, "down", "reboot script", "power on"}, notBack: "its REST API"},
		{name: "never comes back, DUT powered on all the same", opts: controlhostsim.Options{Faults: controlhostsim.Faults{NeverComesBack: true}},
			def: controlhost.Defaults{ManageDUTPower: true}, raw: events.Data{"control_host_online_timeout": "1s"},
			events: []string{"dut off", poweroff, "down", "reboot script", "power on", "dut on"}, notBack: "its REST API"},
		{name: "REST down, never comes back", opts: controlhostsim.Options{Faults: controlhostsim.Faults{RESTDown: true, NeverComesBack: true}}, down: true,
			raw: events.Data{"control_host_online_timeout": "1s"}, events: []string{"down", "reboot script", "power on"}, notBack: "its SSH port"},
		{name: "reboot script fails, host back by itself", opts: controlhostsim.Options{DownTime: 200 * time.Millisecond}, failReboot: true,
			events: []string{poweroff, "down", "reboot script", "power on", "up", health, setup},
			output: []string{"control_host_reboot_script[0] failed", "(continuing)", "is back after"}},
		{name: "reboot script fails, host stays down", failReboot: true, raw: events.Data{"control_host_online_timeout": "1s"},
			events: []string{poweroff, "down", "reboot script"}, notBack: "its REST API"},
		{name: "setup fails", opts: controlhostsim.Options{Faults: controlhostsim.Faults{SetupFails: true}},
			events: []string{poweroff, "down", "reboot script", "power on", "up", health, setup},
			output: []string{"Could not set up control host 127.0.0.1 for provisioning (continuing)", "500 Internal Server Error"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, tc.opts, tc.failReboot)
			for k, v := range tc.raw {
				r.raw[k] = v
			}
			if tc.down {
				r.ch.PowerOff()
			}
			h, out := r.hooks(t, tc.def, tc.env...)
			err := h.PreProvision(t.Context())
			var nb *controlhost.NotBackError
			switch {
			case tc.notBack == "" && err != nil:
				t.Errorf("PreProvision: %v", err)
			case tc.notBack != "" && !errors.As(err, &nb):
				t.Errorf("PreProvision = %v, want a *NotBackError", err)
			case tc.notBack != "" && !strings.Contains(nb.What, tc.notBack):
				t.Errorf("NotBackError waited for %q, want %q", nb.What, tc.notBack)
			}
			// Events after the hook returned (a power-on in flight) do not matter.
			if got := squeeze(r.ch.Events()); !slices.Equal(got[:min(len(got), len(tc.events))], tc.events) || len(got) < len(tc.events) {
				t.Errorf("events:\n%q\nwant\n%q", got, tc.events)
			}
			for _, s := range tc.output {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q", s)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

func TestPreProvisionBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		def  controlhost.Defaults
		raw  events.Data
		want string
	}{
		{"none", controlhost.Defaults{}, nil, ""},
		{"the connector's", controlhost.Defaults{SetupProvisioningData: map[string]any{"usb": "DUT"}}, nil, `{"usb":"DUT"}`},
		{"the device's", controlhost.Defaults{SetupProvisioningData: map[string]any{"usb": "DUT"}},
			events.Data{"control_host_setup_provisioning_data": map[string]any{"sd": "host"}}, `{"sd":"host"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, controlhostsim.Options{}, false)
			for k, v := range tc.raw {
				r.raw[k] = v
			}
			h, out := r.hooks(t, tc.def, controlhost.DisablePowerCycleEnv+"=yes")
			if err := h.PreProvision(t.Context()); err != nil {
				t.Fatalf("PreProvision: %v\n%s", err, out)
			}
			calls := r.ch.CallsTo(controlhostsim.PathSetupProvisioning)
			if len(calls) != 1 {
				t.Fatalf("%d setup/provisioning requests, want 1", len(calls))
			}
			if got := string(calls[0].Body); got != tc.want {
				t.Errorf("body %q, want %q", got, tc.want)
			}
			if tc.want != "" && !json.Valid(calls[0].Body) {
				t.Errorf("body is not JSON: %q", calls[0].Body)
			}
		})
	}
}

func TestPreProvisionCancelled(t *testing.T) {
	t.Parallel()
	r := newRig(t, controlhostsim.Options{Faults: controlhostsim.Faults{NeverComesBack: true}}, false)
	r.raw["control_host_online_timeout"] = "60s"
	h, out := r.hooks(t, controlhost.Defaults{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.PreProvision(ctx) }()
	if err := r.ch.Host().WaitState(t.Context(), sim.Off); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("PreProvision cancelled = %v, want an error wrapping context.Canceled", err)
		}
		var nb *controlhost.NotBackError
		if errors.As(err, &nb) {
			t.Errorf("a cancelled hook returned a *NotBackError: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("PreProvision did not return within 2s of its cancellation; output:\n%s", out)
	}
}

func TestPreTest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		faults controlhostsim.Faults
		output string
	}{
		{"set up", controlhostsim.Faults{}, "Setting up control host 127.0.0.1 for the test phase"},
		{"fails", controlhostsim.Faults{SetupFails: true}, "Could not set up control host 127.0.0.1 for the test phase (continuing)"},
		{"REST down", controlhostsim.Faults{RESTDown: true}, "Could not set up control host 127.0.0.1 for the test phase (continuing)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, controlhostsim.Options{Faults: tc.faults}, false)
			h, out := r.hooks(t, controlhost.Defaults{})
			if err := h.PreTest(t.Context()); err != nil {
				t.Fatalf("PreTest: %v", err)
			}
			if !strings.Contains(out.String(), tc.output) {
				t.Errorf("output lacks %q:\n%s", tc.output, out)
			}
			want := 1
			if tc.faults.RESTDown {
				want = 0
			} else if tc.faults.SetupFails {
				want = 1 // a 500 is not retried
			}
			if got := len(r.ch.CallsTo(controlhostsim.PathSetupTest)); got != want {
				t.Errorf("%d setup/test requests, want %d", got, want)
			}
			if got := r.sw.Calls("ch-reboot"); got != 0 {
				t.Errorf("the pre-test hook ran control_host_reboot_script %d times", got)
			}
		})
	}
}

func TestNoControlHost(t *testing.T) {
	t.Parallel()
	h := controlhost.New(controlhost.Settings{}, t.TempDir(), nil, nil, nil)
	if err := h.PreProvision(t.Context()); err != nil {
		t.Errorf("PreProvision without a control host: %v", err)
	}
	if err := h.PreTest(t.Context()); err != nil {
		t.Errorf("PreTest without a control host: %v", err)
	}
}

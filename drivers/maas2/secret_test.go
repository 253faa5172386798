package maas2_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/connector"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/maas2"
	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
	"github.com/flingerlab/flinger/drivers/sim/maassim"
	"github.com/flingerlab/flinger/events"
)

// The parts of a distinctive API key, which must never be shown.
const (
	secretConsumer = "SeCrEtCoNsUmEr4242"
	secretToken    = "SeCrEtToKeN4242xyz"
	secretSecret   = "SeCrEtSeCrEt4242abcdefghijklmnop"
	secretKey      = secretConsumer + ":" + secretToken + ":" + secretSecret
)

// leaks returns the parts of the key found in text.
func leaks(text string) []string {
	var found []string
	for _, p := range []string{secretConsumer, secretToken, secretSecret} {
		if strings.Contains(text, p) {
			found = append(found, p)
		}
	}
	return found
}

// TestAPIKeyNeverShown runs every phase, through the driver and through
// the connector command line, with a distinctive API key (right, with a
// wrong token, with a wrong secret; from a file and inline), with MAAS
// failing requests so that retries are reported, and checks that no part
// of the key appears in the output, the diagnostics (debug level), the
// errors, device-connector-error.json or the events made of them.
func TestAPIKeyNeverShown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		server string // the key the server accepts
		inline bool
	}{
		{"right key", secretKey, false},
		{"right key inline", secretKey, true},
		{"wrong token", secretConsumer + ":OtherToken1234:" + secretSecret, false},
		{"wrong secret", secretConsumer + ":" + secretToken + ":OtherSecret1234", false},
		{"wrong consumer", "OtherConsumer:" + secretToken + ":" + secretSecret, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			su := setup{
				server: maassim.Options{Key: tc.server, Faults: maassim.Faults{FailRequests: 2}},
				// The first deployment fails, so that MAAS's messages and
				// the installation output are shown too.
				machine: maassim.MachineOptions{Status: maassim.StatusDeployed, Faults: maassim.MachineFaults{DeployFails: true}},
				key:     secretKey,
			}
			if tc.inline {
				su.raw = events.Data{"maas_api_key": secretKey}
			}
			r := startRig(t, su)
			if tc.inline {
				delete(r.cfg.Raw, "maas_credentials")
			}
			var shown strings.Builder
			logs := &drivertest.Output{}
			log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			d := newDriver(t, r.cfg)
			job := jobWith(events.Data{"distro": "noble", "user_data": "#cloud-config\n"})
			job.ReserveData = &events.ReserveData{Timeout: 1}
			job.TestData = &events.TestData{TestCmds: events.ListCmds("true")}
			for _, ph := range drivertest.Phases {
				run, out := drivertest.NewRun(t, r.cfg, job)
				run.Log = log
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				err := ph.Call(ctx, d, run)
				cancel()
				if ph.Name == events.PhaseProvision {
					// Once more, now that the deployment works.
					run2, out2 := drivertest.NewRun(t, r.cfg, job)
					run2.Log = log
					r.m.SetFaults(maassim.MachineFaults{})
					err2 := d.Provision(t.Context(), run2)
					shown.WriteString(out2.String())
					shown.WriteString(errText(err2))
					fmt.Fprintf(&shown, "%+v %#v\n", err2, err2)
				}
				shown.WriteString(out.String())
				shown.WriteString(errText(err))
				fmt.Fprintf(&shown, "%+v %#v\n", err, err)
				ev := events.NewEvent(events.PhaseFail(ph.Name))
				ev.Detail = errText(err)
				b, _ := json.Marshal(ev)
				shown.Write(b)
				t.Logf("%s: %v", ph.Name, err)
			}
			shown.WriteString(logs.String())

			// Through the connector, whose error file is what events carry.
			for _, stage := range []string{connector.StageProvision, connector.StageCleanup} {
				dir := t.TempDir()
				raw := map[string]any{}
				for k, v := range r.cfg.Raw {
					raw[k] = v
				}
				raw["agent_name"], raw["device_ip"], raw["ssh_port"] = r.cfg.Name, r.cfg.DeviceIP, r.cfg.SSHPort
				y, _ := yaml.Marshal(raw)
				j, _ := json.Marshal(job)
				if err := os.WriteFile(filepath.Join(dir, "default.yaml"), y, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "testflinger.json"), j, 0o600); err != nil {
					t.Fatal(err)
				}
				stdout, stderr := &drivertest.Output{}, &drivertest.Output{}
				rc := connector.Run(t.Context(), connector.Options{
					Type: maassim.Type, Stage: stage, ConfigPath: "default.yaml", JobPath: "testflinger.json",
					Dir: dir, Stdout: stdout, Stderr: stderr, Log: log, SSH: r.cfg.SSH,
				})
				t.Logf("connector %s: exit %d", stage, rc)
				shown.WriteString(stdout.String() + stderr.String())
				for _, f := range []string{"device-connector-error.json", "device-info.json"} {
					b, _ := os.ReadFile(filepath.Join(dir, f))
					shown.Write(b)
				}
			}
			shown.WriteString(logs.String())

			all := shown.String()
			if found := leaks(all); len(found) > 0 {
				for _, line := range strings.Split(all, "\n") {
					if len(leaks(line)) > 0 {
						t.Errorf("the key shows in: %s", line)
					}
				}
			}
			if tc.server != secretKey && !strings.Contains(all, "refused the API key") {
				t.Errorf("a refused key is not reported")
			}
			if tc.server == secretKey && !strings.Contains(all, "curtin: Installation failed") {
				t.Errorf("the failed deployment's output is not shown")
			}
		})
	}
}

func TestKeyFormatting(t *testing.T) {
	t.Parallel()
	k, err := maasapi.ParseKey(secretKey)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("key", "key", k, "opts", maasapi.Options{Key: k, URL: "http://maas"})
	all := fmt.Sprintf("%v %+v %#v %s %q", k, k, k, k, k) + fmt.Sprintf("%+v %#v", maasapi.Options{Key: k}, maasapi.Options{Key: k}) + logs.String()
	if found := leaks(all); len(found) > 0 {
		t.Errorf("the key shows when printed or logged: %s", all)
	}
	for _, bad := range []string{"only:two", secretConsumer + "::" + secretSecret, "a:b:c:d", "a b:c:d", ""} {
		_, err := maasapi.ParseKey(bad)
		if err == nil {
			t.Errorf("ParseKey(%q) did not fail", bad)
			continue
		}
		if found := leaks(err.Error()); len(found) > 0 || (len(bad) > 3 && strings.Contains(err.Error(), bad)) {
			t.Errorf("ParseKey's error shows the key: %v", err)
		}
	}
}

// TestCredentialsFile checks how maas_credentials is read: a file other
// users can read, a missing file, and a file that is not a key fail the
// phase (not a recovery failure), naming the file and never its content.
func TestCredentialsFile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		missing bool
		want    string
	}{
		{"readable by others", secretKey, 0o644, false, "other users can read or write it (mode 0644)"},
		{"missing", "", 0o600, true, "cannot be opened: no such file or directory"},
		{"not a key", "maas-admin " + secretSecret + "\n", 0o600, false, "a MAAS API key is three parts separated by colons"},
		{"empty", "\n", 0o600, false, "the MAAS API key is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := startRig(t, setup{})
			path := filepath.Join(t.TempDir(), "key")
			if !tc.missing {
				if err := os.WriteFile(path, []byte(tc.content), tc.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			r.cfg.Raw["maas_credentials"] = path
			d := newDriver(t, r.cfg)
			run, out := drivertest.NewRun(t, r.cfg, jobWith(nil))
			err := d.Provision(t.Context(), run)
			var ce *maas2.CredentialsError
			if !errors.As(err, &ce) || drivers.IsRecovery(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Provision = %v, want a *maas2.CredentialsError naming %s and saying %q", err, path, tc.want)
			}
			if found := leaks(out.String() + errText(err)); len(found) > 0 {
				t.Errorf("the file's content shows: %v", err)
			}
			if n := len(r.srv.Requests()); n != 0 {
				t.Errorf("MAAS was asked %d requests without a key", n)
			}
		})
	}
}

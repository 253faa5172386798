package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runFlinger runs the flinger command line in-process and returns the
// exit status main would give (see main) and the output.
func runFlinger(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var ee *exitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.code, out.String()
	}
	return 1, out.String() + err.Error()
}

func TestConnectorCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "default.yaml")
	if err := os.WriteFile(cfg, []byte("agent_name: dev-1\ndevice_ip: 10.0.3.11\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeJob := func(name, text string) string {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return name // relative: taken from --dir
	}
	ok := writeJob("ok.json", `{"job_id": "j1", "job_queue": "q", "created_at": "now", "provision_data": {"url": "http://x"}}`)
	broken := writeJob("broken.json", `{"job_queue": "q", "provision_data": {"fail": "recovery"}, "test_data": {"test_cmds": "echo hi; exit 3"}}`)

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"provision ok", []string{"connector", "fake_connector", "provision", "-c", cfg, "--dir", dir, ok}, 0, "fake device connector"},
		{"--config", []string{"connector", "fake_connector", "cleanup", "--config", cfg, "--dir", dir, ok}, 0, "Fake cleanup done"},
		{"recovery failure", []string{"connector", "fake", "provision", "-c", cfg, "--dir", dir, broken}, 46, "RecoveryError"},
		{"runtest status", []string{"connector", "fake", "runtest", "-c", cfg, "--dir", dir, broken}, 3, "hi"},
		{"unknown stage", []string{"connector", "fake", "flash", "-c", cfg, "--dir", dir, ok}, 1, "valid stages"},
		{"no config", []string{"connector", "fake", "provision", "--dir", dir, ok}, 1, "config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runFlinger(t, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Errorf("flinger %s: exit status %d, want %d; output (want %q):\n%s", strings.Join(tt.args, " "), code, tt.code, tt.want, out)
			}
		})
	}

	data, err := os.ReadFile(filepath.Join(dir, "device-info.json"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		DeviceInfo map[string]string `json:"device_info"`
	}
	if err := json.Unmarshal(data, &info); err != nil || info.DeviceInfo["agent_name"] != "dev-1" || info.DeviceInfo["device_ip"] != "10.0.3.11" {
		t.Errorf("device-info.json = %s (%v)", data, err)
	}
	data, err = os.ReadFile(filepath.Join(dir, "device-connector-error.json"))
	if err != nil || !bytes.Contains(data, []byte(`"provision_exception_info"`)) {
		t.Errorf("device-connector-error.json = %s (%v)", data, err)
	}
}

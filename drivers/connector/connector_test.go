package connector_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/connector"
	_ "github.com/flingerlab/flinger/drivers/fake"
)

// deviceYAML is a device's Testflinger connector config (default.yaml):
// device keys only, no provision_type or job_queues.
const deviceYAML = `agent_name: dev-1
device_ip: 10.0.3.11
reboot_script: [echo power-cycle, echo done]
env:
  WIFI_SSID: lab
  CHANNEL: 6
some_connector_key: kept
`

// safeBuffer is a bytes.Buffer safe for concurrent use that remembers
// when each write arrived.
type safeBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes []time.Time
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes = append(s.writes, time.Now())
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// setup writes the device config and the job (a JSON value, or raw text
// when job is a string) into a fresh directory and returns the options
// for stage.
func setup(t *testing.T, stage string, job any) (connector.Options, *safeBuffer, *safeBuffer) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "default.yaml")
	if err := os.WriteFile(cfg, []byte(deviceYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	var data []byte
	if s, ok := job.(string); ok {
		data = []byte(s)
	} else {
		var err error
		if data, err = json.Marshal(job); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "testflinger.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr := &safeBuffer{}, &safeBuffer{}
	return connector.Options{
		Type:       "fake_connector",
		Stage:      stage,
		ConfigPath: cfg,
		JobPath:    "testflinger.json", // relative: taken from Dir
		Dir:        dir,
		Stdout:     stdout,
		Stderr:     stderr,
	}, stdout, stderr
}

// job returns a job as Testflinger's agent writes testflinger.json: with
// fields the server adds.
func job(fields map[string]any) map[string]any {
	j := map[string]any{
		"job_id":             "0a6b3c4e-1f2d-4c5b-8a9e-7d6c5b4a3f2e",
		"job_queue":          "rpi4b",
		"created_at":         "2026-11-21T10:00:00Z",
		"attachments_status": "none",
		"result_data":        map[string]any{"job_state": "waiting"},
	}
	for k, v := range fields {
		j[k] = v
	}
	return j
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", filepath.Base(path), err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s is not one JSON object: %v\n%s", filepath.Base(path), err, data)
	}
	return m
}

// exceptionName returns <stage>_exception_info.exception_name of the error file in dir.
func exceptionName(t *testing.T, dir, stage string) string {
	t.Helper()
	m := readJSON(t, filepath.Join(dir, connector.ErrorFile))
	info, ok := m[stage+"_exception_info"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no %s_exception_info: %v", connector.ErrorFile, stage, m)
	}
	for _, k := range []string{"exception_name", "exception_message", "exception_cause"} {
		if _, ok := info[k]; !ok {
			t.Errorf("%s_exception_info has no %s: %v", stage, k, info)
		}
	}
	name, _ := info["exception_name"].(string)
	return name
}

func TestStages(t *testing.T) {
	t.Parallel()
	wantInfo := map[string]any{"device_ip": "10.0.3.11", "agent_name": "dev-1"}
	tests := []struct {
		name      string
		typ       string // default fake_connector
		stage     string
		job       any
		code      int
		stdout    []string // substrings of the output
		stderr    []string // substrings of the error messages
		exception string   // exception_name recorded for the stage; "": no error file
		noInfo    bool     // device-info.json must not be written
	}{
		{name: "provision ok", stage: "provision", job: job(map[string]any{"provision_data": map[string]any{"url": "http://x/img"}}),
			code: 0, stdout: []string{"This is a fake device connector!", `"url": "http://x/img"`}},
		{name: "provision alias type", typ: "fake", stage: "provision", job: job(nil), code: 0},
		{name: "provision recovery failure", stage: "provision", job: job(map[string]any{"provision_data": map[string]any{"fail": "recovery"}}),
			code: 46, exception: "RecoveryError", stderr: []string{"RecoveryError"}},
		{name: "provision failure", stage: "provision", job: job(map[string]any{"provision_data": map[string]any{"fail": "provision"}}),
			code: 1, exception: "ProvisioningError"},
		{name: "firmware_update ok", stage: "firmware_update", job: job(map[string]any{"firmware_update_data": map[string]any{"version": "latest"}}),
			code: 0, stdout: []string{"Fake firmware update to version latest"}},
		{name: "firmware_update failure", stage: "firmware_update",
			job:  job(map[string]any{"provision_data": map[string]any{"fail": "firmware_update"}, "firmware_update_data": map[string]any{"version": "1.2"}}),
			code: 1, exception: "Exception"},
		{name: "runtest script exit 3", stage: "runtest", job: job(map[string]any{"test_data": map[string]any{"test_cmds": "echo hello from the test\nexit 3"}}),
			code: 3, stdout: []string{"hello from the test"}},
		{name: "runtest list: last rc", stage: "runtest", job: job(map[string]any{"test_data": map[string]any{"test_cmds": []string{"exit 7", "echo second; exit 2"}}}),
			code: 2, stdout: []string{"Running: exit 7", "second"}},
		{name: "runtest list: last ok", stage: "runtest", job: job(map[string]any{"test_data": map[string]any{"test_cmds": []string{"exit 7", "true"}}}),
			code: 0},
		{name: "runtest environment", stage: "runtest",
			job: job(map[string]any{"test_data": map[string]any{
				"test_cmds": `test "$WIFI_SSID/$CHANNEL/$AGENT_NAME/$REBOOT_SCRIPT/$TOKEN" = "lab/6/dev-1/echo power-cycle;echo done/s3cret" || exit 9`,
				"secrets":   map[string]string{"TOKEN": "s3cret"},
			}}),
			code: 0},
		{name: "allocate", stage: "allocate", job: job(map[string]any{"allocate_data": map[string]any{"allocate": true}}),
			code: 0, stdout: []string{"Device dev-1 allocated"}},
		{name: "cleanup ok", stage: "cleanup", job: job(nil), code: 0, stdout: []string{"Fake cleanup done"}},
		{name: "cleanup failure", stage: "cleanup", job: job(map[string]any{"provision_data": map[string]any{"fail": "cleanup"}}),
			code: 1, exception: "Exception"},
		{name: "job not JSON", stage: "provision", job: "job_queue: rpi4b\n",
			code: 1, exception: "JSONDecodeError", stderr: []string{"testflinger.json", "not a JSON job"}},
		{name: "job without job_queue", stage: "provision", job: map[string]any{"provision_data": map[string]any{}},
			code: 1, exception: "ValueError", stderr: []string{"testflinger.json", "job_queue"}},
		{name: "job field of the wrong type", stage: "runtest", job: job(map[string]any{"test_data": "echo"}),
			code: 1, exception: "ValueError", stderr: []string{"testflinger.json", "test_data"}},
		{name: "unknown type", typ: "maas9", stage: "provision", job: job(nil),
			code: 1, stderr: []string{`unknown connector type "maas9"`, "fake_connector"}, noInfo: true},
		{name: "unknown stage", stage: "test", job: job(nil),
			code: 1, stderr: []string{`unknown stage "test"`, "runtest", "firmware_update", "cleanup"}, noInfo: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts, stdout, stderr := setup(t, tt.stage, tt.job)
			if tt.typ != "" {
				opts.Type = tt.typ
			}
			code := connector.Run(context.Background(), opts)
			if code != tt.code {
				t.Errorf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			for _, s := range tt.stderr {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
			infoPath := filepath.Join(opts.Dir, connector.DeviceInfoFile)
			if tt.noInfo {
				if _, err := os.Stat(infoPath); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s written for a usage error (stat: %v)", connector.DeviceInfoFile, err)
				}
			} else {
				got := readJSON(t, infoPath)
				if info, _ := got["device_info"].(map[string]any); len(info) != 2 || info["device_ip"] != wantInfo["device_ip"] || info["agent_name"] != wantInfo["agent_name"] {
					t.Errorf("%s = %v, want {device_info: %v}", connector.DeviceInfoFile, got, wantInfo)
				}
			}
			errPath := filepath.Join(opts.Dir, connector.ErrorFile)
			if tt.exception == "" {
				if data, err := os.ReadFile(errPath); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s written on success: %s (%v)", connector.ErrorFile, data, err)
				}
				return
			}
			if got := exceptionName(t, opts.Dir, tt.stage); got != tt.exception {
				t.Errorf("exception_name %q, want %q", got, tt.exception)
			}
		})
	}
}

// TestErrorFileMerges checks that two failing stages in one directory
// leave one JSON object holding both, starting from the empty file the
// agent creates.
func TestErrorFileMerges(t *testing.T) {
	t.Parallel()
	j := job(map[string]any{"provision_data": map[string]any{"fail": "recovery"}})
	opts, _, _ := setup(t, "provision", j)
	errPath := filepath.Join(opts.Dir, connector.ErrorFile)
	if err := os.WriteFile(errPath, nil, 0o644); err != nil { // the agent clears it before the first phase
		t.Fatal(err)
	}
	if code := connector.Run(context.Background(), opts); code != drivers.ExitRecoveryFailed {
		t.Fatalf("provision: exit status %d, want 46", code)
	}
	// The cleanup stage fails too, in the same directory.
	data, _ := json.Marshal(job(map[string]any{"provision_data": map[string]any{"fail": "cleanup"}}))
	if err := os.WriteFile(filepath.Join(opts.Dir, "testflinger.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	opts.Stage = "cleanup"
	if code := connector.Run(context.Background(), opts); code != drivers.ExitFailed {
		t.Fatalf("cleanup: exit status %d, want 1", code)
	}
	if got := exceptionName(t, opts.Dir, "provision"); got != "RecoveryError" {
		t.Errorf("provision exception_name %q, want RecoveryError", got)
	}
	if got := exceptionName(t, opts.Dir, "cleanup"); got == "" {
		t.Errorf("cleanup exception_name empty")
	}
	m := readJSON(t, errPath)
	info := m["provision_exception_info"].(map[string]any)
	if msg, _ := info["exception_message"].(string); !strings.Contains(msg, "could not be recovered") {
		t.Errorf("provision exception_message %q", msg)
	}
	if info["exception_cause"] != nil {
		t.Errorf("provision exception_cause %v, want null", info["exception_cause"])
	}
}

// TestErrorFileReadsAppendedObjects checks that a file left by
// Testflinger's connector (objects appended one after the other) is merged.
func TestErrorFileReadsAppendedObjects(t *testing.T) {
	t.Parallel()
	opts, _, _ := setup(t, "cleanup", job(map[string]any{"provision_data": map[string]any{"fail": "cleanup"}}))
	old := `{"provision_exception_info": {"exception_name": "ProvisioningError", "exception_message": "a", "exception_cause": null}}` +
		`{"firmware_update_exception_info": {"exception_name": "Exception", "exception_message": "b", "exception_cause": null}}`
	errPath := filepath.Join(opts.Dir, connector.ErrorFile)
	if err := os.WriteFile(errPath, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := connector.Run(context.Background(), opts); code != 1 {
		t.Fatalf("exit status %d, want 1", code)
	}
	m := readJSON(t, errPath)
	for _, k := range []string{"provision_exception_info", "firmware_update_exception_info", "cleanup_exception_info"} {
		if _, ok := m[k]; !ok {
			t.Errorf("%s lost %s: %v", connector.ErrorFile, k, m)
		}
	}
}

// TestRuntestStreams checks that the test's output reaches Stdout while
// the test runs, not when it ends.
func TestRuntestStreams(t *testing.T) {
	t.Parallel()
	opts, stdout, _ := setup(t, "runtest", job(map[string]any{"test_data": map[string]any{"test_cmds": "echo started\nsleep 1\nexit 3"}}))
	code := connector.Run(context.Background(), opts)
	end := time.Now()
	if code != 3 {
		t.Fatalf("exit status %d, want 3\n%s", code, stdout)
	}
	stdout.mu.Lock()
	first := stdout.writes[0]
	stdout.mu.Unlock()
	if !strings.HasPrefix(stdout.String(), "started") {
		t.Fatalf("first output %q, want the test's", stdout)
	}
	if gap := end.Sub(first); gap < 200*time.Millisecond {
		t.Errorf("first output came %v before the end: not streamed", gap)
	}
}

// TestRuntestCancel checks that cancelling ctx stops a long test promptly
// with a non-zero status.
func TestRuntestCancel(t *testing.T) {
	t.Parallel()
	opts, stdout, _ := setup(t, "runtest", job(map[string]any{"test_data": map[string]any{"test_cmds": "echo started\nsleep 60"}}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(stdout.String(), "started") && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	start := time.Now()
	code := connector.Run(ctx, opts)
	if code == 0 {
		t.Fatalf("exit status 0 after cancel, want non-zero\n%s", stdout)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("took %v after cancel", d)
	}
	if got := exceptionName(t, opts.Dir, "runtest"); got != "CancelledError" {
		t.Errorf("exception_name %q, want CancelledError", got)
	}
	t.Logf("exit status %d", code)
}

func TestReserveHolds(t *testing.T) {
	t.Parallel()
	opts, stdout, _ := setup(t, "reserve", job(map[string]any{"reserve_data": map[string]any{"ssh_keys": []string{"lp:someone"}, "timeout": 1}}))
	start := time.Now()
	code := connector.Run(context.Background(), opts)
	d := time.Since(start)
	if code != 0 {
		t.Fatalf("exit status %d, want 0\n%s", code, stdout)
	}
	if d < 900*time.Millisecond || d > 10*time.Second {
		t.Errorf("reserve held for %v, want about 1s", d)
	}
	if !strings.Contains(stdout.String(), "*** TESTFLINGER SYSTEM RESERVED ***") {
		t.Errorf("no reservation banner:\n%s", stdout)
	}
}

func TestReserveEndsWithContext(t *testing.T) {
	t.Parallel()
	opts, _, _ := setup(t, "reserve", job(map[string]any{"reserve_data": map[string]any{"timeout": "1h"}}))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if code := connector.Run(ctx, opts); code != 0 {
		t.Fatalf("exit status %d, want 0 (ending a reservation early is no failure)", code)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("reserve took %v after its context ended", d)
	}
}

func TestMissingConfig(t *testing.T) {
	t.Parallel()
	opts, _, stderr := setup(t, "provision", job(nil))
	opts.ConfigPath = filepath.Join(opts.Dir, "nope.yaml")
	if code := connector.Run(context.Background(), opts); code != 1 {
		t.Fatalf("exit status %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "nope.yaml") {
		t.Errorf("stderr does not name the file: %s", stderr)
	}
	if got := exceptionName(t, opts.Dir, "provision"); got != "FileNotFoundError" {
		t.Errorf("exception_name %q, want FileNotFoundError", got)
	}
}

func TestLoadDeviceLenient(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "default.yaml")
	yaml := "agent_name: dev-2\nserial_host: console\nserial_port: \"7001\"\nreboot_script: pdu-cycle 3\nenv: {A: 1, B: true, C: null}\n"
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := connector.LoadDevice(path, "fake_connector")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "dev-2" || cfg.Type != "fake_connector" || cfg.SerialPort != 7001 || len(cfg.RebootScript) != 1 ||
		cfg.Env["A"] != "1" || cfg.Env["B"] != "true" || cfg.Env["C"] != "" || len(cfg.Queues) != 0 {
		t.Errorf("LoadDevice = %+v", cfg)
	}
	if err := os.WriteFile(path, []byte("agent_name: x\nserial_port: console\nenv: [a]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = connector.LoadDevice(path, "fake_connector")
	if err == nil || !strings.Contains(err.Error(), "serial_port") || !strings.Contains(err.Error(), "env") || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadDevice of a bad config: %v", err)
	}
}

func TestLoadJobLenient(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "testflinger.json")
	doc := job(map[string]any{
		"global_timeout": "2h", "output_timeout": 900.0, "job_priority": "5",
		"reserve_data":   map[string]any{"timeout": "3600", "ssh_keys": []string{"gh:x"}},
		"test_data":      map[string]any{"test_cmds": []string{"a", "b"}, "unknown_future_key": 1},
		"new_server_key": map[string]any{"x": 1},
	})
	data, _ := json.Marshal(doc)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := connector.LoadJob(path)
	if err != nil {
		t.Fatal(err)
	}
	if j.JobQueue != "rpi4b" || j.GlobalTimeout != 7200 || j.OutputTimeout != 900 || j.JobPriority != 5 ||
		j.ReserveData.Timeout != 3600 || !j.TestData.TestCmds.IsList || len(j.TestData.TestCmds.List) != 2 {
		t.Errorf("LoadJob = %+v", j)
	}
}

func TestDescribe(t *testing.T) {
	t.Parallel()
	cause := errors.New("reboot script timed out")
	tests := []struct {
		err          error
		name, msg    string
		cause        string // "": null
		causePresent bool
	}{
		{&drivers.RecoveryError{Err: errors.New("stuck")}, "RecoveryError", "stuck", "", false},
		{drivers.Recovery("power cycle: %w", cause), "RecoveryError", "power cycle: reboot script timed out", "reboot script timed out", true},
		{&drivers.ProvisioningError{Err: errors.New("bad image")}, "ProvisioningError", "bad image", "", false},
		{errors.New("plain"), "Exception", "plain", "", false},
		{context.DeadlineExceeded, "TimeoutError", "context deadline exceeded", "", false},
		{errors.Join(errors.ErrUnsupported), "NotImplementedError", "unsupported operation", "", false},
	}
	for _, tt := range tests {
		got := connector.Describe(tt.err)
		if got.Name != tt.name || got.Message != tt.msg || (got.Cause != nil) != tt.causePresent || (got.Cause != nil && *got.Cause != tt.cause) {
			t.Errorf("Describe(%v) = %+v (cause %v), want %s / %q / %q", tt.err, got, got.Cause, tt.name, tt.msg, tt.cause)
		}
	}
}

// TestRuntestMasksSecrets checks that test_data.secrets reach the test's
// environment and that their values appear nowhere in its output.
func TestRuntestMasksSecrets(t *testing.T) {
	t.Parallel()
	opts, stdout, stderr := setup(t, "runtest", job(map[string]any{"test_data": map[string]any{
		"test_cmds": "printf 'token is %s\\n' \"$API_TOKEN\"\nprintf %s \"$API_TOKEN\" | cut -c1-4\necho \"$API_TOKEN\" >&2\n[ \"$API_TOKEN\" = 'tok-9f8e7d6c' ] && exit 5\nexit 0",
		"secrets":   map[string]string{"API_TOKEN": "tok-9f8e7d6c"},
	}}))
	code := connector.Run(context.Background(), opts)
	if code != 5 {
		t.Fatalf("exit status %d, want 5 (the secret reached the test)\n%s%s", code, stdout, stderr)
	}
	out := stdout.String() + stderr.String()
	if strings.Contains(out, "tok-9f8e7d6c") {
		t.Errorf("the secret appears in the output:\n%s", out)
	}
	if !strings.Contains(out, "token is ****") {
		t.Errorf("output lacks the masked line:\n%s", out)
	}
}

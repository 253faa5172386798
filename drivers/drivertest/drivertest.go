// Package drivertest is the conformance suite every driver must pass, and
// helpers for driver tests.
//
// A driver's test calls Run with a function that builds the driver under
// test and the configuration of its device:
//
//	func TestConformance(t *testing.T) {
//		drivertest.Run(t, func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig) { ... })
//	}
//
// Run changes the working directory (testing.T.Chdir) in one of its
// subtests, so it must not be called from a parallel test.
package drivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// CancelDeadline is how soon after its context is cancelled every phase of
// a driver must return.
const CancelDeadline = 2 * time.Second

// wait bounds every wait for something that should happen promptly; it
// is generous so that a slow machine does not fail the suite.
const wait = 20 * time.Second

// GateEnv names the environment variable that holds the path of the file
// the suite's test_cmds wait for.
const GateEnv = "FLINGER_TEST_GATE"

// Output is an io.Writer, safe for concurrent use, that a test reads while
// a phase writes to it.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// WaitFor waits until the output contains s, for at most timeout, and
// reports whether it does.
func (o *Output) WaitFor(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(o.String(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// NewRun returns a Run of job on the device cfg describes, with a fresh
// run directory, an Output and the environment the worker gives
// (cfg.Environ of this process's environment).
func NewRun(t testing.TB, cfg *drivers.DeviceConfig, job *events.Job) (*drivers.Run, *Output) {
	t.Helper()
	out := &Output{}
	return &drivers.Run{
		Job:    job,
		Device: cfg,
		Dir:    t.TempDir(),
		Out:    out,
		Env:    cfg.Environ(os.Environ()),
	}, out
}

// Phase is one phase of the Driver interface, callable by name.
type Phase struct {
	// Name is the phase's name in Testflinger's vocabulary.
	Name events.Phase
	// Call runs the phase; for the test phase the exit status is dropped.
	Call func(ctx context.Context, d drivers.Driver, run *drivers.Run) error
}

// Phases lists the driver's phases in the order a device runs them.
var Phases = []Phase{
	{events.PhaseProvision, func(ctx context.Context, d drivers.Driver, r *drivers.Run) error { return d.Provision(ctx, r) }},
	{events.PhaseFirmwareUpdate, func(ctx context.Context, d drivers.Driver, r *drivers.Run) error { return d.FirmwareUpdate(ctx, r) }},
	{events.PhaseTest, func(ctx context.Context, d drivers.Driver, r *drivers.Run) error {
		_, err := d.RunTest(ctx, r)
		return err
	}},
	{events.PhaseAllocate, func(ctx context.Context, d drivers.Driver, r *drivers.Run) error {
		_, err := d.Allocate(ctx, r)
		return err
	}},
	{events.PhaseReserve, func(ctx context.Context, d drivers.Driver, r *drivers.Run) error { return d.Reserve(ctx, r) }},
	{events.PhaseCleanup, func(ctx context.Context, d drivers.Driver, r *drivers.Run) error { return d.Cleanup(ctx, r) }},
}

// Run runs the conformance suite on the driver newDriver builds (once per
// subtest) for the device whose configuration it returns with it.
func Run(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig)) {
	t.Run("ExitCode", testExitCode)
	t.Run("Allocate", func(t *testing.T) { testAllocate(t, newDriver) })
	t.Run("RunTestScript", func(t *testing.T) { testRunTestScript(t, newDriver) })
	t.Run("RunTestList", func(t *testing.T) { testRunTestList(t, newDriver) })
	t.Run("RunTestStreamsScript", func(t *testing.T) { testStreams(t, newDriver, false) })
	t.Run("RunTestStreamsList", func(t *testing.T) { testStreams(t, newDriver, true) })
	t.Run("CancelledBeforeStart", func(t *testing.T) { testCancelledBefore(t, newDriver) })
	t.Run("CancelledWhileRunning", func(t *testing.T) { testCancelledWhile(t, newDriver) })
	t.Run("NoShellInjection", func(t *testing.T) { testNoInjection(t, newDriver) })
}

func testExitCode(t *testing.T) {
	base := errors.New("boom")
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, drivers.ExitOK},
		{"plain", base, drivers.ExitFailed},
		{"provisioning", &drivers.ProvisioningError{Err: base}, drivers.ExitFailed},
		{"recovery", &drivers.RecoveryError{Err: base}, drivers.ExitRecoveryFailed},
		{"wrapped recovery", fmt.Errorf("provision: %w", drivers.Recovery("reboot script timed out")), drivers.ExitRecoveryFailed},
		{"cancelled", fmt.Errorf("provision: %w", context.Canceled), drivers.ExitFailed},
	} {
		if got := drivers.ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%s: %v) = %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
}

func testAllocate(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig)) {
	d, cfg := newDriver(t)
	job := &events.Job{JobID: "00000000-0000-4000-8000-000000000001", JobQueue: firstQueue(cfg), AllocateData: events.Data{"allocate": true}}
	run, _ := NewRun(t, cfg, job)
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	info, err := d.Allocate(ctx, run)
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	if got := info["agent_name"]; got != cfg.Name {
		t.Errorf("Allocate: agent_name = %v, want %q", got, cfg.Name)
	}
	if cfg.DeviceIP == "" {
		if got, ok := info["device_ip"]; ok {
			t.Errorf("Allocate: device_ip = %v for a device with none configured", got)
		}
	} else if got := info["device_ip"]; got != cfg.DeviceIP {
		t.Errorf("Allocate: device_ip = %v, want %q", got, cfg.DeviceIP)
	}
}

// lines returns a function giving the output lines a test expects.
func lines(s ...string) func(*drivers.DeviceConfig) []string {
	return func(*drivers.DeviceConfig) []string { return s }
}

type testResult struct {
	rc  int
	err error
}

// runTest starts RunTest and returns the channel its result arrives on.
func runTest(ctx context.Context, d drivers.Driver, run *drivers.Run) <-chan testResult {
	ch := make(chan testResult, 1)
	go func() {
		rc, err := d.RunTest(ctx, run)
		ch <- testResult{rc, err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan testResult, what string) testResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(wait):
		t.Fatalf("%s: RunTest did not return within %s", what, wait)
	}
	return testResult{}
}

func testRunTestScript(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig)) {
	for _, tc := range []struct {
		name, script string
		want         int
		output       func(cfg *drivers.DeviceConfig) []string
	}{
		{"success", "echo script-ok\n", 0, lines("script-ok")},
		{"exit code", "echo before-exit\nexit 3\necho never-printed\n", 3, lines("before-exit")},
		{"bash without shebang", "[[ -n \"$BASH_VERSION\" ]] && echo bash-ok\n", 0, lines("bash-ok")},
		{"own shebang", "#!/bin/sh\necho sh-ok\nexit 9\n", 9, lines("sh-ok")},
		{"device env", "echo \"agent=$AGENT_NAME\"\n", 0, func(cfg *drivers.DeviceConfig) []string { return []string{"agent=" + cfg.Name} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg := newDriver(t)
			job := &events.Job{JobQueue: firstQueue(cfg), TestData: &events.TestData{TestCmds: events.ScriptCmds(tc.script)}}
			run, out := NewRun(t, cfg, job)
			want := tc.output(cfg)
			r := await(t, runTest(t.Context(), d, run), tc.name)
			if r.err != nil || r.rc != tc.want {
				t.Errorf("RunTest = %d, %v; want %d, nil\noutput:\n%s", r.rc, r.err, tc.want, out)
			}
			for _, s := range want {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			if strings.Contains(out.String(), "never-printed") {
				t.Errorf("script went on after exit:\n%s", out)
			}
		})
	}
}

func testRunTestList(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig)) {
	for _, tc := range []struct {
		name   string
		cmds   []string
		want   int
		output []string
	}{
		{"all succeed", []string{"echo one", "echo two"}, 0, []string{"one", "two"}},
		{"last rc", []string{"true", "exit 4"}, 4, nil},
		{"failure does not stop the list", []string{"echo first; exit 3", "echo after-failure"}, 0, []string{"first", "after-failure"}},
		{"sh, not bash", []string{`echo "shell=$0"`}, 0, []string{"shell=" + drivers.ListShell}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg := newDriver(t)
			job := &events.Job{JobQueue: firstQueue(cfg), TestData: &events.TestData{TestCmds: events.ListCmds(tc.cmds...)}}
			run, out := NewRun(t, cfg, job)
			r := await(t, runTest(t.Context(), d, run), tc.name)
			if r.err != nil || r.rc != tc.want {
				t.Errorf("RunTest = %d, %v; want %d, nil\noutput:\n%s", r.rc, r.err, tc.want, out)
			}
			for _, s := range tc.output {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
		})
	}
}

// testStreams checks that output reaches Out while the commands still run:
// they print, then wait for a file the test creates only once it has seen
// that output.
func testStreams(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig), list bool) {
	d, cfg := newDriver(t)
	waitGate := `while [ ! -e "$` + GateEnv + `" ]; do sleep 0.05; done`
	cmds := events.ScriptCmds("echo stream-stdout\necho stream-stderr >&2\n" + waitGate + "\necho stream-end\nexit 5\n")
	if list {
		cmds = events.ListCmds("echo stream-stdout", "echo stream-stderr >&2", waitGate+"; echo stream-end; exit 5")
	}
	job := &events.Job{JobQueue: firstQueue(cfg), TestData: &events.TestData{TestCmds: cmds}}
	run, out := NewRun(t, cfg, job)
	gate := filepath.Join(t.TempDir(), "gate")
	run.Env = append(run.Env, GateEnv+"="+gate)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel() // if the test fails early, the commands stop
	ch := runTest(ctx, d, run)
	for _, s := range []string{"stream-stdout", "stream-stderr"} {
		if !out.WaitFor(s, wait) {
			t.Fatalf("output %q did not arrive while the commands ran; output:\n%s", s, out)
		}
	}
	select {
	case r := <-ch:
		t.Fatalf("RunTest returned (%d, %v) before the gate opened", r.rc, r.err)
	default:
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := await(t, ch, "streaming")
	if r.err != nil || r.rc != 5 {
		t.Errorf("RunTest = %d, %v; want 5, nil\noutput:\n%s", r.rc, r.err, out)
	}
	if !strings.Contains(out.String(), "stream-end") {
		t.Errorf("output lacks stream-end:\n%s", out)
	}
}

// longJob is a job whose every phase has something to do, and whose
// phases take long on drivers that honour the keys (the fake driver's
// delay, a long test and a long reservation).
func longJob(cfg *drivers.DeviceConfig) *events.Job {
	return &events.Job{
		JobID:              "00000000-0000-4000-8000-000000000002",
		JobQueue:           firstQueue(cfg),
		ProvisionData:      events.Data{"delay": "100s"},
		FirmwareUpdateData: events.Data{"version": "latest"},
		TestData:           &events.TestData{TestCmds: events.ScriptCmds("sleep 100\n")},
		AllocateData:       events.Data{"allocate": true},
		ReserveData:        &events.ReserveData{Timeout: 3600},
	}
}

func testCancelledBefore(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig)) {
	for _, p := range Phases {
		t.Run(string(p.Name), func(t *testing.T) {
			d, cfg := newDriver(t)
			run, out := NewRun(t, cfg, longJob(cfg))
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- p.Call(ctx, d, run) }()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("%s with a cancelled context = %v, want an error wrapping context.Canceled", p.Name, err)
				}
				if code := drivers.ExitCode(err); code != drivers.ExitFailed {
					t.Errorf("%s: ExitCode(%v) = %d, want %d (cancelling is not a device failure)", p.Name, err, code, drivers.ExitFailed)
				}
			case <-time.After(CancelDeadline):
				t.Fatalf("%s did not return within %s with a cancelled context (started %s ago); output:\n%s", p.Name, CancelDeadline, time.Since(start), out)
			}
		})
	}
}

func testCancelledWhile(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig)) {
	for _, p := range Phases {
		t.Run(string(p.Name), func(t *testing.T) {
			d, cfg := newDriver(t)
			run, out := NewRun(t, cfg, longJob(cfg))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- p.Call(ctx, d, run) }()

			// Let the phase get going; whether it is still running when
			// the context is cancelled does not matter to what is checked.
			var err error
			finished := false
			select {
			case err = <-done:
				finished = true
			case <-time.After(200 * time.Millisecond):
			}
			cancel()
			cancelled := time.Now()
			if !finished {
				select {
				case err = <-done:
				case <-time.After(CancelDeadline):
					t.Fatalf("%s did not return within %s of its context being cancelled; output:\n%s", p.Name, CancelDeadline, out)
				}
			}
			t.Logf("%s returned %v, %s after cancellation", p.Name, err, time.Since(cancelled))
			if drivers.IsRecovery(err) {
				t.Errorf("%s: a cancelled phase returned a recovery failure: %v", p.Name, err)
			}
			if p.Name == events.PhaseTest && !errors.Is(err, context.Canceled) {
				t.Errorf("RunTest of `sleep 100` cancelled = %v, want an error wrapping context.Canceled", err)
			}
		})
	}
}

// payloads are strings that run a command when a shell evaluates them,
// whichever way they are quoted; dir is where absolute-path variants write.
func payloads(dir string) []string {
	var p []string
	for _, target := range []string{"PWNED", filepath.Join(dir, "PWNED")} {
		p = append(p,
			"$(touch "+target+")",
			"`touch "+target+"`",
			"; touch "+target,
			"x' ; touch "+target+" ; '",
			`x" ; touch `+target+` ; "`,
			"\ntouch "+target+"\n",
			"| touch "+target,
			"&& touch "+target,
			"${IFS}$(touch${IFS}"+target+")",
		)
	}
	return p
}

// testNoInjection runs every phase of a job whose every string is full of
// shell metacharacters (test_cmds aside: they are the job's script) and
// checks that none of them ran as a command: no PWNED file appears in the
// run directory, the working directory or the payloads' own directory.
func testNoInjection(t *testing.T, newDriver func(t *testing.T) (drivers.Driver, *drivers.DeviceConfig)) {
	d, cfg := newDriver(t)
	sentinel := t.TempDir()
	cwd := t.TempDir()
	t.Chdir(cwd)

	p := payloads(sentinel)
	all := strings.Join(p, " ")
	nested := map[string]any{"list": toAny(p), "map": map[string]any{all: all}}
	job := &events.Job{
		JobID:              all,
		ParentJobID:        all,
		Name:               all,
		Tags:               p,
		JobQueue:           firstQueue(cfg),
		ProvisionData:      events.Data{"url": "http://example.invalid/" + all + ".img", all: all, "nested": nested, "distro": all, "user_data": all},
		FirmwareUpdateData: events.Data{"version": all, "ignore_failure": true},
		TestData: &events.TestData{
			TestCmds:     events.ListCmds("true"),
			Attachments:  []events.Attachment{{Local: all, Agent: "evil.txt", Device: all}},
			TestUsername: all,
			TestPassword: all,
			Secrets:      map[string]string{"EVIL_SECRET": all},
		},
		AllocateData:     events.Data{"allocate": true, "note": all},
		ReserveData:      &events.ReserveData{SSHKeys: []string{"lp:" + all, "gh:" + p[0]}, Timeout: 1},
		JobStatusWebhook: "http://example.invalid/" + all,
		ExcludeAgents:    p,
	}

	dev := *cfg
	dev.Env = maps.Clone(cfg.Env)
	if dev.Env == nil {
		dev.Env = map[string]string{}
	}
	for i, s := range p {
		dev.Env[fmt.Sprintf("EVIL_%d", i)] = s
	}
	dev.Raw = maps.Clone(cfg.Raw)
	if dev.Raw == nil {
		dev.Raw = events.Data{}
	}
	dev.Raw["flinger_test_evil"] = all

	run, out := NewRun(t, &dev, job)
	for _, ph := range Phases {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		err := ph.Call(ctx, d, run)
		cancel()
		t.Logf("%s: %v", ph.Name, err)
	}
	for _, dir := range []string{run.Dir, cwd, sentinel} {
		if found := findPwned(t, dir); len(found) > 0 {
			t.Errorf("a job value ran as a shell command: %q created; output (end):\n%s", found, tail(out.String(), 2000))
		}
	}
}

func findPwned(t *testing.T, root string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(e.Name(), "PWNED") {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Errorf("walking %s: %v", root, err)
	}
	return found
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func firstQueue(cfg *drivers.DeviceConfig) string {
	if len(cfg.Queues) > 0 {
		return cfg.Queues[0]
	}
	return "test"
}

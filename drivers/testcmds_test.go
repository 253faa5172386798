package drivers_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/events"
)

var testDevice = &drivers.DeviceConfig{Name: "dev-1", Type: "fake_connector", Queues: []string{"q"}, DeviceIP: "192.0.2.7",
	Env: map[string]string{"LAB": "lab one"}, RebootScript: []string{"pdu off 3", "pdu on 3"}}

func jobWith(cmds *events.TestCmds) *events.Job {
	return &events.Job{JobQueue: "q", TestData: &events.TestData{TestCmds: cmds}}
}

// realDir resolves symlinks in dir (the temporary directory may be behind one).
func realDir(dir string) string {
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		return d
	}
	return dir
}

func TestRunTestCmds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cmds   *events.TestCmds
		env    []string // replaces the run's environment when not nil
		rc     int
		output func(run *drivers.Run) []string // expected output, in order
	}{
		{name: "script: output, $0 and rc", cmds: events.ScriptCmds("echo hello\necho \"zero=$0\"\nexit 3\n"), rc: 3,
			output: fixed("hello\n", "zero=./"+drivers.ScriptName+"\n", "Tests failed, rc=3\n")},
		{name: "script: bash without a shebang", cmds: events.ScriptCmds("if [[ -n $BASH_VERSION ]]; then echo bash; fi\n"), rc: 0, output: fixed("bash\n")},
		{name: "script: stderr merged", cmds: events.ScriptCmds("echo out; echo err >&2; echo out2\n"), rc: 0, output: fixed("out\n", "err\n", "out2\n")},
		{name: "script: its own shebang is used as is", cmds: events.ScriptCmds("#!/bin/cat\nline two\n"), rc: 0, output: fixed("#!/bin/cat\nline two\n")},
		{name: "script: cwd is the run directory", cmds: events.ScriptCmds("pwd -P\n"), rc: 0,
			output: func(run *drivers.Run) []string { return []string{realDir(run.Dir) + "\n"} }},
		{name: "script: stdin is empty", cmds: events.ScriptCmds("read -r line; echo \"read=$?\"\n"), rc: 0, output: fixed("read=1\n")},
		{name: "script: killed by a signal", cmds: events.ScriptCmds("kill -KILL $$\n"), rc: 137, output: fixed("Tests failed, rc=137\n")},
		{name: "script: environment", cmds: events.ScriptCmds("echo \"$LAB|$AGENT_NAME|$REBOOT_SCRIPT|$EXTRA\"\n"), rc: 0,
			env: append(testDevice.Environ([]string{"PATH=" + os.Getenv("PATH")}), "EXTRA=$(not run)"), output: fixed("lab one|dev-1|pdu off 3;pdu on 3|$(not run)\n")},
		{name: "list: every command runs, rc of the last", cmds: events.ListCmds("echo one; exit 2", "echo two"), rc: 0,
			output: fixed("Running: echo one; exit 2\n", "one\n", "Command failed, rc=2\n", "Running: echo two\n", "two\n")},
		{name: "list: a failing last command", cmds: events.ListCmds("true", "exit 4"), rc: 4, output: fixed("Command failed, rc=4\n")},
		{name: "list: /bin/sh", cmds: events.ListCmds(`echo "zero=$0"`), rc: 0, output: fixed("zero=/bin/sh\n")},
		{name: "list: cwd and environment", cmds: events.ListCmds(`pwd -P`, `echo "$LAB"`), rc: 0,
			output: func(run *drivers.Run) []string { return []string{realDir(run.Dir) + "\n", "lab one\n"} }},
		{name: "list: killed by a signal", cmds: events.ListCmds("kill -TERM $$", "kill -KILL $$"), rc: 137, output: fixed("Command failed, rc=143\n", "Command failed, rc=137\n")},
		{name: "no test_data", cmds: nil, rc: 0, output: fixed("No test_cmds in test_data: nothing to run\n")},
		{name: "empty script", cmds: events.ScriptCmds(""), rc: 0, output: fixed("No test_cmds in test_data: nothing to run\n")},
		{name: "empty list", cmds: events.ListCmds(), rc: 0, output: fixed("No test_cmds in test_data: nothing to run\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, out := drivertest.NewRun(t, testDevice, jobWith(tc.cmds))
			if tc.cmds == nil {
				run.Job.TestData = nil
			}
			if tc.env != nil {
				run.Env = tc.env
			}
			rc, err := drivers.RunTestCmds(t.Context(), run)
			if err != nil || rc != tc.rc {
				t.Errorf("RunTestCmds = %d, %v; want %d, nil\noutput:\n%s", rc, err, tc.rc, out)
			}
			rest := out.String()
			for _, want := range tc.output(run) {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("output lacks %q (in this order)\noutput:\n%s", want, out)
				}
				rest = rest[i+len(want):]
			}
		})
	}
}

func fixed(s ...string) func(*drivers.Run) []string { return func(*drivers.Run) []string { return s } }

func TestRunTestCmdsScriptFile(t *testing.T) {
	for _, tc := range []struct{ script, want string }{
		{"echo hi\n", "#!/bin/bash\necho hi\n"},
		{"#!/bin/sh\necho hi\n", "#!/bin/sh\necho hi\n"},
		{"  #!/bin/sh\n", "#!/bin/bash\n  #!/bin/sh\n"},
	} {
		run, _ := drivertest.NewRun(t, testDevice, jobWith(events.ScriptCmds(tc.script)))
		// A file or symlink already there is replaced, never written through.
		victim := filepath.Join(t.TempDir(), "victim")
		if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, filepath.Join(run.Dir, drivers.ScriptName)); err != nil {
			t.Fatal(err)
		}
		if _, err := drivers.RunTestCmds(t.Context(), run); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(run.Dir, drivers.ScriptName)
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o775 {
			t.Errorf("%s: mode %v, want a regular file with 0775", drivers.ScriptName, fi.Mode())
		}
		if b, _ := os.ReadFile(path); string(b) != tc.want {
			t.Errorf("%s = %q, want %q", drivers.ScriptName, b, tc.want)
		}
		if b, _ := os.ReadFile(victim); string(b) != "keep" {
			t.Errorf("the symlink's target was written: %q", b)
		}
	}
}

func TestRunTestCmdsInheritsEnvironment(t *testing.T) {
	t.Setenv("FLINGER_TEST_INHERITED", "yes")
	run, out := drivertest.NewRun(t, testDevice, jobWith(events.ListCmds(`echo "inherited=$FLINGER_TEST_INHERITED"`)))
	run.Env = nil
	if rc, err := drivers.RunTestCmds(t.Context(), run); rc != 0 || err != nil {
		t.Fatalf("RunTestCmds = %d, %v", rc, err)
	}
	if !strings.Contains(out.String(), "inherited=yes") {
		t.Errorf("a nil Env does not give this process's environment:\n%s", out)
	}
}

func TestRunTestCmdsErrors(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name    string
		cmds    *events.TestCmds
		ctx     context.Context
		dir     func(string) string
		rc      int
		wantErr string
		is      error
	}{
		{"missing interpreter", events.ScriptCmds("#!/nonexistent/bash\necho hi\n"), context.Background(), nil, drivers.ExitFailed, "test_cmds: running ./tf_cmd_script", syscall.ENOENT},
		{"no run directory", events.ScriptCmds("true"), context.Background(), func(string) string { return "" }, drivers.ExitFailed, "test_cmds: no run directory", nil},
		{"run directory missing", events.ScriptCmds("true"), context.Background(), func(d string) string { return filepath.Join(d, "gone") }, drivers.ExitFailed, "test_cmds: writing tf_cmd_script", os.ErrNotExist},
		{"list, run directory missing", events.ListCmds("true"), context.Background(), func(d string) string { return filepath.Join(d, "gone") }, drivers.ExitFailed, "test_cmds: running /bin/sh", os.ErrNotExist},
		{"cancelled before", events.ScriptCmds("touch ran"), cancelled, nil, 143, "test_cmds not run", context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, _ := drivertest.NewRun(t, testDevice, jobWith(tc.cmds))
			dir := run.Dir
			if tc.dir != nil {
				run.Dir = tc.dir(dir)
			}
			rc, err := drivers.RunTestCmds(tc.ctx, run)
			if rc != tc.rc || err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("RunTestCmds = %d, %v; want %d and an error containing %q", rc, err, tc.rc, tc.wantErr)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
				t.Error("a command ran")
			}
		})
	}
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunTestCmdsOutputFailureDoesNotBlock(t *testing.T) {
	// Far more output than a pipe holds: if the output were not drained
	// the script would block for ever.
	run, _ := drivertest.NewRun(t, testDevice, jobWith(events.ScriptCmds("head -c 4000000 /dev/zero | tr '\\0' x\nexit 6\n")))
	run.Out = failingWriter{}
	done := make(chan error, 1)
	go func() {
		rc, err := drivers.RunTestCmds(t.Context(), run)
		if err == nil && rc != 6 {
			err = fmt.Errorf("rc %d, want 6", rc)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunTestCmds blocked on a failing output")
	}
}

// processAlive reports whether pid is a process that is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	i := strings.LastIndexByte(string(b), ')')
	state := strings.Fields(string(b[i+1:]))[0]
	return state != "Z" && state != "X"
}

// readPids waits for the files the commands write their pids to.
func readPids(t *testing.T, dir string, names ...string) []int {
	t.Helper()
	var pids []int
	for _, n := range names {
		deadline := time.Now().Add(20 * time.Second)
		for {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && strings.HasSuffix(string(b), "\n") {
				pids = append(pids, pid)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never written", n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return pids
}

// waitGone waits (generously) for every pid to be gone.
func waitGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for processAlive(pid) {
			if time.Now().After(deadline) {
				t.Errorf("process %d left running", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func TestRunTestCmdsCancel(t *testing.T) {
	const within = 6 * time.Second
	for _, tc := range []struct {
		name string
		cmds *events.TestCmds
		pids []string
		rc   int
	}{
		{"script with a sleep 100 child", events.ScriptCmds("echo $$ > shell.pid\nsleep 100 &\necho $! > child.pid\nsleep 100\n"),
			[]string{"shell.pid", "child.pid"}, 143},
		{"script ignoring SIGTERM", events.ScriptCmds("trap '' TERM\necho $$ > shell.pid\nsleep 100 &\necho $! > child.pid\nsleep 100\necho survived\n"),
			[]string{"shell.pid", "child.pid"}, 137},
		{"list: earlier command left a process", events.ListCmds("sleep 100 > /dev/null 2>&1 & echo $! > bg.pid", "echo $$ > shell.pid; sleep 100"),
			[]string{"bg.pid", "shell.pid"}, 143},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, out := drivertest.NewRun(t, testDevice, jobWith(tc.cmds))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			type result struct {
				rc  int
				err error
			}
			done := make(chan result, 1)
			go func() {
				rc, err := drivers.RunTestCmds(ctx, run)
				done <- result{rc, err}
			}()
			pids := readPids(t, run.Dir, tc.pids...)
			cancel()
			cancelled := time.Now()
			var r result
			select {
			case r = <-done:
			case <-time.After(within):
				t.Fatalf("RunTestCmds did not return within %s of cancellation; output:\n%s", within, out)
			}
			t.Logf("returned %d, %v after %s", r.rc, r.err, time.Since(cancelled))
			if r.rc != tc.rc || !errors.Is(r.err, context.Canceled) {
				t.Errorf("RunTestCmds = %d, %v; want %d and an error wrapping context.Canceled", r.rc, r.err, tc.rc)
			}
			if strings.Contains(out.String(), "survived") {
				t.Errorf("the script went on after cancellation:\n%s", out)
			}
			waitGone(t, pids)
		})
	}
}

func TestRunTestCmdsStopsLeftovers(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmds *events.TestCmds
	}{
		{"script", events.ScriptCmds("sleep 100 > /dev/null 2>&1 &\necho $! > bg.pid\n")},
		{"script, leftover holding the output", events.ScriptCmds("sleep 100 &\necho $! > bg.pid\n")},
		{"list", events.ListCmds("sleep 100 & echo $! > bg.pid", "echo next")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, out := drivertest.NewRun(t, testDevice, jobWith(tc.cmds))
			rc, err := drivers.RunTestCmds(t.Context(), run)
			if rc != 0 || err != nil {
				t.Fatalf("RunTestCmds = %d, %v", rc, err)
			}
			if !strings.Contains(out.String(), "Stopping processes left running by test_cmds") {
				t.Errorf("output does not say leftovers were stopped:\n%s", out)
			}
			waitGone(t, readPids(t, run.Dir, "bg.pid"))
		})
	}
}

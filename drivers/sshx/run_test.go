package sshx_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
)

// hostile are arguments and values that a shell would act on if they were
// not quoted: each must arrive exactly and create nothing.
func hostile(dir string) []string {
	return []string{
		"$(touch " + dir + "/PWNED1)",
		"`touch " + dir + "/PWNED2`",
		"; touch " + dir + "/PWNED3",
		"&& touch " + dir + "/PWNED4 &&",
		"| touch " + dir + "/PWNED5",
		"> " + dir + "/PWNED6",
		"'; touch " + dir + "/PWNED7; echo '",
		`"; touch ` + dir + `/PWNED8; echo "`,
		"line1\ntouch " + dir + "/PWNED9\nline3",
		"it's", `"double"`, "* ? [a]", "$HOME ${HOME} $((1+1))", "~", "~root",
		"-n", "--", "", " lead and trail ", `back\slash\`, "tab\there", "cr\rhere",
		"ünïcode ☃", "!!", "#not a comment", "%s %d", "a=b", "{a,b}", "\x1b[31mred",
	}
}

// splitNUL splits printf '%s\0' output.
func splitNUL(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\x00"), "\x00")
}

func TestRunExitStatus(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	for _, tc := range []struct {
		name       string
		argv       []string
		wantCode   int
		wantSignal string
		wantOut    string
		wantErrOut string
	}{
		{"true", []string{"true"}, 0, "", "", ""},
		{"false", []string{"false"}, 1, "", "", ""},
		{"exit 42", []string{"sh", "-c", "exit 42"}, 42, "", "", ""},
		{"streams", []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, 3, "", "out\n", "err\n"},
		{"killed", []string{"sh", "-c", "kill -KILL $$"}, 137, "KILL", "", ""},
		{"not found", []string{"/nonexistent/command"}, 127, "", "", "/nonexistent/command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code, err := c.Run(testCtx(t), tc.argv, &out, &errOut)
			if code != tc.wantCode {
				t.Errorf("exit status %d, want %d (err %v)", code, tc.wantCode, err)
			}
			var ee *sshx.ExitError
			switch {
			case tc.wantCode == 0 && err != nil:
				t.Errorf("err = %v, want nil", err)
			case tc.wantCode != 0 && !errors.As(err, &ee):
				t.Errorf("err = %v, want an *ExitError", err)
			case tc.wantCode != 0 && (ee.Code != tc.wantCode || ee.Signal != tc.wantSignal):
				t.Errorf("ExitError = %+v, want code %d signal %q", ee, tc.wantCode, tc.wantSignal)
			}
			if out.String() != tc.wantOut {
				t.Errorf("stdout %q, want %q", out.String(), tc.wantOut)
			}
			if !strings.Contains(errOut.String(), tc.wantErrOut) {
				t.Errorf("stderr %q, want it to contain %q", errOut.String(), tc.wantErrOut)
			}
		})
	}
}

// signalWriter reports on a channel when a line containing want is written.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func TestRunStreamsOutput(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	w := &signalWriter{want: "first\n", seen: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(testCtx(t), []string{"sh", "-c", "echo first; sleep 3; echo second"}, w, nil)
		done <- err
	}()
	select {
	case <-w.seen:
	case err := <-done:
		t.Fatalf("the command ended (%v) before its first line was seen", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the first line did not arrive")
	}
	select {
	case err := <-done:
		t.Fatalf("the first line arrived only when the command ended (%v)", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := w.buf.String(); got != "first\nsecond\n" {
		t.Errorf("output %q", got)
	}
}

func TestRunSameWriterForBothStreams(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	// One bytes.Buffer for both: the race detector fails this test if
	// the two streams write to it at once.
	var out bytes.Buffer
	_, err := c.Run(testCtx(t), []string{"sh", "-c", "i=0; while [ $i -lt 300 ]; do echo o; echo e >&2; i=$((i+1)); done"}, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	if o, e := strings.Count(out.String(), "o\n"), strings.Count(out.String(), "e\n"); o != 300 || e != 300 {
		t.Errorf("got %d stdout and %d stderr lines, want 300 each", o, e)
	}
}

func TestRunArgvArrivesVerbatim(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	dir := remoteDir(t)
	args := hostile(dir)
	argv := append([]string{"sh", "-c", `cd "$1" && shift && printf '%s\0' "$@"`, "sh", dir}, args...)
	var out, errOut bytes.Buffer
	if _, err := c.Run(testCtx(t), argv, &out, &errOut); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	got := splitNUL(out.String())
	if len(got) != len(args) {
		t.Fatalf("got %d arguments %q, want %d", len(got), got, len(args))
	}
	for i := range args {
		if got[i] != args[i] {
			t.Errorf("argument %d arrived as %q, want %q", i, got[i], args[i])
		}
	}
	// A hostile command name is not run either, nor anything in it.
	for _, name := range args[:9] {
		code, _ := c.Run(testCtx(t), []string{name}, nil, nil)
		if code != 127 {
			t.Errorf("running %q: exit status %d, want 127 (command not found)", name, code)
		}
	}
	dirHolds(t, dir)
}

func TestRunScriptEnvArrivesVerbatim(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	dir := remoteDir(t)
	values := hostile(dir)
	env := map[string]string{"DIR": dir}
	var refs []string
	for i, v := range values {
		name := fmt.Sprintf("V_%d", i)
		env[name] = v
		refs = append(refs, `"$`+name+`"`)
	}
	script := `cd "$DIR" || exit 1
printf '%s\0' ` + strings.Join(refs, " ") + "\n"
	var out, errOut bytes.Buffer
	if _, err := c.RunScript(testCtx(t), script, env, nil, &out, &errOut); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	got := splitNUL(out.String())
	if len(got) != len(values) {
		t.Fatalf("got %d values %q, want %d", len(got), got, len(values))
	}
	for i := range values {
		if got[i] != values[i] {
			t.Errorf("V_%d arrived as %q, want %q", i, got[i], values[i])
		}
	}
	dirHolds(t, dir)
}

func TestRunScriptRejectsBadEnv(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	dir := remoteDir(t)
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"": "x"}, "not a valid variable name"},
		{map[string]string{"1A": "x"}, "not a valid variable name"},
		{map[string]string{"A-B": "x"}, "not a valid variable name"},
		{map[string]string{"A B": "x"}, "not a valid variable name"},
		{map[string]string{"A=B": "x"}, "not a valid variable name"},
		{map[string]string{"X;touch " + dir + "/PWNED": "x"}, "not a valid variable name"},
		{map[string]string{"A": "nul\x00"}, "NUL"},
	} {
		code, err := c.RunScript(testCtx(t), "touch "+sshx.Quote(dir+"/ran"), tc.env, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || code != -1 {
			t.Errorf("env %q: got %d, %v, want an error containing %q", tc.env, code, err, tc.want)
		}
	}
	dirHolds(t, dir)
}

func TestRunScript(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	// A script of a few hundred KiB, to check it is read exactly.
	var big strings.Builder
	for big.Len() < 300<<10 {
		big.WriteString("# padding: 'quotes' $(not run) `not run` \\\n")
	}
	big.WriteString("echo big-done $((20+22))")
	for _, tc := range []struct {
		name     string
		script   string
		stdin    string
		wantCode int
		wantOut  string
	}{
		{"empty", "", "", 0, ""},
		{"exit", "echo before\nexit 7\necho after\n", "", 7, "before\n"},
		{"no trailing newline", "echo a\necho b", "", 0, "a\nb\n"},
		{"trailing newlines kept", "printf 'x\\n\\n\\n' | wc -l\n\n\n\n", "", 0, "3\n"},
		// A command reading stdin must not eat the rest of the script.
		{"stdin not eaten", "cat\necho after cat\n", "", 0, "after cat\n"},
		{"stdin after script", "read first\necho \"got $first\"\ncat\necho end\n", "line1\nrest 'of' it\n", 0, "got line1\nrest 'of' it\nend\n"},
		{"functions and heredoc", "f() { echo \"f:$1\"; }\nf 1\ncat <<'EOF'\n$HOME stays\nEOF\n", "", 0, "f:1\n$HOME stays\n"},
		{"big", big.String(), "", 0, "big-done 42\n"},
		{"set -e", "set -e\nfalse\necho not reached\n", "", 1, ""},
		{"no script variable leaks", "echo \"[${__flinger_script:-}]\"\n", "", 0, "[]\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdin *strings.Reader
			if tc.stdin != "" {
				stdin = strings.NewReader(tc.stdin)
			}
			var out, errOut bytes.Buffer
			var code int
			var err error
			if stdin != nil {
				code, err = c.RunScript(testCtx(t), tc.script, nil, stdin, &out, &errOut)
			} else {
				code, err = c.RunScript(testCtx(t), tc.script, nil, nil, &out, &errOut)
			}
			if code != tc.wantCode {
				t.Errorf("exit status %d, want %d (err %v, stderr %q)", code, tc.wantCode, err, errOut.String())
			}
			var ee *sshx.ExitError
			if (tc.wantCode == 0) != (err == nil) || (err != nil && !errors.As(err, &ee)) {
				t.Errorf("err = %v", err)
			}
			if out.String() != tc.wantOut {
				t.Errorf("stdout %q, want %q", out.String(), tc.wantOut)
			}
		})
	}
}

// processesMatching returns the command lines of the local processes
// whose command line contains one of the markers (the sshd in these tests
// runs on this machine).
func processesMatching(markers ...string) []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, m := range markers {
			if bytes.Contains(data, []byte(m)) {
				found = append(found, strings.ReplaceAll(string(data), "\x00", " "))
				break
			}
		}
	}
	return found
}

func TestCancelStopsRemoteCommand(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	for _, tc := range []struct {
		name  string
		bound time.Duration
		run   func(ctx context.Context, marker string, out *signalWriter) (int, error)
	}{
		{"run", 2 * time.Second, func(ctx context.Context, marker string, out *signalWriter) (int, error) {
			return c.Run(ctx, []string{"sh", "-c", "sleep 100 & echo started; wait", marker}, out, nil)
		}},
		// SIGKILL comes a second after SIGTERM.
		{"script", 3 * time.Second, func(ctx context.Context, marker string, out *signalWriter) (int, error) {
			// The script's children, and processes ignoring SIGTERM, die too.
			script := "trap '' TERM\nsh -c 'trap \"\" TERM; sleep 100' " + marker + "-child &\necho started\nsleep 100\n"
			return c.RunScript(ctx, script, map[string]string{"M": marker}, nil, out, nil)
		}},
	} {
		for _, deadline := range []bool{false, true} {
			name := tc.name + "/cancel"
			if deadline {
				name = tc.name + "/deadline"
			}
			t.Run(name, func(t *testing.T) {
				marker := fmt.Sprintf("flinger-cancel-%d", time.Now().UnixNano())
				ctx, cancel := context.WithCancel(testCtx(t))
				defer cancel()
				out := &signalWriter{want: "started", seen: make(chan struct{})}
				var cancelled time.Time
				var mu sync.Mutex
				if deadline {
					ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
					dl, _ := ctx.Deadline()
					cancelled = dl
				} else {
					// Cancel once the command runs.
					go func() {
						select {
						case <-out.seen:
						case <-ctx.Done():
						}
						mu.Lock()
						cancelled = time.Now()
						mu.Unlock()
						cancel()
					}()
				}
				code, err := tc.run(ctx, marker, out)
				returned := time.Now()
				want := context.Canceled
				if deadline {
					want = context.DeadlineExceeded
				}
				if !errors.Is(err, want) || code != -1 {
					t.Errorf("got %d, %v, want -1 and an error wrapping %v", code, err, want)
				}
				select {
				case <-out.seen:
				default:
					t.Fatalf("the command did not start (output %q)", out.buf.String())
				}
				mu.Lock()
				took := returned.Sub(cancelled)
				mu.Unlock()
				t.Logf("stopped %v after the context ended", took)
				if took > tc.bound {
					t.Errorf("took %v to stop after the context ended", took)
				}
				// The remote processes are gone.
				until := time.Now().Add(10 * time.Second)
				for {
					left := processesMatching(marker, "M="+marker)
					if len(left) == 0 {
						break
					}
					if time.Now().After(until) {
						t.Fatalf("remote processes still running: %q", left)
					}
					time.Sleep(50 * time.Millisecond)
				}
				// The connection is still usable.
				if _, err := c.Run(testCtx(t), []string{"true"}, nil, nil); err != nil {
					t.Errorf("after cancelling: %v", err)
				}
			})
		}
	}
}

func TestRunOnDoneContext(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	dir := remoteDir(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	if _, err := c.Run(ctx, []string{"touch", dir + "/ran"}, nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Run: %v", err)
	}
	if _, err := c.RunScript(ctx, "touch "+sshx.Quote(dir+"/ran"), nil, nil, nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("RunScript: %v", err)
	}
	dirHolds(t, dir)
}

func TestRunPipelineAndInput(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	c := srv.Dial(testCtx(t), "dev")
	dir := remoteDir(t)
	args := hostile(dir)
	var out, errOut bytes.Buffer
	// Input arrives byte for byte.
	in := strings.Join(args, "\x00")
	if _, err := c.RunInput(testCtx(t), []string{"cat"}, strings.NewReader(in), &out, &errOut); err != nil || out.String() != in {
		t.Fatalf("RunInput cat: %v, %q; want the input back", err, out.String())
	}
	// Every stage's arguments arrive verbatim through the pipeline.
	out.Reset()
	stages := [][]string{
		append([]string{"printf", `%s\0`}, args...),
		{"cat"},
	}
	if _, err := c.RunPipeline(testCtx(t), stages, nil, &out, &errOut); err != nil {
		t.Fatalf("RunPipeline: %v: %s", err, errOut.String())
	}
	if got := splitNUL(out.String()); strings.Join(got, "\x00") != strings.Join(args, "\x00") {
		t.Errorf("pipeline arguments arrived as %q", got)
	}
	// pipefail: a failing first stage fails the pipeline.
	code, err := c.RunPipeline(testCtx(t), [][]string{{"sh", "-c", "exit 3"}, {"cat"}}, nil, nil, nil)
	if code != 3 || err == nil {
		t.Errorf("failing first stage: exit %d, %v; want 3", code, err)
	}
	dirHolds(t, dir)
}

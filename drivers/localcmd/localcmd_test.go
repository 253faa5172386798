package localcmd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/localcmd"
)

// script writes an executable shell script to dir and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNew(t *testing.T) {
	t.Parallel()
	s, err := localcmd.New("reboot_script", []string{"pdu  off 3", "pdu on\t3"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"pdu", "off", "3"}, {"pdu", "on", "3"}}
	if s.Key != "reboot_script" || s.Timeout != time.Minute || !slices.EqualFunc(s.Cmds, want, slices.Equal) || s.Empty() {
		t.Errorf("New = %+v", s)
	}
	if _, err := localcmd.New("reboot_script", []string{"ok", " "}, time.Minute); err == nil || err.Error() != "reboot_script[1]: empty command" {
		t.Errorf("New with an empty command: %v", err)
	}
	if s, err := localcmd.New("select_test_script", nil, time.Minute); err != nil || !s.Empty() {
		t.Errorf("New(nil) = %+v, %v", s, err)
	}
}

func TestRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ok := script(t, dir, "ok", `echo "in $PWD as $WHO: $*"; echo oops >&2`)
	fails := script(t, dir, "fails", "exit 3")
	hangs := script(t, dir, "hangs", "sleep 30")
	marker := filepath.Join(dir, "ran")
	touch := script(t, dir, "touch", `echo >> "$MARKER"`)
	for _, tc := range []struct {
		name     string
		cmds     []string
		timeout  time.Duration
		wantErr  string        // "": success
		timedOut time.Duration // the *Error's Timeout
		index    int           // the *Error's Index
		output   []string
		runs     int // how many times touch ran
	}{
		{name: "succeeds", cmds: []string{ok + " a  b"},
			output: []string{"Running s[0]: " + ok + " a b\n", "in " + dir + " as tester: a b\n", "oops\n"}},
		{name: "stops at the first failure", cmds: []string{touch, fails, touch}, wantErr: "s[1] " + fails + " failed: exit status 3", index: 1, runs: 1},
		{name: "times out", cmds: []string{touch, hangs, touch}, timeout: 200 * time.Millisecond,
			wantErr: "s[1] " + hangs + " timed out after 200ms", timedOut: 200 * time.Millisecond, index: 1, runs: 1},
		{name: "no such program", cmds: []string{filepath.Join(dir, "missing") + " now"}, wantErr: "s[0] " + filepath.Join(dir, "missing") + " failed:"},
		{name: "no shell", cmds: []string{"echo $(touch " + marker + ") ; " + touch}, output: []string{"$(touch " + marker + ") ; " + touch + "\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := localcmd.New("s", tc.cmds, tc.timeout)
			if err != nil {
				t.Fatal(err)
			}
			_ = os.Remove(marker)
			var out drivertest.Output
			r := localcmd.Runner{Dir: dir, Env: []string{"WHO=tester", "MARKER=" + marker}, Out: &out}
			err = r.Run(t.Context(), s)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Run: %v\n%s", err, out.String())
				}
			} else {
				var e *localcmd.Error
				if !errors.As(err, &e) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Run = %v, want an *Error with %q", err, tc.wantErr)
				}
				if e.Key != "s" || e.Index != tc.index || e.Timeout != tc.timedOut || e.Err == nil {
					t.Errorf("Error = %+v", e)
				}
			}
			for _, w := range tc.output {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output %q does not contain %q", out.String(), w)
				}
			}
			b, _ := os.ReadFile(marker)
			if runs := strings.Count(string(b), "\n"); runs != tc.runs {
				t.Errorf("touch ran %d times, want %d", runs, tc.runs)
			}
		})
	}
}

func TestRunEach(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fails := script(t, dir, "fails", "exit 1")
	hangs := script(t, dir, "hangs", "sleep 30")
	s, err := localcmd.New("poweroff_script", []string{fails, hangs, "true"}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var out drivertest.Output
	var failed []*localcmd.Error
	err = localcmd.Runner{Dir: dir, Out: &out}.RunEach(t.Context(), s, func(e *localcmd.Error) { failed = append(failed, e) })
	if err != nil {
		t.Fatalf("RunEach: %v", err)
	}
	if len(failed) != 2 || failed[0].Index != 0 || failed[0].Timeout != 0 || failed[1].Index != 1 || failed[1].Timeout == 0 {
		t.Errorf("failed = %+v", failed)
	}
	if !strings.Contains(out.String(), "Running poweroff_script[2]: true") {
		t.Errorf("the command after the failures did not run:\n%s", out.String())
	}
}

// TestCancel checks that a cancelled command returns promptly, with an
// error wrapping the context's, even when the script left a child holding
// its output, and that the child is killed with it.
func TestCancel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	bg := script(t, dir, "bg", `sleep 30 & echo $! > "`+pidFile+`"; wait`)
	for _, tc := range []struct {
		name string
		run  func(ctx context.Context, r localcmd.Runner, s localcmd.Script) error
	}{
		{"Run", func(ctx context.Context, r localcmd.Runner, s localcmd.Script) error { return r.Run(ctx, s) }},
		{"RunEach", func(ctx context.Context, r localcmd.Runner, s localcmd.Script) error {
			return r.RunEach(ctx, s, func(e *localcmd.Error) { t.Errorf("failed(%v) on a cancellation", e) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := localcmd.New("reboot_script", []string{bg}, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			_ = os.Remove(pidFile)
			ctx, cancel := context.WithCancel(t.Context())
			var out drivertest.Output
			done := make(chan error, 1)
			go func() { done <- tc.run(ctx, localcmd.Runner{Dir: dir, Out: &out}, s) }()
			deadline := time.Now().Add(10 * time.Second)
			for {
				if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the script did not start its child")
				}
				time.Sleep(10 * time.Millisecond)
			}
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "reboot_script[0]: ") {
					t.Errorf("Run = %v, want reboot_script[0] wrapping context.Canceled", err)
				}
				if took := time.Since(start); took > 2*time.Second {
					t.Errorf("Run returned %s after the cancellation", took)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after the cancellation")
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			for !gone(pid) {
				if time.Since(start) > 10*time.Second {
					t.Fatalf("the script's child %d still runs", pid)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// gone reports whether process pid has ended (a zombie nobody reaped yet
// counts as ended).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return os.IsNotExist(err)
	}
	// The state follows the command name in parentheses: "pid (comm) S ...".
	_, rest, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(rest, "Z")
}

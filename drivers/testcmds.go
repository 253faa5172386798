package drivers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ScriptName is the file, in the run directory, that test_cmds given as
// one string are written to and run from, as Testflinger's connectors name it.
const ScriptName = "tf_cmd_script"

// DefaultShebang is prepended to a test_cmds script that has no "#!" line.
const DefaultShebang = "#!/bin/bash"

// ListShell runs each command of test_cmds given as a list, as "ListShell
// -c <command>": Testflinger runs them with Python's shell=True, which is
// /bin/sh.
const ListShell = "/bin/sh"

// KillGrace is how long RunTestCmds waits, after sending SIGTERM to the
// processes of test_cmds, before it sends SIGKILL.
const KillGrace = 5 * time.Second

// outputGrace bounds the wait for the last output once every command is
// done and leftover processes were stopped (a process that left the
// process group may still hold the output open).
const outputGrace = 5 * time.Second

// RunTestCmds runs the job's test_data.test_cmds in run.Dir, as
// Testflinger's connectors do (run_test_cmds in
// device-connectors/src/testflinger_device_connectors/__init__.py), and
// returns their exit status. Test attachments with a device destination
// are copied to the device first (CopyDeviceAttachments); a failed copy
// fails the phase before anything runs.
//
//   - No test_cmds (or an empty string or list): a line saying so, status 0.
//   - A string is a script: it is written to ScriptName in run.Dir, with
//     "#!/bin/bash" prepended when it does not start with "#!", made
//     executable (0775) and run as ./tf_cmd_script. Its status is returned.
//   - A list is run command by command, each as /bin/sh -c <command>
//     (Testflinger uses shell=True), after a "Running: <command>" line.
//     A failing command does not stop the list: every command runs, and the
//     status of the last one is returned, as in Testflinger.
//
// Commands run with run.Env as their environment (nil: this process's),
// run.Dir as their working directory, stdin from /dev/null, and stdout and
// stderr merged into one pipe that is copied to run.Out as output arrives.
// A command killed by a signal has status 128+signal, as a shell reports it.
// (Testflinger's runcmd also drops variables whose value is empty; they are
// kept here.)
//
// Every command runs in its own process group. When ctx is done the
// running command and whatever earlier commands left running get SIGTERM,
// and SIGKILL after KillGrace; RunTestCmds then returns 128+the signal that
// ended the command (128+SIGTERM when it exited by itself) with an error
// wrapping ctx.Err(). Processes that test_cmds leave running are also
// stopped that way once the last command is done, as they are when
// Testflinger runs the test phase in a container (processes that start a
// new session escape this).
//
// When ctx is already done nothing runs: the status is 128+SIGTERM and
// the error wraps ctx.Err(). An error other than cancellation means the
// commands could not be run (the run directory is unusable, the
// interpreter is missing); the status is then ExitFailed.
//
// Not done here: Testflinger's deprecated "{{ key }}" substitution of
// device config values into test_cmds (nothing of the job or the device is
// ever interpolated into a command), and its serial logger.
func RunTestCmds(ctx context.Context, run *Run) (int, error) {
	if err := ctx.Err(); err != nil {
		return 128 + int(syscall.SIGTERM), fmt.Errorf("test_cmds not run: %w", err)
	}
	if err := CopyDeviceAttachments(ctx, run); err != nil {
		if ctx.Err() != nil {
			return 128 + int(syscall.SIGTERM), err
		}
		return ExitFailed, err
	}
	out := run.Out
	if out == nil {
		out = io.Discard
	}
	var cmds []string
	var script string
	isList := false
	if run.Job != nil && run.Job.TestData != nil && run.Job.TestData.TestCmds != nil {
		tc := run.Job.TestData.TestCmds
		cmds, script, isList = tc.List, tc.Script, tc.IsList
	}
	if (isList && len(cmds) == 0) || (!isList && script == "") {
		if _, err := fmt.Fprintln(out, "No test_cmds in test_data: nothing to run"); err != nil {
			return ExitFailed, fmt.Errorf("test_cmds: writing output: %w", err)
		}
		return ExitOK, nil
	}
	if run.Dir == "" {
		return ExitFailed, errors.New("test_cmds: no run directory")
	}

	s, err := newSession(run, out)
	if err != nil {
		return ExitFailed, err
	}
	var rc int
	if isList {
		rc, err = s.runList(ctx, cmds)
	} else {
		rc, err = s.runScript(ctx, script)
	}
	s.finish()
	s.log.Debug("test_cmds: done", "rc", rc, "err", err)
	return rc, err
}

// session runs the commands of one RunTestCmds call. Every command's
// stdout and stderr, and the lines RunTestCmds prints itself, go to the
// write end of one pipe; a goroutine copies the read end to the output.
type session struct {
	dir    string
	env    []string
	log    *slog.Logger
	w, r   *os.File
	copied chan struct{}
	groups []int // process groups that may still have members
}

func newSession(run *Run, out io.Writer) (*session, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("test_cmds: output pipe: %w", err)
	}
	s := &session{dir: run.Dir, env: run.Env, log: run.Logger(), r: r, w: w, copied: make(chan struct{})}
	go s.copy(out)
	return s, nil
}

// copy forwards output chunk by chunk as it arrives. If the output fails
// it keeps draining the pipe so that the commands do not block.
func (s *session) copy(out io.Writer) {
	defer close(s.copied)
	buf := make([]byte, 32<<10)
	var werr error
	for {
		n, err := s.r.Read(buf)
		if n > 0 && werr == nil {
			if _, werr = out.Write(buf[:n]); werr != nil {
				s.log.Warn("test_cmds: writing output failed; discarding the rest", "err", werr)
			}
		}
		if err != nil {
			return
		}
	}
}

// printf writes one of RunTestCmds' own lines into the output stream.
func (s *session) printf(format string, args ...any) {
	if _, err := fmt.Fprintf(s.w, format, args...); err != nil {
		s.log.Warn("test_cmds: writing output failed", "err", err)
	}
}

// finish stops leftover processes and waits for the last output.
func (s *session) finish() {
	if s.anyAlive() {
		s.printf("Stopping processes left running by test_cmds\n")
		s.stopGroups()
	}
	if err := s.w.Close(); err != nil {
		s.log.Warn("test_cmds: closing output pipe", "err", err)
	}
	select {
	case <-s.copied:
	case <-time.After(outputGrace):
		s.log.Warn("test_cmds: output still held open by a process outside the process group; not waiting for it")
	}
	_ = s.r.Close() // unblocks the copier
	<-s.copied
}

func (s *session) runScript(ctx context.Context, script string) (int, error) {
	if !strings.HasPrefix(script, "#!") {
		script = DefaultShebang + "\n" + script
	}
	path := filepath.Join(s.dir, ScriptName)
	if err := writeScript(path, script); err != nil {
		return ExitFailed, err
	}
	rc, err := s.runOne(ctx, "./"+ScriptName)
	if err == nil && rc != 0 {
		s.printf("Tests failed, rc=%d\n", rc)
	}
	return rc, err
}

// writeScript writes the script afresh: a file (or symlink) already there
// is removed first and never written through.
func writeScript(path, script string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("test_cmds: replacing %s: %w", ScriptName, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o775)
	if err != nil {
		return fmt.Errorf("test_cmds: writing %s: %w", ScriptName, err)
	}
	_, werr := f.WriteString(script)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("test_cmds: writing %s: %w", ScriptName, err)
	}
	if err := os.Chmod(path, 0o775); err != nil { // whatever the umask
		return fmt.Errorf("test_cmds: making %s executable: %w", ScriptName, err)
	}
	return nil
}

func (s *session) runList(ctx context.Context, cmds []string) (int, error) {
	rc := ExitOK
	for _, c := range cmds {
		if err := ctx.Err(); err != nil {
			return 128 + int(syscall.SIGTERM), fmt.Errorf("test_cmds cancelled: %w", err)
		}
		s.printf("Running: %s\n", c)
		var err error
		rc, err = s.runOne(ctx, ListShell, "-c", c)
		if err != nil {
			return rc, err
		}
		if rc != 0 {
			s.printf("Command failed, rc=%d\n", rc)
		}
	}
	return rc, nil
}

// runOne runs one command in its own process group and returns its status.
func (s *session) runOne(ctx context.Context, name string, args ...string) (int, error) {
	var cmd *exec.Cmd
	for attempt := 0; ; attempt++ {
		cmd = &exec.Cmd{
			// A relative name is run from Dir, so $0 is ./tf_cmd_script as in Testflinger.
			Path:        name,
			Args:        append([]string{name}, args...),
			Dir:         s.dir,
			Env:         s.env,
			Stdout:      s.w,
			Stderr:      s.w,
			SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		}
		err := cmd.Start()
		if err == nil {
			break
		}
		// A script just written can be "busy" while another goroutine's
		// fork still holds its descriptor open: retry briefly.
		if errors.Is(err, syscall.ETXTBSY) && attempt < 50 && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		s.printf("Could not run %s: %v\n", name, err)
		return ExitFailed, fmt.Errorf("test_cmds: running %s: %w", name, err)
	}
	s.groups = append(s.groups, cmd.Process.Pid)
	s.log.Debug("test_cmds: started", "cmd", name, "pid", cmd.Process.Pid)

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		s.printf("\n*** test_cmds cancelled: %v; stopping their processes ***\n", context.Cause(ctx))
		s.stopGroups()
		<-done
		rc := 128 + int(syscall.SIGTERM)
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			rc = 128 + int(ws.Signal())
		}
		return rc, fmt.Errorf("test_cmds cancelled: %w", ctx.Err())
	}
	s.dropEmptyGroups()
	var exitErr *exec.ExitError
	if werr != nil && !errors.As(werr, &exitErr) {
		return ExitFailed, fmt.Errorf("test_cmds: waiting for %s: %w", name, werr)
	}
	return exitStatus(cmd.ProcessState), nil
}

// exitStatus is the status a shell reports: the exit code, or 128+signal.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// groupAlive reports whether the process group still has a member that
// is not a zombie. Zombies are left out because an init that is slow to
// reap orphans (as in some containers) would otherwise keep a group of
// dead processes "alive".
func groupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	live, err := liveMember(pgid)
	if err != nil {
		return true // no /proc: trust kill
	}
	return live
}

// liveMember looks through /proc for a process of group pgid that is not a zombie.
func liveMember(pgid int) (bool, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		if f[0] != "Z" && f[0] != "X" {
			return true, nil
		}
	}
	return false, nil
}

// dropEmptyGroups forgets the groups that have no member left, so that a
// process group id the system reuses is never signalled.
func (s *session) dropEmptyGroups() {
	live := s.groups[:0]
	for _, g := range s.groups {
		if groupAlive(g) {
			live = append(live, g)
		}
	}
	s.groups = live
}

func (s *session) anyAlive() bool {
	s.dropEmptyGroups()
	return len(s.groups) > 0
}

// stopGroups sends SIGTERM to every process group, waits up to KillGrace
// for them to be gone, then sends SIGKILL to those left. (The goroutine
// waiting for a command reaps its leader as soon as it dies, so the group
// of a dead leader does empty.)
func (s *session) stopGroups() {
	for _, g := range s.groups {
		_ = syscall.Kill(-g, syscall.SIGTERM)
	}
	deadline := time.NewTimer(KillGrace)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for s.anyAlive() {
		select {
		case <-tick.C:
		case <-deadline.C:
			for _, g := range s.groups {
				s.log.Warn("test_cmds: processes still running after SIGTERM; sending SIGKILL", "pgid", g)
				_ = syscall.Kill(-g, syscall.SIGKILL)
			}
			s.groups = nil
			return
		}
	}
}

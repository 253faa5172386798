// Package localcmd runs the commands a device configuration gives the lab
// host to run (reboot_script, select_master_script, select_test_script,
// control_host_reboot_script, poweroff_script...), as Testflinger's
// connectors run them with subprocess and cmd.split(): each command is
// split on white space and run as its words, never by a shell, so that no
// value can be interpreted by one. Commands run in the job's run
// directory, with the phase's environment, one after the other, each
// within a timeout; their output goes to the job's output, after a line
// naming the command.
//
// A command that is cancelled or times out is killed with its whole
// process group (the children a script started included), so that a
// cancelled phase returns promptly and leaves nothing running.
package localcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/drivers/display"
)

// WaitDelay is how long a command's output may stay open after the
// command exited or was killed (a child that escaped its process group
// holding it) before it is closed.
const WaitDelay = time.Second

// Script is the commands of one device key.
type Script struct {
	// Key is the device key the commands come from, for messages
	// ("reboot_script").
	Key string
	// Cmds are the commands, each as its words; none is empty.
	Cmds [][]string
	// Timeout bounds each command (0: no bound but the phase's).
	Timeout time.Duration
}

// New returns the script of key: each of cmds split on white space (see
// devconf.Split), each run within timeout. An empty command is an error
// naming key and its index.
func New(key string, cmds []string, timeout time.Duration) (Script, error) {
	argvs, err := devconf.Split(key, cmds)
	if err != nil {
		return Script{Key: key, Timeout: timeout}, err
	}
	return Script{Key: key, Cmds: argvs, Timeout: timeout}, nil
}

// Empty reports whether the script has no commands.
func (s Script) Empty() bool { return len(s.Cmds) == 0 }

// Error reports a command of a script that failed or timed out.
type Error struct {
	// Key is the script's device key.
	Key string
	// Index is the command's index in the script.
	Index int
	// Argv is the command's words.
	Argv []string
	// Timeout is the limit the command hit, or 0 when it failed otherwise.
	Timeout time.Duration
	// Err is why it failed: its exit status, the error starting it, or
	// context.DeadlineExceeded.
	Err error
}

// Error names the command by its key, index and program.
func (e *Error) Error() string {
	if e.Timeout > 0 {
		return fmt.Sprintf("%s[%d] %s timed out after %s", e.Key, e.Index, display.Printable(e.Argv[0]), e.Timeout)
	}
	return fmt.Sprintf("%s[%d] %s failed: %v", e.Key, e.Index, display.Printable(e.Argv[0]), e.Err)
}

// Unwrap returns why the command failed.
func (e *Error) Unwrap() error { return e.Err }

// Runner runs scripts for one phase of a job.
type Runner struct {
	// Dir is the commands' working directory: the job's run directory.
	Dir string
	// Env is their environment (KEY=VALUE): the phase's.
	Env []string
	// Out receives a line naming each command as it starts, then its
	// output (nil: discarded).
	Out io.Writer
}

// Run runs the commands of s one after the other. It stops at the first
// that fails or times out, with an *Error, and when ctx is done, with an
// error wrapping ctx.Err() that names the command cut short.
func (r Runner) Run(ctx context.Context, s Script) error {
	for i := range s.Cmds {
		if err := r.run(ctx, s, i); err != nil {
			return err
		}
	}
	return nil
}

// RunEach runs every command of s, one after the other, calling failed
// with each that fails or times out and going on with the next, as
// Testflinger's control-host hooks do. It returns an error wrapping
// ctx.Err() when ctx is done, and nil otherwise.
func (r Runner) RunEach(ctx context.Context, s Script, failed func(*Error)) error {
	for i := range s.Cmds {
		err := r.run(ctx, s, i)
		var e *Error
		switch {
		case errors.As(err, &e):
			failed(e)
		case err != nil:
			return err
		}
	}
	return nil
}

// run runs command i of s.
func (r Runner) run(ctx context.Context, s Script, i int) error {
	argv := s.Cmds[i]
	out := r.Out
	if out == nil {
		out = io.Discard
	}
	fmt.Fprintf(out, "Running %s[%d]: %s\n", s.Key, i, display.Printable(strings.Join(argv, " ")))
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if s.Timeout > 0 {
		cctx, cancel = context.WithTimeout(ctx, s.Timeout)
	}
	defer cancel()
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	cmd.Dir = r.Dir
	cmd.Env = r.Env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		return os.ErrProcessDone
	}
	cmd.WaitDelay = WaitDelay
	err := cmd.Run()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s[%d]: %w", s.Key, i, ctx.Err())
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return &Error{Key: s.Key, Index: i, Argv: argv, Timeout: s.Timeout, Err: context.DeadlineExceeded}
	case err != nil:
		return &Error{Key: s.Key, Index: i, Argv: argv, Err: err}
	}
	return nil
}

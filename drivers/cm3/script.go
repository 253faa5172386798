package cm3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers"
)

// waitDelay is how long a local command's output may stay open after it
// was killed or exited (a child holding it).
const waitDelay = 5 * time.Second

// script is a list of local commands from the device configuration (such
// as reboot_script), each already split on white space.
type script struct {
	key     string
	cmds    [][]string
	timeout time.Duration
}

// parseScript splits the commands of key on white space, as Testflinger's
// cmd.split(); an empty command is an error.
func parseScript(key string, cmds []string, timeout time.Duration) (script, error) {
	s := script{key: key, timeout: timeout}
	for i, c := range cmds {
		argv := strings.Fields(c)
		if len(argv) == 0 {
			return script{}, fmt.Errorf("%s[%d]: empty command", key, i)
		}
		s.cmds = append(s.cmds, argv)
	}
	return s, nil
}

// scriptError reports a local command that failed or timed out.
type scriptError struct {
	key      string
	index    int
	argv0    string
	timedOut time.Duration // the limit it hit, or 0
	err      error
}

func (e *scriptError) Error() string {
	if e.timedOut > 0 {
		return fmt.Sprintf("%s[%d] %s timed out after %s", e.key, e.index, quote(e.argv0), e.timedOut)
	}
	return fmt.Sprintf("%s[%d] %s failed: %v", e.key, e.index, quote(e.argv0), e.err)
}

func (e *scriptError) Unwrap() error { return e.err }

// run runs the commands on this machine, without a shell, in the run
// directory with the run's environment, each within s.timeout, their
// output going to w. It stops at the first that fails (*scriptError) or
// when ctx is done (an error wrapping ctx.Err()).
func (s script) run(ctx context.Context, run *drivers.Run, w io.Writer) error {
	for i, argv := range s.cmds {
		fmt.Fprintf(w, "Running %s[%d]: %s\n", s.key, i, quote(strings.Join(argv, " ")))
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
		cmd.Dir = run.Dir
		cmd.Env = run.Env
		cmd.Stdout, cmd.Stderr = w, w
		cmd.WaitDelay = waitDelay
		err := cmd.Run()
		timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%s[%d]: %w", s.key, i, ctx.Err())
		case timedOut:
			return &scriptError{key: s.key, index: i, argv0: argv[0], timedOut: s.timeout, err: context.DeadlineExceeded}
		case err != nil:
			return &scriptError{key: s.key, index: i, argv0: argv[0], err: err}
		}
	}
	return nil
}

// quote quotes s when it holds control characters, so that a configured or
// job value cannot forge lines of output.
func quote(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}

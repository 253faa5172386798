package sshx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// How long a cancelled command is given to end after SIGTERM before
// SIGKILL, and how long its session is given to close after that before the
// whole connection is closed.
const (
	killGrace  = time.Second
	closeGrace = 5 * time.Second
)

// ExitError reports that a remote command ran and exited with a status
// other than 0.
type ExitError struct {
	// Code is the exit status; 128+n when the command was killed by signal n.
	Code int
	// Signal is the signal that killed the command ("KILL", "TERM"...), if any.
	Signal string
}

// Error gives the exit status, and the signal when there was one.
func (e *ExitError) Error() string {
	if e.Signal != "" {
		return fmt.Sprintf("killed by signal %s (exit status %d)", e.Signal, e.Code)
	}
	return fmt.Sprintf("exited with status %d", e.Code)
}

// Quote returns s quoted for a POSIX shell: s itself when it is made only
// of characters no shell treats specially (letters, digits and
// _ - . , / : @ % +), otherwise s in single quotes, with each single quote
// of s ending the quoted part, escaped and reopening it:
//
//	it's  ->  'it'\''s'
//
// The shell reads the result back as s exactly, with no expansion of any
// kind. A NUL byte cannot be passed in a shell word: the functions of this
// package that quote refuse strings containing one.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_-.,/:@%+", c) >= 0) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Command returns argv as a command line for a POSIX shell, every element
// quoted with Quote, so that the remote command receives argv exactly.
func Command(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty command")
	}
	q := make([]string, len(argv))
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("argument %d contains a NUL byte, which cannot be passed to a command", i)
		}
		q[i] = Quote(a)
	}
	return strings.Join(q, " "), nil
}

// Run runs argv on the device, every element quoted for the remote shell
// so that the command receives it exactly as given, streaming its output
// to stdout and stderr (nil: discarded). Its standard input is empty.
//
// It returns the command's exit status, with a nil error for status 0 and
// an error wrapping an *ExitError for any other. Any other error means the
// command could not be run or its end was not seen (exit status -1).
//
// When ctx is done, the command's whole process group (its children
// included) is sent SIGTERM, then SIGKILL a second later, both with the
// SSH "signal" request and with kill run in a second session (OpenSSH
// refuses the request for root logins, dropbear ignores it); Run returns
// once the command has ended, or a few seconds later if it does not, with
// an error wrapping ctx.Err(). Output written after Run returns is
// discarded. Every command first writes one line to its standard error,
// its process group, which Run removes.
func (c *Client) Run(ctx context.Context, argv []string, stdout, stderr io.Writer) (int, error) {
	cmd, err := Command(argv)
	if err != nil {
		return -1, c.errorf("run: %w", err)
	}
	return c.exec(ctx, "run "+strconv.Quote(argv[0]), cmd, nil, stdout, stderr)
}

// RunInput is Run with stdin (nil: nothing) as the command's standard
// input. stdin may still be read from after RunInput returns, when the
// command ended without reading all of it or ctx was cancelled while a
// Read blocked.
func (c *Client) RunInput(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	cmd, err := Command(argv)
	if err != nil {
		return -1, c.errorf("run: %w", err)
	}
	return c.exec(ctx, "run "+strconv.Quote(argv[0]), cmd, stdin, stdout, stderr)
}

// PipelineLine returns the command line that runs stages as a pipeline
// (stages[0] | stages[1] | ...) under bash -o pipefail, so that the
// pipeline fails when any stage does, every element quoted as Command
// quotes it.
func PipelineLine(stages [][]string) (string, error) {
	if len(stages) == 0 {
		return "", errors.New("empty pipeline")
	}
	parts := make([]string, len(stages))
	for i, argv := range stages {
		cmd, err := Command(argv)
		if err != nil {
			return "", fmt.Errorf("pipeline stage %d: %w", i, err)
		}
		parts[i] = cmd
	}
	return "bash -o pipefail -c " + Quote(strings.Join(parts, " | ")), nil
}

// RunPipeline runs stages as one pipeline on the device (see
// PipelineLine), stdin (nil: nothing) feeding the first stage; its exit
// status is that of the last stage that failed, or 0. Errors and
// cancellation are as for Run.
func (c *Client) RunPipeline(ctx context.Context, stages [][]string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	line, err := PipelineLine(stages)
	if err != nil {
		return -1, c.errorf("run pipeline: %w", err)
	}
	return c.exec(ctx, "run pipeline "+strconv.Quote(stages[0][0]), line, stdin, stdout, stderr)
}

// envName is what RunScript accepts as a variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// scriptRunner reads exactly N bytes of script from standard input,
// checks that all arrived, and runs them with eval, so that the script is
// read in full before it runs: commands in it that read standard input
// (read, cat, ssh, apt...) get what follows the script (the caller's
// stdin), never the rest of the script. dd reads one byte at a time
// because only that is exact on a pipe with every dd.
const scriptRunner = `__flinger_script=$(dd bs=1 count=%[1]d 2>/dev/null; echo .) || exit 125
__flinger_script=${__flinger_script%%.}
if [ "$(( $(printf %%s "$__flinger_script" | wc -c) ))" -ne %[1]d ]; then
	echo "flinger: the script did not arrive in full" >&2
	exit 125
fi
eval "unset __flinger_script
$__flinger_script"`

// RunScript runs script with sh on the device. env is given to the script
// as quoted assignments prefixed to the sh command (K='v' sh ...), so no
// value is ever seen by the shell as code; names must be identifiers
// ([A-Za-z_][A-Za-z0-9_]*). The script is sent on standard input and read
// in full before it runs; then stdin (nil: nothing) follows on the
// script's standard input. Output is streamed to stdout and stderr (nil:
// discarded).
//
// Exit status, errors and cancellation are as for Run; 125 means the
// script did not arrive in full. stdin may still be read from after
// RunScript returns, when the script ended without reading all of it or
// ctx was cancelled while a Read blocked.
func (c *Client) RunScript(ctx context.Context, script string, env map[string]string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if strings.IndexByte(script, 0) >= 0 {
		return -1, c.errorf("run script: the script contains a NUL byte")
	}
	names := make([]string, 0, len(env))
	for k, v := range env {
		if !envName.MatchString(k) {
			return -1, c.errorf("run script: env: %q is not a valid variable name", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return -1, c.errorf("run script: env %s: the value contains a NUL byte", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(Quote(env[k]))
		b.WriteByte(' ')
	}
	b.WriteString("sh -c ")
	b.WriteString(Quote(fmt.Sprintf(scriptRunner, len(script))))
	b.WriteString(" flinger-script")

	in := io.Reader(strings.NewReader(script))
	if stdin != nil {
		in = io.MultiReader(in, stdin)
	}
	return c.exec(ctx, "run script", b.String(), in, stdout, stderr)
}

// newSession opens a session, giving up when ctx is done.
func (c *Client) newSession(ctx context.Context) (*ssh.Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.conn.NewSession()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("opening a session: %w", r.err)
		}
		return r.s, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				_ = r.s.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// pgidMarker starts the line every command first writes to its standard
// error: its process group, which is the login shell's pid, since sshd
// (and dropbear) start each session's shell as a session leader. On
// cancellation the group is killed from a second session, which works
// where the "signal" channel request does not (OpenSSH refuses it for root
// logins and before 7.9, dropbear ignores it). If the shell is not a group
// leader, no group has its pid as id and the kill does nothing.
const pgidMarker = "flinger-pgid:"

// pgidPrefix is put before every command line.
const pgidPrefix = `printf '` + pgidMarker + `%s\n' "$$" >&2; `

// exec runs the command line cmd in a new session and waits for it: what
// describes it in errors (never the command line, which may hold secrets).
func (c *Client) exec(ctx context.Context, what, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	sess, err := c.newSession(ctx)
	if err != nil {
		return -1, c.errorf("%s: %w", what, err)
	}
	defer sess.Close()
	// Writes pass through gates, closed when exec returns, so that a
	// session left behind after a cancellation writes nothing more.
	outGate, errGate := gates(stdout, stderr)
	defer outGate.close()
	defer errGate.close()
	filter := &pgidFilter{w: errGate, found: make(chan struct{})}
	sess.Stdout, sess.Stderr = outGate, filter
	var stdinPipe io.WriteCloser
	if stdin != nil {
		if stdinPipe, err = sess.StdinPipe(); err != nil {
			return -1, c.errorf("%s: %w", what, err)
		}
	}
	if err := sess.Start(pgidPrefix + cmd); err != nil {
		return -1, c.errorf("%s: starting: %w", what, err)
	}
	if stdinPipe != nil {
		// Errors writing are those of a command that exited or a
		// connection that ended, which Wait reports.
		go func() {
			_, _ = io.Copy(stdinPipe, stdin)
			_ = stdinPipe.Close()
		}()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()

	select {
	case err := <-done:
		filter.flush()
		return c.exitStatus(what, err)
	case <-ctx.Done():
	}
	c.log.Debug("ssh: stopping a command: context done", "what", what, "err", ctx.Err())
	// (stdin is not closed here: x/crypto's CloseWrite may not run
	// concurrently with the copy's Write.)
	c.stop(sess, done, filter)
	return -1, c.errorf("%s: %w", what, ctx.Err())
}

// stop ends a running session: SIGTERM, SIGKILL after killGrace, then the
// session is closed after closeGrace more; it returns when the session has
// ended, or closeGrace after closing it. Signals go by the "signal"
// request and, once the command's process group is known (it may arrive
// late, after the login shell's startup files), by kill from another
// session.
func (c *Client) stop(sess *ssh.Session, done <-chan error, f *pgidFilter) {
	started := false
	groupKill := func(escalate bool) {
		if pgid := f.pgid.Load(); pgid > 1 && !started {
			started = true
			go c.killGroup(pgid, escalate)
		}
	}
	// wait waits d for the session to end, starting the group kill as
	// soon as the process group is known.
	wait := func(d time.Duration, escalate bool) bool {
		timer := time.NewTimer(d)
		defer timer.Stop()
		found := f.found
		for {
			select {
			case <-done:
				return true
			case <-found:
				found = nil
				groupKill(escalate)
			case <-timer.C:
				return false
			}
		}
	}
	_ = sess.Signal(ssh.SIGTERM)
	groupKill(true)
	if wait(killGrace, true) {
		return
	}
	_ = sess.Signal(ssh.SIGKILL)
	groupKill(false)
	if wait(closeGrace, false) {
		return
	}
	_ = sess.Close()
	if !wait(closeGrace, false) {
		c.log.Warn("ssh: a cancelled command did not end; leaving it", "pgid", f.pgid.Load())
	}
}

// killGroupScript sends SIGTERM to a process group and, if it is still
// there killGrace later, SIGKILL: one session does both, since opening a
// session costs the login shell's start.
// (The forms of kill used are the ones dash, bash and busybox all take.)
const killGroupScript = `kill -s TERM -- -%[1]d 2>/dev/null || exit 0
i=0
while [ $i -lt 10 ] && kill -0 -%[1]d 2>/dev/null; do
	sleep 0.1 2>/dev/null || { sleep 1; break; }
	i=$((i + 1))
done
kill -s KILL -- -%[1]d 2>/dev/null
:`

// killGroup kills a process group from a new session: with SIGTERM then
// SIGKILL when escalate is set, else with SIGKILL at once.
func (c *Client) killGroup(pgid int64, escalate bool) {
	ctx, cancel := context.WithTimeout(context.Background(), killGrace+closeGrace)
	defer cancel()
	cmd := fmt.Sprintf("kill -s KILL -- -%d 2>/dev/null || :", pgid)
	if escalate {
		cmd = fmt.Sprintf(killGroupScript, pgid)
	}
	if _, err := c.exec(ctx, "kill", cmd, nil, nil, nil); err != nil {
		c.log.Debug("ssh: killing a cancelled command's process group", "pgid", pgid, "err", err)
	}
}

// gate passes writes on to w until it is closed, then discards them. One
// gate serves stdout and stderr when they are the same writer, so that
// one Write runs at a time.
type gate struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func (g *gate) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return len(p), nil
	}
	return g.w.Write(p)
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// gates returns the gates of a session's stdout and stderr (nil: discard).
func gates(stdout, stderr io.Writer) (*gate, *gate) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	out := &gate{w: stdout}
	if sameWriter(stdout, stderr) {
		return out, out
	}
	return out, &gate{w: stderr}
}

// sameWriter reports whether a and b are the same writer (false when
// their type cannot be compared).
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// pgidFilter takes the pgidMarker line out of a session's stderr and
// records its process group. Lines before it (a login shell's noise) pass
// through; it stops looking after maxLines lines or maxBuffer bytes.
type pgidFilter struct {
	w    io.Writer
	pgid atomic.Int64
	// found is closed once pgid is known.
	found   chan struct{}
	done    bool
	lines   int
	pending []byte
}

const (
	pgidMaxLines  = 16
	pgidMaxBuffer = 4096
)

func (f *pgidFilter) Write(p []byte) (int, error) {
	if f.done {
		return f.w.Write(p)
	}
	n := len(p)
	f.pending = append(f.pending, p...)
	for !f.done {
		i := bytes.IndexByte(f.pending, '\n')
		if i < 0 {
			if len(f.pending) > pgidMaxBuffer {
				f.done = true
			}
			break
		}
		line := f.pending[:i]
		f.lines++
		if rest, ok := bytes.CutPrefix(line, []byte(pgidMarker)); ok {
			if id, err := strconv.ParseInt(string(rest), 10, 64); err == nil {
				f.pgid.Store(id)
				close(f.found)
				f.pending = f.pending[i+1:]
				f.done = true
				break
			}
		}
		if _, err := f.w.Write(f.pending[:i+1]); err != nil {
			return n, err
		}
		f.pending = f.pending[i+1:]
		if f.lines >= pgidMaxLines {
			f.done = true
		}
	}
	if f.done && len(f.pending) > 0 {
		rest := f.pending
		f.pending = nil
		if _, err := f.w.Write(rest); err != nil {
			return n, err
		}
	}
	return n, nil
}

// flush writes what is held back (an unterminated last line); it is called
// once the session has ended.
func (f *pgidFilter) flush() {
	if len(f.pending) > 0 {
		_, _ = f.w.Write(f.pending)
		f.pending = nil
	}
	f.done = true
}

// exitStatus maps the result of Session.Wait.
func (c *Client) exitStatus(what string, err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus(), c.errorf("%s: %w", what, &ExitError{Code: ee.ExitStatus(), Signal: ee.Signal()})
	}
	var em *ssh.ExitMissingError
	if errors.As(err, &em) {
		return -1, c.errorf("%s: the connection ended before the command's exit status arrived: %w", what, err)
	}
	return -1, c.errorf("%s: %w", what, err)
}

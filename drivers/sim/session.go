package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// pgidPreamble is what sshx puts before every command it runs, so that it
// can learn the process group to kill; the DUT strips it (it has no
// processes to kill).
const pgidPreamble = `printf 'flinger-pgid:%s\n' "$$" >&2; `

// errSignal is the cause of a command's context when the client sent a
// signal.
type errSignal struct{ name string }

func (e *errSignal) Error() string { return "signal " + e.name }

// serveSession runs one session channel: pty-req, env and window-change
// requests are accepted and ignored, one exec request runs a command,
// anything else is refused.
func (d *DUT) serveSession(ch ssh.Channel, reqs <-chan *ssh.Request, gen uint64) {
	defer ch.Close()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan struct{})
	started := false
	for {
		var r *ssh.Request
		var ok bool
		if started {
			select {
			case r, ok = <-reqs:
			case <-done:
				// Drain the requests so that the connection does not block.
				go ssh.DiscardRequests(reqs)
				return
			}
		} else {
			r, ok = <-reqs
		}
		if !ok {
			cancel(errors.New("session closed"))
			if started {
				<-done
			}
			return
		}
		switch r.Type {
		case "pty-req", "env", "window-change":
			_ = r.Reply(true, nil)
		case "signal":
			var sig struct{ Name string }
			if started && ssh.Unmarshal(r.Payload, &sig) == nil {
				cancel(&errSignal{name: sig.Name})
			}
			_ = r.Reply(started, nil)
		case "exec":
			var p struct{ Command string }
			if started || ssh.Unmarshal(r.Payload, &p) != nil {
				_ = r.Reply(false, nil)
				continue
			}
			_ = r.Reply(true, nil)
			started = true
			go func() {
				defer close(done)
				d.exec(ctx, ch, p.Command, gen)
			}()
		default:
			_ = r.Reply(false, nil)
		}
	}
}

// exec runs command on ch and sends its exit status or signal.
func (d *DUT) exec(ctx context.Context, ch ssh.Channel, command string, gen uint64) {
	line := strings.TrimPrefix(command, pgidPreamble)
	d.mu.Lock()
	d.commands = append(d.commands, line)
	d.mu.Unlock()
	d.log.Info("sim: exec", "command", line)

	var after func(uint64)
	code := d.runLine(ctx, ch, ch, ch.Stderr(), line, &after, 0)
	if cause := context.Cause(ctx); ctx.Err() != nil {
		var sig *errSignal
		if errors.As(cause, &sig) {
			_, _ = ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
				Signal     string
				CoreDumped bool
				Error      string
				Lang       string
			}{sig.name, false, "", ""}))
		}
		return
	}
	if after != nil {
		// The DUT goes down now, and cuts its connections a moment later
		// (rebootDropDelay): the exit status still reaches the client, as
		// from a real machine shutting down, and a client that checks the
		// DUT once the command returned finds it going down.
		after(gen)
	}
	_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
	_ = ch.Close()
}

func (d *DUT) uname(stdout, stderr io.Writer, args []string) int {
	fields := map[string]string{"-s": "Linux", "-n": d.name, "-r": "6.8.0-sim", "-m": "x86_64"}
	switch {
	case len(args) == 0:
		fmt.Fprintln(stdout, "Linux")
	case len(args) == 1 && args[0] == "-a":
		fmt.Fprintf(stdout, "Linux %s 6.8.0-sim #1 SMP PREEMPT_DYNAMIC x86_64 x86_64 x86_64 GNU/Linux\n", d.name)
	case len(args) == 1 && fields[args[0]] != "":
		fmt.Fprintln(stdout, fields[args[0]])
	default:
		fmt.Fprintf(stderr, "uname: invalid option %q\n", strings.Join(args, " "))
		return 1
	}
	return 0
}

// sleep waits for its argument (seconds, as a decimal, optionally with an
// s suffix) or until ctx is done.
func sleep(ctx context.Context, stderr io.Writer, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "sleep: expected one operand")
		return 1
	}
	secs, err := strconv.ParseFloat(strings.TrimSuffix(args[0], "s"), 64)
	if err != nil || secs < 0 || secs > 1e6 {
		fmt.Fprintf(stderr, "sleep: invalid time interval '%s'\n", args[0])
		return 1
	}
	t := time.NewTimer(time.Duration(secs * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return 0
	case <-ctx.Done():
		return 130
	}
}

// Split splits a command line into words as a POSIX shell would for a
// simple command, with no expansion at all (see Parse); a pipeline is an
// error.
func Split(line string) ([]string, error) {
	stages, err := Parse(line)
	if err != nil {
		return nil, err
	}
	switch len(stages) {
	case 0:
		return nil, nil
	case 1:
		return stages[0], nil
	}
	return nil, errors.New("shell syntax '|' is not supported here (no shell)")
}

// Parse splits a command line into the words of each command of a
// pipeline (commands separated by |), as a POSIX shell would, with no
// expansion at all: single quotes keep everything literal, double quotes
// keep everything but backslash escapes of \ " $ and `, and a backslash
// outside quotes escapes the next character. Other unquoted operators
// (; & < > ( ) `), $ anywhere outside single quotes, an empty command in
// a pipeline and unterminated quotes are errors: nothing is ever
// interpreted.
func Parse(line string) ([][]string, error) {
	var (
		stages [][]string
		words  []string
		cur    strings.Builder
		inW    bool
	)
	endWord := func() {
		if inW {
			words = append(words, cur.String())
			cur.Reset()
			inW = false
		}
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			endWord()
		case c == '|':
			endWord()
			if len(words) == 0 || (i+1 < len(line) && line[i+1] == '|') {
				return nil, errors.New("syntax error near unexpected token '|'")
			}
			stages = append(stages, words)
			words = nil
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("syntax error: unterminated quoted string")
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inW = true
		case c == '"':
			inW = true
			closed := false
			for i++; i < len(line); i++ {
				c := line[i]
				if c == '"' {
					closed = true
					break
				}
				if c == '$' || c == '`' {
					return nil, fmt.Errorf("expansion %q is not supported (no shell)", c)
				}
				if c == '\\' && i+1 < len(line) && strings.IndexByte("\\\"$`\n", line[i+1]) >= 0 {
					i++
					if line[i] != '\n' {
						cur.WriteByte(line[i])
					}
					continue
				}
				cur.WriteByte(c)
			}
			if !closed {
				return nil, errors.New("syntax error: unterminated quoted string")
			}
		case c == '\\':
			if i+1 >= len(line) {
				return nil, errors.New("syntax error: backslash at end of line")
			}
			i++
			if line[i] != '\n' {
				cur.WriteByte(line[i])
				inW = true
			}
		case strings.IndexByte(";&<>()`$", c) >= 0:
			return nil, fmt.Errorf("shell syntax %q is not supported (no shell)", c)
		default:
			cur.WriteByte(c)
			inW = true
		}
	}
	endWord()
	if len(words) == 0 {
		if len(stages) > 0 {
			return nil, errors.New("syntax error: a pipeline ends with '|'")
		}
		return nil, nil
	}
	return append(stages, words), nil
}

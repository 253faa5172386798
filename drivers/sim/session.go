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
	code := d.run(ctx, ch, line, &after)
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
	_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
	_ = ch.Close()
	if after != nil {
		after(gen)
	}
}

// run runs one command line and returns its exit status; after is set to
// what must happen once the status was sent (a reboot).
func (d *DUT) run(ctx context.Context, ch ssh.Channel, line string, after *func(uint64)) int {
	stdout, stderr := io.Writer(ch), ch.Stderr()
	argv, err := Split(line)
	if err != nil {
		fmt.Fprintf(stderr, "sh: %v\n", err)
		return 2
	}
	if len(argv) == 0 {
		return 0
	}
	if argv[0] == "sudo" && len(argv) > 1 {
		argv = argv[1:]
	}
	d.mu.Lock()
	osRelease, model := d.osRelease, d.model
	d.mu.Unlock()
	name, args := argv[0], argv[1:]
	switch name {
	case "true", "/bin/true", "/usr/bin/true", ":":
		return 0
	case "false", "/bin/false", "/usr/bin/false":
		return 1
	case "echo", "/bin/echo":
		nl := "\n"
		if len(args) > 0 && args[0] == "-n" {
			args, nl = args[1:], ""
		}
		fmt.Fprint(stdout, strings.Join(args, " ")+nl)
		return 0
	case "cat", "/bin/cat":
		code := 0
		for _, a := range args {
			if a == "/etc/os-release" || a == "/usr/lib/os-release" {
				fmt.Fprint(stdout, osRelease)
				continue
			}
			fmt.Fprintf(stderr, "cat: %s: No such file or directory\n", a)
			code = 1
		}
		return code
	case "snap":
		if len(args) != 1 || args[0] != "model" {
			fmt.Fprintf(stderr, "error: unknown command %q, see 'snap help'.\n", strings.Join(args, " "))
			return 1
		}
		if model == "" {
			fmt.Fprintln(stderr, "error: device not ready yet (no assertions found)")
			return 1
		}
		fmt.Fprintf(stdout, "brand-id: canonical\nmodel: %s\nserial: %s\n", model, d.name)
		return 0
	case "uname":
		return d.uname(stdout, stderr, args)
	case "hostname":
		fmt.Fprintln(stdout, d.name)
		return 0
	case "sleep":
		return sleep(ctx, stderr, args)
	case "reboot", "/sbin/reboot":
		*after = d.reboot
		return 0
	case "poweroff", "/sbin/poweroff":
		*after = d.poweroff
		return 0
	case "shutdown", "/sbin/shutdown":
		switch strings.Join(args, " ") {
		case "-r now":
			*after = d.reboot
		case "-h now", "-P now", "now":
			*after = d.poweroff
		default:
			fmt.Fprintln(stderr, "shutdown: only -r now, -h now and now are simulated")
			return 1
		}
		return 0
	case "exit":
		if len(args) == 0 {
			return 0
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || len(args) > 1 {
			fmt.Fprintf(stderr, "sh: exit: Illegal number: %s\n", strings.Join(args, " "))
			return 2
		}
		return n & 0xff
	}
	fmt.Fprintf(stderr, "sh: %s: command not found\n", name)
	return 127
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
// simple command, with no expansion at all: single quotes keep everything
// literal, double quotes keep everything but backslash escapes of
// \ " $ and `, and a backslash outside quotes escapes the next character.
// Unquoted operators (; & | < > ( ) `) and $ anywhere outside single
// quotes are not supported and are errors, as are unterminated quotes:
// nothing is ever interpreted.
func Split(line string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		inW   bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inW {
				words = append(words, cur.String())
				cur.Reset()
				inW = false
			}
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
		case strings.IndexByte(";&|<>()`$", c) >= 0:
			return nil, fmt.Errorf("shell syntax %q is not supported (no shell)", c)
		default:
			cur.WriteByte(c)
			inW = true
		}
	}
	if inW {
		words = append(words, cur.String())
	}
	return words, nil
}

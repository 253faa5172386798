package sim

import (
	"compress/bzip2"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Command is a command a DUT runs beyond its built-in ones, given by
// whatever embeds the DUT (a control host's stm or sdwire, a sidecar's
// GPIO tool, fwupdmgr). It returns the command's exit status. It must
// return promptly once ctx is done (the client signalled or went away).
type Command func(ctx context.Context, x *Exec) int

// Exec is one command being run by a DUT.
type Exec struct {
	// Args are the command's words, without a leading sudo.
	Args []string
	// Sudo reports that the command was run with sudo.
	Sudo bool
	// Stdin, Stdout and Stderr are the command's streams; in a pipeline
	// they are the pipes between its stages.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// DUT is the device running the command.
	DUT   *DUT
	after *func(uint64)
}

// Errorf writes a message to the command's stderr, prefixed with its
// name, and returns status.
func (x *Exec) Errorf(status int, format string, args ...any) int {
	fmt.Fprintf(x.Stderr, "%s: %s\n", x.Args[0], fmt.Sprintf(format, args...))
	return status
}

// RebootAfter makes the device reboot once the command has returned, as
// reboot does: it goes down as its exit status is sent, and its
// connections are cut a moment later.
func (x *Exec) RebootAfter() {
	if x.after != nil {
		*x.after = x.DUT.reboot
	}
}

// PowerOffAfter makes the device power off once the command has returned.
func (x *Exec) PowerOffAfter() {
	if x.after != nil {
		*x.after = x.DUT.poweroff
	}
}

// Handle adds or replaces the command name (matched against the first
// word, after sudo); a nil cmd removes it. Commands added this way take
// precedence over the built-in ones.
func (d *DUT) Handle(name string, cmd Command) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cmd == nil {
		delete(d.handlers, name)
		return
	}
	d.handlers[name] = cmd
}

// AddDisk attaches disk at path (such as /dev/sda), for dd of=path; a nil
// disk detaches what is there, as unplugging a card.
func (d *DUT) AddDisk(path string, disk *Disk) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if disk == nil {
		delete(d.disks, path)
		return
	}
	d.disks[path] = disk
}

// Disk returns the disk attached at path, or nil.
func (d *DUT) Disk(path string) *Disk {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.disks[path]
}

// Disks returns the paths disks are attached at, sorted.
func (d *DUT) Disks() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.disks))
}

// WriteFile sets the content of a file on the device.
func (d *DUT) WriteFile(path string, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.files[path] = append([]byte(nil), data...)
}

// ReadFile returns the content of a file on the device and whether it
// exists.
func (d *DUT) ReadFile(path string) ([]byte, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, ok := d.files[path]
	return append([]byte(nil), b...), ok
}

// RemoveFile removes a file from the device.
func (d *DUT) RemoveFile(path string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.files, path)
}

// Files returns the paths of the device's files, sorted.
func (d *DUT) Files() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.files))
}

// runLine runs one command line: a pipeline of simple commands, or one of
// sh -c LINE and bash [-o pipefail] -c LINE, whose LINE is parsed the same
// way (never by a shell). Its status is the last stage's, or with
// pipefail the last non-zero one.
func (d *DUT) runLine(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, line string, after *func(uint64), depth int) int {
	stages, err := Parse(line)
	if err != nil {
		fmt.Fprintf(stderr, "sh: %v\n", err)
		return 2
	}
	if len(stages) == 0 {
		return 0
	}
	if len(stages) == 1 && depth < 2 {
		if inner, pipefail, ok := shellC(stages[0]); ok {
			return d.runPipeline(ctx, stdin, stdout, stderr, inner, pipefail, after, depth+1)
		}
	}
	return d.runStages(ctx, stdin, stdout, stderr, stages, false, after)
}

func (d *DUT) runPipeline(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, line string, pipefail bool, after *func(uint64), depth int) int {
	stages, err := Parse(line)
	if err != nil {
		fmt.Fprintf(stderr, "sh: %v\n", err)
		return 2
	}
	if len(stages) == 0 {
		return 0
	}
	return d.runStages(ctx, stdin, stdout, stderr, stages, pipefail, after)
}

// shellC recognises sh -c LINE, bash -c LINE and bash -o pipefail -c LINE.
func shellC(argv []string) (line string, pipefail, ok bool) {
	if len(argv) > 0 && argv[0] == "sudo" {
		argv = argv[1:]
	}
	if len(argv) < 3 {
		return "", false, false
	}
	switch argv[0] {
	case "sh", "/bin/sh", "bash", "/bin/bash":
	default:
		return "", false, false
	}
	args := argv[1:]
	if len(args) >= 4 && args[0] == "-o" && args[1] == "pipefail" {
		pipefail, args = true, args[2:]
	}
	if len(args) != 2 || args[0] != "-c" {
		return "", false, false
	}
	return args[1], pipefail, true
}

// runStages runs a pipeline's stages concurrently, each one's stdout
// piped into the next one's stdin.
func (d *DUT) runStages(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, stages [][]string, pipefail bool, after *func(uint64)) int {
	if len(stages) == 1 {
		return d.runOne(ctx, &Exec{Args: stages[0], Stdin: stdin, Stdout: stdout, Stderr: stderr, DUT: d, after: after})
	}
	codes := make([]int, len(stages))
	done := make(chan struct{}, len(stages))
	in := stdin
	for i, argv := range stages {
		var out io.Writer = stdout
		var pw *io.PipeWriter
		var next *io.PipeReader
		if i < len(stages)-1 {
			next, pw = io.Pipe()
			out = pw
		}
		x := &Exec{Args: argv, Stdin: in, Stdout: out, Stderr: stderr, DUT: d, after: after}
		go func(i int, x *Exec, pw *io.PipeWriter, r io.Reader) {
			codes[i] = d.runOne(ctx, x)
			if pw != nil {
				_ = pw.CloseWithError(errBrokenPipe)
			}
			if pr, ok := r.(*io.PipeReader); ok {
				// A stage that stops reading makes its writer fail, as SIGPIPE.
				_ = pr.CloseWithError(errBrokenPipe)
			}
			done <- struct{}{}
		}(i, x, pw, in)
		if next != nil {
			in = next
		}
	}
	for range stages {
		<-done
	}
	if pipefail {
		for i := len(codes) - 1; i >= 0; i-- {
			if codes[i] != 0 {
				return codes[i]
			}
		}
		return 0
	}
	return codes[len(codes)-1]
}

// errBrokenPipe ends a pipe whose other side has exited. A reader sees it
// as the end of its input.
var errBrokenPipe = io.EOF

// runOne runs one simple command.
func (d *DUT) runOne(ctx context.Context, x *Exec) int {
	if len(x.Args) > 1 && x.Args[0] == "sudo" {
		x.Args, x.Sudo = x.Args[1:], true
	}
	d.mu.Lock()
	h := d.handlers[x.Args[0]]
	d.mu.Unlock()
	if h != nil {
		return h(ctx, x)
	}
	return d.builtin(ctx, x)
}

// decompressors are the built-in filters from stdin to stdout.
var decompressors = map[string]func(io.Reader) (io.Reader, error){
	"zstdcat": func(r io.Reader) (io.Reader, error) {
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return z.IOReadCloser(), nil
	},
	"xzcat": func(r io.Reader) (io.Reader, error) { return xz.NewReader(r) },
	"zcat":  func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) },
	"bzcat": func(r io.Reader) (io.Reader, error) { return bzip2.NewReader(r), nil },
}

// decompressor returns the filter argv names: zstdcat, xzcat, zcat,
// bzcat, unxz, gunzip -c, and zstd, xz, gzip or bzip2 with -dc (or -d -c,
// -cd, with an optional -q or -T0).
func decompressor(argv []string) (string, bool) {
	name := argv[0]
	if _, ok := decompressors[name]; ok && len(argv) == 1 {
		return name, true
	}
	canon := map[string]string{"zstd": "zstdcat", "xz": "xzcat", "unxz": "xzcat", "gzip": "zcat", "gunzip": "zcat", "bzip2": "bzcat", "bunzip2": "bzcat"}[name]
	if canon == "" {
		return "", false
	}
	var d, c bool
	for _, a := range argv[1:] {
		if !strings.HasPrefix(a, "-") || a == "-" {
			return "", false
		}
		for _, f := range a[1:] {
			switch f {
			case 'd':
				d = true
			case 'c':
				c = true
			case 'q', 'f':
			case 'T', '0':
			default:
				return "", false
			}
		}
	}
	if name == "unxz" || name == "gunzip" || name == "bunzip2" {
		d = true
		c = c || len(argv) == 1
	}
	return canon, d && c
}

// builtin runs the DUT's built-in commands (see DUTOptions).
func (d *DUT) builtin(ctx context.Context, x *Exec) int {
	stdout, stderr := x.Stdout, x.Stderr
	d.mu.Lock()
	osRelease, model := d.osRelease, d.model
	d.mu.Unlock()
	name, args := x.Args[0], x.Args[1:]
	if f, ok := decompressor(x.Args); ok {
		r, err := decompressors[f](x.Stdin)
		if err == nil {
			_, err = io.Copy(stdout, r)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: (stdin): %v\n", name, err)
			return 1
		}
		return 0
	}
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
		if len(args) == 0 {
			if _, err := io.Copy(stdout, x.Stdin); err != nil {
				fmt.Fprintf(stderr, "cat: %v\n", err)
				return 1
			}
			return 0
		}
		code := 0
		for _, a := range args {
			if a == "/etc/os-release" || a == "/usr/lib/os-release" {
				fmt.Fprint(stdout, osRelease)
				continue
			}
			if b, ok := d.ReadFile(a); ok {
				_, _ = stdout.Write(b)
				continue
			}
			fmt.Fprintf(stderr, "cat: %s: No such file or directory\n", a)
			code = 1
		}
		return code
	case "tee":
		return Tee{}.Run(ctx, x)
	case "mkdir":
		return 0
	case "rm":
		for _, a := range args {
			if !strings.HasPrefix(a, "-") {
				d.RemoveFile(a)
			}
		}
		return 0
	case "test", "[":
		return testPath(x, d.pathKind)
	case "dd":
		return DD{}.Run(ctx, x)
	case "sync":
		return 0
	case "hdparm", "partprobe", "blockdev":
		for _, a := range args {
			if strings.HasPrefix(a, "/dev/") && d.Disk(a) == nil {
				fmt.Fprintf(stderr, "%s: %s: No such file or directory\n", name, a)
				return 1
			}
		}
		return 0
	case "sha256sum":
		if len(args) != 1 || d.Disk(args[0]) == nil {
			fmt.Fprintln(stderr, "sha256sum: only a disk's last write is simulated")
			return 1
		}
		fmt.Fprintf(stdout, "%s  %s\n", d.Disk(args[0]).Last().SHA256, args[0])
		return 0
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
		x.RebootAfter()
		return 0
	case "poweroff", "/sbin/poweroff":
		x.PowerOffAfter()
		return 0
	case "shutdown", "/sbin/shutdown":
		switch strings.Join(args, " ") {
		case "-r now":
			x.RebootAfter()
		case "-h now", "-P now", "now":
			x.PowerOffAfter()
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

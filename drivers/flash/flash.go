// Package flash writes a provisioning image into a block device on a host
// reached over SSH (a muxpi or cm3 control host, or a device booted into a
// master image) with dd, streaming: the image flows from its source (the
// network, the lab host's image cache or an attachment) through the SSH
// connection into dd's standard input, decompressed on one side or the
// other, with no full copy on any disk on the way and no waiting for the
// whole download, and progress is reported as it goes.
//
// # Where the image is decompressed
//
// The device key decompress (Options.Decompress) says where: auto (the
// default), local or remote. Auto looks at the image's first bytes and
// decides by its format:
//
//   - zstd and gzip are sent as served and decompressed on the far side,
//     by zstdcat or zcat in front of dd (bash -o pipefail -c 'zstdcat |
//     sudo dd of=DEV bs=16M'), as Testflinger's muxpi connector does.
//     Both decompress at hundreds of MB/s even on the small ARM boards
//     control hosts are, and about four times fewer bytes cross the link
//     and both ends of SSH, which is what bounds a write: on a LAN the
//     link, on loopback or a fast link the CPU time of SSH itself.
//   - xz and bzip2 are decompressed here and sent raw: they decompress at
//     a few MB/s to a few tens on such boards, slower than the link
//     carries the raw image, while the lab host's cores are fast.
//   - An uncompressed image is sent as it is, into dd.
//
// Local decompresses every format here. Remote decompresses every
// compressed format on the far side (zstdcat, zcat, xzcat, bzcat): for a
// slow link to a fast host.
//
// On the far side the image streams too: the remote command starts as
// soon as the first bytes have shown the format, while the rest is still
// downloading; the download fills the lab host's image cache at the same
// time (image.StreamOptions.RawIf), and dd's input ends as soon as the
// image has passed its checks, while the cache syncs its copy to disk.
// If the far side has no such decompressor, or no bash to run the
// pipeline (it exits 127, "command not found", before dd wrote
// anything), Write says so on Options.Out and falls back to Local once,
// by itself: the download, if it is the one filling the cache, is
// finished into the cache first, and the image is streamed again from
// there (or from the attachment).
//
// # Errors
//
// An image that cannot be fetched or read (a bad URL, a 404, a truncated
// image, a checksum mismatch) is an *image.Error. So is a corrupt image:
// found here when decompressing here, and when decompressing on the far
// side, from the pipeline failing with no message from dd (a line
// starting "dd:") — the decompressor's message is then carried in an
// *image.Error of kind Corrupt, and the lab host's cache forgets the URL
// so that the next attempt downloads it again (damage that only the
// stream's final checksum reveals is then found after dd has written all
// of it: the write fails all the same). dd failing on the far side
// (an I/O error half way, a missing device node) is a *WriteError
// carrying dd's message; a connection that drops is the sshx error. All
// of them mean the device holds a partial image and can be provisioned
// again: callers report them as provisioning failures.
package flash

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// Mode says where a compressed image is decompressed.
type Mode int

// The modes.
const (
	// Auto lets Write choose by the image's format: zstd and gzip on the
	// far side, the others here (see the package documentation).
	Auto Mode = iota
	// Local decompresses on this host and sends the raw image.
	Local
	// Remote sends the image as served and decompresses it on the far side.
	Remote
)

// ParseMode reads the device key decompress: "", auto, local or remote.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Auto, nil
	case "local":
		return Local, nil
	case "remote":
		return Remote, nil
	}
	return Auto, fmt.Errorf("decompress: %q is not one of auto, local, remote", s)
}

// String names the mode.
func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Local:
		return "local"
	case Remote:
		return "remote"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// FarSide reports whether m sends an image compressed as f as served, to
// be decompressed on the far side (for image.Raw: sent as it is, which is
// the same either way).
func (m Mode) FarSide(f image.Format) bool {
	switch m {
	case Remote:
		return true
	case Auto:
		return f == image.Zstd || f == image.Gzip
	}
	return false
}

// DefaultBlockSize is dd's block size when Options.BlockSize is empty.
const DefaultBlockSize = "16M"

// Options configure Write.
type Options struct {
	// Device is the block device to write, such as /dev/sda. Required.
	Device string
	// Sudo runs dd with sudo (the decompressor on the far side runs
	// without).
	Sudo bool
	// BlockSize is dd's bs (default DefaultBlockSize).
	BlockSize string
	// Decompress says where to decompress.
	Decompress Mode
	// Cache is the lab host's image cache (nil: download without keeping).
	Cache *image.Cache
	// Progress, if not nil, receives how far the write has got, at most
	// every image.ProgressInterval while the image streams: BytesIn is
	// the image as served, read so far; BytesOut the raw bytes sent to
	// dd, or 0 while the far side decompresses, in which case one more
	// report follows dd's exit with the bytes dd says it wrote. After a
	// fallback from the far side to this one the reports start again
	// from zero.
	Progress func(image.Progress)
	// Out receives dd's and the remote decompressor's messages, and a
	// line when Write falls back to decompressing here (nil: discarded);
	// they are also kept for a *WriteError.
	Out io.Writer
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
}

// Result says what Write wrote.
type Result struct {
	// Result is the image stream's: its format, BytesIn (the image as
	// served), SHA256, FromCache. BytesOut is the bytes written to the
	// device: counted here when the image was decompressed here; from dd's
	// summary on its standard error when it was decompressed on the far
	// side (0 when that summary could not be read).
	image.Result
	// Remote reports that the image was decompressed on the far side.
	Remote bool
	// Elapsed is how long the write took, from the first byte fetched to
	// dd's exit.
	Elapsed time.Duration
}

// WriteError reports that dd failed on the far side.
type WriteError struct {
	// Device is the block device being written.
	Device string
	// Status is dd's (or the pipeline's) exit status.
	Status int
	// Stderr is the end of what dd printed.
	Stderr string
	// Err is the error from running the command.
	Err error
}

func (e *WriteError) Error() string {
	msg := fmt.Sprintf("writing the image to %s failed (exit status %d)", e.Device, e.Status)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

// Unwrap returns the error from running the command.
func (e *WriteError) Unwrap() error { return e.Err }

// Write writes the image src names into opts.Device on the host c is
// connected to (see the package documentation). It returns once dd has
// exited; ctx cancels the fetch and the remote command.
func Write(ctx context.Context, c *sshx.Client, src image.Source, opts Options) (Result, error) {
	if opts.Device == "" || strings.HasPrefix(opts.Device, "-") || strings.ContainsAny(opts.Device, "\x00\n") {
		return Result{}, fmt.Errorf("flash: bad device %q", opts.Device)
	}
	if opts.BlockSize == "" {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	res, err := write(ctx, c, src, opts, opts.Decompress)
	var nd *noDecompressorError
	if errors.As(err, &nd) {
		opts.Log.Warn("flash: no decompressor on the far side; decompressing here", "host", c.Device(), "command", nd.command)
		say(opts.Out, "%s is not installed on %s: decompressing the %s image here and sending it raw instead\n", nd.command, c.Device(), nd.format)
		res, err = write(ctx, c, src, opts, Local)
	}
	res.Elapsed = time.Since(start)
	return res, err
}

// say writes a line for the operator to w, if any.
func say(w io.Writer, format string, args ...any) {
	if w != nil {
		_, _ = fmt.Fprintf(w, format, args...)
	}
}

// noDecompressorError reports that the far side has no command for the
// image's format (or no bash to run it); Write falls back to
// decompressing here.
type noDecompressorError struct {
	command string
	format  image.Format
}

func (e *noDecompressorError) Error() string {
	return fmt.Sprintf("%s is not installed on the far side", e.command)
}

// write streams the image into dd once, decompressing as mode says.
func write(ctx context.Context, c *sshx.Client, src image.Source, opts Options, mode Mode) (Result, error) {
	// The remote command's context: cancelled to stop it before the end
	// of its input, so that it never takes a stream that failed half way
	// for a complete image.
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	s := &sink{ctx: rctx, c: c, opts: opts, mode: mode, done: make(chan struct{}),
		stderr: &tailBuffer{out: opts.Out},
		// Finishing the download after the far side turned out to have no
		// decompressor is worth it only when it fills the cache.
		drain: opts.Cache != nil && src.URL != "" && !strings.HasPrefix(strings.ToLower(src.URL), "file:"),
	}
	so := image.StreamOptions{Cache: opts.Cache, Log: opts.Log, OnComplete: s.endInput}
	if mode != Local {
		so.RawIf = s.decide
	}
	if opts.Progress != nil {
		so.Progress = func(p image.Progress) {
			if s.remote.Load() {
				p.BytesOut = 0 // the bytes written are counted on the far side
			}
			opts.Progress(p)
		}
	}
	sres, serr := image.Stream(ctx, src, s, so)
	res := Result{Result: sres}
	if serr != nil {
		stop()
		// The remote command is given a moment to die before its input
		// ends, a shorter one when cancelled, so that a command that does
		// not heed signals still ends promptly.
		grace := abortGrace
		if ctx.Err() != nil {
			grace = cancelGrace
		}
		s.abort(serr, grace)
		if ctx.Err() != nil || !errors.Is(serr, errExited) {
			// Cancelled, or the image failed: its *image.Error says why.
			return res, fmt.Errorf("flash: %w", serr)
		}
		// The remote command exited before the image ended.
		return res, s.failure(src)
	}
	if err := s.finish(); err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("flash: %w", err)
		}
		return res, s.failure(src)
	}
	if s.remote.Load() {
		res.Remote = true
		res.BytesOut, _ = ddBytes(s.stderr.String())
		if opts.Progress != nil && res.BytesOut > 0 {
			// The bytes written are known now: report them once.
			opts.Progress(image.Progress{BytesIn: sres.BytesIn, BytesOut: res.BytesOut, Total: sres.BytesIn})
		}
		opts.Log.Info("flash: image written, decompressed on the far side", "device", opts.Device, "host", c.Device(),
			"format", sres.Format, "bytes_sent", sres.BytesOut, "bytes_written", res.BytesOut, "from_cache", sres.FromCache)
	} else {
		opts.Log.Info("flash: image written", "device", opts.Device, "host", c.Device(),
			"format", sres.Format, "bytes_written", sres.BytesOut, "from_cache", sres.FromCache)
	}
	return res, nil
}

// errExited ends the stream into the remote command when the command
// has exited.
var errExited = errors.New("the remote dd exited before the whole image was sent")

// sink is the remote command's standard input, started lazily: once the
// image's first bytes have shown its format (decide), the first Write
// starts dd, or the far side's decompressor piped into dd, and passes the
// bytes on. Its Writes come from one goroutine (image.Stream's).
type sink struct {
	ctx    context.Context // the remote command's
	c      *sshx.Client
	opts   Options
	mode   Mode
	stderr *tailBuffer
	// drain: when the far side has no decompressor, accept and discard
	// the rest of the image, so that its download completes into the cache.
	drain bool

	format image.Format
	// remote is set once the far side is known to decompress.
	remote   atomic.Bool
	started  bool
	draining bool
	pw       *io.PipeWriter

	// done is closed when the remote command has ended, with its result.
	done chan struct{}
	code int
	err  error
}

// decide is image.StreamOptions.RawIf: it records the format and says
// whether to send the image as served.
func (s *sink) decide(f image.Format) bool {
	s.format = f
	far := s.mode.FarSide(f)
	s.remote.Store(far && f != image.Raw)
	return far
}

// start runs the remote command, fed from a pipe.
func (s *sink) start() {
	s.started = true
	pr, pw := io.Pipe()
	s.pw = pw
	dd := ddArgv(s.opts)
	in := bigReads{pr}
	go func() {
		var code int
		var err error
		if s.remote.Load() {
			code, err = s.c.RunPipeline(s.ctx, [][]string{{s.format.Cat()}, dd}, in, nil, s.stderr)
		} else {
			code, err = s.c.RunInput(s.ctx, dd, in, nil, s.stderr)
		}
		s.code, s.err = code, err
		close(s.done)
		// Whatever is still being sent goes nowhere.
		_ = pr.CloseWithError(errExited)
	}()
}

// Write passes p on to the remote command, starting it first.
func (s *sink) Write(p []byte) (int, error) {
	if s.draining {
		return len(p), nil
	}
	if !s.started {
		s.start()
	}
	n, err := s.pw.Write(p)
	if err == nil {
		return n, nil
	}
	<-s.done
	if missing := s.missingCommand(); missing != "" && s.drain {
		s.draining = true
		say(s.opts.Out, "%s is not installed on %s: finishing the download into the lab host's image cache first\n", missing, s.c.Device())
		return len(p), nil
	}
	return n, err
}

// endInput ends the remote command's input: the whole image has been
// written and checked. An empty image still runs dd, with nothing to
// write.
func (s *sink) endInput() {
	if !s.started {
		s.start()
	}
	_ = s.pw.Close()
}

// finish ends the remote command's input, if that is not done yet, and
// waits for the command to exit.
func (s *sink) finish() error {
	s.endInput()
	<-s.done
	if s.draining {
		return &noDecompressorError{command: s.missingCommand(), format: s.format}
	}
	return s.err
}

// How long a remote command that is being stopped is given to end before
// its input ends: after a failed stream, and after a cancellation (which
// must return promptly).
const (
	abortGrace  = time.Second
	cancelGrace = 300 * time.Millisecond
)

// abort ends the remote command's input with err, once the command has
// ended (the caller has cancelled it) or grace has passed, and waits for
// the command to end. The wait keeps a command that is killed from
// reading the end of its input as the end of a complete image.
func (s *sink) abort(err error, grace time.Duration) {
	if !s.started {
		return
	}
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-s.done:
		case <-t.C:
		}
		t.Stop()
	}
	_ = s.pw.CloseWithError(err)
	<-s.done
}

// failure says why the remote command, which has ended, failed.
func (s *sink) failure(src image.Source) error {
	stderr := s.stderr.String()
	if missing := s.missingCommand(); missing != "" {
		return &noDecompressorError{command: missing, format: s.format}
	}
	var ee *sshx.ExitError
	if !errors.As(s.err, &ee) && s.code <= 0 {
		if s.err == nil {
			// dd exited with status 0 without reading all of the image.
			return fmt.Errorf("flash: %w", &WriteError{Device: s.opts.Device, Status: 0, Stderr: stderr, Err: errExited})
		}
		// It did not run, or its end was not seen: the connection failed.
		return fmt.Errorf("flash: %w", s.err)
	}
	if s.remote.Load() && !ddFailed(stderr) && ee != nil && ee.Signal == "" {
		// dd said nothing: the decompressor failed on the image.
		cause := fmt.Errorf("%s on %s: %s", s.format.Cat(), s.c.Device(), decompressorMessage(stderr, s.code))
		s.opts.Cache.Forget(src)
		return fmt.Errorf("flash: %w", image.CorruptError(src, s.format, cause))
	}
	return fmt.Errorf("flash: %w", &WriteError{Device: s.opts.Device, Status: s.code, Stderr: stderr, Err: s.err})
}

// missingCommand returns the command the far side lacks, when the remote
// pipeline, which has ended, failed for want of it: status 127 with the
// shell's "not found" naming the decompressor (or bash, which runs the
// pipeline), and nothing written. It returns "" otherwise.
func (s *sink) missingCommand() string {
	if !s.remote.Load() || s.code != 127 {
		return ""
	}
	stderr := s.stderr.String()
	if n, ok := ddBytes(stderr); ok && n > 0 {
		return ""
	}
	for _, cmd := range []string{s.format.Cat(), "bash"} {
		// bash, dash, busybox and zsh say it these ways.
		for _, msg := range []string{cmd + ": command not found", cmd + ": not found", "not found: " + cmd} {
			if strings.Contains(stderr, msg) {
				return cmd
			}
		}
	}
	return ""
}

// ddArgv returns dd's command.
func ddArgv(opts Options) []string {
	argv := []string{"dd", "of=" + opts.Device, "bs=" + opts.BlockSize}
	if opts.Sudo {
		argv = append([]string{"sudo"}, argv...)
	}
	return argv
}

// ddSummary matches dd's summary line: "N bytes (1.1 GB, 1.0 GiB) copied,
// ..." (GNU), "N bytes (1.0GB) copied, ..." (busybox), "N bytes copied,
// ..." (older ones and drivers/sim).
var ddSummary = regexp.MustCompile(`(?m)^(\d+) bytes\b[^\n]*\bcopied`)

// ddBytes returns the byte count of dd's last summary line in stderr.
func ddBytes(stderr string) (int64, bool) {
	m := ddSummary.FindAllStringSubmatch(stderr, -1)
	if len(m) == 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(m[len(m)-1][1], 10, 64)
	return n, err == nil
}

// ddFailed reports whether dd (or the sudo in front of it) complained in
// stderr: a line starting with "dd:" other than a warning, or "sudo:".
func ddFailed(stderr string) bool {
	for line := range strings.Lines(stderr) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "sudo:") || strings.HasPrefix(line, "dd:") && !strings.HasPrefix(line, "dd: warning") {
			return true
		}
	}
	return false
}

// decompressorMessage returns what the remote decompressor said: stderr
// without dd's record counts and summary.
func decompressorMessage(stderr string, code int) string {
	var keep []string
	for line := range strings.Lines(stderr) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasSuffix(line, "records in") || strings.HasSuffix(line, "records out") || ddSummary.MatchString(line) {
			continue
		}
		keep = append(keep, line)
	}
	if len(keep) == 0 {
		return fmt.Sprintf("exited with status %d", code)
	}
	return strings.Join(keep, "; ")
}

// bigReads makes io.Copy, which feeds the remote command's standard
// input, take each of the stream's writes whole from the pipe rather
// than in 32 KiB pieces.
type bigReads struct{ r io.Reader }

func (b bigReads) Read(p []byte) (int, error) { return b.r.Read(p) }

// WriteTo copies everything to w in pieces of up to 1 MiB.
func (b bigReads) WriteTo(w io.Writer) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{b.r}, make([]byte, 1<<20))
}

// tailBuffer keeps the last bytes written to it and passes them on.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	out io.Writer
}

const tailMax = 4096

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	t.b = append(t.b, p...)
	if len(t.b) > tailMax {
		t.b = t.b[len(t.b)-tailMax:]
	}
	t.mu.Unlock()
	if t.out != nil {
		_, _ = t.out.Write(p)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

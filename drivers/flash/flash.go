// Package flash writes a provisioning image into a block device on a host
// reached over SSH (a muxpi or cm3 control host, or a device booted into a
// master image) with dd, streaming: the image flows from its source (the
// network, the lab host's image cache or an attachment) through the
// decompressor and the SSH connection into dd's standard input, with no
// full copy on any disk on the way, and progress is reported as it goes.
//
// # Where the image is decompressed
//
// Mode Local (the default, also what Auto picks) decompresses on the lab
// host and sends the raw image: lab hosts have fast cores, while control
// hosts are small ARM boards on which xz runs at a few MB/s, and a
// loopback or LAN link carries raw bytes faster than such a board
// decompresses them. Mode Remote sends the image as served and runs the
// decompressor the image's format calls for (zstdcat, xzcat, zcat, bzcat)
// in front of dd on the far side, under bash -o pipefail: for a slow link
// to a fast host. Remote needs the whole compressed image first (from the
// cache, or an attachment), so the download and the write do not overlap;
// set the device key decompress: remote only where the link is the
// bottleneck.
//
// # Errors
//
// An image that cannot be fetched or read (a bad URL, a 404, a corrupt or
// truncated image, a checksum mismatch) is an *image.Error; dd failing on
// the far side (an I/O error half way, a missing device node) is a
// *WriteError carrying dd's message; a connection that drops is the sshx
// error. All of them mean the device holds a partial image and can be
// provisioned again: callers report them as provisioning failures.
package flash

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
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
	// Auto lets Write choose: Local (see the package documentation).
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

// DefaultBlockSize is dd's block size when Options.BlockSize is empty.
const DefaultBlockSize = "16M"

// Options configure Write.
type Options struct {
	// Device is the block device to write, such as /dev/sda. Required.
	Device string
	// Sudo runs dd (and the remote decompressor) with sudo.
	Sudo bool
	// BlockSize is dd's bs (default DefaultBlockSize).
	BlockSize string
	// Decompress says where to decompress.
	Decompress Mode
	// Cache is the lab host's image cache (nil: download without keeping).
	Cache *image.Cache
	// Progress, if not nil, receives how far the write has got, at most
	// every image.ProgressInterval.
	Progress func(image.Progress)
	// Out receives dd's messages (nil: discarded); they are also kept for
	// a *WriteError.
	Out io.Writer
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
}

// Result says what Write wrote.
type Result struct {
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
	var (
		res Result
		err error
	)
	if opts.Decompress == Remote {
		res, err = writeRemote(ctx, c, src, opts)
	} else {
		res, err = writeLocal(ctx, c, src, opts)
	}
	res.Elapsed = time.Since(start)
	return res, err
}

// ddArgv returns dd's command.
func ddArgv(opts Options) []string {
	argv := []string{"dd", "of=" + opts.Device, "bs=" + opts.BlockSize}
	if opts.Sudo {
		argv = append([]string{"sudo"}, argv...)
	}
	return argv
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

// runResult is the end of the remote command.
type runResult struct {
	code int
	err  error
}

// writeLocal streams the decompressed image into dd's stdin.
func writeLocal(ctx context.Context, c *sshx.Client, src image.Source, opts Options) (Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	stderr := &tailBuffer{out: opts.Out}
	done := make(chan runResult, 1)
	go func() {
		code, err := c.RunInput(ctx, ddArgv(opts), pr, nil, stderr)
		// dd is gone: whatever is still being streamed goes nowhere.
		_ = pr.CloseWithError(errDDExited)
		done <- runResult{code, err}
	}()
	res, serr := image.Stream(ctx, src, pw, image.StreamOptions{Cache: opts.Cache, Progress: opts.Progress, Log: opts.Log})
	if serr != nil {
		// Stop dd before it sees the end of its input as a complete image.
		cancel()
		_ = pw.CloseWithError(serr)
		<-done
		if errors.Is(serr, errDDExited) {
			// dd exited first: its status says why.
			return Result{Result: res}, fmt.Errorf("flash: %w", ddFailure(opts.Device, -1, stderr, serr))
		}
		return Result{Result: res}, fmt.Errorf("flash: %w", serr)
	}
	_ = pw.Close()
	r := <-done
	if r.err != nil {
		return Result{Result: res}, fmt.Errorf("flash: %w", ddFailure(opts.Device, r.code, stderr, r.err))
	}
	opts.Log.Info("flash: image written", "device", opts.Device, "bytes", res.BytesOut, "format", res.Format, "from_cache", res.FromCache)
	return Result{Result: res}, nil
}

// errDDExited ends the stream when dd exited before the image did.
var errDDExited = errors.New("the remote dd exited before the whole image was sent")

// ddFailure describes a failed remote dd: a *WriteError when it ran and
// exited non-zero, the connection error otherwise.
func ddFailure(device string, code int, stderr *tailBuffer, err error) error {
	var ee *sshx.ExitError
	if errors.As(err, &ee) || code > 0 {
		return &WriteError{Device: device, Status: code, Stderr: stderr.String(), Err: err}
	}
	return err
}

// writeRemote sends the compressed image and decompresses it on the far
// side.
func writeRemote(ctx context.Context, c *sshx.Client, src image.Source, opts Options) (Result, error) {
	raw, size, format, closeFn, res, err := openRaw(ctx, src, opts)
	if err != nil {
		return Result{}, fmt.Errorf("flash: %w", err)
	}
	defer closeFn()
	counter := &countingReader{r: raw}
	stopProgress := reportProgress(opts.Progress, counter, size)
	stderr := &tailBuffer{out: opts.Out}
	var code int
	if format == image.Raw {
		code, err = c.RunInput(ctx, ddArgv(opts), counter, nil, stderr)
	} else {
		// The decompressor needs no privilege; only dd runs with sudo.
		code, err = c.RunPipeline(ctx, [][]string{{format.Cat()}, ddArgv(opts)}, counter, nil, stderr)
	}
	stopProgress()
	res.BytesIn = counter.n.Load()
	if err != nil {
		if ctx.Err() != nil {
			return Result{Result: res, Remote: true}, fmt.Errorf("flash: %w", err)
		}
		return Result{Result: res, Remote: true}, fmt.Errorf("flash: %w", ddFailure(opts.Device, code, stderr, err))
	}
	opts.Log.Info("flash: image written (decompressed remotely)", "device", opts.Device, "bytes_sent", res.BytesIn, "format", format)
	return Result{Result: res, Remote: format != image.Raw}, nil
}

// openRaw opens the image as served: from the cache (downloading it
// first when needed) or a local file.
func openRaw(ctx context.Context, src image.Source, opts Options) (io.Reader, int64, image.Format, func(), image.Result, error) {
	if src.Path != "" {
		f, err := os.Open(src.Path)
		if err != nil {
			return nil, 0, 0, nil, image.Result{}, fmt.Errorf("opening the image %s: %w", src.Path, err)
		}
		st, err := f.Stat()
		if err != nil {
			_ = f.Close()
			return nil, 0, 0, nil, image.Result{}, fmt.Errorf("opening the image %s: %w", src.Path, err)
		}
		format, r, err := image.Detect(f)
		if err != nil {
			_ = f.Close()
			return nil, 0, 0, nil, image.Result{}, fmt.Errorf("reading the image %s: %w", src.Path, err)
		}
		return r, st.Size(), format, func() { _ = f.Close() }, image.Result{Format: format}, nil
	}
	if opts.Cache == nil {
		return nil, 0, 0, nil, image.Result{}, errors.New("decompressing remotely needs the lab host's image cache for a URL (set decompress: local, or give the host a cache)")
	}
	im, err := opts.Cache.Open(ctx, src, opts.Progress)
	if err != nil {
		return nil, 0, 0, nil, image.Result{}, err
	}
	rc, format, err := im.Raw(ctx)
	if err != nil {
		_ = im.Close()
		return nil, 0, 0, nil, image.Result{}, err
	}
	return rc, im.Size(), format, func() { _ = rc.Close(); _ = im.Close() },
		image.Result{Format: format, SHA256: im.SHA256(), FromCache: true}, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// reportProgress calls fn every image.ProgressInterval with the bytes
// read through c, until the returned function is called (which reports
// once more).
func reportProgress(fn func(image.Progress), c *countingReader, total int64) func() {
	if fn == nil {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(image.ProgressInterval)
		defer t.Stop()
		last, lastAt := int64(0), time.Now()
		report := func() {
			n, now := c.n.Load(), time.Now()
			rate := 0.0
			if dt := now.Sub(lastAt).Seconds(); dt > 0 {
				rate = float64(n-last) / dt
			}
			last, lastAt = n, now
			fn(image.Progress{BytesIn: n, Total: total, Rate: rate})
		}
		for {
			select {
			case <-stop:
				report()
				return
			case <-t.C:
				report()
			}
		}
	}()
	return func() {
		close(stop)
		<-done
	}
}

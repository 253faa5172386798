package netboot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ulikunitz/xz"

	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/image"
)

// xzDictCap is the dictionary of the recompressed stream: small, so that
// compressing is faster and unxz on the imager needs little memory.
const xzDictCap = 1 << 20

// qcow2Magic starts a qcow2 image.
var qcow2Magic = []byte("QFI\xfb")

// errQcow2 refuses a qcow2 image.
var errQcow2 = errors.New("the image is a qcow2 disk image, which the imager cannot write: Flinger does not convert images with qemu-img " +
	"(it is not installed on lab hosts); convert it to a raw image (qemu-img convert -O raw) and compress it with xz")

// sent is what was served on the one-shot listener.
type sent struct {
	// connected reports that the device connected.
	connected bool
	// from is the address it connected from.
	from string
	// bytes is what was written to the connection (xz).
	bytes int64
	// raw is the decompressed bytes that went into the compressor, or -1
	// when the image was served as it is.
	raw int64
	// format is the image's compression as served by its source.
	format image.Format
	// err is why serving failed.
	err error
}

// preparedImage is the image to serve: open in the host's cache, or to be
// streamed from its source.
type preparedImage struct {
	src    image.Source
	cached *image.Image
	log    *slog.Logger
}

func (pi *preparedImage) close() {
	if pi.cached != nil {
		_ = pi.cached.Close()
	}
}

// prepare fetches the image into the host's cache when there is one, and
// refuses a qcow2 image.
func (p *provision) prepare(ctx context.Context) (*preparedImage, error) {
	pi := &preparedImage{src: p.src, log: p.log}
	if p.run.Images == nil {
		fmt.Fprintln(p.w, "This host has no image cache: the image will be streamed from its source as the imager fetches it, and recompressed to xz")
		return pi, nil
	}
	fmt.Fprintln(p.w, "Fetching the image into this host's image cache")
	im, err := p.run.Images.Open(ctx, p.src, p.run.ReportProgress)
	if err != nil {
		return nil, imageFailure(ctx, err)
	}
	rc, format, err := im.Reader(ctx)
	if err != nil {
		_ = im.Close()
		return nil, imageFailure(ctx, err)
	}
	head := make([]byte, len(qcow2Magic))
	n, err := io.ReadFull(rc, head)
	_ = rc.Close()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		_ = im.Close()
		return nil, imageFailure(ctx, err)
	}
	if bytes.Equal(head[:n], qcow2Magic) {
		_ = im.Close()
		return nil, provisioning("image %s: %w", display.Printable(p.src.String()), errQcow2)
	}
	how := "served to the imager as it is"
	if format != image.Xz {
		how = "recompressed to xz as it is served"
	}
	fmt.Fprintf(p.w, "Image ready in the cache (%s compressed, %d bytes): %s\n", format, im.Size(), how)
	pi.cached = im
	return pi, nil
}

// send writes the image to w as an xz stream. The stream is ended (its
// index and footer written) only when the whole image went into it, so
// that a failure on this side never looks like a complete image to unxz.
func (pi *preparedImage) send(ctx context.Context, w io.Writer, progress func(image.Progress)) sent {
	cw := &countingWriter{w: w, n: new(atomic.Int64)}
	res := sent{raw: -1}
	switch {
	case pi.cached == nil:
		res.raw, res.err = compress(cw, func(dst io.Writer) error {
			r, err := image.Stream(ctx, pi.src, dst, image.StreamOptions{Progress: progress, Log: pi.log})
			res.format = r.Format
			return err
		})
	default:
		raw, format, err := pi.cached.Raw(ctx)
		if err != nil {
			res.err = err
			break
		}
		defer raw.Close()
		res.format = format
		in := &countingReader{r: raw}
		var outN atomic.Int64
		stop := reportProgress(progress, &in.n, &outN, pi.cached.Size())
		if format == image.Xz {
			_, res.err = io.CopyBuffer(cw, in, make([]byte, 1<<20))
		} else {
			res.raw, res.err = compress(cw, func(dst io.Writer) error {
				dec, err := image.Decompress(format, in)
				if err != nil {
					return err
				}
				defer dec.Close()
				_, err = io.CopyBuffer(&countingWriter{w: dst, n: &outN}, dec, make([]byte, 1<<20))
				return err
			})
		}
		stop()
	}
	res.bytes = cw.n.Load()
	return res
}

// compress writes what produce writes to its writer into w as xz, with
// the compressor in its own goroutine, so that decompressing (in produce)
// and compressing use two cores. It returns how many bytes produce wrote.
func compress(w io.Writer, produce func(dst io.Writer) error) (int64, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		xw, err := xz.WriterConfig{DictCap: xzDictCap}.NewWriter(w)
		if err == nil {
			_, err = io.CopyBuffer(xw, pr, make([]byte, 1<<20))
			if err == nil {
				err = xw.Close()
			}
		}
		if err != nil {
			err = fmt.Errorf("sending the image to the imager: %w", err)
		}
		// Unblock produce if the compressor stopped first.
		_ = pr.CloseWithError(cmp.Or(err, errCompressorDone))
		done <- err
	}()
	g := &qcowGuard{w: pw}
	perr := produce(g)
	_ = pw.CloseWithError(perr) // nil: the end of the image, and of the xz stream
	cerr := <-done
	if perr != nil {
		return g.n, perr
	}
	return g.n, cerr
}

// errCompressorDone ends the compressor's pipe once it is done with it.
var errCompressorDone = errors.New("the compressor has finished")

// qcowGuard passes the image on, refusing it if it starts as a qcow2 one.
type qcowGuard struct {
	w    io.Writer
	head []byte
	n    int64
	ok   bool
}

func (g *qcowGuard) Write(p []byte) (int, error) {
	if !g.ok {
		g.head = append(g.head, p[:min(len(qcow2Magic)-len(g.head), len(p))]...)
		if len(g.head) == len(qcow2Magic) {
			if bytes.Equal(g.head, qcow2Magic) {
				return 0, errQcow2
			}
			g.ok = true
		}
	}
	n, err := g.w.Write(p)
	g.n += int64(n)
	return n, err
}

// countingWriter counts the bytes written through it into n (not nil).
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
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
// counted in in and out, until the returned function is called (which
// reports once more).
func reportProgress(fn func(image.Progress), in, out *atomic.Int64, total int64) func() {
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
			n, now := in.Load(), time.Now()
			rate := 0.0
			if dt := now.Sub(lastAt).Seconds(); dt > 0 {
				rate = float64(n-last) / dt
			}
			last, lastAt = n, now
			fn(image.Progress{BytesIn: n, BytesOut: out.Load(), Total: total, Rate: rate})
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

// oneShot is the listener the imager fetches the image from: it serves
// one connection, from an allowed address, and closes.
type oneShot struct {
	ln      net.Listener
	allowed []netip.Addr
	cancel  context.CancelFunc
	done    chan sent
	w       io.Writer
	log     *slog.Logger

	mu       sync.Mutex
	conn     net.Conn
	accepted atomic.Bool // the device connected

	once   sync.Once
	result sent
}

// serveOnce serves send's output on ln to the first connection from one
// of allowed; other connections are closed as they come. ln is closed once
// that connection is accepted, and everything when ctx is done or close is
// called. w receives what an operator should know.
func serveOnce(ctx context.Context, ln net.Listener, allowed []netip.Addr, send func(ctx context.Context, w io.Writer) sent, w io.Writer, log *slog.Logger) *oneShot {
	sctx, cancel := context.WithCancel(ctx)
	s := &oneShot{ln: ln, allowed: allowed, cancel: cancel, done: make(chan sent, 1), w: w, log: log}
	context.AfterFunc(sctx, s.shut)
	go s.serve(sctx, send)
	return s
}

// Addr returns the listener's address.
func (s *oneShot) Addr() net.Addr { return s.ln.Addr() }

func (s *oneShot) allow(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	for _, ok := range s.allowed {
		if ap.Addr().Unmap() == ok {
			return true
		}
	}
	return false
}

func (s *oneShot) serve(ctx context.Context, send func(context.Context, io.Writer) sent) {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			s.done <- sent{raw: -1, err: fmt.Errorf("the imager did not fetch the image: %w", err)}
			return
		}
		if !s.allow(c.RemoteAddr()) {
			s.log.Warn("netboot: refused a connection to the image server", "from", c.RemoteAddr().String())
			fmt.Fprintf(s.w, "Refused a connection to the image server from %s: only the device may fetch the image\n", c.RemoteAddr())
			_ = c.Close()
			continue
		}
		_ = s.ln.Close()
		s.mu.Lock()
		if ctx.Err() != nil {
			s.mu.Unlock()
			_ = c.Close()
			s.done <- sent{raw: -1, err: fmt.Errorf("the imager connected too late: %w", ctx.Err())}
			return
		}
		s.conn = c
		s.accepted.Store(true)
		s.mu.Unlock()
		s.log.Info("netboot: serving the image", "to", c.RemoteAddr().String())
		res := send(ctx, c)
		res.connected, res.from = true, c.RemoteAddr().String()
		_ = c.Close() // the end of the stream for the imager
		if res.err != nil && ctx.Err() != nil && !errors.Is(res.err, ctx.Err()) {
			res.err = fmt.Errorf("%w (%w)", ctx.Err(), res.err)
		}
		s.done <- res
		return
	}
}

// shut closes the listener and the connection being served.
func (s *oneShot) shut() {
	_ = s.ln.Close()
	s.mu.Lock()
	if s.conn != nil {
		_ = s.conn.Close()
	}
	s.mu.Unlock()
}

// wait returns what was served, waiting for at most grace before closing
// everything (0, or no connection yet: at once), and then for the server
// to stop.
func (s *oneShot) wait(grace time.Duration) sent {
	s.once.Do(func() {
		if grace > 0 && s.accepted.Load() {
			t := time.NewTimer(grace)
			select {
			case s.result = <-s.done:
				t.Stop()
				s.cancel()
				return
			case <-t.C:
			}
		}
		s.cancel()
		s.result = <-s.done
	})
	return s.result
}

// close stops the server and waits for it.
func (s *oneShot) close() { s.wait(0) }

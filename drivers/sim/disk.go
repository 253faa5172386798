package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"
)

// ErrIO is the error a Disk returns when its FailAfter fault fires, as a
// failing SD card or USB stick gives EIO.
var ErrIO = errors.New("input/output error")

// headerKeep is how many leading bytes of a write a Disk keeps, enough for
// the header of a simulated image (see Image).
const headerKeep = 64 << 10

// Disk is a simulated block device: an SD card, a USB stick or an eMMC.
// It keeps what a test needs to check a write against the image written
// (its length, SHA-256 and first bytes), not the bytes themselves, so that
// a write of many GiB costs no memory. Its methods are safe for
// concurrent use.
type Disk struct {
	name string

	mu        sync.Mutex
	size      int64
	rate      int64 // bytes per second; 0: as fast as written
	failAfter int64 // -1: never
	writes    int
	open      *DiskWriter
	last      DiskWrite
}

// DiskWrite describes the last write to a Disk, from its first byte.
type DiskWrite struct {
	// Bytes is how many bytes were written.
	Bytes int64
	// SHA256 is the hex SHA-256 of those bytes.
	SHA256 string
	// Header holds the first bytes written (at most 64 KiB).
	Header []byte
	// Complete reports that the writer was closed without an error.
	Complete bool
	// Err is the error the write ended with, if any.
	Err error
	// Duration is how long the write took, from open to close.
	Duration time.Duration
}

// NewDisk returns an empty disk of size bytes (0: no limit) named name
// (its device node, such as /dev/sda, for messages).
func NewDisk(name string, size int64) *Disk {
	return &Disk{name: name, size: size, failAfter: -1}
}

// Name returns the disk's name.
func (d *Disk) Name() string { return d.name }

// SetRate limits writes to bytesPerSecond (0: no limit), as a slow card.
func (d *Disk) SetRate(bytesPerSecond int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rate = bytesPerSecond
}

// FailAfter makes every later write fail with ErrIO once n bytes of it
// were written (n < 0: never), as a card that dies half way.
func (d *Disk) FailAfter(n int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failAfter = n
}

// FailWritesAfter applies a simulator's WriteFailsAfter fault: n > 0 is
// FailAfter(n), anything else clears the fault.
func (d *Disk) FailWritesAfter(n int64) {
	if n <= 0 {
		n = -1
	}
	d.FailAfter(n)
}

// Last returns the last write, or the one in progress.
func (d *Disk) Last() DiskWrite {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.open != nil {
		return d.open.snapshot()
	}
	w := d.last
	w.Header = append([]byte(nil), w.Header...)
	return w
}

// Writes returns how many writes were opened so far.
func (d *Disk) Writes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes
}

// OpenWrite starts a write from the first byte, replacing what the disk
// held, as dd of=<disk> does. A write still open is ended with an error.
func (d *Disk) OpenWrite() *DiskWriter {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.open != nil {
		d.open.finishLocked(errors.New("another write started"))
	}
	d.writes++
	w := &DiskWriter{d: d, h: sha256.New(), start: time.Now(), failAfter: d.failAfter, rate: d.rate, size: d.size}
	d.open = w
	return w
}

// DiskWriter writes to a Disk from its first byte; Close ends the write.
type DiskWriter struct {
	d         *Disk
	h         hash.Hash
	n         int64
	header    []byte
	start     time.Time
	failAfter int64
	rate      int64
	size      int64
	err       error
	done      bool
}

// snapshot describes the write so far; the disk's lock is held.
func (w *DiskWriter) snapshot() DiskWrite {
	return DiskWrite{
		Bytes:    w.n,
		SHA256:   hex.EncodeToString(w.h.Sum(nil)),
		Header:   append([]byte(nil), w.header...),
		Complete: w.done && w.err == nil,
		Err:      w.err,
		Duration: time.Since(w.start),
	}
}

// Write writes p after what was written so far. Once the disk's
// FailAfter fault fires or the disk is full, it fails with ErrIO (or
// io.ErrShortWrite for a full disk) and keeps failing.
func (w *DiskWriter) Write(p []byte) (int, error) {
	w.d.mu.Lock()
	if w.done || w.err != nil {
		err := w.err
		w.d.mu.Unlock()
		if err == nil {
			err = errors.New("write to a closed disk writer")
		}
		return 0, err
	}
	n := len(p)
	var err error
	if w.failAfter >= 0 && w.n+int64(n) > w.failAfter {
		n = int(max(0, w.failAfter-w.n))
		err = fmt.Errorf("writing %s at byte %d: %w", w.d.name, w.failAfter, ErrIO)
	}
	if w.size > 0 && w.n+int64(n) > w.size {
		n = int(max(0, w.size-w.n))
		err = fmt.Errorf("writing %s: no space left on device (%d bytes): %w", w.d.name, w.size, io.ErrShortWrite)
	}
	if len(w.header) < headerKeep {
		w.header = append(w.header, p[:min(n, headerKeep-len(w.header))]...)
	}
	w.h.Write(p[:n])
	w.n += int64(n)
	w.err = err
	rate, written, start := w.rate, w.n, w.start
	w.d.mu.Unlock()
	if rate > 0 {
		// Sleep until the bytes written so far could have been written at rate.
		due := start.Add(time.Duration(float64(written) / float64(rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
	}
	return n, err
}

// Close ends the write; it is complete unless a Write failed.
func (w *DiskWriter) Close() error {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	if w.done {
		return w.err
	}
	w.finishLocked(nil)
	return w.err
}

// Abort ends the write as incomplete with err.
func (w *DiskWriter) Abort(err error) {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	if !w.done {
		w.finishLocked(err)
	}
}

func (w *DiskWriter) finishLocked(err error) {
	if w.err == nil {
		w.err = err
	}
	w.done = true
	if w.d.open == w {
		w.d.last = w.snapshot()
		w.d.open = nil
	}
}

// CopyTo writes r to the disk from its first byte, as dd of=<disk> bs=bs
// does (bs <= 0: 1 MiB), and returns the bytes written. It stops when ctx
// is done.
func (d *Disk) CopyTo(ctx context.Context, r io.Reader, bs int) (int64, error) {
	if bs <= 0 {
		bs = 1 << 20
	}
	bs = min(bs, 64<<20)
	w := d.OpenWrite()
	buf := make([]byte, bs)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			w.Abort(err)
			return total, err
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				w.Abort(werr)
				return total, werr
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			if err := ctx.Err(); err != nil {
				// Killed: the end of the input is not the end of the image.
				w.Abort(err)
				return total, err
			}
			return total, w.Close()
		}
		if rerr != nil {
			w.Abort(rerr)
			return total, rerr
		}
	}
}

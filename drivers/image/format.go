package image

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Format is the compression of an image, as found from its first bytes.
type Format int

// The formats Detect recognises.
const (
	// Raw: no compression this package knows; the bytes are the image.
	Raw Format = iota
	// Gzip: gzip (magic 1F 8B), including concatenated members as pigz writes them.
	Gzip
	// Xz: xz (magic FD 37 7A 58 5A 00).
	Xz
	// Zstd: Zstandard (magic 28 B5 2F FD).
	Zstd
	// Bzip2: bzip2 (magic "BZh" and a block size digit).
	Bzip2
)

var formatNames = [...]string{Raw: "raw", Gzip: "gzip", Xz: "xz", Zstd: "zstd", Bzip2: "bzip2"}

var formatCats = [...]string{Raw: "cat", Gzip: "zcat", Xz: "xzcat", Zstd: "zstdcat", Bzip2: "bzcat"}

// String returns the format's name: raw, gzip, xz, zstd or bzip2.
func (f Format) String() string {
	if f >= 0 && int(f) < len(formatNames) {
		return formatNames[f]
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// Cat returns the usual command that decompresses f from stdin to stdout
// (zcat, xzcat, zstdcat, bzcat, or cat for Raw), for a caller that ships
// the compressed bytes to a control host and decompresses them there.
func (f Format) Cat() string {
	if f >= 0 && int(f) < len(formatCats) {
		return formatCats[f]
	}
	return "cat"
}

// MagicLen is how many leading bytes Detect needs to tell the formats apart.
const MagicLen = 6

var (
	magicXz    = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}
	magicGzip  = []byte{0x1F, 0x8B}
	magicZstd  = []byte{0x28, 0xB5, 0x2F, 0xFD}
	magicBzip2 = []byte("BZh")
)

// detectBytes returns the format whose magic head starts with.
func detectBytes(head []byte) Format {
	switch {
	case bytes.HasPrefix(head, magicXz):
		return Xz
	case bytes.HasPrefix(head, magicGzip):
		return Gzip
	case bytes.HasPrefix(head, magicZstd):
		return Zstd
	case len(head) >= 4 && bytes.HasPrefix(head, magicBzip2) && head[3] >= '1' && head[3] <= '9':
		return Bzip2
	}
	return Raw
}

// Detect reads the first bytes of r, tells its compression from them (not
// from any name) and returns a reader that yields all of r, those bytes
// included. A stream shorter than MagicLen is detected from what there is.
// The error is r's, other than io.EOF.
func Detect(r io.Reader) (Format, io.Reader, error) {
	head := make([]byte, MagicLen)
	n, err := io.ReadFull(r, head)
	head = head[:n]
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return Raw, nil, err
	}
	return detectBytes(head), io.MultiReader(bytes.NewReader(head), r), nil
}

// Decompress returns the decompressed stream of r, which is compressed as
// f. Nothing is read until the first Read. A damaged or incomplete stream
// makes Read fail with an *Error of kind Corrupt that names the format and
// the compressed offset reached ("corrupt xz stream at offset 1048576:
// ..."); an error of r itself is returned as it is. Close releases the
// decompressor (zstd runs goroutines) but does not close r.
func Decompress(f Format, r io.Reader) (io.ReadCloser, error) {
	return decompress(f, r, "")
}

func decompress(f Format, r io.Reader, url string) (io.ReadCloser, error) {
	if f < Raw || f > Bzip2 {
		return nil, newError(Invalid, url, nil, "unknown compression format %d", int(f))
	}
	return &decoder{format: f, src: &countingReader{r: r}, url: url}, nil
}

// decoder is Decompress's reader: it starts the decompressor on first use
// and turns its errors into *Error.
type decoder struct {
	format Format
	src    *countingReader
	url    string
	r      io.Reader
	close  func()
	err    error
}

// errClosed is returned by a Read after Close.
var errClosed = errors.New("image: read after close")

func (d *decoder) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.r == nil {
		if err := d.start(); err != nil {
			d.err = d.wrap(err)
			return 0, d.err
		}
	}
	n, err := d.r.Read(p)
	if err != nil {
		if err != io.EOF {
			err = d.wrap(err)
		}
		d.err = err
	}
	return n, err
}

func (d *decoder) start() error {
	switch d.format {
	case Gzip:
		z, err := gzip.NewReader(d.src)
		if err != nil {
			return err
		}
		d.r, d.close = z, func() { _ = z.Close() }
	case Zstd:
		z, err := zstd.NewReader(d.src)
		if err != nil {
			return err
		}
		d.r, d.close = z, z.Close
	case Xz:
		z, err := xz.NewReader(bufio.NewReaderSize(d.src, 1<<20))
		if err != nil {
			return err
		}
		d.r = z
	case Bzip2:
		d.r = bzip2.NewReader(bufio.NewReaderSize(d.src, 1<<20))
	default:
		d.r = d.src
	}
	return nil
}

// wrap turns a decompressor's error into the source's own error when the
// source failed, and into a Corrupt *Error otherwise.
func (d *decoder) wrap(err error) error {
	if d.src.err != nil && d.src.err != io.EOF {
		return d.src.err
	}
	if d.format == Raw {
		return err
	}
	msg := err.Error()
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		msg = "the stream ends early (unexpected EOF)"
	}
	return &Error{Kind: Corrupt, URL: d.url, Err: err,
		Detail: fmt.Sprintf("corrupt %s stream at offset %d: %s", d.format, d.src.n, msg)}
}

// Close releases the decompressor; the source is not closed.
func (d *decoder) Close() error {
	if d.close != nil {
		d.close()
		d.close = nil
	}
	if d.err == nil || d.err == io.EOF {
		d.err = errClosed
	}
	return nil
}

// countingReader counts the bytes read through it and keeps the first error.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"strconv"
	"strings"
	"time"
)

// ddMaxBlock is the most the simulated dd writes at once, whatever its
// block size, so that it stops promptly when killed, even on a slow disk.
const ddMaxBlock = 256 << 10

// ddMaxBS is the largest block size dd accepts.
const ddMaxBS = 1 << 30

// DD is the simulated dd, a built-in command of every DUT that a
// simulator may adapt to its host (a dd that needs sudo, or that creates
// files):
//
//	dd of=PATH [bs=N[K|M|G]] [obs=N] [status=none|progress|noxfer]
//	   [conv=...] [oflag=...] [iflag=...] [ibs=...]
//
// It writes its standard input to the Disk at PATH from its first byte,
// at most 256 KiB at a time, and prints GNU dd's messages on stderr: its
// summary (unless status=none) and the error that ended the write. It
// stops at once when its context ends, even while it waits for input
// (exit status 130).
type DD struct {
	// Open returns the Disk that of=PATH names on the host running x, or
	// an error wrapping fs.ErrNotExist or fs.ErrPermission, which dd
	// reports as "failed to open 'PATH': No such file or directory" or
	// "...: Permission denied" (another error: its text). Nil: the DUT's
	// disk at PATH (x.DUT.Disk).
	Open func(x *Exec, path string) (*Disk, error)
}

// Run runs dd as x (x.Args[0] is dd) and returns its exit status.
func (dd DD) Run(ctx context.Context, x *Exec) int {
	var of string
	bs := int64(512)
	quiet := false
	for _, a := range x.Args[1:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return x.Errorf(1, "unrecognized operand '%s'", a)
		}
		switch k {
		case "of":
			of = v
		case "bs", "obs":
			n, err := ParseSize(v)
			if err != nil || n <= 0 || n > ddMaxBS {
				return x.Errorf(1, "invalid number: '%s'", v)
			}
			bs = n
		case "status":
			quiet = v == "none"
		case "conv", "oflag", "iflag", "ibs":
		default:
			return x.Errorf(1, "operand '%s' is not simulated", a)
		}
	}
	if of == "" {
		return x.Errorf(1, "only dd of=PATH is simulated")
	}
	open := dd.Open
	if open == nil {
		open = openDisk
	}
	disk, err := open(x, of)
	if err != nil {
		return x.Errorf(1, "failed to open '%s': %s", of, pathError(err))
	}
	// A signal or a closed session kills dd at once, even while it waits
	// for input.
	pr, pw := io.Pipe()
	go func() {
		_, err := io.Copy(pw, x.Stdin)
		_ = pw.CloseWithError(err)
	}()
	defer pr.Close() // ends the copy above once dd stops reading
	stop := context.AfterFunc(ctx, func() { _ = pr.CloseWithError(ctx.Err()) })
	defer stop()
	start := time.Now()
	n, err := disk.CopyTo(ctx, pr, int(min(bs, ddMaxBlock)))
	if ctx.Err() != nil {
		return 130
	}
	if err != nil {
		fmt.Fprintln(x.Stderr, DDWriteError(of, err))
	}
	if !quiet {
		fmt.Fprint(x.Stderr, DDSummary(n, bs, time.Since(start)))
	}
	if err != nil {
		return 1
	}
	return 0
}

// teeMax bounds what the simulated tee reads.
const teeMax = 64 << 20

// Tee is the simulated tee, a built-in command of every DUT that a
// simulator may adapt (a file that only root may write):
//
//	tee [-a|--append] FILE...
//
// It copies its standard input (at most 64 MiB) to its standard output
// and to each file of the DUT, appending with -a.
type Tee struct {
	// Check, when set, is asked about each file before anything is read
	// or written: an error wrapping fs.ErrNotExist or fs.ErrPermission
	// makes tee fail with "tee: FILE: No such file or directory" or
	// "...: Permission denied" (another error: its text).
	Check func(x *Exec, path string) error
}

// Run runs tee as x (x.Args[0] is tee) and returns its exit status.
func (t Tee) Run(_ context.Context, x *Exec) int {
	appendTo := false
	var paths []string
	for _, a := range x.Args[1:] {
		switch {
		case a == "-a" || a == "--append":
			appendTo = true
		case strings.HasPrefix(a, "-"):
			return x.Errorf(1, "invalid option %q", a)
		default:
			paths = append(paths, a)
		}
	}
	for _, p := range paths {
		if t.Check == nil {
			break
		}
		if err := t.Check(x, p); err != nil {
			return x.Errorf(1, "%s: %s", p, pathError(err))
		}
	}
	b, err := io.ReadAll(io.LimitReader(x.Stdin, teeMax))
	if err != nil {
		return x.Errorf(1, "reading standard input: %v", err)
	}
	_, _ = x.Stdout.Write(b)
	for _, p := range paths {
		if appendTo {
			old, _ := x.DUT.ReadFile(p)
			x.DUT.WriteFile(p, append(old, b...))
		} else {
			x.DUT.WriteFile(p, b)
		}
	}
	return 0
}

// pathError words err, the failure to open a path, as coreutils do.
func pathError(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "No such file or directory"
	case errors.Is(err, fs.ErrPermission):
		return "Permission denied"
	}
	return err.Error()
}

// openDisk is DD's default Open: the disk attached at path.
func openDisk(x *Exec, path string) (*Disk, error) {
	if disk := x.DUT.Disk(path); disk != nil {
		return disk, nil
	}
	return nil, fs.ErrNotExist
}

// DDSummary returns what GNU dd prints on stderr once it has copied n
// bytes in blocks of bs bytes in elapsed: records in and out, and the
// bytes copied with the time and rate.
func DDSummary(n, bs int64, elapsed time.Duration) string {
	records, partial := n/bs, 0
	if n%bs != 0 {
		partial = 1
	}
	secs := max(elapsed.Seconds(), 1e-6)
	return fmt.Sprintf("%d+%d records in\n%d+%d records out\n%d bytes copied, %.3f s, %.1f MB/s\n",
		records, partial, records, partial, n, secs, float64(n)/secs/1e6)
}

// DDWriteError returns GNU dd's message for a write to path that failed
// with err: an I/O error (ErrIO), a full disk (io.ErrShortWrite), or
// err's own text.
func DDWriteError(path string, err error) string {
	reason := err.Error()
	switch {
	case errors.Is(err, ErrIO):
		reason = "Input/output error"
	case errors.Is(err, io.ErrShortWrite):
		reason = "No space left on device"
	}
	return fmt.Sprintf("dd: error writing '%s': %s", path, reason)
}

// ParseSize parses a size as dd takes it: a whole number of bytes with an
// optional K (or k), M or G suffix, powers of 1024 ("16M"). Negative
// numbers and sizes that do not fit an int64 are errors.
func ParseSize(s string) (int64, error) {
	num, mult := s, int64(1)
	switch {
	case strings.HasSuffix(s, "K") || strings.HasSuffix(s, "k"):
		num, mult = s[:len(s)-1], 1<<10
	case strings.HasSuffix(s, "M"):
		num, mult = s[:len(s)-1], 1<<20
	case strings.HasSuffix(s, "G"):
		num, mult = s[:len(s)-1], 1<<30
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * mult, nil
}

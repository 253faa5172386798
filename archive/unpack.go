package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
)

// maxTrailer bounds what Unpack reads of a gzip stream after the tar's end
// to check the gzip checksum; tar writers pad to at most 10 KiB or so.
const maxTrailer = 1 << 20

// Unpack reads a tar.gz (or a plain tar: gzip is told by its magic bytes)
// from r and writes it under dir, which it creates (0750) if needed.
//
// It refuses, with an *EntryError naming the entry and before writing it:
// an absolute name, a name with a ".." element, a NUL byte or a backslash,
// a hard link, a symbolic link whose target (absolute, or relative from
// the link's directory) leaves dir, an entry whose path goes through a
// symbolic link (written earlier by the archive or already under dir),
// devices, fifos and other types, a first path element not in lim.Top
// (those wrap ErrUnsafe), and an entry beyond lim (ErrTooLarge). Files are
// created exclusively, never following a link: a later regular file
// replaces an earlier one of the same name, but nothing replaces a link or
// directory (ErrConflict). Modes keep their permission bits only, and
// directories are at least 0700 so that the tree can be removed.
// Modification times are kept for files and directories.
//
// All writes go through an os.Root on dir, so no race can lead one
// outside. On an error, what was already written stays: the caller removes
// dir. An archive that cannot be read is an error wrapping ErrCorrupt.
func Unpack(ctx context.Context, r io.Reader, dir string, lim Limits) (Stats, error) {
	u := &unpacker{lim: lim, known: map[string]bool{}}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return u.st, fmt.Errorf("unpack: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return u.st, fmt.Errorf("unpack: %w", err)
	}
	defer root.Close()
	u.root = root

	u.in = &readErrs{r: r}
	br := bufio.NewReaderSize(u.in, bufSize)
	src, gz, err := decompressor(br)
	if err != nil {
		return u.st, u.readFailure(err)
	}
	u.src = &readErrs{r: src}
	tr := tar.NewReader(u.src)
	for {
		if err := ctx.Err(); err != nil {
			return u.st, fmt.Errorf("unpack: %w", err)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
			err = nil // GODEBUG=tarinsecurepath=0: entry refuses it, saying why
		}
		if err != nil {
			return u.st, u.readFailure(err)
		}
		u.entries++
		if err := u.entry(ctx, hdr, tr); err != nil {
			return u.st, err
		}
	}
	if gz != nil {
		// Read the gzip stream to its end (the tar's zero blocks and
		// padding), where the checksum of everything is checked.
		n, err := io.CopyN(io.Discard, gz, maxTrailer)
		if err != nil && err != io.EOF {
			return u.st, u.readFailure(err)
		}
		if n < maxTrailer {
			if err := gz.Close(); err != nil {
				return u.st, u.readFailure(err)
			}
		}
	}
	if err := u.dirTimes(); err != nil {
		return u.st, err
	}
	return u.st, nil
}

// decompressor returns the tar stream of br: br itself or, for a gzip
// stream, a gzip reader, also returned as gz.
func decompressor(br *bufio.Reader) (io.Reader, *gzip.Reader, error) {
	magic, err := br.Peek(6)
	if len(magic) == 0 {
		if err == nil || err == io.EOF {
			return nil, nil, fmt.Errorf("%w: empty input", ErrCorrupt)
		}
		return nil, nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return gz, gz, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return nil, nil, fmt.Errorf("%w: xz-compressed, and only gzip'd or plain tar archives are read", ErrCorrupt)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, nil, fmt.Errorf("%w: zstd-compressed, and only gzip'd or plain tar archives are read", ErrCorrupt)
	case bytes.HasPrefix(magic, []byte("BZh")):
		return nil, nil, fmt.Errorf("%w: bzip2-compressed, and only gzip'd or plain tar archives are read", ErrCorrupt)
	}
	return br, nil, nil
}

// readFailure wraps an error reading the archive: the reader's own error,
// else (ErrCorrupt) what was read is not a well-formed archive.
func (u *unpacker) readFailure(err error) error {
	if u.in.err != nil {
		return fmt.Errorf("unpack: reading the archive: %w", u.in.err)
	}
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return corrupt(err)
}

// corrupt wraps an error decoding the archive.
func corrupt(err error) error {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: truncated: %w", ErrCorrupt, err)
	case errors.Is(err, tar.ErrHeader), errors.Is(err, gzip.ErrHeader):
		return fmt.Errorf("%w: not a tar or tar.gz archive: %w", ErrCorrupt, err)
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

// readErrs remembers the last error its reader returned, so that a failed
// copy can tell a corrupt archive from a failed write.
type readErrs struct {
	r   io.Reader
	err error
}

func (r *readErrs) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// unpacker writes one archive.
type unpacker struct {
	root    *os.Root
	lim     Limits
	in      *readErrs // the archive as read
	src     *readErrs // the tar stream
	entries int
	// known holds the directories checked or made so far, which are not
	// links: the archive never replaces a directory.
	known map[string]bool
	times []dirTime
	buf   *[]byte
	st    Stats
}

// dirTime is a directory's modification time, set once its contents are
// written.
type dirTime struct {
	name  string
	mtime time.Time
}

// entry checks and writes one entry.
func (u *unpacker) entry(ctx context.Context, hdr *tar.Header, tr *tar.Reader) error {
	refuse := func(reason string, err error) error {
		return &EntryError{Name: hdr.Name, Reason: reason, Err: err}
	}
	if u.lim.MaxFiles > 0 && u.entries > u.lim.MaxFiles {
		return refuse(fmt.Sprintf("is past the limit of %d entries", u.lim.MaxFiles), ErrTooLarge)
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // archive-wide metadata (git archive writes one)
	}
	name, reason := entryName(hdr.Name)
	if reason != "" {
		return refuse(reason, ErrUnsafe)
	}
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			return nil // the directory itself ("./")
		}
		return refuse("names the directory itself", ErrUnsafe)
	}
	if len(u.lim.Top) > 0 {
		top, _, _ := strings.Cut(name, "/")
		if !slices.Contains(u.lim.Top, top) {
			return refuse(fmt.Sprintf("is not under one of %s", strings.Join(u.lim.Top, ", ")), ErrUnsafe)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
	case tar.TypeLink:
		return refuse(fmt.Sprintf("is a hard link (to %q); hard links are not accepted", hdr.Linkname), ErrUnsafe)
	case tar.TypeChar:
		return refuse("is a character device; devices are not accepted", ErrUnsafe)
	case tar.TypeBlock:
		return refuse("is a block device; devices are not accepted", ErrUnsafe)
	case tar.TypeFifo:
		return refuse("is a named pipe (fifo); fifos are not accepted", ErrUnsafe)
	default:
		return refuse(fmt.Sprintf("has type %q; only regular files, directories and symbolic links are accepted", hdr.Typeflag), ErrUnsafe)
	}
	if hdr.Typeflag == tar.TypeSymlink {
		if r := linkProblem(name, hdr.Linkname); r != "" {
			return refuse(r, ErrUnsafe)
		}
	}
	if hdr.Typeflag == tar.TypeReg && u.lim.MaxBytes > 0 && hdr.Size > u.lim.MaxBytes-u.st.Bytes {
		return refuse(fmt.Sprintf("takes the archive past its limit of %d bytes", u.lim.MaxBytes), ErrTooLarge)
	}
	if err := u.parents(hdr.Name, name); err != nil {
		return err
	}
	fi, err := u.root.Lstat(name)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if exists && fi.Mode().Type() == fs.ModeSymlink {
		return refuse("would replace the symbolic link already there", ErrUnsafe)
	}
	mode := fs.FileMode(hdr.Mode).Perm()
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.dir(hdr, name, mode, fi, exists)
	case tar.TypeSymlink:
		if exists {
			return refuse("is a symbolic link whose name is already taken", ErrConflict)
		}
		if err := u.root.Symlink(path.Clean(hdr.Linkname), name); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
		u.st.Links++
		return nil
	default:
		if exists {
			if !fi.Mode().IsRegular() {
				return refuse("is a file, where a directory or special file already is", ErrConflict)
			}
			// Like tar, a later file replaces an earlier one. Remove
			// takes away the name, never what a link names, and the
			// file is then created exclusively.
			if err := u.root.Remove(name); err != nil {
				return fmt.Errorf("unpack %q: %w", hdr.Name, err)
			}
		}
		return u.file(ctx, hdr, name, mode, tr)
	}
}

// entryName checks an entry's name and returns its clean form, or why it
// is refused. A leading "./", repeated slashes and a trailing slash are
// accepted, as tar writes them.
func entryName(raw string) (string, string) {
	switch {
	case raw == "":
		return "", "has an empty name"
	case strings.IndexByte(raw, 0) >= 0:
		return "", "contains a NUL byte"
	case strings.IndexByte(raw, '\\') >= 0:
		return "", "contains a backslash, which some systems take for a separator"
	case strings.HasPrefix(raw, "/"):
		return "", "is an absolute path, which leads outside the directory"
	}
	for el := range strings.SplitSeq(raw, "/") {
		if el == ".." {
			return "", "leads outside the directory"
		}
	}
	return path.Clean(raw), ""
}

// parents makes sure the directories above the clean name are
// directories, not links, making those missing.
func (u *unpacker) parents(raw, name string) error {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		p := name[:i]
		if u.known[p] {
			continue
		}
		fi, err := u.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := u.root.Mkdir(p, 0o750); err != nil {
				return fmt.Errorf("unpack %q: %w", raw, err)
			}
		case err != nil:
			return fmt.Errorf("unpack %q: %w", raw, err)
		case fi.Mode().Type() == fs.ModeSymlink:
			return &EntryError{Name: raw, Reason: fmt.Sprintf("goes through the symbolic link %q", p), Err: ErrUnsafe}
		case !fi.IsDir():
			return &EntryError{Name: raw, Reason: fmt.Sprintf("goes through %q, which is not a directory", p), Err: ErrConflict}
		}
		u.known[p] = true
	}
	return nil
}

// dir writes a directory entry; fi and exists tell what is at name.
func (u *unpacker) dir(hdr *tar.Header, name string, mode fs.FileMode, fi fs.FileInfo, exists bool) error {
	if exists && !fi.IsDir() {
		return &EntryError{Name: hdr.Name, Reason: "is a directory, where a file already is", Err: ErrConflict}
	}
	if !exists {
		if err := u.root.Mkdir(name, 0o700); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
	u.known[name] = true
	if err := u.root.Chmod(name, mode|0o700); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	u.times = append(u.times, dirTime{name: name, mtime: hdr.ModTime})
	u.st.Dirs++
	return nil
}

// file writes a regular file's content; nothing is at name.
func (u *unpacker) file(ctx context.Context, hdr *tar.Header, name string, mode fs.FileMode, tr *tar.Reader) error {
	f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if u.buf == nil {
		u.buf = getBuf()
		defer func() { putBuf(u.buf); u.buf = nil }()
	}
	var rd io.Reader = tr
	if u.lim.MaxBytes > 0 {
		// The header's size was checked; this holds even if a reader
		// yields more than it said.
		rd = io.LimitReader(rd, u.lim.MaxBytes-u.st.Bytes+1)
	}
	u.src.err = nil
	n, err := io.CopyBuffer(f, &ctxReader{ctx: ctx, r: rd}, *u.buf)
	u.st.Bytes += n
	if err != nil {
		_ = f.Close()
		if ctx.Err() != nil {
			return fmt.Errorf("unpack: %w", ctx.Err())
		}
		if u.in.err != nil {
			return u.readFailure(err)
		}
		if u.src.err != nil || errors.Is(err, io.ErrUnexpectedEOF) {
			return &EntryError{Name: hdr.Name, Reason: "is cut short: the archive is truncated or corrupt", Err: corrupt(err)}
		}
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if u.lim.MaxBytes > 0 && u.st.Bytes > u.lim.MaxBytes {
		_ = f.Close()
		return &EntryError{Name: hdr.Name, Reason: fmt.Sprintf("takes the archive past its limit of %d bytes", u.lim.MaxBytes), Err: ErrTooLarge}
	}
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if err := u.root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	u.st.Files++
	return nil
}

// dirTimes sets the directories' modification times, deepest last
// written first, now that their contents are in place.
func (u *unpacker) dirTimes() error {
	for _, d := range slices.Backward(u.times) {
		if err := u.root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return fmt.Errorf("unpack %q: %w", d.name, err)
		}
	}
	return nil
}

// Package archive packs and unpacks the gzip'd tar archives that carry job
// attachments from the submitter to lab hosts, and test artifacts back.
//
// Archives come from untrusted users (attachments) and untrusted test code
// (artifacts), so Unpack refuses anything that could write outside its
// directory: absolute names, ".." elements, hard links, symbolic links that
// lead out, entries that pass through a symbolic link, and special files.
// It writes through an os.Root, so that even a racing change to the tree
// cannot lead a write outside it; the explicit checks make the errors say
// why an entry was refused.
package archive

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
)

// ErrTooLarge is wrapped by the *EntryError of an entry that takes an
// archive past Limits.MaxBytes or Limits.MaxFiles.
var ErrTooLarge = errors.New("archive too large")

// ErrUnsafe is wrapped by the *EntryError of an entry that is refused
// because it could reach outside the directory or is of a type that is not
// accepted: absolute names, ".." elements, hard links, symbolic links
// leading out, entries through a symbolic link, devices, fifos, and names
// outside Limits.Top.
var ErrUnsafe = errors.New("unsafe archive entry")

// ErrConflict is wrapped by the *EntryError of an entry that clashes with
// what is already in the directory: a file where a directory is needed, a
// directory or link where a file is to be written, or a link whose name is
// taken.
var ErrConflict = errors.New("archive entry conflicts with an existing one")

// ErrCorrupt is wrapped by the error of an archive that cannot be read:
// truncated, not a tar (or gzip'd tar), or failing its checksum.
var ErrCorrupt = errors.New("corrupt archive")

// Source is one file or directory to pack: Path on the local disk, Name its
// slash-separated path inside the archive (relative, clean, no "..").
type Source struct {
	Path string
	Name string
}

// Stats tells what a Pack or Unpack did: the regular files, directories
// and symbolic links it stored or wrote, the bytes of regular file content,
// and (PackDir) the archive names it left out.
type Stats struct {
	Files   int
	Dirs    int
	Links   int
	Bytes   int64
	Skipped []string
}

// Limits bounds an unpack.
type Limits struct {
	// MaxBytes bounds the total bytes of regular file content (0: no limit).
	MaxBytes int64
	// MaxFiles bounds the number of entries (0: no limit).
	MaxFiles int
	// Top, when not empty, lists the names the first path element of every
	// entry must be one of (for example provision, firmware_update, test).
	Top []string
}

// EntryError is an archive entry refused: Name is the entry, Reason says
// why in words a user can act on, and Err is ErrUnsafe, ErrTooLarge,
// ErrConflict, ErrCorrupt or the underlying error.
type EntryError struct {
	Name   string
	Reason string
	Err    error
}

// Error returns the entry's name and the reason, for example
// `archive entry "../etc/passwd": leads outside the directory`.
func (e *EntryError) Error() string {
	return fmt.Sprintf("archive entry %q: %s", e.Name, e.Reason)
}

// Unwrap returns Err.
func (e *EntryError) Unwrap() error { return e.Err }

// ValidName reports whether name is a clean relative slash path staying
// inside: not empty, no "" (double or trailing slash), "." or ".."
// elements, no leading "/", no NUL byte and no backslash (which some
// systems take for a separator). The error does not repeat the name.
func ValidName(name string) error {
	if r := nameProblem(name); r != "" {
		return errors.New(r)
	}
	return nil
}

// nameProblem says what is wrong with name as ValidName sees it, or "".
func nameProblem(name string) string {
	switch {
	case name == "":
		return "is empty"
	case strings.IndexByte(name, 0) >= 0:
		return "contains a NUL byte"
	case strings.IndexByte(name, '\\') >= 0:
		return "contains a backslash"
	case strings.HasPrefix(name, "/"):
		return "is an absolute path"
	}
	for el := range strings.SplitSeq(name, "/") {
		switch el {
		case "..":
			return `leads outside the directory (a ".." element)`
		case ".":
			return `is not clean (a "." element)`
		case "":
			return "is not clean (an empty element: double or trailing slash)"
		}
	}
	return ""
}

// linkProblem says why a symbolic link at the clean archive name name with
// target target would lead outside the archive's root, or "". Targets are
// taken relative to the link's directory, as the system resolves them.
func linkProblem(name, target string) string {
	switch {
	case target == "":
		return "is a symbolic link with an empty target"
	case strings.IndexByte(target, 0) >= 0:
		return "is a symbolic link whose target contains a NUL byte"
	case strings.IndexByte(target, '\\') >= 0:
		return fmt.Sprintf("is a symbolic link to %q, whose backslash may be taken for a separator", target)
	case strings.HasPrefix(target, "/"):
		return fmt.Sprintf("is a symbolic link to the absolute path %q, outside the directory", target)
	}
	if outside(path.Join(path.Dir(name), target)) {
		return fmt.Sprintf("is a symbolic link to %q, which leads outside the directory", target)
	}
	return ""
}

// outside reports whether the clean relative path p leaves its root.
func outside(p string) bool {
	return p == ".." || strings.HasPrefix(p, "../")
}

// bufSize is the size of the copy and I/O buffers.
const bufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

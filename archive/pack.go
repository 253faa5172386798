package archive

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/gzip"
)

// Pack writes a tar.gz of srcs to w. Directories are added recursively
// (their entries under Name/...). Regular files, directories and symbolic
// links are stored; a symbolic link is stored only when its target,
// resolved relative to the link's place in the archive, stays inside the
// archive, else Pack fails with an *EntryError naming it. Other file types
// (devices, fifos, sockets) are an *EntryError too. A Source whose Path is
// itself a symbolic link is followed: its user named it. Modes keep their
// permission bits only, mtimes are kept (to the second), owners are not
// stored. Names are checked with ValidName, and a name may not be stored
// twice.
func Pack(ctx context.Context, w io.Writer, srcs []Source) (Stats, error) {
	p := newPacker(ctx, w, true)
	for _, s := range srcs {
		if r := nameProblem(s.Name); r != "" {
			return p.st, &EntryError{Name: s.Name, Reason: r, Err: ErrUnsafe}
		}
		fi, err := os.Stat(s.Path)
		if err != nil {
			return p.st, fmt.Errorf("pack %s: %w", s.Path, err)
		}
		if err := p.add(s.Path, s.Name, fi, false); err != nil {
			return p.st, err
		}
	}
	return p.st, p.close()
}

// PackDir packs the contents of dir at the archive's root (a job's
// artifacts directory). Symbolic links leading outside dir, special files
// (devices, fifos, sockets) and names ValidName refuses are left out and
// listed in Stats.Skipped, not an error: links are never followed.
func PackDir(ctx context.Context, w io.Writer, dir string) (Stats, error) {
	p := newPacker(ctx, w, false)
	fi, err := os.Stat(dir)
	if err != nil {
		return p.st, fmt.Errorf("pack %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return p.st, fmt.Errorf("pack %s: not a directory", dir)
	}
	if err := p.walk(dir, ""); err != nil {
		return p.st, err
	}
	return p.st, p.close()
}

// packer writes one archive.
type packer struct {
	ctx    context.Context
	bw     *bufio.Writer
	gz     *gzip.Writer
	tw     *tar.Writer
	strict bool // refuse, rather than skip, what cannot be stored
	names  map[string]bool
	buf    *[]byte
	st     Stats
}

func newPacker(ctx context.Context, w io.Writer, strict bool) *packer {
	bw := bufio.NewWriterSize(w, bufSize)
	gz, _ := gzip.NewWriterLevel(bw, gzip.BestSpeed) // a valid level: no error
	return &packer{ctx: ctx, bw: bw, gz: gz, tw: tar.NewWriter(gz), strict: strict, names: map[string]bool{}}
}

// close ends the archive and flushes it to the writer.
func (p *packer) close() error {
	if p.buf != nil {
		putBuf(p.buf)
		p.buf = nil
	}
	if err := p.tw.Close(); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	if err := p.gz.Close(); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	if err := p.bw.Flush(); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	return nil
}

// refuse fails with an *EntryError when packing strictly, else records
// name as skipped.
func (p *packer) refuse(name, reason string) error {
	if p.strict {
		return &EntryError{Name: name, Reason: reason, Err: ErrUnsafe}
	}
	p.st.Skipped = append(p.st.Skipped, name)
	return nil
}

// walk adds the contents of the local directory local under the archive
// name name ("" for the root), in name order.
func (p *packer) walk(local, name string) error {
	ents, err := os.ReadDir(local)
	if err != nil {
		return fmt.Errorf("pack %s: %w", local, err)
	}
	for _, e := range ents {
		lp := filepath.Join(local, e.Name())
		an := e.Name()
		if name != "" {
			an = name + "/" + e.Name()
		}
		if r := nameProblem(an); r != "" {
			if err := p.refuse(an, fmt.Sprintf("%s (%s)", r, lp)); err != nil {
				return err
			}
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return fmt.Errorf("pack %s: %w", lp, err)
		}
		if err := p.add(lp, an, fi, true); err != nil {
			return err
		}
	}
	return nil
}

// add stores the local file lp, whose Lstat (or, for a Source, Stat) is
// fi, as the archive name name. noFollow opens regular files without
// following a link that replaced them since fi was taken.
func (p *packer) add(lp, name string, fi fs.FileInfo, noFollow bool) error {
	if err := p.ctx.Err(); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	if p.names[name] {
		return &EntryError{Name: name, Reason: fmt.Sprintf("is stored twice (again from %s)", lp), Err: ErrConflict}
	}
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(fi.Mode().Perm()),
		ModTime: fi.ModTime().Truncate(time.Second),
	}
	switch t := fi.Mode().Type(); {
	case t == 0:
		return p.addFile(lp, hdr, noFollow)
	case t == fs.ModeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		if err := p.header(lp, name, hdr); err != nil {
			return err
		}
		p.st.Dirs++
		return p.walk(lp, name)
	case t == fs.ModeSymlink:
		target, err := os.Readlink(lp)
		if err != nil {
			return fmt.Errorf("pack %s: %w", lp, err)
		}
		if r := linkProblem(name, target); r != "" {
			return p.refuse(name, fmt.Sprintf("%s (%s)", r, lp))
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		if err := p.header(lp, name, hdr); err != nil {
			return err
		}
		p.st.Links++
		return nil
	default:
		return p.refuse(name, fmt.Sprintf("is a %s (%s); only regular files, directories and symbolic links are packed", typeName(t), lp))
	}
}

// header writes hdr for the local file lp stored as name.
func (p *packer) header(lp, name string, hdr *tar.Header) error {
	if err := p.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("pack %s: %w", lp, err)
	}
	p.names[name] = true
	return nil
}

// addFile stores the regular file lp with the header hdr.
func (p *packer) addFile(lp string, hdr *tar.Header, noFollow bool) error {
	flag := os.O_RDONLY
	if noFollow {
		flag |= openNoFollow
	}
	f, err := os.OpenFile(lp, flag, 0)
	if err != nil {
		return fmt.Errorf("pack %s: %w", lp, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("pack %s: %w", lp, err)
	}
	if !fi.Mode().IsRegular() {
		return p.refuse(hdr.Name, fmt.Sprintf("is no longer a regular file (%s)", lp))
	}
	hdr.Typeflag = tar.TypeReg
	hdr.Size = fi.Size()
	if err := p.header(lp, hdr.Name, hdr); err != nil {
		return err
	}
	if p.buf == nil {
		p.buf = getBuf()
	}
	n, err := io.CopyBuffer(p.tw, &ctxReader{ctx: p.ctx, r: io.LimitReader(f, hdr.Size)}, *p.buf)
	p.st.Bytes += n
	if err != nil {
		return fmt.Errorf("pack %s: %w", lp, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("pack %s: the file shrank from %d to %d bytes while it was packed", lp, hdr.Size, n)
	}
	p.st.Files++
	return nil
}

// typeName names a special file type for errors.
func typeName(t fs.FileMode) string {
	switch {
	case t&fs.ModeNamedPipe != 0:
		return "named pipe (fifo)"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeCharDevice != 0:
		return "character device"
	case t&fs.ModeDevice != 0:
		return "block device"
	default:
		return "special file"
	}
}

// ctxReader stops reading once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

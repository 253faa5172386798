package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sandbox is a base directory holding parent/dir, where Unpack writes,
// and nothing else; anything else appearing in it was written outside dir.
type sandbox struct {
	base, parent, dir string
}

func newSandbox(t testing.TB) sandbox {
	t.Helper()
	base := t.TempDir()
	parent := filepath.Join(base, "parent")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	return sandbox{base: base, parent: parent, dir: filepath.Join(parent, "dir")}
}

// outsiders lists what exists in the sandbox apart from parent, dir and
// dir's contents.
func (s sandbox) outsiders(t testing.TB) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(s.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == s.dir {
			return filepath.SkipDir
		}
		if p != s.base && p != s.parent {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// linksLeadingOut lists the symbolic links under dir whose target,
// resolved from the link's place, leaves dir.
func (s sandbox) linksLeadingOut(t testing.TB) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type() != fs.ModeSymlink {
			return nil
		}
		target, err := os.Readlink(p)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.IsAbs(target) {
			out = append(out, p)
			return nil
		}
		rel, err := filepath.Rel(s.dir, filepath.Join(filepath.Dir(p), target))
		if err != nil || !filepath.IsLocal(rel) && rel != "." {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestUnpackRefuses(t *testing.T) {
	absName := filepath.Join(os.TempDir(), "flinger-archive-test-absolute")
	tests := []struct {
		name     string
		setup    func(t *testing.T, s sandbox) // before Unpack
		archive  func(t *testing.T, s sandbox) []byte
		lim      Limits
		wantName string // "" when the error names no entry
		wantErr  error
		wantText string
		absent   []string // paths under dir that must not exist
	}{
		{
			name:     "dot-dot",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, file("../x", "evil")) },
			wantName: "../x", wantErr: ErrUnsafe, wantText: "leads outside the directory",
		},
		{
			name:     "dot-dot inside a name",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, file("a/../../x", "evil")) },
			wantName: "a/../../x", wantErr: ErrUnsafe, wantText: "leads outside", absent: []string{"a"},
		},
		{
			name:     "dot-dot that stays inside",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, file("a/../x", "x")) },
			wantName: "a/../x", wantErr: ErrUnsafe, absent: []string{"a", "x"},
		},
		{
			name:     "absolute",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, file(absName, "evil")) },
			wantName: absName, wantErr: ErrUnsafe, wantText: "absolute",
		},
		{
			name:     "backslash",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, false, file(`..\..\x`, "evil")) },
			wantName: `..\..\x`, wantErr: ErrUnsafe, wantText: "backslash",
		},
		{
			name: "hard link",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, rawEntry{name: "h", typ: tar.TypeLink, linkname: "/etc/passwd"})
			},
			wantName: "h", wantErr: ErrUnsafe, wantText: "hard link", absent: []string{"h"},
		},
		{
			name:     "symlink to /etc/passwd",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, link("p", "/etc/passwd")) },
			wantName: "p", wantErr: ErrUnsafe, wantText: "/etc/passwd", absent: []string{"p"},
		},
		{
			name:     "symlink to ../../x",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, dirEnt("a/"), link("a/l", "../../x")) },
			wantName: "a/l", wantErr: ErrUnsafe, wantText: "leads outside", absent: []string{"a/l"},
		},
		{
			name:     "symlink to the parent",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, link("a", ".."), file("a/x", "evil")) },
			wantName: "a", wantErr: ErrUnsafe, absent: []string{"a"},
		},
		{
			name: "entry through a symlink of the archive",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, dirEnt("d/"), link("d/up", ".."), file("d/up/x", "x"))
			},
			wantName: "d/up/x", wantErr: ErrUnsafe, wantText: `through the symbolic link "d/up"`, absent: []string{"x"},
		},
		{
			name: "directory through a symlink of the archive",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, dirEnt("real/"), link("l", "real"), dirEnt("l/sub/"))
			},
			wantName: "l/sub/", wantErr: ErrUnsafe, absent: []string{"real/sub"},
		},
		{
			name: "file over a symlink of the archive",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, file("t", "original"), link("l", "t"), file("l", "evil"))
			},
			wantName: "l", wantErr: ErrUnsafe, wantText: "symbolic link",
		},
		{
			name: "entry through a pre-existing symlink",
			setup: func(t *testing.T, s sandbox) {
				if err := os.MkdirAll(s.dir, 0o750); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(s.parent, filepath.Join(s.dir, "evil")); err != nil {
					t.Fatal(err)
				}
			},
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, file("evil/x", "evil")) },
			wantName: "evil/x", wantErr: ErrUnsafe, wantText: "symbolic link",
		},
		{
			name: "file over a pre-existing symlink",
			setup: func(t *testing.T, s sandbox) {
				if err := os.MkdirAll(s.dir, 0o750); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(filepath.Join(s.parent, "x"), filepath.Join(s.dir, "evil")); err != nil {
					t.Fatal(err)
				}
			},
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, file("evil", "evil")) },
			wantName: "evil", wantErr: ErrUnsafe, wantText: "symbolic link",
		},
		{
			name: "character device",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, rawEntry{name: "null", typ: tar.TypeChar})
			},
			wantName: "null", wantErr: ErrUnsafe, wantText: "character device", absent: []string{"null"},
		},
		{
			name: "block device",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, rawEntry{name: "sda", typ: tar.TypeBlock})
			},
			wantName: "sda", wantErr: ErrUnsafe, wantText: "block device", absent: []string{"sda"},
		},
		{
			name: "fifo",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, rawEntry{name: "pipe", typ: tar.TypeFifo})
			},
			wantName: "pipe", wantErr: ErrUnsafe, wantText: "fifo", absent: []string{"pipe"},
		},
		{
			name: "unknown type",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, rawEntry{name: "odd", typ: 'Z'})
			},
			wantName: "odd", wantErr: ErrUnsafe, wantText: "type", absent: []string{"odd"},
		},
		{
			name: "top element not allowed",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, file("test/ok", "ok"), file("other/x", "x"))
			},
			lim:      Limits{Top: []string{"provision", "test"}},
			wantName: "other/x", wantErr: ErrUnsafe, wantText: "provision, test", absent: []string{"other"},
		},
		{
			name: "top element as a file",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, file("./testx", "x"))
			},
			lim:      Limits{Top: []string{"test"}},
			wantName: "./testx", wantErr: ErrUnsafe, absent: []string{"testx"},
		},
		{
			name: "just over MaxBytes",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, file("a", "123456"), file("b", "12345"))
			},
			lim:      Limits{MaxBytes: 10},
			wantName: "b", wantErr: ErrTooLarge, wantText: "10 bytes", absent: []string{"b"},
		},
		{
			name:     "one file over MaxBytes",
			archive:  func(t *testing.T, _ sandbox) []byte { return rawTar(t, true, file("big", strings.Repeat("x", 1001))) },
			lim:      Limits{MaxBytes: 1000},
			wantName: "big", wantErr: ErrTooLarge, absent: []string{"big"},
		},
		{
			name: "over MaxFiles",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, dirEnt("d/"), file("d/1", "1"), file("d/2", "2"))
			},
			lim:      Limits{MaxFiles: 2},
			wantName: "d/2", wantErr: ErrTooLarge, wantText: "2 entries", absent: []string{"d/2"},
		},
		{
			name: "file where a directory is",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, dirEnt("d/"), file("d", "x"))
			},
			wantName: "d", wantErr: ErrConflict,
		},
		{
			name: "entry under a file",
			archive: func(t *testing.T, _ sandbox) []byte {
				return rawTar(t, true, file("f", "x"), file("f/g", "y"))
			},
			wantName: "f/g", wantErr: ErrConflict,
		},
		{
			name: "truncated gzip",
			archive: func(t *testing.T, _ sandbox) []byte {
				data := rawTar(t, true, file("a", noise(100000)), file("b", "b"))
				return data[:len(data)/2]
			},
			wantErr: ErrCorrupt, wantText: "truncated", absent: []string{"b"},
		},
		{
			name: "truncated tar",
			archive: func(t *testing.T, _ sandbox) []byte {
				data := rawTar(t, false, file("a", strings.Repeat("a", 5000)))
				return data[:2000]
			},
			wantName: "a", wantErr: ErrCorrupt, wantText: "truncated",
		},
		{
			name: "gzip checksum",
			archive: func(t *testing.T, _ sandbox) []byte {
				data := rawTar(t, true, file("a", "a"))
				data[len(data)-6] ^= 0xff // in the CRC-32 of the trailer
				return data
			},
			wantErr: ErrCorrupt,
		},
		{
			name: "garbage",
			archive: func(t *testing.T, _ sandbox) []byte {
				return []byte(strings.Repeat("this is not a tar archive\n", 100))
			},
			wantErr: ErrCorrupt, wantText: "not a tar",
		},
		{
			name:    "garbage after gzip magic",
			archive: func(t *testing.T, _ sandbox) []byte { return append([]byte{0x1f, 0x8b}, noise(1000)...) },
			wantErr: ErrCorrupt,
		},
		{
			name:    "empty",
			archive: func(t *testing.T, _ sandbox) []byte { return nil },
			wantErr: ErrCorrupt, wantText: "empty",
		},
		{
			name:    "xz",
			archive: func(t *testing.T, _ sandbox) []byte { return []byte("\xfd7zXZ\x00rest") },
			wantErr: ErrCorrupt, wantText: "xz",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			if tc.setup != nil {
				tc.setup(t, s)
			}
			data := tc.archive(t, s)
			_, err := Unpack(context.Background(), bytes.NewReader(data), s.dir, tc.lim)
			if err == nil {
				t.Fatal("Unpack succeeded")
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("got %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("got %q, want it to say %q", err, tc.wantText)
			}
			var ee *EntryError
			if tc.wantName != "" {
				if !errors.As(err, &ee) || ee.Name != tc.wantName {
					t.Errorf("got %v, want an *EntryError naming %q", err, tc.wantName)
				}
			}
			if out := s.outsiders(t); len(out) > 0 {
				t.Errorf("written outside the directory: %q", out)
			}
			if _, err := os.Lstat(absName); err == nil {
				t.Errorf("%s written", absName)
				_ = os.Remove(absName)
			}
			if tc.setup == nil {
				if out := s.linksLeadingOut(t); len(out) > 0 {
					t.Errorf("links leading out: %q", out)
				}
			}
			for _, a := range tc.absent {
				if _, err := os.Lstat(filepath.Join(s.dir, a)); err == nil {
					t.Errorf("%s written", a)
				}
			}
		})
	}
}

func TestUnpackAccepts(t *testing.T) {
	tests := []struct {
		name    string
		entries []rawEntry
		plain   bool
		lim     Limits
		want    map[string]string // path: "file:data", "dir:mode", "link:target"
	}{
		{
			name:    "later file replaces an earlier one",
			entries: []rawEntry{file("f", "one"), file("f", "two")},
			want:    map[string]string{"f": "file:two"},
		},
		{
			name:    "plain tar",
			entries: []rawEntry{dirEnt("d/"), file("d/f", "plain")},
			plain:   true,
			want:    map[string]string{"d": "dir:-rwxr-xr-x", "d/f": "file:plain"},
		},
		{
			name:    "tar's ./ prefix and root entry",
			entries: []rawEntry{dirEnt("./"), dirEnt("./test/"), file("./test/f", "f"), file(".//test//g", "g")},
			lim:     Limits{Top: []string{"test"}},
			want:    map[string]string{"test": "dir:-rwxr-xr-x", "test/f": "file:f", "test/g": "file:g"},
		},
		{
			name: "setuid and sticky bits dropped",
			entries: []rawEntry{
				{name: "suid", typ: tar.TypeReg, data: "x", mode: 0o4755},
				{name: "sticky/", typ: tar.TypeDir, mode: 0o1777},
			},
			want: map[string]string{"suid": "file:x", "sticky": "dir:-rwxrwxrwx"},
		},
		{
			name:    "directories kept writable for their owner",
			entries: []rawEntry{{name: "ro/", typ: tar.TypeDir, mode: 0o500}, file("ro/f", "f")},
			want:    map[string]string{"ro": "dir:-rwx------", "ro/f": "file:f"},
		},
		{
			name:    "links inside, cleaned",
			entries: []rawEntry{dirEnt("a/b/"), link("a/b/up", "../../."), link("a/self", "."), link("a/b/x", "./../b//y")},
			want:    map[string]string{"a/b/up": "link:../..", "a/self": "link:.", "a/b/x": "link:../b/y"},
		},
		{
			name:    "global header skipped",
			entries: []rawEntry{{name: "pax_global_header", typ: tar.TypeXGlobalHeader}, file("f", "f")},
			lim:     Limits{MaxFiles: 2},
			want:    map[string]string{"f": "file:f"},
		},
		{
			name:    "names with dots that are not dot-dot",
			entries: []rawEntry{file("..a", "1"), file("b..", "2"), file("...", "3")},
			want:    map[string]string{"..a": "file:1", "b..": "file:2", "...": "file:3"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			data := rawTar(t, !tc.plain, tc.entries...)
			if _, err := Unpack(context.Background(), bytes.NewReader(data), s.dir, tc.lim); err != nil {
				t.Fatalf("Unpack: %v", err)
			}
			tree := treeOf(t, s.dir)
			for p, w := range tc.want {
				n, ok := tree[p]
				if !ok {
					t.Errorf("%s: missing", p)
					continue
				}
				got := n.Type + ":" + n.Data
				if n.Type == "dir" {
					got = "dir:" + n.Mode.String()
				}
				if got != w {
					t.Errorf("%s: got %s, want %s", p, got, w)
				}
				if n.Type == "file" && n.Mode&^0o777 != 0 {
					t.Errorf("%s: mode %v", p, n.Mode)
				}
			}
			if fi, err := os.Lstat(filepath.Join(s.dir, "suid")); err == nil && fi.Mode() != 0o755 {
				t.Errorf("suid: mode %v, want -rwxr-xr-x", fi.Mode())
			}
			if out := s.outsiders(t); len(out) > 0 {
				t.Errorf("written outside the directory: %q", out)
			}
		})
	}
}

func TestUnpackCreatesDir(t *testing.T) {
	s := newSandbox(t)
	dir := filepath.Join(s.dir, "new", "deeper")
	if _, err := Unpack(context.Background(), bytes.NewReader(rawTar(t, true)), dir, Limits{}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Errorf("got %v %v, want a 0750 directory", fi, err)
	}
}

// noise returns n bytes that do not compress.
func noise(n int) string {
	r := rand.New(rand.NewChaCha8([32]byte{1}))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}

// failingReader returns its data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(b []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(b, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestUnpackReadError(t *testing.T) {
	errNet := errors.New("connection reset")
	data := rawTar(t, true, file("a", noise(100000)), file("b", "b"))
	for _, cut := range []int{0, 100, len(data) / 2, len(data) - 1} {
		s := newSandbox(t)
		_, err := Unpack(context.Background(), &failingReader{data: data[:cut], err: errNet}, s.dir, Limits{})
		if !errors.Is(err, errNet) || errors.Is(err, ErrCorrupt) {
			t.Errorf("cut at %d: got %v, want the reader's error, not ErrCorrupt", cut, err)
		}
	}
}

package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// node is what a tree holds at one path, for comparing trees.
type node struct {
	Type    string // "file", "dir" or "link"
	Mode    fs.FileMode
	Data    string // a file's content or a link's target
	ModTime time.Time
}

// treeOf lists everything under dir by slash path relative to dir,
// without following links.
func treeOf(t *testing.T, dir string) map[string]node {
	t.Helper()
	tree := map[string]node{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n := node{Mode: fi.Mode().Perm(), ModTime: fi.ModTime().Truncate(time.Second)}
		switch {
		case fi.Mode().IsRegular():
			n.Type = "file"
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Data = string(b)
		case fi.IsDir():
			n.Type = "dir"
		case fi.Mode().Type() == fs.ModeSymlink:
			n.Type = "link"
			n.Mode = 0
			n.ModTime = time.Time{}
			if n.Data, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			n.Type = fi.Mode().Type().String()
		}
		tree[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return tree
}

// compareTrees fails the test unless want and got hold the same paths
// with the same nodes.
func compareTrees(t *testing.T, want, got map[string]node) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: missing after unpack", p)
			continue
		}
		if g.Type != w.Type || g.Mode != w.Mode || g.Data != w.Data || !g.ModTime.Equal(w.ModTime) {
			t.Errorf("%s: got %s %v %q %v, want %s %v %q %v", p, g.Type, g.Mode, short(g.Data), g.ModTime, w.Type, w.Mode, short(w.Data), w.ModTime)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unpacked but not packed", p)
		}
	}
}

func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// fsEntry is one thing a test puts on the disk.
type fsEntry struct {
	name string // slash path
	kind string // "file", "dir" or "link"
	data string // content or link target
	mode fs.FileMode
}

var stamp = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// makeTree writes entries under dir, with fixed modes and mtimes.
func makeTree(t *testing.T, dir string, entries []fsEntry) {
	t.Helper()
	for _, e := range entries {
		p := filepath.Join(dir, filepath.FromSlash(e.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch e.kind {
		case "file":
			if err := os.WriteFile(p, []byte(e.data), 0o600); err != nil {
				t.Fatal(err)
			}
		case "dir":
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case "link":
			if err := os.Symlink(e.data, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if e.kind == "dir" {
				mode = 0o755
			}
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, stamp, stamp); err != nil {
			t.Fatal(err)
		}
	}
}

// rawEntry is one entry of an archive written by hand.
type rawEntry struct {
	name     string
	typ      byte
	data     string
	linkname string
	mode     int64
}

// rawTar writes entries as a tar, gzip'd when gz is set.
func rawTar(t testing.TB, gz bool, entries ...rawEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	var tw *tar.Writer
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		tw = tar.NewWriter(zw)
	} else {
		tw = tar.NewWriter(&buf)
	}
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: mode, ModTime: stamp}
		if e.typ == tar.TypeXGlobalHeader {
			hdr = &tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: map[string]string{"comment": e.data}}
		}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("header %q: %v", e.name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func file(name, data string) rawEntry { return rawEntry{name: name, typ: tar.TypeReg, data: data} }
func dirEnt(name string) rawEntry     { return rawEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
func link(name, target string) rawEntry {
	return rawEntry{name: name, typ: tar.TypeSymlink, linkname: target, mode: 0o777}
}

// subtree returns the part of tree under prefix/, relative to it.
func subtree(tree map[string]node, prefix string) map[string]node {
	out := map[string]node{}
	for p, n := range tree {
		if rel, ok := strings.CutPrefix(p, prefix+"/"); ok {
			out[rel] = n
		}
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 40000) // past one copy buffer
	tree := []fsEntry{
		{name: "a.txt", kind: "file", data: "hello\n"},
		{name: "empty", kind: "file", data: ""},
		{name: "run.sh", kind: "file", data: "#!/bin/sh\n", mode: 0o755},
		{name: "secret", kind: "file", data: "s", mode: 0o600},
		{name: "readonly", kind: "file", data: "r", mode: 0o444},
		{name: "with space.txt", kind: "file", data: "spaces"},
		{name: "ünïcødé/日本語.txt", kind: "file", data: "unicode"},
		{name: "nested/deeper/deepest/f.bin", kind: "file", data: big},
		{name: "nested/deeper/mode", kind: "dir", mode: 0o750},
		{name: "emptydir", kind: "dir"},
		{name: "link", kind: "link", data: "nested/deeper/deepest/f.bin"},
		{name: "nested/up", kind: "link", data: "../a.txt"},
		{name: "nested/dirlink", kind: "link", data: "deeper"},
		{name: "nested/dangling", kind: "link", data: "nowhere"},
	}
	tests := []struct {
		name string
		pack func(ctx context.Context, w *bytes.Buffer, src string) (Stats, error)
		top  []string
		at   string // where the tree is in the unpacked directory
		want Stats
	}{
		{
			name: "Pack a directory",
			pack: func(ctx context.Context, w *bytes.Buffer, src string) (Stats, error) {
				return Pack(ctx, w, []Source{{Path: src, Name: "test/data"}})
			},
			top:  []string{"provision", "test"},
			at:   "test/data",
			want: Stats{Files: 8, Dirs: 7, Links: 4, Bytes: int64(len(big)) + 31},
		},
		{
			name: "PackDir",
			pack: func(ctx context.Context, w *bytes.Buffer, src string) (Stats, error) {
				return PackDir(ctx, w, src)
			},
			want: Stats{Files: 8, Dirs: 6, Links: 4, Bytes: int64(len(big)) + 31},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "src")
			makeTree(t, src, tree)
			if err := os.Chtimes(src, stamp, stamp); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			st, err := tc.pack(context.Background(), &buf, src)
			if err != nil {
				t.Fatalf("pack: %v", err)
			}
			if fmt.Sprint(st) != fmt.Sprint(tc.want) {
				t.Errorf("pack stats %+v, want %+v", st, tc.want)
			}
			dest := filepath.Join(t.TempDir(), "dest")
			ust, err := Unpack(context.Background(), &buf, dest, Limits{Top: tc.top, MaxBytes: st.Bytes, MaxFiles: st.Files + st.Dirs + st.Links})
			if err != nil {
				t.Fatalf("unpack: %v", err)
			}
			if fmt.Sprint(ust) != fmt.Sprint(tc.want) {
				t.Errorf("unpack stats %+v, want %+v", ust, tc.want)
			}
			got := treeOf(t, dest)
			if tc.at != "" {
				got = subtree(got, tc.at)
			}
			compareTrees(t, treeOf(t, src), got)
			if n := got["a.txt"]; !n.ModTime.Equal(stamp) {
				t.Errorf("a.txt: mtime %v, want %v", n.ModTime, stamp)
			}
		})
	}
}

func TestPackSources(t *testing.T) {
	base := t.TempDir()
	makeTree(t, base, []fsEntry{
		{name: "image.img", kind: "file", data: "image"},
		{name: "scripts/run.sh", kind: "file", data: "run", mode: 0o755},
		{name: "real.txt", kind: "file", data: "followed"},
		{name: "alias.txt", kind: "link", data: "real.txt"},
	})
	srcs := []Source{
		{Path: filepath.Join(base, "image.img"), Name: "provision/image.img"},
		{Path: filepath.Join(base, "scripts"), Name: "test/scripts"},
		{Path: filepath.Join(base, "alias.txt"), Name: "test/deep/er/alias.txt"},
	}
	var buf bytes.Buffer
	st, err := Pack(context.Background(), &buf, srcs)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Files: 3, Dirs: 1, Bytes: 16}); fmt.Sprint(st) != fmt.Sprint(want) {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	dest := filepath.Join(t.TempDir(), "att")
	if _, err := Unpack(context.Background(), &buf, dest, Limits{Top: []string{"provision", "firmware_update", "test"}}); err != nil {
		t.Fatal(err)
	}
	got := treeOf(t, dest)
	want := map[string]string{
		"provision/image.img":    "file:image",
		"test/scripts/run.sh":    "file:run",
		"test/deep/er/alias.txt": "file:followed", // a named link is followed
	}
	for p, w := range want {
		if n := got[p]; n.Type+":"+n.Data != w {
			t.Errorf("%s: got %s:%s, want %s", p, n.Type, n.Data, w)
		}
	}
	if fi, err := os.Stat(filepath.Join(dest, "test")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("implicit directory: %v %v, want mode 0750", fi, err)
	}
}

func TestPackRefuses(t *testing.T) {
	tests := []struct {
		name     string
		tree     []fsEntry
		srcs     func(base string) []Source
		wantName string
		wantErr  error
		wantText string
	}{
		{
			name:     "symlink leading out",
			tree:     []fsEntry{{name: "d/ok", kind: "file"}, {name: "d/bad", kind: "link", data: "../../../x"}},
			srcs:     func(b string) []Source { return []Source{{Path: filepath.Join(b, "d"), Name: "test/d"}} },
			wantName: "test/d/bad",
			wantErr:  ErrUnsafe,
			wantText: "leads outside",
		},
		{
			name:     "absolute symlink",
			tree:     []fsEntry{{name: "d/passwd", kind: "link", data: "/etc/passwd"}},
			srcs:     func(b string) []Source { return []Source{{Path: filepath.Join(b, "d"), Name: "d"}} },
			wantName: "d/passwd",
			wantErr:  ErrUnsafe,
			wantText: "absolute",
		},
		{
			name:     "name with ..",
			tree:     []fsEntry{{name: "f", kind: "file"}},
			srcs:     func(b string) []Source { return []Source{{Path: filepath.Join(b, "f"), Name: "test/../../f"}} },
			wantName: "test/../../f",
			wantErr:  ErrUnsafe,
		},
		{
			name:     "absolute name",
			tree:     []fsEntry{{name: "f", kind: "file"}},
			srcs:     func(b string) []Source { return []Source{{Path: filepath.Join(b, "f"), Name: "/f"}} },
			wantName: "/f",
			wantErr:  ErrUnsafe,
		},
		{
			name: "a name twice",
			tree: []fsEntry{{name: "f", kind: "file"}, {name: "d/f", kind: "file"}},
			srcs: func(b string) []Source {
				return []Source{{Path: filepath.Join(b, "d"), Name: "test"}, {Path: filepath.Join(b, "f"), Name: "test/f"}}
			},
			wantName: "test/f",
			wantErr:  ErrConflict,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			makeTree(t, base, tc.tree)
			var buf bytes.Buffer
			_, err := Pack(context.Background(), &buf, tc.srcs(base))
			var ee *EntryError
			if !errors.As(err, &ee) {
				t.Fatalf("got %v, want an *EntryError", err)
			}
			if ee.Name != tc.wantName || !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("got %q (%v), want entry %q, %v, text %q", ee.Name, err, tc.wantName, tc.wantErr, tc.wantText)
			}
		})
	}
}

func TestPackMissingSource(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := Pack(context.Background(), &bytes.Buffer{}, []Source{{Path: missing, Name: "test/nope"}})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("got %v, want a not-exist error naming %s", err, missing)
	}
}

func TestPackDirSkipsOutsideLinks(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, []fsEntry{
		{name: "log.txt", kind: "file", data: "log"},
		{name: "in", kind: "link", data: "log.txt"},
		{name: "out", kind: "link", data: "../outside"},
		{name: "sub/abs", kind: "link", data: "/etc/passwd"},
		{name: `back\slash`, kind: "file", data: "x"},
	})
	var buf bytes.Buffer
	st, err := PackDir(context.Background(), &buf, dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{`back\slash`, "out", "sub/abs"}; fmt.Sprint(st.Skipped) != fmt.Sprint(want) {
		t.Errorf("skipped %q, want %q", st.Skipped, want)
	}
	dest := filepath.Join(t.TempDir(), "dest")
	if _, err := Unpack(context.Background(), &buf, dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	got := treeOf(t, dest)
	if len(got) != 3 || got["log.txt"].Data != "log" || got["in"].Data != "log.txt" || got["sub"].Type != "dir" {
		t.Errorf("unpacked %v, want log.txt, in and sub", got)
	}
}

func TestPackDirNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := PackDir(context.Background(), &bytes.Buffer{}, f); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("got %v, want not a directory", err)
	}
}

func TestCanceled(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, []fsEntry{{name: "f", kind: "file", data: "x"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := PackDir(ctx, &bytes.Buffer{}, dir); !errors.Is(err, context.Canceled) {
		t.Errorf("PackDir: got %v, want context.Canceled", err)
	}
	data := rawTar(t, true, file("f", "x"))
	dest := filepath.Join(t.TempDir(), "dest")
	if _, err := Unpack(ctx, bytes.NewReader(data), dest, Limits{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Unpack: got %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(filepath.Join(dest, "f")); err == nil {
		t.Error("Unpack wrote after its context was done")
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"test/dir/file.img", true},
		{"with space/ünï", true},
		{"..a/b..", true},
		{"", false},
		{".", false},
		{"..", false},
		{"a/..", false},
		{"../a", false},
		{"a/./b", false},
		{"a//b", false},
		{"a/", false},
		{"/a", false},
		{"a\x00b", false},
		{`a\..\b`, false},
	}
	for _, tc := range tests {
		err := ValidName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && len(tc.name) > 2 && strings.Contains(err.Error(), tc.name) {
			t.Errorf("ValidName(%q) = %q repeats the name", tc.name, err)
		}
	}
}

func TestEntryError(t *testing.T) {
	err := error(&EntryError{Name: "../etc/passwd", Reason: "leads outside the directory", Err: ErrUnsafe})
	if got, want := err.Error(), `archive entry "../etc/passwd": leads outside the directory`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(fmt.Errorf("attachments: %w", err), ErrUnsafe) {
		t.Error("EntryError does not unwrap to its Err")
	}
}

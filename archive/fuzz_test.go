package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzUnpack checks that, whatever the archive, Unpack does not panic,
// writes nothing outside its directory and leaves no link leading out.
func FuzzUnpack(f *testing.F) {
	src := f.TempDir()
	for _, e := range []struct{ name, data string }{{"test/a", "a"}, {"test/d/b", "bb"}, {"provision/c", ""}} {
		p := filepath.Join(src, filepath.FromSlash(e.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(e.data), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.Symlink("../a", filepath.Join(src, "test", "d", "l")); err != nil {
		f.Fatal(err)
	}
	var packed bytes.Buffer
	if _, err := PackDir(context.Background(), &packed, src); err != nil {
		f.Fatal(err)
	}
	f.Add(packed.Bytes(), true, false)
	f.Add(packed.Bytes(), false, true)

	seeds := [][]rawEntry{
		{file("../x", "x")},
		{file("a/../../x", "x")},
		{file("/tmp/x", "x")},
		{rawEntry{name: "h", typ: tar.TypeLink, linkname: "/etc/passwd"}},
		{link("p", "/etc/passwd")},
		{dirEnt("a/"), link("a/l", "../../x")},
		{link("a", ".."), file("a/x", "x")},
		{dirEnt("d/"), link("d/up", ".."), file("d/up/x", "x")},
		{link("test", "."), file("test/test/x", "x")},
		{file("t", "t"), link("l", "t"), file("l", "x")},
		{file("pre/x", "x")},
		{file("pre", "x")},
		{rawEntry{name: "null", typ: tar.TypeChar}},
		{rawEntry{name: "pipe", typ: tar.TypeFifo}},
		{file("test/ok", "ok"), file("other/x", "x")},
		{file("f", "one"), file("f", "two")},
		{dirEnt("./"), dirEnt("./test/"), file("./test/f", "f")},
	}
	for _, entries := range seeds {
		f.Add(rawTar(f, true, entries...), false, true)
		f.Add(rawTar(f, false, entries...), true, false)
	}
	f.Add([]byte("not an archive"), false, false)

	// One sandbox, emptied before each run, keeps runs cheap.
	s := newSandbox(f)
	pre := filepath.Join(s.dir, "pre")
	f.Fuzz(func(t *testing.T, data []byte, top, preLink bool) {
		if err := os.RemoveAll(s.dir); err != nil {
			t.Fatal(err)
		}
		if preLink {
			if err := os.Mkdir(s.dir, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(s.parent, pre); err != nil {
				t.Fatal(err)
			}
		}
		lim := Limits{MaxBytes: 1 << 20, MaxFiles: 64}
		if top {
			lim.Top = []string{"provision", "firmware_update", "test"}
		}
		_, _ = Unpack(context.Background(), bytes.NewReader(data), s.dir, lim)
		if out := s.outsiders(t); len(out) > 0 {
			t.Fatalf("written outside the directory: %q", out)
		}
		for _, l := range s.linksLeadingOut(t) {
			if l != pre {
				t.Fatalf("link leading out: %s", l)
			}
		}
	})
}

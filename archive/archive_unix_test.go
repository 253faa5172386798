//go:build unix

package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func mkfifo(t *testing.T, p string) {
	t.Helper()
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatalf("mkfifo: %v", err)
	}
}

func TestPackDirSkipsSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, []fsEntry{
		{name: "ok.txt", kind: "file", data: "ok"},
		{name: "outside", kind: "link", data: "../../etc"},
		{name: "sub/x", kind: "file", data: "x"},
	})
	mkfifo(t, filepath.Join(dir, "fifo"))
	mkfifo(t, filepath.Join(dir, "sub", "pipe"))
	var buf bytes.Buffer
	st, err := PackDir(context.Background(), &buf, dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"fifo", "outside", "sub/pipe"}; fmt.Sprint(st.Skipped) != fmt.Sprint(want) {
		t.Errorf("skipped %q, want %q", st.Skipped, want)
	}
	if st.Files != 2 || st.Dirs != 1 || st.Links != 0 {
		t.Errorf("stats %+v, want 2 files and 1 directory", st)
	}
	dest := filepath.Join(t.TempDir(), "dest")
	if _, err := Unpack(context.Background(), &buf, dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := treeOf(t, dest); len(got) != 3 || got["ok.txt"].Data != "ok" || got["sub/x"].Data != "x" {
		t.Errorf("unpacked %v, want ok.txt, sub and sub/x", got)
	}
}

func TestPackRefusesFifo(t *testing.T) {
	base := t.TempDir()
	makeTree(t, base, []fsEntry{{name: "d/f", kind: "file", data: "f"}})
	mkfifo(t, filepath.Join(base, "d", "pipe"))
	for _, src := range []Source{
		{Path: filepath.Join(base, "d"), Name: "test/d"},
		{Path: filepath.Join(base, "d", "pipe"), Name: "test/pipe"},
	} {
		_, err := Pack(context.Background(), &bytes.Buffer{}, []Source{src})
		var ee *EntryError
		want := "test/d/pipe"
		if src.Name == "test/pipe" {
			want = "test/pipe"
		}
		if !errors.As(err, &ee) || ee.Name != want || !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "named pipe") {
			t.Errorf("Pack(%v): got %v, want an unsafe *EntryError naming %s a named pipe", src, err, want)
		}
	}
}

package image

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzDetectDecompress feeds arbitrary bytes to Detect and to every
// decompressor: they must never panic or hang, errors must be Corrupt
// errors naming the format, and Raw must give back the input.
func FuzzDetectDecompress(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		format, r, err := Detect(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("Detect: %v", err)
		}
		if want := detectBytes(data[:min(len(data), MagicLen)]); format != want {
			t.Fatalf("Detect = %v, detectBytes = %v", format, want)
		}
		out := decompressAll(t, format, r)
		if format == Raw && !bytes.Equal(out, data) {
			t.Fatal("Raw changed the bytes")
		}
		for _, other := range allFormats {
			if other != format {
				decompressAll(t, other, bytes.NewReader(data))
			}
		}
	})
}

// decompressAll decompresses up to 64 MiB of r as f, checking its errors.
func decompressAll(t *testing.T, f Format, r io.Reader) []byte {
	rc, err := Decompress(f, r)
	if err != nil {
		t.Fatalf("Decompress(%v): %v", f, err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, err = io.CopyN(&buf, rc, 64<<20)
	if err != nil && err != io.EOF {
		if KindOf(err) != Corrupt || !strings.Contains(err.Error(), "corrupt "+f.String()+" stream") {
			t.Fatalf("%v: error %v (%T), want a Corrupt *Error", f, err, err)
		}
	}
	return buf.Bytes()
}

// TestReferenceSeeds decodes the fuzz seeds that the reference tools
// (gzip, xz, zstd, bzip2) wrote.
func TestReferenceSeeds(t *testing.T) {
	t.Parallel()
	hello := "hello, flinger! hello, flinger! hello, flinger!\n"
	want := map[string]struct {
		f   Format
		out string
	}{
		"hello_gz":  {Gzip, hello},
		"hello_xz":  {Xz, hello},
		"hello_zst": {Zstd, hello},
		"hello_bz2": {Bzip2, hello},
		"multi_gz":  {Gzip, hello + hello},
		"multi_zst": {Zstd, hello + hello},
		"sha_xz":    {Xz, hello},
		"empty_xz":  {Xz, ""},
		"empty_zst": {Zstd, ""},
		"hello":     {Raw, hello},
	}
	for name, w := range want {
		t.Run(name, func(t *testing.T) {
			data := readSeed(t, name)
			f, r, err := Detect(bytes.NewReader(data))
			if err != nil || f != w.f {
				t.Fatalf("Detect = %v, %v; want %v", f, err, w.f)
			}
			rc, err := Decompress(f, r)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || string(got) != w.out {
				t.Fatalf("got %q, %v; want %q", got, err, w.out)
			}
		})
	}
}

// readSeed reads a seed of the fuzz corpus.
func readSeed(t *testing.T, name string) []byte {
	t.Helper()
	return readSeedAbs(t, filepath.Join("testdata", "fuzz", "FuzzDetectDecompress", name))
}

func readSeedAbs(t *testing.T, name string) []byte {
	t.Helper()
	text, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(text), "\n[]byte(")
	if !ok {
		t.Fatalf("seed %s: not a corpus file", name)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimSpace(rest), ")"))
	if err != nil {
		t.Fatalf("seed %s: %v", name, err)
	}
	return []byte(s)
}

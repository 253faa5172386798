package image

import (
	"bytes"
	"compress/bzip2"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"testing/iotest"
)

func TestBzip2EncoderMatchesReference(t *testing.T) {
	t.Parallel()
	data := genData(7, 300_000)
	got, err := io.ReadAll(bzip2.NewReader(bytes.NewReader(bzip2Compress(t, data))))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bzip2 round trip differs")
	}
	bz, err := exec.LookPath("bzip2")
	if err != nil {
		return
	}
	p := filepath.Join(t.TempDir(), "x.bz2")
	if err := os.WriteFile(p, bzip2Compress(t, data), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bz, "-dc", p).Output()
	if err != nil {
		t.Fatalf("bzip2 -d rejects the test encoder's output: %v", err)
	}
	if !bytes.Equal(out, data) {
		t.Fatal("bzip2 -d decodes the test encoder's output differently")
	}
}

func TestDetect(t *testing.T) {
	t.Parallel()
	img := testImage()
	tests := []struct {
		name string
		in   []byte
		want Format
	}{
		{"raw", img[Raw], Raw},
		{"gzip", img[Gzip], Gzip},
		{"xz", img[Xz], Xz},
		{"zstd", img[Zstd], Zstd},
		{"bzip2", img[Bzip2], Bzip2},
		{"empty", nil, Raw},
		{"one byte of gzip magic", []byte{0x1F}, Raw},
		{"gzip magic only", []byte{0x1F, 0x8B}, Gzip},
		{"xz magic cut short", []byte{0xFD, '7', 'z', 'X', 'Z'}, Raw},
		{"BZh without a block size", []byte("BZhx and more"), Raw},
		{"zstd skippable-looking frame", []byte{0x50, 0x2A, 0x4D, 0x18, 0, 0}, Raw},
		{"text that mentions xz", []byte("xz gzip zstd bzip2"), Raw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, r, err := Detect(bytes.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if f != tt.want {
				t.Errorf("Detect = %v, want %v", f, tt.want)
			}
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.in) {
				t.Errorf("Detect's reader gives %d bytes, not the %d it was given", len(got), len(tt.in))
			}
		})
	}
}

func TestDetectReadError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	if _, _, err := Detect(iotest.ErrReader(boom)); !errors.Is(err, boom) {
		t.Fatalf("Detect error = %v, want %v", err, boom)
	}
}

// TestDecompressRoundTrip decompresses each format back to the exact
// bytes, also when the source hands out one byte at a time.
func TestDecompressRoundTrip(t *testing.T) {
	t.Parallel()
	for _, f := range allFormats {
		for _, oneByte := range []bool{false, true} {
			name := f.String()
			if oneByte {
				if f == Xz || f == Bzip2 {
					continue // correct, but slow under the race detector
				}
				name += "/one byte at a time"
			}
			t.Run(name, func(t *testing.T) {
				var src io.Reader = bytes.NewReader(testImage()[f])
				if oneByte {
					src = iotest.OneByteReader(src)
				}
				got, r, err := Detect(src)
				if err != nil {
					t.Fatal(err)
				}
				if got != f {
					t.Fatalf("detected %v, want %v", got, f)
				}
				rc, err := Decompress(got, r)
				if err != nil {
					t.Fatal(err)
				}
				defer rc.Close()
				out, err := io.ReadAll(rc)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, plain()) {
					t.Fatalf("decompressed %d bytes, not the original %d", len(out), len(plain()))
				}
			})
		}
	}
}

// TestCorrupt damages each compressed format and expects a Corrupt error
// that names the format and an offset.
func TestCorrupt(t *testing.T) {
	t.Parallel()
	damages := []struct {
		name string
		do   func([]byte) []byte
	}{
		{"damaged bytes", func(b []byte) []byte {
			b = bytes.Clone(b)
			for i := len(b) / 3; i < 2*len(b)/3; i += 4099 {
				b[i] ^= 0x55
			}
			return b
		}},
		{"cut in half", func(b []byte) []byte { return b[:len(b)/2] }},
		{"garbage after the end", func(b []byte) []byte { return append(bytes.Clone(b), "garbage that is no stream"...) }},
	}
	for _, f := range []Format{Gzip, Xz, Zstd, Bzip2} {
		for _, d := range damages {
			t.Run(f.String()+"/"+d.name, func(t *testing.T) {
				rc, err := Decompress(f, bytes.NewReader(d.do(smallImage()[f])))
				if err != nil {
					t.Fatal(err)
				}
				defer rc.Close()
				_, err = io.Copy(io.Discard, rc)
				e := wantKind(t, err, Corrupt, "corrupt "+f.String()+" stream at offset ")
				if e.Err == nil {
					t.Error("the decompressor's error is not wrapped")
				}
			})
		}
	}
}

// TestDecompressSourceError passes the source's own error through, rather
// than calling the stream corrupt.
func TestDecompressSourceError(t *testing.T) {
	t.Parallel()
	boom := &Error{Kind: Network, URL: "http://example.com/x", Detail: "connection lost"}
	for _, f := range allFormats {
		t.Run(f.String(), func(t *testing.T) {
			data := smallImage()[f]
			src := io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest.ErrReader(boom))
			rc, err := Decompress(f, src)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			if !errors.Is(err, boom) {
				t.Fatalf("error = %v, want the source's %v", err, boom)
			}
		})
	}
}

func TestFormatNames(t *testing.T) {
	t.Parallel()
	want := map[Format][2]string{
		Raw: {"raw", "cat"}, Gzip: {"gzip", "zcat"}, Xz: {"xz", "xzcat"}, Zstd: {"zstd", "zstdcat"}, Bzip2: {"bzip2", "bzcat"},
	}
	for f, w := range want {
		if f.String() != w[0] || f.Cat() != w[1] {
			t.Errorf("%d: String, Cat = %q, %q; want %q, %q", int(f), f.String(), f.Cat(), w[0], w[1])
		}
	}
	if _, err := Decompress(Format(42), bytes.NewReader(nil)); KindOf(err) != Invalid {
		t.Errorf("Decompress(Format(42)) error = %v, want kind Invalid", err)
	}
}

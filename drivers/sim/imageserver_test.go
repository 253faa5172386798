package sim_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/flingerlab/flinger/drivers/sim"
)

func TestImageServer(t *testing.T) {
	t.Parallel()
	s, err := sim.StartImageServer(t.Context(), "127.0.0.1:0", 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	get := func(name string) (int, []byte) {
		resp, err := http.Get(s.URL() + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	code, body := get("ubuntu-24.04-core.img.zst")
	if code != 200 {
		t.Fatalf("GET: %d", code)
	}
	zr, _ := zstd.NewReader(strings.NewReader(string(body)))
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	im, err := sim.ParseImage(raw)
	if err != nil || im.Kind != "core" || im.Model != "ubuntu-core-24" || !strings.Contains(im.OSRelease, "24.04") || int64(len(raw)) != im.Size {
		t.Errorf("served image %+v, %v (%d bytes)", im, err, len(raw))
	}
	want, _ := s.ImageFor("ubuntu-24.04-core.img")
	if want.SHA256() != im.SHA256() {
		t.Error("ImageFor does not describe the image served")
	}
	if code, _ := get("ubuntu-20.04-core.img.zst"); code != 404 {
		t.Errorf("unknown image: %d, want 404", code)
	}
	_, corrupt := get("corrupt.img.zst")
	zr, _ = zstd.NewReader(strings.NewReader(string(corrupt)))
	if _, err := io.ReadAll(zr); err == nil {
		t.Error("corrupt.img.zst decompresses")
	}
	if _, sums := get("SHA256SUMS"); !strings.Contains(string(sums), "*ubuntu-24.04-core.img.zst") {
		t.Errorf("SHA256SUMS: %s", sums)
	}
	if n := s.Requests("ubuntu-24.04-core.img.zst"); n != 1 {
		t.Errorf("Requests = %d, want 1", n)
	}
}

func TestCompress(t *testing.T) {
	t.Parallel()
	raw := sim.Image{OSRelease: "ID=ubuntu\n", Size: 200_000, Seed: 9}.Bytes()
	for _, tc := range []struct {
		format string
		open   func(io.Reader) (io.Reader, error)
	}{
		{"zst", func(r io.Reader) (io.Reader, error) { z, err := zstd.NewReader(r); return z, err }},
		{"xz", func(r io.Reader) (io.Reader, error) { return xz.NewReader(r) }},
		{"gz", func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }},
	} {
		z, err := sim.Compress(tc.format, bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		r, err := tc.open(bytes.NewReader(z))
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, raw) || len(z) >= len(raw) {
			t.Errorf("%s: %d bytes compressed to %d, back to %d (%v)", tc.format, len(raw), len(z), len(got), err)
		}
	}
	if _, err := sim.Compress("lz4", bytes.NewReader(raw)); err == nil {
		t.Error("an unknown format was accepted")
	}
}

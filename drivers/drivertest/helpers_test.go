package drivertest_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
)

func TestCompress(t *testing.T) {
	t.Parallel()
	raw := bytes.Repeat([]byte("a disk image\n"), 4096)
	for _, tc := range []struct {
		format string
		open   func(io.Reader) (io.Reader, error)
	}{
		{"xz", func(r io.Reader) (io.Reader, error) { return xz.NewReader(r) }},
		{"zst", func(r io.Reader) (io.Reader, error) { return zstd.NewReader(r) }},
		{"gz", func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }},
		{"img", func(r io.Reader) (io.Reader, error) { return r, nil }},
	} {
		c := drivertest.Compress(t, tc.format, raw)
		if tc.format != "img" && len(c) >= len(raw) {
			t.Errorf("%s: %d bytes compressed to %d", tc.format, len(raw), len(c))
		}
		r, err := tc.open(bytes.NewReader(c))
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("%s: decompressed %d bytes (%v), want the %d given", tc.format, len(got), err, len(raw))
		}
	}
}

func TestImageServer(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte{7}, 40<<10)
	s := drivertest.StartImageServer(t, map[string][]byte{"/a.img": []byte("A"), "/big.img": big})
	url := s.Add("/slow.img", []byte("not slow"))
	for _, tc := range []struct {
		url    string
		status int
		body   []byte
		slow   bool
	}{
		{s.URL + "/a.img", http.StatusOK, []byte("A"), false},
		{url, http.StatusOK, []byte("not slow"), false},
		{s.URL + "/slow/big.img", http.StatusOK, big, true},
		{s.URL + "/missing.img", http.StatusNotFound, nil, false},
		{s.URL + "/slow/missing.img", http.StatusNotFound, nil, false},
	} {
		start := time.Now()
		resp, err := http.Get(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || (tc.body != nil && !bytes.Equal(b, tc.body)) {
			t.Errorf("GET %s = %s, %d bytes (%v)", tc.url, resp.Status, len(b), err)
		}
		// 40 KiB at 8 KiB every 10 ms takes at least 40 ms.
		if took := time.Since(start); tc.slow && took < 40*time.Millisecond {
			t.Errorf("GET %s took %s: not slow", tc.url, took)
		}
	}
	if n := s.Requests(); n != 5 {
		t.Errorf("Requests = %d, want 5", n)
	}
	if n := s.Gets("/big.img"); n != 1 {
		t.Errorf("Gets(/big.img) = %d, want 1 (its slow form)", n)
	}
}

func TestRigs(t *testing.T) {
	t.Parallel()
	var rigs drivertest.Rigs[string]
	a, b := &drivers.DeviceConfig{Name: "a"}, &drivers.DeviceConfig{Name: "b"}
	t.Run("add", func(t *testing.T) {
		rigs.Add(t, a, "rig a")
		rigs.Add(t, b, "rig b")
		if got := rigs.Of(t, a); got != "rig a" {
			t.Errorf("Of(a) = %q", got)
		}
		n := 0
		for cfg, rig := range rigs.All() {
			if rig != "rig "+cfg.Name {
				t.Errorf("All: %s has %q", cfg.Name, rig)
			}
			n++
		}
		if n != 2 {
			t.Errorf("All listed %d, want 2", n)
		}
	})
	if n := len(collect(&rigs)); n != 0 {
		t.Errorf("%d rigs left once the test that added them ended", n)
	}
}

func collect(r *drivertest.Rigs[string]) []string {
	var out []string
	for _, rig := range r.All() {
		out = append(out, rig)
	}
	return out
}

func TestHostKeys(t *testing.T) {
	t.Parallel()
	cfg := &drivers.DeviceConfig{Name: "d", SSH: drivertest.TOFU(t)}
	k1, k2 := drivertest.RandomHostKey(t), drivertest.RandomHostKey(t)
	if bytes.Equal(k1.Marshal(), k2.Marshal()) {
		t.Fatal("two random keys are the same")
	}
	drivertest.RecordHostKey(t, cfg, "d", "127.0.0.1:22", k1)
	check := cfg.SSHSettings().Policy().Callback("d")
	if err := check("127.0.0.1:22", nil, k1); err != nil {
		t.Errorf("the recorded key is refused: %v", err)
	}
	if err := check("127.0.0.1:22", nil, k2); err == nil {
		t.Error("another key is accepted once one is recorded")
	}
}

package drivertest

import (
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"iter"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers"
)

// Compress returns b compressed in format: "xz", "zst" or "gz"; any other
// format (such as "img") returns b as it is, a raw image.
func Compress(t testing.TB, format string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch format {
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zst":
		w, err = zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	case "gz":
		w = gzip.NewWriter(&buf)
	default:
		return b
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ImageServer serves image files by path over HTTP for driver tests, with
// ranges (so that downloads resume), 404 for a path it does not have, and
// each file also at /slow<path> (a path it does not otherwise have),
// slowly (8 KiB every 10 ms, a distant mirror), so that a test can act
// while an image is being written. It counts the requests. Its methods are safe for concurrent use.
type ImageServer struct {
	*httptest.Server

	requests atomic.Int64
	mu       sync.Mutex
	files    map[string][]byte
	gets     map[string]int
}

// StartImageServer starts an ImageServer serving files (by path, such as
// "/noble.img.zst"), closed when the test ends.
func StartImageServer(t testing.TB, files map[string][]byte) *ImageServer {
	t.Helper()
	s := &ImageServer{files: map[string][]byte{}, gets: map[string]int{}}
	for p, b := range files {
		s.files[p] = b
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *ImageServer) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	name, slow := r.URL.Path, false
	s.mu.Lock()
	b, ok := s.files[name]
	if rest, cut := strings.CutPrefix(name, "/slow/"); !ok && cut {
		name, slow = "/"+rest, true
		b, ok = s.files[name]
	}
	if r.Method == http.MethodGet {
		s.gets[name]++
	}
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if !slow {
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	for len(b) > 0 {
		n := min(len(b), 8<<10)
		if _, err := w.Write(b[:n]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		b = b[n:]
		select {
		case <-r.Context().Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Add serves b at path and returns its URL.
func (s *ImageServer) Add(path string, b []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = b
	return s.URL + path
}

// Requests returns how many requests the server got.
func (s *ImageServer) Requests() int64 { return s.requests.Load() }

// Gets returns how many GET requests path got, at /slow<path> included.
func (s *ImageServer) Gets(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[path]
}

// TOFU returns SSH settings that record host keys on first use, in a
// directory of the test's: a device's key is learnt at its first login,
// as on a lab host.
func TOFU(t testing.TB) *drivers.SSHSettings {
	t.Helper()
	return &drivers.SSHSettings{HostKeys: drivers.HostKeysTOFU, HostKeyDir: t.TempDir()}
}

// RandomHostKey returns a new ed25519 public key, one no server has.
func RandomHostKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RecordHostKey makes the host key policy of cfg hold key for name (a
// device's agent_name, or the name its control host's key is recorded
// under) at addr, as if it had been seen there before.
func RecordHostKey(t testing.TB, cfg *drivers.DeviceConfig, name, addr string, key ssh.PublicKey) {
	t.Helper()
	if err := cfg.SSHSettings().Policy().Callback(name)(addr, &net.TCPAddr{}, key); err != nil {
		t.Fatal(err)
	}
}

// Rigs remembers the simulated hardware behind each device configuration
// a test set up, so that a scenario's checks, which are given the
// configuration, find it. The zero value is ready for use; it is safe for
// concurrent use.
type Rigs[R any] struct {
	mu sync.Mutex
	m  map[*drivers.DeviceConfig]R
}

// Add records rig as the hardware of cfg until the test t ends.
func (r *Rigs[R]) Add(t testing.TB, cfg *drivers.DeviceConfig, rig R) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[*drivers.DeviceConfig]R{}
	}
	r.m[cfg] = rig
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.m, cfg)
	})
}

// Of returns the hardware of cfg; the test fails at once when there is
// none.
func (r *Rigs[R]) Of(t testing.TB, cfg *drivers.DeviceConfig) R {
	t.Helper()
	r.mu.Lock()
	rig, ok := r.m[cfg]
	r.mu.Unlock()
	if !ok {
		t.Fatal("no simulated hardware for this device configuration")
	}
	return rig
}

// All returns the configurations recorded and their hardware, as they are
// when it is called.
func (r *Rigs[R]) All() iter.Seq2[*drivers.DeviceConfig, R] {
	r.mu.Lock()
	snapshot := maps.Clone(r.m)
	r.mu.Unlock()
	return maps.All(snapshot)
}

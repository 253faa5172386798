package sim

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// DefaultImageSize is the size of the images an ImageServer serves.
const DefaultImageSize = 32 << 20

// ImageServer serves simulated OS images over HTTP, as a lab's image
// mirror would, for the jobs of a simulated lab:
//
//	GET /images/<system>-<kind>.img[.zst|.xz|.gz]
//
// where system is ubuntu-22.04 or ubuntu-24.04, and kind is one of server,
// desktop, core, core20, pi-desktop, ubuntu-cpc, ce-oem-iot, tegra (the
// image types provisioning paths detect) or iso (an OEM recovery image).
// The image's os-release is that Ubuntu release, its model (for core
// kinds) ubuntu-core-<version>, and its bytes are a sim.Image that a
// simulated device boots. /images/SHA256SUMS lists the sha256 of every
// image served so far; /images/corrupt.img.zst is a zstd stream damaged
// half way. Responses support Range requests, so resumed downloads work.
type ImageServer struct {
	size int64
	srv  *http.Server
	ln   net.Listener
	log  *slog.Logger

	mu     sync.Mutex
	images map[string][]byte
	sums   map[string]string
	hits   map[string]int
}

var imageName = regexp.MustCompile(`^(ubuntu-(?:22\.04|24\.04))-(server|desktop|core|core20|pi-desktop|ubuntu-cpc|ce-oem-iot|tegra|iso)\.(img|iso)(\.zst|\.xz|\.gz)?$`)

var codenames = map[string]string{"22.04": "jammy", "24.04": "noble"}

// StartImageServer serves images of size bytes (0: DefaultImageSize) on
// addr (such as 127.0.0.1:0). It stops when ctx is done or Close is called.
func StartImageServer(ctx context.Context, addr string, size int64, log *slog.Logger) (*ImageServer, error) {
	if size <= 0 {
		size = DefaultImageSize
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sim: image server: %w", err)
	}
	s := &ImageServer{size: size, ln: ln, log: log, images: map[string][]byte{}, sums: map[string]string{}, hits: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /images/{name}", s.serve)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	context.AfterFunc(ctx, s.Close)
	return s, nil
}

// URL returns the base URL of the images: http://host:port/images.
func (s *ImageServer) URL() string { return "http://" + s.ln.Addr().String() + "/images" }

// Close stops the server.
func (s *ImageServer) Close() { _ = s.srv.Close() }

// Requests returns how many GET requests asked for the file name.
func (s *ImageServer) Requests(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[name]
}

// ImageFor returns the sim.Image the server serves as name (without its
// compression suffix: ubuntu-24.04-core.img).
func (s *ImageServer) ImageFor(name string) (Image, error) {
	m := imageName.FindStringSubmatch(name)
	if m == nil {
		return Image{}, fmt.Errorf("sim: no image %q", name)
	}
	version := strings.TrimPrefix(m[1], "ubuntu-")
	im := Image{OSRelease: UbuntuRelease(version, codenames[version]), Kind: m[2], Size: s.size}
	if strings.HasPrefix(m[2], "core") {
		im.Model = "ubuntu-core-" + strings.Split(version, ".")[0]
	}
	h := fnv.New64a()
	_, _ = io.WriteString(h, m[1]+"-"+m[2])
	im.Seed = h.Sum64()
	return im, nil
}

func (s *ImageServer) serve(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.mu.Lock()
	s.hits[name]++
	s.mu.Unlock()
	if name == "SHA256SUMS" {
		s.mu.Lock()
		names := make([]string, 0, len(s.sums))
		for n := range s.sums {
			names = append(names, n)
		}
		sort.Strings(names)
		var b strings.Builder
		for _, n := range names {
			fmt.Fprintf(&b, "%s *%s\n", s.sums[n], n)
		}
		s.mu.Unlock()
		_, _ = io.WriteString(w, b.String())
		return
	}
	body, err := s.file(name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	s.log.Info("sim: image served", "image", name, "range", r.Header.Get("Range"))
	http.ServeContent(w, r, name, time.Unix(1_700_000_000, 0), bytes.NewReader(body))
}

// file returns the bytes served as name, made on first use.
func (s *ImageServer) file(name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.images[name]; ok {
		return b, nil
	}
	var b []byte
	var err error
	if name == "corrupt.img.zst" {
		b, err = s.makeLocked("ubuntu-24.04-server.img.zst")
		if err == nil {
			b = append([]byte(nil), b...)
			for i := len(b) / 2; i < len(b)/2+256 && i < len(b); i++ {
				b[i] ^= 0x5A
			}
		}
	} else {
		b, err = s.makeLocked(name)
	}
	if err != nil {
		return nil, err
	}
	s.images[name] = b
	sum := sha256.Sum256(b)
	s.sums[name] = hex.EncodeToString(sum[:])
	return b, nil
}

func (s *ImageServer) makeLocked(name string) ([]byte, error) {
	m := imageName.FindStringSubmatch(name)
	if m == nil {
		return nil, errors.New("no such image")
	}
	im, err := s.ImageFor(strings.TrimSuffix(name, m[4]))
	if err != nil {
		return nil, err
	}
	if m[4] == "" {
		return im.Bytes(), nil
	}
	return Compress(strings.TrimPrefix(m[4], "."), im.Reader())
}

// Compress returns what r reads compressed in format: "zst" (zstd), "xz"
// or "gz" (gzip), as an image mirror serves an image.
func Compress(format string, r io.Reader) ([]byte, error) {
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch format {
	case "zst":
		w, err = zstd.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "gz":
		w = gzip.NewWriter(&buf)
	default:
		return nil, fmt.Errorf("sim: compress: unknown format %q (zst, xz, gz)", format)
	}
	if err != nil {
		return nil, fmt.Errorf("sim: compress %s: %w", format, err)
	}
	if _, err := io.Copy(w, r); err != nil {
		return nil, fmt.Errorf("sim: compress %s: %w", format, err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("sim: compress %s: %w", format, err)
	}
	return buf.Bytes(), nil
}

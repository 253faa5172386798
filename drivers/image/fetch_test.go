package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestResume drops every connection after a while and expects the
// download to be completed with Range requests, byte for byte.
func TestResume(t *testing.T) {
	t.Parallel()
	data := plain() // 3 MiB
	tests := []struct {
		name        string
		dropAfter   int64
		ignoreRange bool
		wantReqs    int
		wantRanges  int
	}{
		// 3 MiB in 1 MiB pieces: the first request and two resumptions.
		{name: "resumes with Range", dropAfter: 1 << 20, wantReqs: 3, wantRanges: 2},
		{name: "uneven pieces", dropAfter: 1300 << 10, wantReqs: 3, wantRanges: 2},
		// A server that ignores Range sends everything again: with a drop
		// every 2 MiB it never completes, so drop only the first response.
		{name: "server ignores Range", dropAfter: -(1 << 20), ignoreRange: true, wantReqs: 2, wantRanges: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t)
			url := srv.put("/img.raw", data)
			if tt.dropAfter > 0 {
				srv.dropAfter = tt.dropAfter
			} else {
				srv.dropFirst = -tt.dropAfter
			}
			srv.ignoreRange = tt.ignoreRange
			c := newCache(t, 0)
			im, err := c.Open(context.Background(), Source{URL: url, SHA256: sum(data)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			got, _ := readAll(t, im)
			if !bytes.Equal(got, data) {
				t.Fatal("the resumed download differs from the original")
			}
			reqs := srv.reqs()
			ranges := 0
			for i, r := range reqs {
				if r.Range != "" {
					ranges++
					if r.IfRange == "" {
						t.Errorf("request %d: Range %q without If-Range", i, r.Range)
					}
				}
			}
			if len(reqs) != tt.wantReqs || ranges != tt.wantRanges {
				t.Errorf("%d requests with %d Range requests, want %d with %d: %+v", len(reqs), ranges, tt.wantReqs, tt.wantRanges, reqs)
			}
			if reqs[1].Range != fmt.Sprintf("bytes=%d-", min(abs(tt.dropAfter), int64(len(data)))) {
				t.Errorf("second request asks for %q", reqs[1].Range)
			}
		})
	}
}

func abs(n int64) int64 { return max(n, -n) }

// TestDownloadErrors checks each way a download fails, and that nothing
// is left in the cache afterwards.
func TestDownloadErrors(t *testing.T) {
	t.Parallel()
	data := plain()[:1<<20]
	const half = 512 << 10
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		src      func(url string) Source
		kind     Kind
		say      []string
		wantReqs int // -1: do not check
	}{
		{
			name:     "404",
			handler:  func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) },
			kind:     NotFound,
			say:      []string{"HTTP 404 Not Found"},
			wantReqs: 1,
		},
		{
			name:     "403 is not retried",
			handler:  func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) },
			kind:     HTTP,
			say:      []string{"HTTP 403 Forbidden"},
			wantReqs: 1,
		},
		{
			name:     "503 retries are bounded",
			handler:  func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", http.StatusServiceUnavailable) },
			kind:     HTTP,
			say:      []string{"HTTP 503 Service Unavailable"},
			wantReqs: testPolicy.Retries + 1,
		},
		{
			// Announces 1 MiB, sends half and hangs up; a Range request
			// for the rest gets nothing either.
			name: "truncated",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("ETag", `"t"`)
				if r.Header.Get("Range") != "" {
					w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", half, len(data)-1, len(data)))
					w.Header().Set("Content-Length", fmt.Sprint(len(data)-half))
					w.WriteHeader(http.StatusPartialContent)
					w.(http.Flusher).Flush()
					panic(http.ErrAbortHandler)
				}
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				_, _ = w.Write(data[:half])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			},
			kind:     Truncated,
			say:      []string{"truncated: got 524288 of 1048576 bytes"},
			wantReqs: testPolicy.Retries + 1,
		},
		{
			// Ignores Range and hangs up at the same place every time:
			// receiving the same bytes again is no progress.
			name: "no progress without Range",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("ETag", `"t"`)
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				_, _ = w.Write(data[:half])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			},
			kind:     Truncated,
			say:      []string{"truncated: got 524288 of 1048576 bytes"},
			wantReqs: testPolicy.Retries + 1,
		},
		{
			name: "sha256 mismatch",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write(data)
			},
			src: func(url string) Source {
				return Source{URL: url, SHA256: strings.Repeat("ab", 32)}
			},
			kind:     Checksum,
			say:      []string{"sha256 mismatch: want " + strings.Repeat("ab", 32) + ", got " + sum(data)},
			wantReqs: 1,
		},
		{
			name: "wrong Content-Range",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("ETag", `"t"`)
				if r.Header.Get("Range") != "" {
					w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(data)-1, len(data)))
					w.WriteHeader(http.StatusPartialContent)
					_, _ = w.Write(data)
					return
				}
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				_, _ = w.Write(data[:half])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			},
			kind:     HTTP,
			say:      []string{"the server sent the wrong range"},
			wantReqs: testPolicy.Retries + 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n.Add(1)
				tt.handler(w, r)
			}))
			defer srv.Close()
			url := srv.URL + "/dir/x.img.xz"
			src := Source{URL: url}
			if tt.src != nil {
				src = tt.src(url)
			}
			c := newCache(t, 0)
			im, err := c.Open(context.Background(), src, nil)
			if err == nil {
				im.Close()
				t.Fatal("Open succeeded")
			}
			e := wantKind(t, err, tt.kind, tt.say...)
			if e.URL != url || !strings.HasPrefix(err.Error(), "image "+url+": ") {
				t.Errorf("error %q does not start with the image's URL", err)
			}
			if tt.wantReqs >= 0 && int(n.Load()) != tt.wantReqs {
				t.Errorf("%d requests, want %d", n.Load(), tt.wantReqs)
			}
			if left := tmpFiles(t, c); len(left) != 0 {
				t.Errorf("partial files left in the cache: %v", left)
			}
			if left := blobFiles(t, c); len(left) != 0 {
				t.Errorf("images left in the cache: %v", left)
			}
		})
	}
}

// TestTransientErrorsRetried: 503s and a refused Range are retried and
// the download completes.
func TestTransientErrorsRetried(t *testing.T) {
	t.Parallel()
	data := plain()[:1<<20]
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1, 2:
			w.Header().Set("Retry-After", "0")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case 3:
			w.Header().Set("ETag", `"r"`)
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
			_, _ = w.Write(data[:1000])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case 4:
			http.Error(w, "no ranges today", http.StatusRequestedRangeNotSatisfiable)
		default:
			w.Header().Set("ETag", `"r"`)
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
		}
	}))
	defer srv.Close()
	c := newCache(t, 0, WithRetryPolicy(RetryPolicy{Retries: 4, Backoff: time.Millisecond}))
	im, err := c.Open(context.Background(), Source{URL: srv.URL + "/x", SHA256: sum(data)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	im.Close()
	if n.Load() != 5 {
		t.Errorf("%d requests, want 5", n.Load())
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/x.img"
	srv.Close()
	c := newCache(t, 0)
	_, err := c.Open(context.Background(), Source{URL: url}, nil)
	wantKind(t, err, Network, "image "+url+": cannot reach the server: ")
}

func TestInvalidSources(t *testing.T) {
	t.Parallel()
	tests := []struct {
		src Source
		say string
	}{
		{Source{URL: "ftp://example.com/x.img"}, `unsupported URL scheme "ftp": only http, https and file are supported`},
		{Source{URL: "s3://bucket/x.img"}, `unsupported URL scheme "s3"`},
		{Source{URL: "example.com/x.img"}, "no scheme"},
		{Source{URL: "http:///x.img"}, "no host"},
		{Source{URL: "file://otherhost/x.img"}, "local file"},
		{Source{}, "no url and no path"},
		{Source{URL: "http://example.com/x", Path: "/tmp/x"}, "both a url and a path"},
		{Source{URL: "http://example.com/x", SHA256: "abc"}, "not 64 hex digits"},
	}
	c := newCache(t, 0)
	for _, tt := range tests {
		t.Run(tt.src.URL+tt.src.Path, func(t *testing.T) {
			_, err := c.Open(context.Background(), tt.src, nil)
			wantKind(t, err, Invalid, tt.say)
			_, err = Stream(context.Background(), tt.src, &bytes.Buffer{}, StreamOptions{})
			wantKind(t, err, Invalid, tt.say)
		})
	}
}

// TestCancelMidDownload cancels an Open while the server is sending:
// Canceled comes back promptly and no partial file is left.
func TestCancelMidDownload(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(10<<20))
		_, _ = w.Write(make([]byte, 64<<10))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	c := newCache(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	var once atomic.Bool
	type result struct {
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		_, err := c.Open(ctx, Source{URL: srv.URL + "/big.img"}, func(p Progress) {
			if p.BytesIn > 0 && !once.Swap(true) {
				close(started)
			}
		})
		done <- result{err, time.Now()}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no progress reported")
	}
	cancelled := time.Now()
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Open did not return after cancel")
	}
	wantKind(t, r.err, Canceled, "cancelled")
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("error %v does not wrap context.Canceled", r.err)
	}
	if d := r.at.Sub(cancelled); d > 2*time.Second {
		t.Errorf("Open returned %v after cancel", d)
	}
	if left := tmpFiles(t, c); len(left) != 0 {
		t.Errorf("partial files left in the cache: %v", left)
	}
}

// TestStall abandons an attempt that stops sending and resumes.
func TestStall(t *testing.T) {
	t.Parallel()
	data := plain()[:256<<10]
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("ETag", `"s"`)
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
			_, _ = w.Write(data[:1000])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		w.Header().Set("ETag", `"s"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	p := testPolicy
	p.StallTimeout = 200 * time.Millisecond
	c := newCache(t, 0, WithRetryPolicy(p))
	im, err := c.Open(context.Background(), Source{URL: srv.URL + "/x"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if got, _ := readAll(t, im); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	if n.Load() != 2 {
		t.Errorf("%d requests, want 2", n.Load())
	}
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 100-199/1000", 100, 1000, true},
		{"bytes 0-0/*", 0, -1, true},
		{"bytes */1000", 0, 0, false},
		{"items 1-2/3", 0, 0, false},
		{"bytes -1-2/3", 0, 0, false},
		{"", 0, 0, false},
	}
	for _, tt := range tests {
		start, total, ok := parseContentRange(tt.in)
		if start != tt.start || total != tt.total || ok != tt.ok {
			t.Errorf("parseContentRange(%q) = %d, %d, %v; want %d, %d, %v", tt.in, start, total, ok, tt.start, tt.total, tt.ok)
		}
	}
}

func TestSameContent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b validators
		want bool
	}{
		{validators{ETag: `"a"`, Length: 5}, validators{ETag: `"a"`, Length: 5}, true},
		{validators{ETag: `"a"`, Length: 5}, validators{ETag: `"b"`, Length: 5}, false},
		{validators{ETag: `"a"`, Length: 5}, validators{ETag: `"a"`, Length: 6}, false},
		{validators{ETag: `W/"a"`, Length: 5}, validators{ETag: `W/"a"`, Length: 5}, false},
		{validators{LastModified: "x", Length: -1}, validators{LastModified: "x", Length: 5}, true},
		{validators{Length: 5}, validators{Length: 5}, false},
	}
	for _, tt := range tests {
		if got := sameContent(tt.a, tt.b); got != tt.want {
			t.Errorf("sameContent(%+v, %+v) = %v", tt.a, tt.b, got)
		}
	}
}

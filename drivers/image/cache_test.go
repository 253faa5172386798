package image

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestOpenEachFormat serves each format under a name that suggests
// another and expects it detected by its bytes and decompressed exactly.
func TestOpenEachFormat(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	c := newCache(t, 0)
	for _, f := range allFormats {
		t.Run(f.String(), func(t *testing.T) {
			data := testImage()[f]
			url := srv.put("/"+f.String()+"/"+misleadingName[f], data)
			im, err := c.Open(context.Background(), Source{URL: url}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if im.Format() != f || im.Size() != int64(len(data)) || im.SHA256() != sum(data) {
				t.Errorf("Image: format %v, size %d, sha256 %s; want %v, %d, %s", im.Format(), im.Size(), im.SHA256(), f, len(data), sum(data))
			}
			got, gotF := readAll(t, im)
			if gotF != f || !bytes.Equal(got, plain()) {
				t.Errorf("Reader gives %v and %d bytes (equal: %v)", gotF, len(got), bytes.Equal(got, plain()))
			}
			raw, rawF, err := im.Raw(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			var buf bytes.Buffer
			if _, err := buf.ReadFrom(raw); err != nil {
				t.Fatal(err)
			}
			if rawF != f || !bytes.Equal(buf.Bytes(), data) {
				t.Errorf("Raw gives %v and %d bytes, not the file as served", rawF, buf.Len())
			}
		})
	}
}

// TestConcurrentOpens opens one URL from ten goroutines at once: one
// download; then a cache hit with no request at all.
func TestConcurrentOpens(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := testImage()[Zstd]
	url := srv.put("/img.zst", data)
	srv.gate = make(chan struct{})
	c := newCache(t, 0)

	const n = 10
	var wg sync.WaitGroup
	images := make([]*Image, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { images[i], errs[i] = c.Open(context.Background(), Source{URL: url}, nil) })
	}
	eventually(t, "ten waiters on one download", func() bool { return waiters(c, url) == n })
	close(srv.gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Open %d: %v", i, errs[i])
		}
		if images[i].SHA256() != sum(data) {
			t.Errorf("Open %d: sha256 %s", i, images[i].SHA256())
		}
	}
	if got := srv.count(); got != 1 {
		t.Fatalf("%d requests for ten concurrent Opens, want 1", got)
	}
	if got := blobRefs(c, sum(data)); got != n {
		t.Errorf("%d references to the image, want %d", got, n)
	}
	for _, im := range images {
		im.Close()
		im.Close() // twice is harmless
	}
	if got := blobRefs(c, sum(data)); got != 0 {
		t.Errorf("%d references after closing, want 0", got)
	}

	im, err := c.Open(context.Background(), Source{URL: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if got := srv.count(); got != 1 {
		t.Errorf("a later Open made %d more requests, want none", got-1)
	}
	if got, _ := readAll(t, im); !bytes.Equal(got, plain()) {
		t.Error("cached image differs")
	}
}

func waiters(c *Cache, url string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.flights[url+"\x00"]; f != nil {
		return f.waiters
	}
	return 0
}

func blobRefs(c *Cache, sha string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.blobs[sha]; b != nil {
		return b.refs
	}
	return -1
}

// TestWaiterCancel: a waiter that gives up does not cancel the download
// others wait for; when all have given up, the download is cancelled.
func TestWaiterCancel(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := testImage()[Gzip]
	url := srv.put("/img.gz", data)
	srv.gate = make(chan struct{})
	c := newCache(t, 0)

	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() {
		_, err := c.Open(ctxA, Source{URL: url}, nil)
		errA <- err
	}()
	type result struct {
		im  *Image
		err error
	}
	resB := make(chan result, 1)
	go func() {
		im, err := c.Open(context.Background(), Source{URL: url}, nil)
		resB <- result{im, err}
	}()
	eventually(t, "two waiters", func() bool { return waiters(c, url) == 2 })
	cancelA()
	wantKind(t, <-errA, Canceled)
	if w := waiters(c, url); w != 1 {
		t.Fatalf("%d waiters after one gave up, want 1", w)
	}
	close(srv.gate)
	b := <-resB
	if b.err != nil {
		t.Fatalf("the remaining waiter failed: %v", b.err)
	}
	b.im.Close()
	if srv.count() != 1 || srv.abortedCount() != 0 {
		t.Errorf("%d requests, %d aborted; want 1, 0", srv.count(), srv.abortedCount())
	}

	// Now everyone gives up: the download is cancelled.
	srv2 := newServer(t)
	url2 := srv2.put("/other.gz", data)
	srv2.gate = make(chan struct{})
	defer close(srv2.gate)
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Open(ctx, Source{URL: url2}, nil)
			errs <- err
		}()
	}
	eventually(t, "two waiters", func() bool { return waiters(c, url2) == 2 })
	eventually(t, "the request at the server", func() bool { return srv2.count() == 1 })
	cancel()
	wantKind(t, <-errs, Canceled)
	wantKind(t, <-errs, Canceled)
	eventually(t, "the server to see the download cancelled", func() bool { return srv2.abortedCount() == 1 })
	if left := tmpFiles(t, c); len(left) != 0 {
		t.Errorf("partial files left: %v", left)
	}
}

// TestRevalidate: past its max age a URL is revalidated with its ETag; an
// unchanged URL is not downloaded again, a changed one is.
func TestRevalidate(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	v1 := testImage()[Xz]
	url := srv.put("/img.xz", v1)
	c := newCache(t, 0, WithMaxAge(-1))

	open := func() *Image {
		t.Helper()
		im, err := c.Open(context.Background(), Source{URL: url}, nil)
		if err != nil {
			t.Fatal(err)
		}
		im.Close()
		return im
	}
	if im := open(); im.SHA256() != sum(v1) {
		t.Fatal("wrong content")
	}
	if im := open(); im.SHA256() != sum(v1) {
		t.Fatal("wrong content after revalidation")
	}
	reqs := srv.reqs()
	if len(reqs) != 2 || reqs[1].IfNoneMatch == "" {
		t.Fatalf("requests %+v: want a download and a conditional request", reqs)
	}
	v2 := testImage()[Zstd]
	srv.put("/img.xz", v2)
	if im := open(); im.SHA256() != sum(v2) {
		t.Fatal("the changed image was not downloaded again")
	}
	if got := len(blobFiles(t, c)); got != 2 {
		t.Errorf("%d images cached, want 2", got)
	}
}

// TestContentAddressed: two URLs of the same bytes share one file, and a
// known sha256 is a cache hit whatever the URL.
func TestContentAddressed(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := testImage()[Bzip2]
	a := srv.put("/a/img.bz2", data)
	b := srv.put("/b/renamed.img", data)
	c := newCache(t, 0)
	for _, u := range []string{a, b} {
		im, err := c.Open(context.Background(), Source{URL: u}, nil)
		if err != nil {
			t.Fatal(err)
		}
		im.Close()
	}
	if files := blobFiles(t, c); !slices.Equal(files, []string{sum(data)}) {
		t.Errorf("cached files %v, want one named by its sha256", files)
	}
	n := srv.count()
	im, err := c.Open(context.Background(), Source{URL: srv.URL + "/c/never-fetched", SHA256: sum(data)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	im.Close()
	if srv.count() != n {
		t.Error("a known sha256 made a request")
	}
}

// TestEviction checks LRU order and that open images are never evicted.
func TestEviction(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	const size = 256 << 10
	var urls, sums []string
	for i := range 5 {
		d := genData(uint64(100+i), size)
		urls = append(urls, srv.put("/"+string(rune('a'+i)), d))
		sums = append(sums, sum(d))
	}
	c := newCache(t, size*5/2) // room for two
	open := func(i int) *Image {
		t.Helper()
		im, err := c.Open(context.Background(), Source{URL: urls[i]}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return im
	}
	cached := func() []int {
		var out []int
		for i, s := range sums {
			if _, err := os.Stat(c.blobPath(s)); err == nil {
				out = append(out, i)
			}
		}
		return out
	}
	want := func(step string, w ...int) {
		t.Helper()
		if got := cached(); !slices.Equal(got, w) {
			t.Fatalf("%s: cached %v, want %v", step, got, w)
		}
	}
	open(0).Close()
	open(1).Close()
	want("two fit", 0, 1)
	open(2).Close()
	want("the least recently used goes", 1, 2)
	open(1).Close() // a hit: 1 is now more recent than 2
	open(3).Close()
	want("LRU, not FIFO", 1, 3)

	held := open(1)
	open(4).Close()
	open(0).Close()
	want("the open image stays", 0, 1)
	open(2).Close()
	want("the open image still stays", 1, 2)
	held.Close() // used until now: more recent than 2
	open(3).Close()
	want("closed, it counts as just used", 1, 3)
	open(0).Close()
	want("and then it can go", 0, 3)

	c.mu.Lock()
	size2, n := c.size, len(c.blobs)
	c.mu.Unlock()
	if size2 != 2*size || n != 2 {
		t.Errorf("accounted %d bytes in %d images, want %d in 2", size2, n, 2*size)
	}
}

// TestPersistence reopens a cache directory: what was downloaded is still
// a hit, and a second Cache on a directory in use is refused.
func TestPersistence(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := testImage()[Gzip]
	url := srv.put("/img.gz", data)
	dir := t.TempDir()
	c, err := NewCache(dir, 0, nil, testLogger(t), WithRetryPolicy(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewCache(dir, 0, nil, nil); err == nil {
		t.Error("a second cache on a directory in use was allowed")
	}
	im, err := c.Open(context.Background(), Source{URL: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	im.Close()
	// Something a crashed process left behind.
	if err := os.WriteFile(filepath.Join(dir, "tmp", "dl-1.part"), []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(context.Background(), Source{URL: url}, nil); KindOf(err) != Local {
		t.Errorf("Open after Close: %v", err)
	}

	c2, err := NewCache(dir, 0, nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if left := tmpFiles(t, c2); len(left) != 0 {
		t.Errorf("stale partial files kept: %v", left)
	}
	im, err = c2.Open(context.Background(), Source{URL: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if srv.count() != 1 {
		t.Errorf("%d requests, want 1: the reopened cache did not remember the URL", srv.count())
	}
	if got, f := readAll(t, im); f != Gzip || !bytes.Equal(got, plain()) {
		t.Error("the reopened cache gives other content")
	}
}

// TestOpenLocal opens attachments and file URLs where they are.
func TestOpenLocal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := testImage()[Zstd]
	path := filepath.Join(dir, "attachment.img") // not named .zst
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCache(t, 0)
	tests := []struct {
		name string
		src  Source
		kind Kind
	}{
		{"path", Source{Path: path}, 0},
		{"path with sha256", Source{Path: path, SHA256: sum(data)}, 0},
		{"file URL", Source{URL: "file://" + path}, 0},
		{"wrong sha256", Source{Path: path, SHA256: sum(nil)}, Checksum},
		{"missing", Source{Path: filepath.Join(dir, "nope")}, NotFound},
		{"directory", Source{Path: dir}, Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im, err := c.Open(context.Background(), tt.src, nil)
			if tt.kind != 0 {
				wantKind(t, err, tt.kind)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if im.Path() != path || im.Format() != Zstd {
				t.Errorf("Image at %s, %v", im.Path(), im.Format())
			}
			if got, _ := readAll(t, im); !bytes.Equal(got, plain()) {
				t.Error("content differs")
			}
		})
	}
	if files := blobFiles(t, c); len(files) != 0 {
		t.Errorf("local files were copied into the cache: %v", files)
	}
}

// TestOpenProgress reports a download's progress with BytesIn growing.
func TestOpenProgress(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	data := plain()
	url := srv.put("/img", data)
	srv.dropAfter = 1 << 20
	c := newCache(t, 0, WithRetryPolicy(RetryPolicy{Retries: 3, Backoff: 300 * time.Millisecond}))
	var mu sync.Mutex
	var got []Progress
	im, err := c.Open(context.Background(), Source{URL: url}, func(p Progress) {
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	im.Close()
	mu.Lock()
	defer mu.Unlock()
	checkProgress(t, got, int64(len(data)))
}

func checkProgress(t *testing.T, got []Progress, total int64) {
	t.Helper()
	if len(got) == 0 {
		t.Fatal("no progress reported")
	}
	for i := 1; i < len(got); i++ {
		if got[i].BytesIn < got[i-1].BytesIn || got[i].BytesOut < got[i-1].BytesOut {
			t.Fatalf("progress went backwards: %+v then %+v", got[i-1], got[i])
		}
	}
	last := got[len(got)-1]
	if last.BytesIn < total || last.Total != total {
		t.Errorf("last progress %+v, want BytesIn and Total %d", last, total)
	}
}

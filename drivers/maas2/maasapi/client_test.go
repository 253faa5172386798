package maasapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
	"github.com/flingerlab/flinger/drivers/sshx"
)

const testKey = "ConsumerKey123:TokenKey456:TokenSecret789"

func key(t *testing.T) maasapi.Key {
	t.Helper()
	k, err := maasapi.ParseKey(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// client returns a Client of srv with fast retries.
func client(t *testing.T, srv *httptest.Server, path string, onRetry func(string, int, error, time.Duration)) *maasapi.Client {
	t.Helper()
	c, err := maasapi.New(maasapi.Options{
		URL: srv.URL + path, Key: key(t), RequestTimeout: 2 * time.Second,
		Retry:   sshx.Backoff{Attempts: 4, Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		OnRetry: onRetry,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// oauthParams parses an OAuth Authorization header.
func oauthParams(t *testing.T, h string) map[string]string {
	t.Helper()
	if !strings.HasPrefix(h, "OAuth ") {
		t.Fatalf("Authorization %q is not OAuth", h)
	}
	out := map[string]string{}
	for _, p := range strings.Split(strings.TrimPrefix(h, "OAuth "), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		v, err := url.PathUnescape(strings.Trim(v, `"`))
		if err != nil {
			t.Fatalf("parameter %s: %v", k, err)
		}
		out[k] = v
	}
	return out
}

func TestSigning(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	nonces := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := oauthParams(t, r.Header.Get("Authorization"))
		want := map[string]string{
			"oauth_signature_method": "PLAINTEXT", "oauth_version": "1.0", "oauth_consumer_key": "ConsumerKey123",
			"oauth_token": "TokenKey456", "oauth_signature": "&TokenSecret789",
		}
		for k, v := range want {
			if p[k] != v {
				t.Errorf("%s = %q, want %q", k, p[k], v)
			}
		}
		ts, err := strconv.ParseInt(p["oauth_timestamp"], 10, 64)
		if err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
			t.Errorf("oauth_timestamp %q is not now", p["oauth_timestamp"])
		}
		mu.Lock()
		if nonces[p["oauth_nonce"]] || p["oauth_nonce"] == "" {
			t.Errorf("nonce %q reused or empty", p["oauth_nonce"])
		}
		nonces[p["oauth_nonce"]] = true
		mu.Unlock()
		if r.URL.Path != "/MAAS/api/2.0/version/" {
			t.Errorf("path %s", r.URL.Path)
		}
		fmt.Fprint(w, `{"version": "3.5.0", "subversion": "x", "capabilities": []}`)
	}))
	defer srv.Close()
	for _, path := range []string{"/MAAS", "/MAAS/", "/MAAS/api/2.0", "/MAAS/api/2.0/"} {
		v, err := client(t, srv, path, nil).Version(t.Context())
		if err != nil || v.Version != "3.5.0" {
			t.Errorf("Version via %s = %+v, %v", path, v, err)
		}
	}
}

func TestForms(t *testing.T) {
	t.Parallel()
	got := make(chan url.Values, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseMultipartForm(1 << 20); err != nil {
			t.Errorf("not a multipart form: %v", err)
		}
		if r.URL.Query().Get("op") != "deploy" || r.URL.Path != "/MAAS/api/2.0/machines/abc/" {
			t.Errorf("request %s %s", r.Method, r.URL)
		}
		got <- r.MultipartForm.Value
		fmt.Fprint(w, `{"system_id": "abc", "status_name": "Deploying", "status": 9}`)
	}))
	defer srv.Close()
	m, err := client(t, srv, "/MAAS", nil).Deploy(t.Context(), "abc", maasapi.DeployParams{
		DistroSeries: "noble", HWEKernel: "hwe-24.04", UserData: []byte("#cloud-config\n"), Ephemeral: true, Comment: "c",
	})
	if err != nil || m.StatusName != "Deploying" {
		t.Fatalf("Deploy = %+v, %v", m, err)
	}
	v := <-got
	for k, want := range map[string]string{
		"distro_series": "noble", "hwe_kernel": "hwe-24.04", "user_data": "I2Nsb3VkLWNvbmZpZwo=", "ephemeral_deploy": "true", "comment": "c",
	} {
		if len(v[k]) != 1 || v[k][0] != want {
			t.Errorf("%s = %v, want %q", k, v[k], want)
		}
	}
}

func TestRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		failures int
		fail     func(w http.ResponseWriter)
		wantErr  string
		attempts int
	}{
		{"500 then success", 2, func(w http.ResponseWriter) { http.Error(w, "database gone", http.StatusInternalServerError) }, "", 3},
		{"503 with Retry-After", 1, func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "0")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}, "", 2},
		{"dropped connection", 2, func(w http.ResponseWriter) {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
		}, "", 3},
		{"500 every time", 100, func(w http.ResponseWriter) { http.Error(w, "still gone", http.StatusInternalServerError) }, "gave up after 4 attempts", 4},
		{"400 not retried", 100, func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			fmt.Fprint(w, `{"distro_series": ["'warty' is not a valid distro_series."], "hwe_kernel": ["bad"]}`)
		}, "answered GET machines/abc/ with 400 Bad Request: distro_series: 'warty' is not a valid distro_series.; hwe_kernel: bad", 1},
		{"409 not retried", 100, func(w http.ResponseWriter) {
			http.Error(w, "Machine cannot be released in its current state ('Broken').", http.StatusConflict)
		}, "409 Conflict: Machine cannot be released in its current state ('Broken').", 1},
		{"HTML error page", 100, func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(404)
			fmt.Fprint(w, "<html><head><title>Not Found</title></head><body>...</body></html>")
		}, "404 Not Found: (an HTML page: Not Found)", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if int(n.Add(1)) <= tc.failures {
					tc.fail(w)
					return
				}
				fmt.Fprint(w, `{"system_id": "abc", "status_name": "Ready"}`)
			}))
			defer srv.Close()
			var retries atomic.Int32
			m, err := client(t, srv, "/MAAS", func(what string, attempt int, err error, _ time.Duration) {
				retries.Add(1)
				if what != "GET machines/abc/" {
					t.Errorf("OnRetry names %q", what)
				}
			}).Machine(t.Context(), "abc")
			if got := int(n.Load()); got != tc.attempts {
				t.Errorf("%d attempts, want %d", got, tc.attempts)
			}
			if tc.wantErr == "" {
				if err != nil || m.StatusName != "Ready" {
					t.Errorf("Machine = %+v, %v", m, err)
				}
				if int(retries.Load()) != tc.failures {
					t.Errorf("OnRetry called %d times, want %d", retries.Load(), tc.failures)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Machine = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestErrorMasksKey(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "Authorization Error: 'Invalid access token: TokenKey456' (key "+testKey+")", http.StatusUnauthorized)
	}))
	defer srv.Close()
	_, err := client(t, srv, "/MAAS", nil).Machine(t.Context(), "abc")
	var e *maasapi.Error
	if !errors.As(err, &e) || e.Status != 401 || !e.Unauthorized() || maasapi.StatusOf(err) != 401 {
		t.Fatalf("Machine = %v, want a 401 *Error", err)
	}
	for _, part := range strings.Split(testKey, ":") {
		if strings.Contains(err.Error(), part) {
			t.Errorf("the error shows %q: %v", part, err)
		}
	}
	if !strings.Contains(err.Error(), "Invalid access token: ****") || !strings.Contains(err.Error(), srv.URL) {
		t.Errorf("error %v", err)
	}
}

func TestAttemptTimeoutAndCancel(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			select { // the first attempt never gets an answer
			case <-r.Context().Done():
			case <-block:
			}
			return
		}
		fmt.Fprint(w, `{"version": "3.4.0"}`)
	}))
	defer srv.Close()
	defer close(block)
	c, err := maasapi.New(maasapi.Options{URL: srv.URL + "/MAAS", Key: key(t), RequestTimeout: 200 * time.Millisecond,
		Retry: sshx.Backoff{Attempts: 3, Initial: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.Version(t.Context()); err != nil || v.Version != "3.4.0" {
		t.Errorf("Version after a timed-out attempt = %+v, %v", v, err)
	}

	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-block:
		}
	}))
	defer slow.Close()
	c = client(t, slow, "/MAAS", nil)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Machine(ctx, "abc")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Machine cancelled = %v, want an error wrapping the context's", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Machine took %s to notice its context ended", took)
	}
}

func TestNewChecksURL(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "maas:5240/MAAS", "ftp://maas/MAAS", "http:///MAAS", "http://maas/MAAS?x=1"} {
		if _, err := maasapi.New(maasapi.Options{URL: bad, Key: key(t)}); err == nil {
			t.Errorf("New(%q) did not fail", bad)
		}
	}
	if _, err := maasapi.New(maasapi.Options{URL: "http://maas:5240/MAAS"}); err == nil {
		t.Error("New without a key did not fail")
	}
	c, err := maasapi.New(maasapi.Options{URL: "http://admin:pw@maas:5240/MAAS/", Key: key(t)})
	if err != nil || strings.Contains(c.Server(), "pw") {
		t.Errorf("Server() = %q, %v: the URL's password must not show", c.Server(), err)
	}
}

func TestVersionAtLeast(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v    string
		want bool
		err  bool
	}{
		{"3.5.0", true, false}, {"3.5.0~rc1-16322-g.1234", true, false}, {"3.10.1", true, false}, {"4.0", true, false},
		{"3.4.9", false, false}, {"2.9.2", false, false}, {"", false, true}, {"devel", false, true},
	} {
		got, err := maasapi.Version{Version: tc.v}.AtLeast(3, 5)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("AtLeast(%q, 3.5) = %v, %v", tc.v, got, err)
		}
	}
}

func TestDecoding(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/blockdevices/"):
			fmt.Fprint(w, `[{"id": 1, "name": "sda", "type": "physical", "size": 500107862016, "filesystem": null,
				"partitions": [{"id": 10, "size": "1000000000", "filesystem": {"fstype": "ext4", "mount_point": "/boot", "label": null}}]},
				{"id": 4, "name": "vg0-lv0", "type": "virtual", "size": 1e9, "partitions": []}]`)
		case r.URL.Query().Get("op") == "download":
			if r.URL.Query().Get("output") != "combined" {
				t.Errorf("download %s", r.URL)
			}
			fmt.Fprint(w, "curtin: Installation finished.\n")
		default:
			b, _ := json.Marshal([]map[string]any{{"id": 7, "type": 1, "type_name": "Installation", "status_name": "Passed"}})
			_, _ = w.Write(b)
		}
	}))
	defer srv.Close()
	c := client(t, srv, "/MAAS", nil)
	devs, err := c.BlockDevices(t.Context(), "abc")
	if err != nil || len(devs) != 2 || devs[0].Size != 500107862016 || devs[0].Partitions[0].Size != 1e9 ||
		devs[0].Partitions[0].Filesystem.MountPoint != "/boot" || !devs[0].Physical() || devs[1].Physical() || devs[1].Size != 1e9 {
		t.Errorf("BlockDevices = %+v, %v", devs, err)
	}
	if s := devs[0].Size.String(); s != "500.1 GB" {
		t.Errorf("Size.String() = %q", s)
	}
	sets, err := c.ScriptResults(t.Context(), "abc", "installation")
	if err != nil || len(sets) != 1 || sets[0].ID != 7 {
		t.Errorf("ScriptResults = %+v, %v", sets, err)
	}
	text, err := c.DownloadScriptResult(t.Context(), "abc", 7)
	if err != nil || text != "curtin: Installation finished.\n" {
		t.Errorf("DownloadScriptResult = %q, %v", text, err)
	}
}

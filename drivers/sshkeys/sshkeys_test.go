package sshkeys_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sshkeys"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func newKey(t *testing.T, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	if comment != "" {
		line += " " + comment
	}
	return line
}

// step is one answer of the fake key server.
type step struct {
	status int
	body   string
	delay  time.Duration
}

// keyServer answers each path with its steps in turn (the last one
// repeating) and counts the requests.
type keyServer struct {
	*httptest.Server
	mu    sync.Mutex
	steps map[string][]step
	hits  map[string]int
}

func newKeyServer(t *testing.T, steps map[string][]step) *keyServer {
	ks := &keyServer{steps: steps, hits: map[string]int{}}
	ks.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.mu.Lock()
		n := ks.hits[r.URL.Path]
		ks.hits[r.URL.Path]++
		s, ok := ks.steps[r.URL.Path]
		ks.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		st := s[min(n, len(s)-1)]
		if st.delay > 0 {
			select {
			case <-time.After(st.delay):
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(st.status)
		fmt.Fprint(w, st.body)
	}))
	t.Cleanup(ks.Close)
	return ks
}

func (ks *keyServer) requests(path string) int {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.hits[path]
}

func (ks *keyServer) fetcher() *sshkeys.Fetcher {
	return &sshkeys.Fetcher{
		LaunchpadURL: ks.URL + "/~%s/+sshkeys",
		GitHubURL:    ks.URL + "/%s.keys",
		Backoff:      sshx.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Attempts: 4, AttemptTimeout: 5 * time.Second},
	}
}

func TestFetch(t *testing.T) {
	k1, k2, k3 := newKey(t, "bob@laptop"), newKey(t, ""), newKey(t, "")
	ks := newKeyServer(t, map[string][]step{
		"/~bob/+sshkeys":     {{200, k1 + "\n" + k2 + "\n", 0}},
		"/alice.keys":        {{200, k3, 0}},
		"/~flaky/+sshkeys":   {{500, "oops", 0}, {502, "bad gateway", 0}, {200, k1 + "\n", 0}},
		"/~busy/+sshkeys":    {{429, "slow down", 0}, {200, k2 + "\n", 0}},
		"/~down/+sshkeys":    {{503, "down", 0}},
		"/~denied/+sshkeys":  {{403, "forbidden", 0}},
		"/~mixed/+sshkeys":   {{200, "# comment\n\n<html>not a key</html>\n" + k1 + "\nssh-ed25519 AAAAnotbase64!!\n" + k2 + "\r\n", 0}},
		"/~html/+sshkeys":    {{200, "<html><body>Log in to the captive portal</body></html>\n", 0}},
		"/~empty/+sshkeys":   {{200, "", 0}},
		"/~options/+sshkeys": {{200, `command="rm -rf /",no-pty ` + k1 + "\n", 0}},
		"/~dups/+sshkeys":    {{200, k1 + "\n" + k1 + " other comment\n" + k2 + "\n", 0}},
		"/~slow/+sshkeys":    {{200, k1, 10 * time.Second}, {200, k2, 0}},
		"/~ctl/+sshkeys":     {{200, k2 + " evil\x1b[2Jcomment\n", 0}},
	})
	key := func(k string) string { return strings.Join(strings.Fields(k)[:2], " ") }
	for _, tc := range []struct {
		id       string
		path     string
		want     []string
		wantErr  error
		wantMsg  string
		requests int
	}{
		{"lp:bob", "/~bob/+sshkeys", []string{k1, k2}, nil, "", 1},
		{"gh:alice", "/alice.keys", []string{k3}, nil, "", 1},
		{"lp:nobody", "/~nobody/+sshkeys", nil, sshkeys.ErrUserNotFound, "user not found", 1},
		{"lp:flaky", "/~flaky/+sshkeys", []string{k1}, nil, "", 3},
		{"lp:busy", "/~busy/+sshkeys", []string{k2}, nil, "", 2},
		{"lp:down", "/~down/+sshkeys", nil, nil, "gave up after 4 attempts", 4},
		{"lp:denied", "/~denied/+sshkeys", nil, nil, "403", 1},
		{"lp:mixed", "/~mixed/+sshkeys", []string{k1, k2}, nil, "", 1},
		{"lp:html", "/~html/+sshkeys", nil, nil, "no public key", 1},
		{"lp:empty", "/~empty/+sshkeys", nil, nil, "no public key", 1},
		{"lp:options", "/~options/+sshkeys", []string{k1}, nil, "", 1},
		{"lp:dups", "/~dups/+sshkeys", []string{k1, k2}, nil, "", 1},
		{"lp:ctl", "/~ctl/+sshkeys", []string{key(k2) + " evil[2Jcomment"}, nil, "", 1},
	} {
		t.Run(tc.id, func(t *testing.T) {
			got, err := ks.fetcher().Fetch(context.Background(), tc.id)
			if n := ks.requests(tc.path); n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
			if tc.want == nil {
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), tc.id) {
					t.Errorf("got %q, %v; want an error naming %s containing %q", got, err, tc.id, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			for _, k := range got {
				if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
					t.Errorf("returned key %q does not parse: %v", k, err)
				}
			}
		})
	}

	t.Run("attempt timeout", func(t *testing.T) {
		f := ks.fetcher()
		f.Backoff.AttemptTimeout = 200 * time.Millisecond
		got, err := f.Fetch(context.Background(), "lp:slow")
		if err != nil || len(got) != 1 || key(got[0]) != key(k2) {
			t.Errorf("got %q, %v; want the second answer's key", got, err)
		}
		if n := ks.requests("/~slow/+sshkeys"); n != 2 {
			t.Errorf("%d requests, want 2", n)
		}
	})
}

func TestFetchMalformedIDs(t *testing.T) {
	ks := newKeyServer(t, nil)
	for _, id := range []string{
		"lp: bob", "lp:", "gh:", "bob", ":bob", "xx:bob", "LP:bob", "lp:bob ", " lp:bob", "lp:bob\n",
		"gh:bo/b", "lp:../admin", "lp:..", "gh:.", "lp:bob?x=1", "lp:bob#x", "lp:bo%62", "lp:böb", "lp:bob;rm",
	} {
		t.Run(id, func(t *testing.T) {
			_, err := ks.fetcher().Fetch(context.Background(), id)
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", id)) || !strings.Contains(err.Error(), "malformed") {
				t.Errorf("err = %v, want one naming %q as malformed", err, id)
			}
		})
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if len(ks.hits) != 0 {
		t.Errorf("malformed ids made requests: %v", ks.hits)
	}
	// Every character the pattern allows passes.
	if _, _, err := sshkeys.ParseID("lp:a-b_c.d+e9"); err != nil {
		t.Error(err)
	}
}

func TestFetchCancelled(t *testing.T) {
	ks := newKeyServer(t, map[string][]step{"/~down/+sshkeys": {{503, "down", 0}}})
	f := ks.fetcher()
	f.Backoff = sshx.Backoff{Initial: time.Hour}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := f.Fetch(ctx, "lp:down")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestURL(t *testing.T) {
	for _, tc := range []struct {
		f       sshkeys.Fetcher
		id      string
		want    string
		wantErr string
	}{
		{sshkeys.Fetcher{}, "lp:bob", "https://launchpad.net/~bob/+sshkeys", ""},
		{sshkeys.Fetcher{}, "gh:bob", "https://github.com/bob.keys", ""},
		{sshkeys.Fetcher{LaunchpadURL: "http://mirror.lab/lp/%7E%s"}, "lp:bob", "http://mirror.lab/lp/%7Ebob", ""},
		{sshkeys.Fetcher{GitHubURL: "http://mirror.lab/gh"}, "gh:bob", "", "must contain %s exactly once"},
		{sshkeys.Fetcher{GitHubURL: "http://mirror.lab/%s/%s"}, "gh:bob", "", "must contain %s exactly once"},
	} {
		got, err := tc.f.URL(tc.id)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("URL(%s) = %q, %v; want error %q", tc.id, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("URL(%s) = %q, %v; want %q", tc.id, got, err, tc.want)
		}
	}
}

package orchestrator

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

func TestWebhookHostRules(t *testing.T) {
	tests := []struct {
		name    string
		rules   []string
		url     string
		allowed bool
	}{
		{"host allows any port", []string{"hooks.example.com"}, "https://hooks.example.com:8443/x", true},
		{"host is case-insensitive", []string{"Hooks.Example.com"}, "http://HOOKS.example.com/x", true},
		{"host:port allows that port", []string{"hooks.example.com:8080"}, "http://hooks.example.com:8080/x", true},
		{"host:port refuses another port", []string{"hooks.example.com:8080"}, "http://hooks.example.com:8081/x", false},
		{"default https port", []string{"hooks.example.com:443"}, "https://hooks.example.com/x", true},
		{"default http port", []string{"hooks.example.com:80"}, "http://hooks.example.com/x", true},
		{"default port of the other scheme", []string{"hooks.example.com:443"}, "http://hooks.example.com/x", false},
		{"another host", []string{"hooks.example.com"}, "https://evil.example.com/x", false},
		{"a suffix is not the host", []string{"example.com"}, "https://hooks.example.com/x", false},
		{"IPv6 with port", []string{"[::1]:9000"}, "http://[::1]:9000/x", true},
		{"IPv6 without port", []string{"::1"}, "http://[::1]:9000/x", true},
		{"no rules: nothing allowed", nil, "https://hooks.example.com/x", false},
		{"not http", []string{"hooks.example.com"}, "ftp://hooks.example.com/x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := parseHostRules(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			ok, why := allowed(rules, tt.url)
			if ok != tt.allowed || (!ok && why == "") {
				t.Errorf("allowed(%v, %s) = %v, %q; want %v", tt.rules, tt.url, ok, why, tt.allowed)
			}
		})
	}
}

func TestWebhookHostRulesRefuseBadEntries(t *testing.T) {
	for _, entry := range []string{"https://hooks.example.com", "hooks.example.com:http", "hooks.example.com:0", "hooks.example.com:70000"} {
		if _, err := parseHostRules([]string{entry}); err == nil {
			t.Errorf("parseHostRules(%q) accepted it", entry)
		}
	}
}

func TestWebhookEventsAndTimestamps(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{events.EventJobStart, true},
		{events.PhaseStart(events.PhaseProvision), true},
		{events.PhaseFail(events.PhaseTest), true},
		{events.PhaseSuccess(events.PhaseCleanup), true},
		{events.EventRecoveryFail, true},
		{events.EventJobEnd, true},
		{events.EventJobRequeued, true},
		{events.EventProvisionProgress, false},
		{events.EventDeviceState, false},
		{events.EventJobSubmitted, false},
		{events.EventWebhookRefused, false},
	}
	for _, tt := range tests {
		if got := WebhookEvent(tt.name); got != tt.want {
			t.Errorf("WebhookEvent(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
	at := time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.FixedZone("X", 3600))
	if got, want := isoTime(at), "2026-03-04T04:06:07.891234+00:00"; got != want {
		t.Errorf("isoTime = %s, want %s (Python's isoformat of a UTC time)", got, want)
	}
}

// TestWebhookSendRetries checks which answers are retried, how often, and
// that redirects are not followed.
func TestWebhookSendRetries(t *testing.T) {
	tests := []struct {
		name     string
		answers  []int // the receiver's answers, in turn; the last one repeats
		want     sendResult
		requests int
	}{
		{"ok at once", []int{200}, sendDelivered, 1},
		{"two 500s, then ok", []int{500, 500, 204}, sendDelivered, 3},
		{"408 is retried", []int{408, 200}, sendDelivered, 2},
		{"429 is retried", []int{429, 429, 200}, sendDelivered, 3},
		{"503 until the tries run out", []int{503}, sendFailed, 4},
		{"404 is final", []int{404}, sendFailed, 1},
		{"400 is final", []int{400, 200}, sendFailed, 1},
		{"401 is final", []int{401, 200}, sendFailed, 1},
		{"a redirect is not followed", []int{302}, sendFailed, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			n := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				status := tt.answers[min(n, len(tt.answers)-1)]
				n++
				mu.Unlock()
				if status == http.StatusFound {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(status)
			}))
			defer srv.Close()
			h := testHooks()
			j := &hookJob{id: "j1", t: &target{url: srv.URL + "/hook", allowed: true}}
			var batch []jetstream.Msg
			l := hookList{body: []byte(`{"agent_id":"d","job_queue":"q","events":[]}`), n: 1}
			if got := h.send(context.Background(), j, &batch, &l); got != tt.want {
				t.Errorf("result %v, want %v", got, tt.want)
			}
			mu.Lock()
			defer mu.Unlock()
			if n != tt.requests {
				t.Errorf("%d requests, want %d", n, tt.requests)
			}
		})
	}
}

func TestWebhookSendConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	h := testHooks()
	j := &hookJob{id: "j1", t: &target{url: url, allowed: true}}
	l := hookList{body: []byte(`{}`), n: 1}
	start := time.Now()
	if got := h.send(context.Background(), j, new([]jetstream.Msg), &l); got != sendFailed {
		t.Errorf("result %v, want failed", got)
	}
	// Four tries, 1, 2 and 4 ms apart: the backoff doubles.
	if d := time.Since(start); d < 7*time.Millisecond {
		t.Errorf("gave up after %s: no backoff", d)
	}
}

// testHooks returns a webhook sender that retries fast: four tries, 1 ms
// apart at first.
func testHooks() *webhooks {
	set := webhookDefaults
	set.tries, set.backoff, set.maxBackoff = 4, time.Millisecond, 10*time.Millisecond
	return &webhooks{
		set: set, token: "tok", log: slog.New(slog.DiscardHandler), sem: make(chan struct{}, 1),
		http: &http.Client{Timeout: 5 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		jobs: map[string]*hookJob{}, targets: newTargetCache(10, time.Minute),
	}
}

func TestTargetCacheBounds(t *testing.T) {
	c := newTargetCache(2, time.Hour)
	a, b, d := &target{url: "a"}, &target{url: "b"}, &target{url: "d"}
	c.put("a", a)
	c.put("b", b)
	if c.get("a") != a { // a is now the most recent
		t.Fatal("a forgotten")
	}
	c.put("d", d) // evicts b, the least recent
	if c.get("b") != nil || c.get("a") != a || c.get("d") != d {
		t.Error("the least recently used entry was not the one evicted")
	}
	old := newTargetCache(2, time.Nanosecond)
	old.put("a", a)
	time.Sleep(time.Millisecond)
	if old.get("a") != nil {
		t.Error("an entry outlived its time")
	}
}

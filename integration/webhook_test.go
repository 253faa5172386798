package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/lab"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// hookRequest is one request a webhook receiver got, and its answer.
type hookRequest struct {
	method, path, auth, contentType string
	body                            []byte
	status                          int
}

// hookReceiver is a job-status webhook endpoint that answers the n-th
// request (from 1) with respond(n) and records every request.
type hookReceiver struct {
	srv     *httptest.Server
	respond func(n int) int
	mu      sync.Mutex
	reqs    []hookRequest
}

func newHookReceiver(t *testing.T, respond func(n int) int) *hookReceiver {
	t.Helper()
	h := &hookReceiver{respond: respond}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		status := h.respond(len(h.reqs) + 1)
		h.reqs = append(h.reqs, hookRequest{method: r.Method, path: r.URL.RequestURI(), auth: r.Header.Get("Authorization"),
			contentType: r.Header.Get("Content-Type"), body: body, status: status})
		h.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookReceiver) requests() []hookRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.reqs)
}

func statuses(reqs []hookRequest) []int {
	out := make([]int, len(reqs))
	for i, r := range reqs {
		out[i] = r.status
	}
	return out
}

// host is the receiver's host:port.
func (h *hookReceiver) host() string { return strings.TrimPrefix(h.srv.URL, "http://") }

// webhookBody is a StatusUpdate read strictly: any field but Testflinger's fails.
func webhookBody(t *testing.T, data []byte) orchestrator.StatusUpdate {
	t.Helper()
	var up orchestrator.StatusUpdate
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&up); err != nil {
		t.Fatalf("webhook body %s: %v", data, err)
	}
	return up
}

// webhookIdle waits until the orchestrators' webhook consumer has every
// stored event handled, so that what a receiver got is final.
func webhookIdle(t *testing.T, l *lab.Lab) {
	t.Helper()
	eventually(t, "webhook consumer idle", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cons, err := l.Client.JS.Consumer(ctx, l.Client.Subj.EventStream(), orchestrator.WebhookConsumer)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// TestWebhooks runs jobs whose job_status_webhook is a receiver that fails
// twice before it succeeds, one that answers 404, and one on a host the
// lab does not allow, and checks what each receiver got.
func TestWebhooks(t *testing.T) {
	const token = "hook-token-1"
	flaky := newHookReceiver(t, func(n int) int {
		if n <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	missing := newHookReceiver(t, func(int) int { return http.StatusNotFound })
	outsider := newHookReceiver(t, func(int) int { return http.StatusOK })

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	opts := labOptions(t, hostFile(t, "hook-host", "hook-1:hooks", "hook-2:hooks", "hook-3:hooks"), workers.Config{RunDir: t.TempDir()}, "")
	// Allowed by host and port: the outsider's port is not on the list.
	opts.Orchestrator.WebhookHosts = []string{flaky.host(), missing.host()}
	opts.Orchestrator.WebhookToken = token
	l, err := lab.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(l.Stop)

	job := func(url string, test string) string {
		return fmt.Sprintf("job_queue: hooks\njob_status_webhook: %s\nprovision_data: {url: http://example.com/img}\ntest_data:\n  test_cmds: %q\n", url, test)
	}
	outsiderURL := outsider.srv.URL + "/hook"
	flakyID := submit(t, l.Client, job(flaky.srv.URL+"/hook?job=1", "echo pass"))
	missingID := submit(t, l.Client, job(missing.srv.URL+"/gone", "exit 3"))
	outsiderID := submit(t, l.Client, job(outsiderURL, "echo pass"))

	for _, id := range []string{flakyID, missingID, outsiderID} {
		waitEnd(t, l.Client, id)
	}
	refused := waitEvent(t, l.Client, outsiderID, events.EventWebhookRefused)
	if !strings.Contains(refused.Detail, "not one this lab allows") {
		t.Errorf("webhook_refused detail = %q", refused.Detail)
	}
	webhookIdle(t, l)

	// The lists each job's receiver should get: its stored events that
	// belong in a webhook list, in order.
	wantList := func(id string) []string {
		var out []string
		for _, ev := range jobEvents(t, l.Client, id) {
			if orchestrator.WebhookEvent(ev.Name) {
				out = append(out, ev.Name)
			}
		}
		if len(out) < 4 || out[0] != events.EventJobStart || out[len(out)-1] != events.EventJobEnd {
			t.Fatalf("job %s: webhook events %v, want job_start … job_end", id, out)
		}
		return out
	}

	t.Run("fails twice then succeeds", func(t *testing.T) {
		reqs := flaky.requests()
		if len(reqs) < 3 || reqs[0].status != 500 || reqs[1].status != 500 {
			t.Fatalf("flaky receiver got %d requests; want two failed ones, then more", len(reqs))
		}
		for i, r := range reqs {
			if r.method != http.MethodPut || r.auth != "Bearer "+token || r.contentType != "application/json" || r.path != "/hook?job=1" {
				t.Errorf("request %d: %s %s, Authorization %q, Content-Type %q", i+1, r.method, r.path, r.auth, r.contentType)
			}
		}
		t.Logf("flaky receiver: %d requests, answered %v", len(reqs), statuses(reqs))
		last := reqs[len(reqs)-1]
		if last.status != http.StatusOK {
			t.Fatalf("last request answered %d", last.status)
		}
		up := webhookBody(t, last.body)
		want := wantList(flakyID)
		var wantEvents []*events.Event
		for _, ev := range jobEvents(t, l.Client, flakyID) {
			if orchestrator.WebhookEvent(ev.Name) {
				wantEvents = append(wantEvents, ev)
			}
		}
		var got []string
		for _, ev := range up.Events {
			got = append(got, ev.EventName)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("last list = %v\nwant        %v", got, want)
		}
		if up.JobQueue != "hooks" || !strings.HasPrefix(up.AgentID, "hook-") {
			t.Errorf("agent_id %q, job_queue %q", up.AgentID, up.JobQueue)
		}
		for i, ev := range up.Events {
			ts, err := time.Parse("2006-01-02T15:04:05.000000+00:00", ev.Timestamp)
			if err != nil || !ts.Equal(wantEvents[i].Time.UTC().Truncate(time.Microsecond)) || ev.Detail != wantEvents[i].Detail {
				t.Errorf("event %d = %+v; want %s at %s, detail %q (%v)", i, ev, wantEvents[i].Name,
					wantEvents[i].Time.UTC().Format(time.RFC3339Nano), wantEvents[i].Detail, err)
			}
		}
		// Each list a receiver got extends the one before: deliveries
		// for a job are made in order.
		var prev []orchestrator.StatusEvent
		for i, r := range reqs {
			evs := webhookBody(t, r.body).Events
			if len(evs) < len(prev) || !slices.Equal(evs[:len(prev)], prev) {
				t.Errorf("request %d's list does not extend the one before", i+1)
			}
			prev = evs
		}
	})

	t.Run("404 is not retried", func(t *testing.T) {
		reqs := missing.requests()
		if len(reqs) == 0 {
			t.Fatal("the receiver answering 404 got no request")
		}
		t.Logf("receiver answering 404: %d requests", len(reqs))
		seen := map[string]bool{}
		for i, r := range reqs {
			if seen[string(r.body)] {
				t.Errorf("request %d repeats a list already refused with 404", i+1)
			}
			seen[string(r.body)] = true
		}
		if n := len(wantList(missingID)); len(reqs) > n {
			t.Errorf("%d requests for %d events", len(reqs), n)
		}
		last := webhookBody(t, reqs[len(reqs)-1].body).Events
		if last[len(last)-1].EventName != events.EventJobEnd {
			t.Errorf("last list ends with %s, want job_end", last[len(last)-1].EventName)
		}
	})

	t.Run("host not allowed", func(t *testing.T) {
		if n := len(outsider.requests()); n != 0 {
			t.Errorf("a receiver on a host the lab does not allow got %d requests", n)
		}
		rec := waitEnd(t, l.Client, outsiderID)
		if rec.Outcome != events.OutcomePass {
			t.Errorf("the job with a refused webhook ended %s, want pass", rec.Outcome)
		}
		n := 0
		for _, ev := range jobEvents(t, l.Client, outsiderID) {
			if ev.Name == events.EventWebhookRefused {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d webhook_refused events, want 1", n)
		}
	})
}

// TestWebhooksTwoOrchestrators runs jobs while two orchestrators share the
// webhook delivery, with a receiver slow enough that their requests
// overtake each other, and checks that the last list each job's receiver
// got is its complete one.
func TestWebhooksTwoOrchestrators(t *testing.T) {
	var mu sync.Mutex
	last := map[string][]byte{} // by request path: the body received last
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		n++
		delay := time.Duration(n%7) * 15 * time.Millisecond
		mu.Unlock()
		time.Sleep(delay)
		mu.Lock()
		last[r.URL.Path] = body
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	hostPort := strings.TrimPrefix(srv.URL, "http://")

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	opts := labOptions(t, hostFile(t, "hook2-host", "h2-1:h2", "h2-2:h2", "h2-3:h2"), workers.Config{RunDir: t.TempDir()}, "")
	opts.Orchestrator.WebhookHosts = []string{hostPort}
	l, err := lab.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(l.Stop)
	second, err := orchestrator.New(orchestrator.Config{Client: connect(t, l, "orchestrator-2"), WebhookHosts: []string{hostPort}, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Stop)

	var ids []string
	for i := range 6 {
		ids = append(ids, submit(t, l.Client, fmt.Sprintf(
			"job_queue: h2\njob_status_webhook: %s/hook/%d\nprovision_data: {output_lines: 3}\ntest_data: {test_cmds: 'echo %d'}\n", srv.URL, i, i)))
	}
	for _, id := range ids {
		waitEnd(t, l.Client, id)
	}
	webhookIdle(t, l)
	for i, id := range ids {
		var want []string
		for _, ev := range jobEvents(t, l.Client, id) {
			if orchestrator.WebhookEvent(ev.Name) {
				want = append(want, ev.Name)
			}
		}
		var got []string
		eventually(t, "job "+id+"'s complete list", func() bool {
			mu.Lock()
			body := last[fmt.Sprintf("/hook/%d", i)]
			mu.Unlock()
			got = got[:0]
			if body == nil {
				return false
			}
			for _, ev := range webhookBody(t, body).Events {
				got = append(got, ev.EventName)
			}
			return slices.Equal(got, want)
		})
	}
	mu.Lock()
	t.Logf("%d requests for %d jobs", n, len(ids))
	mu.Unlock()
}

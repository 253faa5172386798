package orchestrator

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/metrics"
)

// Job-status webhooks, as Testflinger calls them: a job whose
// job_status_webhook is set gets, after each of its events, the
// cumulative list of its events so far by HTTP PUT, in the body
// Testflinger's server forwards:
//
//	{"agent_id": "<device>", "job_queue": "<queue>",
//	 "events": [{"event_name": "job_start", "timestamp": "2026-01-02T03:04:05.123456+00:00", "detail": "..."}, ...]}
//
// with "Authorization: Bearer <token>" when the lab has a webhook token,
// so that an existing webhook consumer works unchanged. Only hosts on the
// lab's allow-list (Config.WebhookHosts) are called; a job whose webhook
// points elsewhere gets a webhook_refused event instead, once.
//
// Delivery reads the event stream through one durable consumer
// (WebhookConsumer) shared by every orchestrator, and rebuilds each list
// from the job's stored events, so it is complete after an orchestrator
// restart and whichever orchestrator sends it. One job's deliveries are
// made one at a time, in order; different jobs' in parallel. A delivery
// that fails on a connection error, a timeout, a 5xx, 408 or 429 is
// retried with exponential backoff a bounded number of times; any other
// status is final. Events that arrive while a delivery is retried are
// coalesced into its next try, which carries the newer full list. The
// events a delivery covers are acknowledged when it succeeds or gives up,
// so an orchestrator that stops mid-way leaves them to another. After a
// delivery, the job's newest stored event is checked, so that when two
// orchestrators delivered one job's lists at once the last list the
// receiver gets is the complete one.

// WebhookConsumer is the durable consumer of job events, shared by every
// orchestrator, that drives webhook delivery.
const WebhookConsumer = "webhooks"

// webhookSettings tunes webhook delivery.
type webhookSettings struct {
	// timeout bounds one request (Testflinger's server waits 3 s).
	timeout time.Duration
	// tries bounds the requests made for one delivery.
	tries int
	// backoff is the wait after the first failed try; it doubles after
	// each further one, up to maxBackoff.
	backoff, maxBackoff time.Duration
	// cacheFor and cacheSize bound the memory of jobs' webhooks.
	cacheFor  time.Duration
	cacheSize int
	// parallel bounds the requests in flight at once.
	parallel int
	// ackWait is the consumer's AckWait; a delivery that retries keeps
	// its events' leases alive.
	ackWait time.Duration
}

// webhookDefaults are the settings every orchestrator uses: six tries,
// 1 s, 2 s, 4 s, 8 s and 16 s apart.
var webhookDefaults = webhookSettings{
	timeout:    3 * time.Second,
	tries:      6,
	backoff:    time.Second,
	maxBackoff: 30 * time.Second,
	cacheFor:   time.Minute,
	cacheSize:  65536,
	parallel:   64,
	ackWait:    time.Minute,
}

// webhookNames are the events that make up a webhook's list: every event
// name of Testflinger's TestEvent, and those of Flinger's own that tell of
// a job's course where Testflinger has nothing to say (a requeue to
// another device and why, an allocation, a reservation moved or over).
// Their consumers see names Testflinger does not send, as they do when
// Testflinger adds names. Events about the submission itself
// (job_submitted, job_rejected, webhook_refused), device state and
// provisioning progress are never sent.
var webhookNames = func() map[string]bool {
	m := map[string]bool{
		events.EventJobStart: true, events.EventJobEnd: true, events.EventCancelled: true,
		events.EventGlobalTimeout: true, events.EventOutputTimeout: true, events.EventRecoveryFail: true,
		events.EventJobRequeued: true, events.EventAttemptLost: true, events.EventJobAllocated: true,
		events.EventAllocationTimeout: true, events.EventReservationExtended: true, events.EventReservationExpired: true,
	}
	for _, p := range events.Phases {
		m[events.PhaseStart(p)], m[events.PhaseSuccess(p)], m[events.PhaseFail(p)] = true, true, true
	}
	return m
}()

// WebhookEvent reports whether events named name are part of the list a
// job's webhook receives.
func WebhookEvent(name string) bool { return webhookNames[name] }

// StatusUpdate is the body a job-status webhook receives: Testflinger's.
type StatusUpdate struct {
	// AgentID is the device running the job (Testflinger's agent id).
	AgentID string `json:"agent_id"`
	// JobQueue is the job's queue.
	JobQueue string `json:"job_queue"`
	// Events are the job's events so far, oldest first.
	Events []StatusEvent `json:"events"`
}

// StatusEvent is one event of a StatusUpdate.
type StatusEvent struct {
	// EventName is the event's name.
	EventName string `json:"event_name"`
	// Timestamp is when it happened, in Python's isoformat of a UTC time.
	Timestamp string `json:"timestamp"`
	// Detail is its detail ("" when none).
	Detail string `json:"detail"`
}

// isoTime writes t as Python's datetime.isoformat() of an aware UTC time,
// as Testflinger's agent stamps its events.
func isoTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000") + "+00:00"
}

// hostRule is one entry of the allow-list: a host, and a port or "" for any.
type hostRule struct{ host, port string }

// parseHostRules reads the allow-list: each entry is a host name or
// address, with or without a port.
func parseHostRules(entries []string) ([]hostRule, error) {
	var rules []hostRule
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if strings.Contains(e, "/") {
			return nil, fmt.Errorf("webhook host %q: give a host or host:port, not a URL", e)
		}
		if h, p, err := net.SplitHostPort(e); err == nil {
			if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 {
				return nil, fmt.Errorf("webhook host %q: bad port", e)
			}
			rules = append(rules, hostRule{host: strings.Trim(h, "[]"), port: p})
			continue
		}
		if strings.Count(e, ":") == 1 {
			return nil, fmt.Errorf("webhook host %q: bad port", e)
		}
		rules = append(rules, hostRule{host: strings.Trim(e, "[]")})
	}
	return rules, nil
}

// allowed says whether a webhook URL may be called under rules, and if not, why.
func allowed(rules []hostRule, raw string) (bool, string) {
	u, err := url.Parse(raw)
	if err != nil {
		return false, "job_status_webhook is not a valid URL"
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return false, "job_status_webhook is not an http or https URL"
	}
	if len(rules) == 0 {
		return false, "this lab calls no job_status_webhook (no webhook hosts are allowed)"
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	for _, r := range rules {
		if r.host == host && (r.port == "" || r.port == port) {
			return true, ""
		}
	}
	return false, fmt.Sprintf("job_status_webhook host %s is not one this lab allows", u.Host)
}

// webhooks delivers job-status webhooks for one orchestrator.
type webhooks struct {
	c     *broker.Client
	set   webhookSettings
	rules []hostRule
	token string
	http  *http.Client
	m     *metrics.Orchestrator
	log   *slog.Logger
	goFn  func(func())
	sem   chan struct{}

	mu      sync.Mutex
	jobs    map[string]*hookJob
	targets *targetCache
}

// target is what is known of one job's webhook.
type target struct {
	url     string
	queue   string
	allowed bool
	reason  string // why not allowed
	// sent is the highest stream sequence of the job's events a finished
	// delivery (delivered or given up) took into account, and sentLast
	// that of the last event in its list.
	sent, sentLast uint64
}

// hookJob is one job with deliveries to make.
type hookJob struct {
	id      string
	t       *target
	pending []jetstream.Msg // events to acknowledge once delivered
	dirty   bool            // events arrived since the list was last built
	running bool            // a goroutine delivers for the job
}

// startWebhooks creates the shared webhook consumer and starts reading it.
func (o *Orchestrator) startWebhooks(ctx, runCtx context.Context) error {
	rules, err := parseHostRules(o.cfg.WebhookHosts)
	if err != nil {
		return err
	}
	set := webhookDefaults
	h := &webhooks{
		c: o.c, set: set, rules: rules, token: o.cfg.WebhookToken, m: o.cfg.Metrics,
		log:  o.log.With("part", "webhooks"),
		goFn: o.goLoop,
		sem:  make(chan struct{}, set.parallel),
		http: &http.Client{
			Timeout:       set.timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		jobs:    map[string]*hookJob{},
		targets: newTargetCache(set.cacheSize, set.cacheFor),
	}
	// With no host allowed, every webhook is refused when its job is
	// submitted, and no other event needs reading.
	filter := strings.TrimSuffix(o.c.Subj.Events(), ">") + "job.>"
	if len(rules) == 0 {
		filter = o.c.Subj.EveryJobEvent(events.EventJobSubmitted)
	}
	cons, err := o.c.JS.CreateOrUpdateConsumer(ctx, o.c.Subj.EventStream(), jetstream.ConsumerConfig{
		Durable:       WebhookConsumer,
		Description:   "Orchestrators' job-status webhook delivery",
		FilterSubject: filter,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       set.ackWait,
		MaxAckPending: 20000,
	})
	if err != nil {
		return fmt.Errorf("webhook consumer: %w", err)
	}
	if len(rules) == 0 {
		h.log.Info("no webhook hosts allowed: jobs' job_status_webhook URLs are refused")
	}
	o.goLoop(func() { h.run(runCtx, cons) })
	return nil
}

// run reads job events until ctx is done.
func (h *webhooks) run(ctx context.Context, cons jetstream.Consumer) {
	broker.ConsumeEach(ctx, cons, 512, h.log, "webhooks", func(m jetstream.Msg) { h.handle(ctx, m) })
}

// handle takes one job event: it checks a new job's webhook, and queues a
// delivery for an event that belongs in the list.
func (h *webhooks) handle(ctx context.Context, m jetstream.Msg) {
	var ev events.Event
	meta, err := m.Metadata()
	if err == nil {
		err = events.Decode(m.Data(), &ev)
	}
	if err != nil || ev.JobID == "" {
		h.log.Warn("dropping an unreadable job event", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	if ev.Name != events.EventJobSubmitted && !WebhookEvent(ev.Name) {
		_ = m.Ack()
		return
	}
	if url, ok := ev.Data["job_status_webhook"].(string); ok && ev.Name == events.EventJobSubmitted {
		h.learn(ev.JobID, ev.Queue, url)
	}
	t, err := h.target(ctx, ev.JobID)
	if err != nil {
		if ctx.Err() == nil {
			h.log.Warn("cannot read job record; will retry", "job", ev.JobID, "err", err)
		}
		_ = m.NakWithDelay(time.Second)
		return
	}
	switch {
	case t.url == "":
		_ = m.Ack()
	case !t.allowed:
		if ev.Name == events.EventJobSubmitted {
			if err := h.refuse(ctx, &ev, t); err != nil {
				h.log.Warn("webhook refusal not published; will retry", "job", ev.JobID, "err", err)
				_ = m.NakWithDelay(time.Second)
				return
			}
		}
		_ = m.Ack()
	case ev.Name == events.EventJobSubmitted:
		_ = m.Ack()
	default:
		h.enqueue(ctx, ev.JobID, t, m, meta.Sequence.Stream)
	}
}

// refuse announces, once, that the job's webhook will not be called.
func (h *webhooks) refuse(ctx context.Context, submitted *events.Event, t *target) error {
	ev := events.NewEvent(events.EventWebhookRefused)
	ev.ID = "webhook-refused-" + submitted.JobID
	ev.JobID, ev.Queue, ev.Detail = submitted.JobID, submitted.Queue, t.reason
	if err := h.c.PublishEventSync(ctx, ev); err != nil {
		return err
	}
	h.log.Info("job_status_webhook refused", "job", submitted.JobID, "reason", t.reason)
	h.m.WebhookDelivery(metrics.WebhookRefused)
	return nil
}

// target returns what is known of job id's webhook, reading its record
// when it is not remembered.
func (h *webhooks) target(ctx context.Context, id string) (*target, error) {
	h.mu.Lock()
	t := h.targets.get(id)
	h.mu.Unlock()
	if t != nil {
		return t, nil
	}
	rec, _, err := h.c.GetJob(ctx, id)
	switch {
	case errors.Is(err, broker.ErrNoJob):
		// A rejected submission, or a record that expired: no webhook.
		t = &target{}
	case err != nil:
		return nil, err
	default:
		t = &target{url: rec.Job.JobStatusWebhook, queue: rec.Job.JobQueue}
		if t.url != "" {
			t.allowed, t.reason = allowed(h.rules, t.url)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if known := h.targets.get(id); known != nil {
		return known, nil
	}
	h.targets.put(id, t)
	return t, nil
}

// learn caches job id's webhook as intake announced it in job_submitted.
func (h *webhooks) learn(id, queue, url string) {
	t := &target{url: url, queue: queue}
	if url != "" {
		t.allowed, t.reason = allowed(h.rules, url)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.targets.get(id) == nil {
		h.targets.put(id, t)
	}
}

// enqueue adds an event to its job's next delivery and starts delivering
// for the job unless that is under way.
func (h *webhooks) enqueue(ctx context.Context, id string, t *target, m jetstream.Msg, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.jobs[id]
	if j != nil {
		t = j.t
	}
	if seq <= t.sent {
		// A list already delivered took this event into account.
		_ = m.Ack()
		return
	}
	if j == nil {
		j = &hookJob{id: id, t: t}
		h.jobs[id] = j
	}
	j.pending = append(j.pending, m)
	j.dirty = true
	if !j.running {
		j.running = true
		h.goFn(func() { h.deliverLoop(ctx, j) })
	}
}

// deliverLoop delivers job j's lists until no new event waits.
func (h *webhooks) deliverLoop(ctx context.Context, j *hookJob) {
	for {
		h.mu.Lock()
		if !j.dirty || ctx.Err() != nil {
			for _, m := range j.pending {
				_ = m.Nak() // shutting down: another orchestrator delivers them
			}
			j.pending, j.running = nil, false
			delete(h.jobs, j.id)
			h.mu.Unlock()
			return
		}
		j.dirty = false
		batch := j.pending
		j.pending = nil
		h.mu.Unlock()
		h.deliver(ctx, j, batch)
	}
}

// hookList is a job's webhook body as built from its stored events.
type hookList struct {
	body []byte
	// upTo is the sequence of the newest of the job's events read, and
	// last that of the newest event in the list.
	upTo, last uint64
	n          int
}

// deliver builds the job's list and sends it, retrying, then acknowledges
// the events it covers.
func (h *webhooks) deliver(ctx context.Context, j *hookJob, batch []jetstream.Msg) {
	l, err := h.build(ctx, j)
	if err != nil {
		if ctx.Err() == nil {
			h.log.Warn("cannot read the job's events; will retry", "job", j.id, "err", err)
		}
		nakAll(batch, 2*time.Second)
		return
	}
	h.mu.Lock()
	if l.n == 0 || l.last <= j.t.sentLast {
		// Nothing new for the receiver (the events were delivered in a
		// list built after them).
		j.t.sent = max(j.t.sent, l.upTo)
		h.mu.Unlock()
		ackAll(batch)
		return
	}
	h.mu.Unlock()
	result := h.send(ctx, j, &batch, &l)
	switch result {
	case sendAborted:
		nakAll(batch, 0)
		return
	}
	// A list given up on is not sent again either: newer events bring a
	// newer list.
	h.mu.Lock()
	j.t.sent, j.t.sentLast = max(j.t.sent, l.upTo), max(j.t.sentLast, l.last)
	h.mu.Unlock()
	ackAll(batch)
	if result == sendFailed {
		h.m.WebhookDelivery(metrics.WebhookFailed)
		return
	}
	h.m.WebhookDelivery(metrics.WebhookDelivered)
	// Another orchestrator may have delivered a newer list meanwhile, and
	// the receiver got ours after it: when the job has newer events than
	// ours, build and send once more.
	if last, err := h.lastSeq(ctx, j.id); err == nil && last > l.upTo {
		h.mu.Lock()
		j.dirty = true
		h.mu.Unlock()
	}
}

type sendResult int

const (
	sendDelivered sendResult = iota
	sendFailed
	sendAborted
)

// send PUTs the list, retrying with backoff; between tries it takes in the
// events that arrived meanwhile and rebuilds the list.
func (h *webhooks) send(ctx context.Context, j *hookJob, batch *[]jetstream.Msg, l *hookList) sendResult {
	wait := h.set.backoff
	for try := 1; ; try++ {
		status, err := h.put(ctx, j.t.url, l.body)
		if ctx.Err() != nil {
			return sendAborted
		}
		if err == nil && status >= 200 && status < 300 {
			h.log.Debug("webhook delivered", "job", j.id, "events", l.n, "try", try)
			return sendDelivered
		}
		retry := err != nil || status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests
		why := "HTTP " + strconv.Itoa(status)
		if err != nil {
			why = err.Error()
		}
		if !retry || try >= h.set.tries {
			h.log.Warn("webhook not delivered", "job", j.id, "url", redact(j.t.url), "tries", try, "last", why)
			return sendFailed
		}
		h.log.Debug("webhook failed; retrying", "job", j.id, "try", try, "in", wait, "err", why)
		for _, m := range *batch {
			_ = m.InProgress()
		}
		select {
		case <-ctx.Done():
			return sendAborted
		case <-time.After(wait):
		}
		wait = min(2*wait, h.set.maxBackoff)
		h.mu.Lock()
		newer := j.dirty
		if newer {
			j.dirty = false
			*batch = append(*batch, j.pending...)
			j.pending = nil
		}
		h.mu.Unlock()
		if newer {
			if nl, err := h.build(ctx, j); err == nil && nl.n > 0 {
				*l = nl
			}
		}
	}
}

// put makes one request and returns its status.
func (h *webhooks) put(ctx context.Context, u string, body []byte) (int, error) {
	select {
	case h.sem <- struct{}{}:
		defer func() { <-h.sem }()
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "flinger")
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.http.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// build reads job j's stored events and makes its webhook body.
func (h *webhooks) build(ctx context.Context, j *hookJob) (hookList, error) {
	evs, upTo, err := readJobEvents(ctx, h.c, j.id)
	if err != nil {
		return hookList{}, err
	}
	up := StatusUpdate{JobQueue: j.t.queue, Events: []StatusEvent{}}
	var last uint64
	for _, e := range evs {
		if !WebhookEvent(e.ev.Name) {
			continue
		}
		up.Events = append(up.Events, StatusEvent{EventName: e.ev.Name, Timestamp: isoTime(e.ev.Time), Detail: e.ev.Detail})
		if e.ev.Device != "" {
			up.AgentID = e.ev.Device
		}
		if up.JobQueue == "" {
			up.JobQueue = e.ev.Queue
		}
		last = e.seq
	}
	body, err := json.Marshal(&up)
	if err != nil {
		return hookList{}, fmt.Errorf("webhook body: %w", err)
	}
	return hookList{body: body, upTo: upTo, last: last, n: len(up.Events)}, nil
}

// lastSeq returns the stream sequence of job id's newest event (0: none).
func (h *webhooks) lastSeq(ctx context.Context, id string) (uint64, error) {
	return lastJobEvent(ctx, h.c, id)
}

// seqEvent is a stored event and its stream sequence.
type seqEvent struct {
	seq uint64
	ev  *events.Event
}

// lastJobEvent returns the stream sequence of job id's newest event (0: none).
func lastJobEvent(ctx context.Context, c *broker.Client, id string) (uint64, error) {
	st, err := c.JS.Stream(ctx, c.Subj.EventStream())
	if err != nil {
		return 0, fmt.Errorf("event stream: %w", err)
	}
	m, err := st.GetLastMsgForSubject(ctx, c.Subj.JobEvents(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("job %s's last event: %w", id, err)
	}
	return m.Sequence, nil
}

// readJobEvents returns every stored event of job id, oldest first, and
// the sequence of the newest.
func readJobEvents(ctx context.Context, c *broker.Client, id string) ([]seqEvent, uint64, error) {
	last, err := lastJobEvent(ctx, c, id)
	if err != nil || last == 0 {
		return nil, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cons, err := c.JS.OrderedConsumer(ctx, c.Subj.EventStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{c.Subj.JobEvents(id)},
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read job %s's events: %w", id, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return nil, 0, fmt.Errorf("read job %s's events: %w", id, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	var out []seqEvent
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, 0, fmt.Errorf("read job %s's events: %w", id, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return nil, 0, fmt.Errorf("read job %s's events: %w", id, err)
		}
		var ev events.Event
		if err := events.Decode(m.Data(), &ev); err == nil {
			out = append(out, seqEvent{seq: meta.Sequence.Stream, ev: &ev})
		}
		if meta.Sequence.Stream >= last {
			return out, meta.Sequence.Stream, nil
		}
	}
}

func ackAll(ms []jetstream.Msg) {
	for _, m := range ms {
		_ = m.Ack()
	}
}

func nakAll(ms []jetstream.Msg, delay time.Duration) {
	for _, m := range ms {
		if delay > 0 {
			_ = m.NakWithDelay(delay)
		} else {
			_ = m.Nak()
		}
	}
}

// redact drops a URL's user information and query, which may hold secrets, for logs.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(bad URL)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}

// targetCache remembers the webhooks of the jobs seen last, for a while:
// at most size jobs, each for at most ttl.
type targetCache struct {
	size int
	ttl  time.Duration
	ll   *list.List // of *cacheEntry, most recent first
	m    map[string]*list.Element
}

type cacheEntry struct {
	id string
	t  *target
	at time.Time
}

func newTargetCache(size int, ttl time.Duration) *targetCache {
	return &targetCache{size: max(size, 1), ttl: ttl, ll: list.New(), m: map[string]*list.Element{}}
}

func (c *targetCache) get(id string) *target {
	e, ok := c.m[id]
	if !ok {
		return nil
	}
	ce := e.Value.(*cacheEntry)
	if time.Since(ce.at) > c.ttl {
		c.ll.Remove(e)
		delete(c.m, id)
		return nil
	}
	c.ll.MoveToFront(e)
	return ce.t
}

func (c *targetCache) put(id string, t *target) {
	if e, ok := c.m[id]; ok {
		e.Value = &cacheEntry{id: id, t: t, at: time.Now()}
		c.ll.MoveToFront(e)
		return
	}
	c.m[id] = c.ll.PushFront(&cacheEntry{id: id, t: t, at: time.Now()})
	for c.ll.Len() > c.size {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*cacheEntry).id)
	}
}

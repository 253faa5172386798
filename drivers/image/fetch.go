package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// RetryPolicy bounds how a download recovers from dropped connections and
// transient server errors. Zero fields take the defaults.
type RetryPolicy struct {
	// Retries is how many attempts in a row may fail without receiving a
	// byte before the download gives up (default DefaultRetries; negative:
	// none). An attempt that receives data resets the count, so a large
	// image over a flaky link still completes.
	Retries int
	// Backoff is the wait before the first retry; it doubles with each
	// failure in a row, up to MaxBackoff (default DefaultBackoff).
	Backoff time.Duration
	// MaxBackoff caps the wait between retries (default DefaultMaxBackoff).
	MaxBackoff time.Duration
	// StallTimeout abandons an attempt that receives nothing for this long
	// and resumes (default DefaultStallTimeout).
	StallTimeout time.Duration
}

// The defaults of RetryPolicy.
const (
	DefaultRetries      = 5
	DefaultBackoff      = 500 * time.Millisecond
	DefaultMaxBackoff   = 15 * time.Second
	DefaultStallTimeout = 2 * time.Minute
)

func (p RetryPolicy) withDefaults() RetryPolicy {
	switch {
	case p.Retries == 0:
		p.Retries = DefaultRetries
	case p.Retries < 0:
		p.Retries = 0
	}
	if p.Backoff <= 0 {
		p.Backoff = DefaultBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
	if p.StallTimeout <= 0 {
		p.StallTimeout = DefaultStallTimeout
	}
	return p
}

// delay is the wait after the n-th failure in a row (n >= 1).
func (p RetryPolicy) delay(n int) time.Duration {
	d := p.Backoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, p.MaxBackoff)
}

// validators identify one version of a URL's content.
type validators struct {
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	Length       int64  `json:"length"` // -1: unknown
}

func validatorsOf(resp *http.Response) validators {
	return validators{
		ETag:         resp.Header.Get("ETag"),
		LastModified: resp.Header.Get("Last-Modified"),
		Length:       resp.ContentLength,
	}
}

func strongETag(etag string) bool { return etag != "" && !strings.HasPrefix(etag, "W/") }

// ifRange returns the If-Range value that makes a Range request safe, or
// "" when there is none (If-Range takes only a strong ETag or a date).
func (v validators) ifRange() string {
	if strongETag(v.ETag) {
		return v.ETag
	}
	return v.LastModified
}

// sameContent reports whether a and b are known to be the same bytes.
func sameContent(a, b validators) bool {
	if a.Length >= 0 && b.Length >= 0 && a.Length != b.Length {
		return false
	}
	if a.ETag != "" || b.ETag != "" {
		return a.ETag == b.ETag && strongETag(a.ETag)
	}
	return a.LastModified != "" && a.LastModified == b.LastModified
}

// sink receives a download. restart discards everything written so far
// because the server sends the content again from its first byte; same
// says whether it is known to be the same content.
type sink interface {
	io.Writer
	restart(same bool) error
}

// multiSink writes to each of its sinks in turn.
type multiSink []sink

func (m multiSink) Write(p []byte) (int, error) {
	for _, s := range m {
		if _, err := s.Write(p); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (m multiSink) restart(same bool) error {
	for _, s := range m {
		if err := s.restart(same); err != nil {
			return err
		}
	}
	return nil
}

// hashSink hashes what it is given and keeps its first bytes.
type hashSink struct {
	h    hash.Hash
	head []byte
}

func newHashSink() *hashSink { return &hashSink{h: sha256.New()} }

func (s *hashSink) Write(p []byte) (int, error) {
	if len(s.head) < MagicLen {
		s.head = append(s.head, p[:min(len(p), MagicLen-len(s.head))]...)
	}
	return s.h.Write(p)
}

func (s *hashSink) restart(bool) error {
	s.h.Reset()
	s.head = s.head[:0]
	return nil
}

func (s *hashSink) sum() string { return hex.EncodeToString(s.h.Sum(nil)) }

// fileSink writes a download to a file.
type fileSink struct {
	f    *os.File
	name string
}

func (s *fileSink) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	if err != nil {
		return n, newError(Local, s.name, err, "writing the cache file: %v", err)
	}
	return n, nil
}

func (s *fileSink) restart(bool) error {
	if err := s.f.Truncate(0); err != nil {
		return newError(Local, s.name, err, "truncating the cache file: %v", err)
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return newError(Local, s.name, err, "rewinding the cache file: %v", err)
	}
	return nil
}

// fetcher downloads one URL, resuming after dropped connections.
type fetcher struct {
	client *http.Client
	log    *slog.Logger
	policy RetryPolicy
	url    string
	name   string
	// in counts every byte received (it only grows); total is the size the
	// server announced, or -1.
	in, total *atomic.Int64
	// onLength, if set, is told the announced size of each full response.
	onLength func(int64)
}

// fetched is the outcome of a fetch.
type fetched struct {
	v           validators
	n           int64
	notModified bool
}

// errStalled ends an attempt that received nothing for too long.
var errStalled = errors.New("no data received")

// fetch downloads f.url into s. With cond, the first request is
// conditional, and a URL that has not changed ends the fetch with
// notModified and nothing written.
func (f *fetcher) fetch(ctx context.Context, cond *validators, s sink) (fetched, error) {
	d := &download{fetcher: f, p: f.policy.withDefaults(), cond: cond, s: s}
	f.total.Store(-1)
	// failures counts failed attempts since the download last got further
	// than ever before: receiving the same bytes again is no progress.
	failures := 0
	var best int64
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return fetched{}, canceled(ctx, f.name)
		}
		out, failure, retryWait, err := d.attempt(ctx)
		switch {
		case err != nil:
			return fetched{}, err
		case out == outDone:
			return fetched{v: d.cur, n: d.have}, nil
		case out == outNotModified:
			return fetched{v: d.cur, notModified: true}, nil
		}
		if d.have > best {
			best, failures = d.have, 0
		}
		failures++
		if failures > d.p.Retries {
			return fetched{}, failure
		}
		wait := d.p.delay(failures)
		if retryWait > wait {
			wait = min(retryWait, d.p.MaxBackoff)
		}
		f.log.Warn("image download interrupted; retrying", "url", f.name, "attempt", attempt,
			"have", d.have, "total", d.cur.Length, "wait", wait, "error", failure.Detail)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fetched{}, canceled(ctx, f.name)
		case <-t.C:
		}
	}
}

// outcome is how one attempt of a download ended.
type outcome int

const (
	outRetry outcome = iota
	outDone
	outNotModified
)

// download is the state of one fetch across its attempts.
type download struct {
	*fetcher
	p       RetryPolicy
	cond    *validators
	s       sink
	cur     validators // of the content being received
	started bool       // a full response was received: cur is valid
	have    int64      // bytes of cur written to s
	noRange bool       // a Range response was unusable: ask for everything
}

// attempt sends one request and receives what it can. It returns how it
// ended and either the failure to retry after (and how long the server
// asked to wait) or an error that ends the fetch.
func (d *download) attempt(ctx context.Context) (outcome, *Error, time.Duration, error) {
	ranged := d.started && d.have > 0 && !d.noRange && d.cur.ifRange() != ""
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return outRetry, nil, 0, newError(Invalid, d.name, err, "cannot make a request: %v", err)
	}
	// Ask for the bytes as stored: no transparent gzip, which would change
	// the content, its length and its ranges.
	req.Header.Set("Accept-Encoding", "identity")
	req.Header.Set("User-Agent", "flinger-image/1")
	if d.cond != nil && !d.started {
		if d.cond.ETag != "" {
			req.Header.Set("If-None-Match", d.cond.ETag)
		}
		if d.cond.LastModified != "" {
			req.Header.Set("If-Modified-Since", d.cond.LastModified)
		}
	}
	if ranged {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", d.have))
		req.Header.Set("If-Range", d.cur.ifRange())
	}
	resp, err := d.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return outRetry, nil, 0, canceled(ctx, d.name)
		}
		return outRetry, newError(Network, d.name, err, "cannot reach the server: %v", netErr(err)), 0, nil
	}
	defer resp.Body.Close()
	status := "HTTP " + resp.Status
	switch code := resp.StatusCode; {
	case code == http.StatusNotModified && d.cond != nil && !d.started:
		d.cur = mergeValidators(*d.cond, validatorsOf(resp))
		return outNotModified, nil, 0, nil
	case code == http.StatusOK:
		v := validatorsOf(resp)
		if d.cond != nil && !d.started && sameContent(*d.cond, v) {
			// The server ignored the condition but says it is the same file.
			d.cur = v
			return outNotModified, nil, 0, nil
		}
		if d.started {
			if ranged {
				d.log.Info("image server ignored the Range request; downloading again from the start",
					"url", d.name, "have", d.have)
			}
			if err := d.s.restart(sameContent(d.cur, v)); err != nil {
				return outRetry, nil, 0, err
			}
			d.have = 0
		}
		d.started, d.cur, d.noRange = true, v, false
		d.total.Store(v.Length)
		if d.onLength != nil {
			d.onLength(v.Length)
		}
	case code == http.StatusPartialContent && ranged:
		cr := resp.Header.Get("Content-Range")
		start, total, ok := parseContentRange(cr)
		if !ok || start != d.have || (d.cur.Length >= 0 && total >= 0 && total != d.cur.Length) {
			d.noRange = true
			return outRetry, newError(HTTP, d.name, nil, "the server sent the wrong range (%q for bytes %d-)", cr, d.have), 0, nil
		}
	case code == http.StatusRequestedRangeNotSatisfiable && ranged:
		d.noRange = true
		return outRetry, newError(HTTP, d.name, nil, "%s for bytes %d-", status, d.have), 0, nil
	case code == http.StatusNotFound || code == http.StatusGone:
		return outRetry, nil, 0, newError(NotFound, d.name, nil, "%s", status)
	case retryable(code):
		return outRetry, newError(HTTP, d.name, nil, "%s", status), retryAfter(resp), nil
	default:
		return outRetry, nil, 0, newError(HTTP, d.name, nil, "%s", status)
	}

	n, err := d.copy(ctx, d.p, resp.Body, d.s)
	d.have += n
	if err == nil && d.cur.Length >= 0 && d.have != d.cur.Length {
		err = io.ErrUnexpectedEOF
	}
	var ie *Error
	switch {
	case err == nil:
		return outDone, nil, 0, nil
	case errors.As(err, &ie):
		return outRetry, nil, 0, err // the sink failed, not the network
	case ctx.Err() != nil:
		return outRetry, nil, 0, canceled(ctx, d.name)
	case d.cur.Length >= 0:
		return outRetry, newError(Truncated, d.name, err, "truncated: got %d of %d bytes", d.have, d.cur.Length), 0, nil
	}
	return outRetry, newError(Network, d.name, err, "connection lost after %d bytes: %v", d.have, netErr(err)), 0, nil
}

// copy copies body into s, abandoning the attempt when nothing arrives for
// the stall timeout.
func (f *fetcher) copy(ctx context.Context, p RetryPolicy, body io.Reader, s sink) (int64, error) {
	stalled := atomic.Bool{}
	rc, _ := body.(io.ReadCloser)
	timer := time.AfterFunc(p.StallTimeout, func() {
		stalled.Store(true)
		if rc != nil {
			_ = rc.Close()
		}
	})
	defer timer.Stop()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, err := body.Read(buf)
		if m > 0 {
			timer.Reset(p.StallTimeout)
			if _, werr := s.Write(buf[:m]); werr != nil {
				return n, werr
			}
			n += int64(m)
			f.in.Add(int64(m))
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			if stalled.Load() {
				return n, fmt.Errorf("%w for %s", errStalled, p.StallTimeout)
			}
			return n, err
		}
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
	}
}

func mergeValidators(old, v validators) validators {
	if v.ETag == "" {
		v.ETag = old.ETag
	}
	if v.LastModified == "" {
		v.LastModified = old.LastModified
	}
	if v.Length <= 0 {
		v.Length = old.Length
	}
	return v
}

func retryable(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable,
		http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryAfter returns the wait a Retry-After header in seconds asks for.
func retryAfter(resp *http.Response) time.Duration {
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 0
}

// parseContentRange parses "bytes start-end/total" (total may be "*": -1).
func parseContentRange(s string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	first, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(strings.TrimSpace(first), 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	if tot == "*" {
		return start, -1, true
	}
	total, err = strconv.ParseInt(strings.TrimSpace(tot), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return start, total, true
}

// netErr strips the "Get <url>:" that net/http puts in front of an error,
// since messages name the URL already.
func netErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Package maasapi is a client of the MAAS 2.0 REST API
// (<server>/MAAS/api/2.0/), covering what a test lab needs to drive a
// machine through its life: the version, reading a machine, allocating,
// deploying and releasing it, marking it broken and fixed, powering it
// off, its storage (block devices, partitions, filesystems, mounts, the
// boot disk and the flat layout) and its installation results.
//
// Requests are signed with OAuth 1.0 PLAINTEXT from a MAAS API key (Key),
// as the maas command line and python-libmaas sign them; the key is never
// printed, logged or put in an error, and MAAS's own messages (which may
// quote a token) are masked before they are shown. POST and PUT
// parameters are sent as multipart/form-data, as the maas command line
// sends them.
//
// Every request is bounded by Options.RequestTimeout and retried with
// bounded exponential backoff (Options.Retry) when MAAS answers 5xx or the
// connection fails; a 503 with Retry-After waits as long as MAAS asks,
// within the backoff's maximum. Other answers are returned at once as an
// *Error carrying MAAS's status and message.
package maasapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// Defaults of Options.
const (
	DefaultRequestTimeout = 60 * time.Second
	DefaultAttempts       = 5
	DefaultRetryInitial   = 5 * time.Second
	DefaultRetryMax       = 60 * time.Second
)

// APIPath is where the 2.0 API lives under a MAAS URL.
const APIPath = "api/2.0/"

// maxBody bounds what is read of an answer.
const maxBody = 32 << 20

// maxMessage bounds the MAAS message kept in an *Error.
const maxMessage = 2000

// Options configure a Client.
type Options struct {
	// URL is the MAAS server's URL, such as http://maas:5240/MAAS (the
	// API path is added when it is not there). Required.
	URL string
	// Key signs the requests. Required.
	Key Key
	// HTTPClient makes the requests (nil: a client of its own, with no
	// overall timeout: RequestTimeout bounds each attempt).
	HTTPClient *http.Client
	// RequestTimeout bounds each attempt of a request (0:
	// DefaultRequestTimeout).
	RequestTimeout time.Duration
	// Retry spaces the attempts of a request that failed with a 5xx
	// answer or a connection error. Zero fields take DefaultAttempts,
	// DefaultRetryInitial and DefaultRetryMax (and sshx's multiplier and
	// jitter); AttemptTimeout is RequestTimeout's.
	Retry sshx.Backoff
	// OnRetry, when not nil, is told of each attempt that failed and will
	// be retried (what names the request, as "POST machines/abc/?op=deploy"),
	// for example to tell a job's output.
	OnRetry func(what string, attempt int, err error, delay time.Duration)
	// Log receives the client's diagnostics (nil: discarded).
	Log *slog.Logger
}

// Client calls one MAAS server. It is safe for concurrent use.
type Client struct {
	base    *url.URL // ends with /api/2.0/
	server  string   // the URL as given, redacted, for messages
	key     Key
	http    *http.Client
	timeout time.Duration
	retry   sshx.Backoff
	onRetry func(string, int, error, time.Duration)
	log     *slog.Logger
	secrets []string // longest first
}

// New returns a Client of the server opts.URL names.
func New(opts Options) (*Client, error) {
	if opts.Key.IsZero() {
		return nil, errors.New("maasapi: no MAAS API key")
	}
	base, server, err := parseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:    base,
		server:  server,
		key:     opts.Key,
		http:    opts.HTTPClient,
		timeout: opts.RequestTimeout,
		retry:   opts.Retry,
		onRetry: opts.OnRetry,
		log:     opts.Log,
	}
	if c.http == nil {
		c.http = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   30 * time.Second,
			ResponseHeaderTimeout: 0, // the attempt's context bounds it
			MaxIdleConns:          4,
			IdleConnTimeout:       90 * time.Second,
		}}
	}
	if c.timeout <= 0 {
		c.timeout = DefaultRequestTimeout
	}
	if c.retry.Attempts <= 0 {
		c.retry.Attempts = DefaultAttempts
	}
	if c.retry.Initial <= 0 {
		c.retry.Initial = DefaultRetryInitial
	}
	if c.retry.Max <= 0 {
		c.retry.Max = DefaultRetryMax
	}
	c.retry.AttemptTimeout = 0 // do bounds each attempt itself
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.secrets = opts.Key.Secrets()
	sort.Slice(c.secrets, func(i, j int) bool { return len(c.secrets[i]) > len(c.secrets[j]) })
	return c, nil
}

// parseURL checks a MAAS URL and returns the API's base URL and the URL
// to name the server by.
func parseURL(s string) (*url.URL, string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, "", errors.New("maasapi: no MAAS URL")
	}
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return nil, "", fmt.Errorf("maasapi: the MAAS URL is not a URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, "", fmt.Errorf("maasapi: the MAAS URL %s must be an http or https URL, such as http://maas:5240/MAAS", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, "", fmt.Errorf("maasapi: the MAAS URL %s must not have a query or a fragment", u.Redacted())
	}
	server := strings.TrimSuffix(u.Redacted(), "/")
	p := strings.TrimSuffix(u.Path, "/")
	p = strings.TrimSuffix(p, "/api/2.0")
	u.Path = p + "/" + APIPath
	u.RawPath = ""
	return u, server, nil
}

// CheckURL checks a MAAS URL as New does.
func CheckURL(s string) error {
	_, _, err := parseURL(s)
	return err
}

// Server returns the server's URL, as given (credentials in it removed),
// to name it in messages.
func (c *Client) Server() string { return c.server }

// Mask returns s with the key and its parts replaced by "****".
func (c *Client) Mask(s string) string {
	for _, sec := range c.secrets {
		s = strings.ReplaceAll(s, sec, "****")
	}
	return s
}

// Error is an answer of MAAS other than success: its status and its own
// message (the key masked).
type Error struct {
	// Server is the MAAS URL.
	Server string
	// Request names the request: method, path under the API and op, such
	// as "POST machines/abc123/?op=deploy".
	Request string
	// Status is the HTTP status.
	Status int
	// Message is MAAS's message: the answer's text, or its validation
	// errors as "field: message; ...".
	Message string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "(no message)"
	}
	return fmt.Sprintf("MAAS at %s answered %s with %d %s: %s", e.Server, e.Request, e.Status, http.StatusText(e.Status), msg)
}

// Unauthorized reports whether MAAS refused the key (401) or the
// key's user may not do what was asked (403).
func (e *Error) Unauthorized() bool {
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// StatusOf returns the HTTP status of err when it is or wraps an *Error,
// else 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// request is one API call.
type request struct {
	method string
	path   string // under the API base, such as "machines/abc/"
	op     string
	params url.Values
}

func (r request) String() string {
	s := r.method + " " + r.path
	if r.op != "" {
		s += "?op=" + r.op
	}
	return s
}

// retryable marks an attempt's error worth another attempt, with the
// delay MAAS asked for (0: the backoff's).
type retryable struct {
	err   error
	after time.Duration
}

func (e *retryable) Error() string { return e.err.Error() }
func (e *retryable) Unwrap() error { return e.err }

// do runs r, retrying as the package documentation says, and decodes a
// successful answer into out: a *string or *[]byte takes the body as it
// is, anything else (not nil) is decoded from JSON.
func (c *Client) do(ctx context.Context, r request, out any) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("MAAS %s: %w", r, err)
	}
	what := r.String()
	b := c.retry
	b.OnRetry = func(n int, err error, delay time.Duration) {
		c.log.Warn("maas: request failed; retrying", "request", what, "attempt", n, "err", err, "in", delay)
		if c.onRetry != nil {
			c.onRetry(what, n, err, delay)
		}
	}
	n := 0
	err := sshx.Retry(ctx, b, func(ctx context.Context) error {
		n++
		err := c.attempt(ctx, r, out)
		var rt *retryable
		if errors.As(err, &rt) {
			if rt.after > 0 && n < b.Attempts {
				// MAAS asked for a pause (Retry-After): take it, within
				// the backoff's bounds, before the backoff's own delay.
				t := time.NewTimer(min(rt.after, b.Max))
				select {
				case <-ctx.Done():
					t.Stop()
				case <-t.C:
				}
			}
			return rt.err
		}
		if err != nil {
			return sshx.Permanent(err)
		}
		return nil
	})
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	return err
}

// attempt makes one attempt of r.
func (c *Client) attempt(parent context.Context, r request, out any) error {
	ctx, cancel := context.WithTimeout(parent, c.timeout)
	defer cancel()
	u := *c.base
	u.Path += r.path
	q := url.Values{}
	if r.op != "" {
		q.Set("op", r.op)
	}
	var body io.Reader
	contentType := ""
	if r.method == http.MethodGet || r.method == http.MethodDelete {
		for k, vs := range r.params {
			for _, v := range vs {
				q.Add(k, v)
			}
		}
	} else {
		var buf bytes.Buffer
		w := multipart.NewWriter(&buf)
		keys := make([]string, 0, len(r.params))
		for k := range r.params {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, v := range r.params[k] {
				if err := w.WriteField(k, v); err != nil {
					return fmt.Errorf("MAAS %s: encoding %s: %w", r, k, err)
				}
			}
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("MAAS %s: %w", r, err)
		}
		body, contentType = &buf, w.FormDataContentType()
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return fmt.Errorf("MAAS %s: %w", r, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", c.key.Authorization(NewNonce(), time.Now()))
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil && parent.Err() == nil {
			// This attempt's own timeout: worth another attempt.
			return &retryable{err: fmt.Errorf("MAAS at %s did not answer %s within %s", c.server, r, c.timeout)}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &retryable{err: fmt.Errorf("MAAS at %s closed the connection without answering %s: %w", c.server, r, stripURL(err))}
		}
		return &retryable{err: fmt.Errorf("MAAS at %s: %s: %w", c.server, r, stripURL(err))}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	c.log.Debug("maas: request", "request", r.String(), "status", resp.StatusCode, "took", time.Since(start).Round(time.Millisecond))
	if err != nil {
		return &retryable{err: fmt.Errorf("MAAS at %s: %s: reading the answer: %w", c.server, r, err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &Error{Server: c.server, Request: r.String(), Status: resp.StatusCode, Message: c.message(resp, data)}
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented {
			return &retryable{err: e, after: retryAfter(resp)}
		}
		return e
	}
	switch o := out.(type) {
	case nil:
	case *string:
		*o = string(data)
	case *[]byte:
		*o = data
	default:
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("MAAS at %s: %s: the answer is not the JSON expected: %w", c.server, r, err)
		}
	}
	return nil
}

// stripURL returns err without the URL a *url.Error adds (the request
// is already named).
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// retryAfter reads a Retry-After header given in seconds.
func retryAfter(resp *http.Response) time.Duration {
	s := resp.Header.Get("Retry-After")
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// message returns MAAS's message in an error answer: validation errors
// ({"field": ["message", ...]}) as "field: message; ...", anything else
// as its text on one line, bounded and with the key masked.
func (c *Client) message(resp *http.Response, data []byte) string {
	var msg string
	var fields map[string]any
	if json.Unmarshal(data, &fields) == nil && len(fields) > 0 {
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			var texts []string
			switch v := fields[k].(type) {
			case []any:
				for _, e := range v {
					texts = append(texts, fmt.Sprint(e))
				}
			default:
				texts = append(texts, fmt.Sprint(v))
			}
			parts = append(parts, k+": "+strings.Join(texts, " "))
		}
		msg = strings.Join(parts, "; ")
	} else if strings.Contains(resp.Header.Get("Content-Type"), "html") {
		msg = "(an HTML page: " + htmlTitle(string(data)) + ")"
	} else {
		msg = string(data)
	}
	msg = strings.Join(strings.FieldsFunc(msg, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }), " ")
	msg = c.Mask(msg)
	if len(msg) > maxMessage {
		msg = msg[:maxMessage] + "..."
	}
	return msg
}

// htmlTitle returns the title of an HTML page, or "no title".
func htmlTitle(page string) string {
	lower := strings.ToLower(page)
	i := strings.Index(lower, "<title>")
	j := strings.Index(lower, "</title>")
	if i < 0 || j < i {
		return "no title"
	}
	return strings.TrimSpace(page[i+len("<title>") : j])
}

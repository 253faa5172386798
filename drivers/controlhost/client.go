package controlhost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// The REST API of a control host (Testflinger's DefaultControlHost).
const (
	// DefaultAPIPort is the port the control host's REST API listens on.
	DefaultAPIPort = 8000
	// PathHealth answers 200 when the API is up.
	PathHealth = "/health"
	// PathPowerOff shuts the control host down.
	PathPowerOff = "/api/v1/system/poweroff"
	// PathSetupProvisioning readies the control host's hardware for
	// provisioning (an optional JSON body, such as {"usb": "DUT"}).
	PathSetupProvisioning = "/api/v1/system/setup/provisioning"
	// PathSetupTest readies the control host's hardware for the test phase.
	PathSetupTest = "/api/v1/system/setup/test"
)

// Defaults of the Client.
const (
	// DefaultRequestTimeout bounds one request (Testflinger: 10 s for the
	// POSTs, 3 s for the health check).
	DefaultRequestTimeout = 10 * time.Second
	// DefaultAttempts is how many times a request that did not reach the
	// API (connection refused, reset) or that the API answered 502, 503 or
	// 504 is tried.
	DefaultAttempts = 3
	// maxErrorBody bounds how much of an error response is kept.
	maxErrorBody = 4 << 10
)

// APIError reports that the control host answered a request with a status
// other than 2xx.
type APIError struct {
	// Method and URL are the request's.
	Method, URL string
	// Status is the HTTP status code.
	Status int
	// Body is the start of the response body.
	Body string
}

// Error gives the request, the status and what the API said.
func (e *APIError) Error() string {
	msg := fmt.Sprintf("%s %s: %d %s", e.Method, e.URL, e.Status, http.StatusText(e.Status))
	if b := strings.TrimSpace(e.Body); b != "" {
		msg += ": " + strconv.Quote(b)
	}
	return msg
}

// Client calls the REST API of one control host. Its zero value is not
// usable: use NewClient.
type Client struct {
	// BaseURL is http://host:port, without a trailing slash.
	BaseURL string
	// HTTP is the client requests go through.
	HTTP *http.Client
	// RequestTimeout bounds each attempt of a request (0: DefaultRequestTimeout).
	RequestTimeout time.Duration
	// Attempts bounds the attempts of a request that may be retried (0:
	// DefaultAttempts). The shutdown request is never retried once it may
	// have reached the API.
	Attempts int
	// Backoff spaces the attempts (zero fields: 500 ms doubling to 5 s).
	Backoff sshx.Backoff
	// Log receives diagnostics (nil: discarded).
	Log *slog.Logger
}

// NewClient returns a client of the REST API of host (a name or an IP
// address, without a port) on port (0: DefaultAPIPort).
func NewClient(host string, port int, log *slog.Logger) *Client {
	if port == 0 {
		port = DefaultAPIPort
	}
	return &Client{
		BaseURL: "http://" + net.JoinHostPort(host, strconv.Itoa(port)),
		HTTP:    &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		Log:     log,
	}
}

func (c *Client) logger() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// Health checks that the API answers GET /health with 200, in one attempt
// bounded by timeout (0: the client's RequestTimeout), as the checks of a
// wait loop are.
func (c *Client) Health(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = c.requestTimeout()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := c.once(ctx, http.MethodGet, PathHealth, nil)
	return err
}

// PowerOff asks the control host to shut down. It is retried only while
// the request cannot have reached the API (the connection was refused).
func (c *Client) PowerOff(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, PathPowerOff, nil, notSent)
}

// SetupProvisioning asks the control host to ready its hardware for
// provisioning, sending body as JSON when it is not nil.
func (c *Client) SetupProvisioning(ctx context.Context, body any) error {
	return c.do(ctx, http.MethodPost, PathSetupProvisioning, body, transient)
}

// SetupTest asks the control host to ready its hardware for the test phase.
func (c *Client) SetupTest(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, PathSetupTest, nil, transient)
}

func (c *Client) requestTimeout() time.Duration {
	if c.RequestTimeout > 0 {
		return c.RequestTimeout
	}
	return DefaultRequestTimeout
}

// do sends a request, retrying it while retryable says the error allows.
func (c *Client) do(ctx context.Context, method, path string, body any, retryable func(error) bool) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("%s %s: encoding the body: %w", method, c.BaseURL+path, err)
		}
	}
	b := c.Backoff
	if b.Initial == 0 {
		b.Initial = 500 * time.Millisecond
	}
	if b.Max == 0 {
		b.Max = 5 * time.Second
	}
	b.Attempts = c.Attempts
	if b.Attempts <= 0 {
		b.Attempts = DefaultAttempts
	}
	b.AttemptTimeout = c.requestTimeout()
	b.OnRetry = func(n int, err error, delay time.Duration) {
		c.logger().Debug("controlhost: retrying", "method", method, "path", path, "attempt", n, "err", err, "delay", delay)
	}
	return sshx.Retry(ctx, b, func(ctx context.Context) error {
		_, err := c.once(ctx, method, path, payload)
		if err != nil && !retryable(err) {
			return sshx.Permanent(err)
		}
		return err
	})
}

// once sends one request and returns the start of the response body.
func (c *Client) once(ctx context.Context, method, path string, payload []byte) ([]byte, error) {
	url := c.BaseURL + path
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		var uerr *neturl.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return data, &APIError{Method: method, URL: url, Status: resp.StatusCode, Body: string(data)}
	}
	return data, nil
}

// notSent reports whether err shows that the request never reached the
// API, so that sending it again cannot repeat its effect.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// transient reports whether a request that failed with err may succeed if
// sent again: it did not reach the API, the connection broke, or the API
// said it is temporarily unavailable.
func transient(err error) bool {
	var api *APIError
	if errors.As(err, &api) {
		switch api.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var op *net.OpError
	return errors.As(err, &op) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, context.DeadlineExceeded)
}

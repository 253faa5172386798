package netboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/flingerlab/flinger/drivers/display"
)

// maxAnswer bounds how much of an imager's answer is read.
const maxAnswer = 1 << 20

// imagerClient speaks the imager's HTTP API on one device.
type imagerClient struct {
	base      string // http://host:port
	transport *http.Transport
	client    *http.Client
}

// newImager returns a client of the imager at host:port. It never goes
// through an HTTP proxy: the imager is on the lab's own network, and a
// proxy set for downloads must not stand between the host and its devices.
func newImager(host string, port int) *imagerClient {
	t := &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	return &imagerClient{
		base:      "http://" + net.JoinHostPort(host, strconv.Itoa(port)),
		transport: t,
		client:    &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
}

// close releases the client's connections.
func (c *imagerClient) close() { c.transport.CloseIdleConnections() }

// answer is an imager's answer.
type answer struct {
	status int
	body   string
}

// get sends GET base+pathQuery, bounded by timeout, and reads the answer.
func (c *imagerClient) get(ctx context.Context, pathQuery string, timeout time.Duration) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+pathQuery, nil)
	if err != nil {
		return answer{}, fmt.Errorf("GET %s: %w", c.base+pathQuery, err)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return answer{status: resp.StatusCode, body: string(b)}, fmt.Errorf("GET %s: reading the answer: %w", c.base+pathQuery, err)
	}
	return answer{status: resp.StatusCode, body: string(b)}, nil
}

// errNotImager reports that something answered on the imager's port that
// is not the imager.
var errNotImager = errors.New("the page does not name the " + Banner)

// check asks GET /check and returns nil when the master image is up: the
// answer is 2xx and contains the Banner.
func (c *imagerClient) check(ctx context.Context, timeout time.Duration) error {
	a, err := c.get(ctx, "/check", timeout)
	if err != nil {
		return err
	}
	if a.status/100 != 2 {
		return fmt.Errorf("GET %s/check answered HTTP %d", c.base, a.status)
	}
	if !strings.Contains(a.body, Banner) {
		return fmt.Errorf("GET %s/check: %w", c.base, errNotImager)
	}
	return nil
}

// writeImage asks the imager to fetch the image from server and write it
// to dev. Testflinger's URL is http://ip:8989/writeimage?server=IP:PORT\&dev=DEV
// (the backslash is a slip of a raw string); Flinger sends it without the
// backslash, with only the characters that need it percent-encoded, so
// that an imager that does not decode its query reads the same values.
func (c *imagerClient) writeImage(ctx context.Context, server, dev string, timeout time.Duration) (answer, error) {
	return c.get(ctx, writeImagePath(server, dev), timeout)
}

// writeImagePath returns /writeimage?server=SERVER&dev=DEV.
func writeImagePath(server, dev string) string {
	return "/writeimage?server=" + queryEscape(server) + "&dev=" + queryEscape(dev)
}

// queryEscape percent-encodes every byte of s but the unreserved
// characters of RFC 3986, ':' and '/', which a query may hold as they are.
func queryEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9',
			ch == '-', ch == '.', ch == '_', ch == '~', ch == ':', ch == '/':
			b.WriteByte(ch)
		default:
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

// reboot asks GET /reboot.
func (c *imagerClient) reboot(ctx context.Context, timeout time.Duration) error {
	a, err := c.get(ctx, "/reboot", timeout)
	if err != nil {
		return err
	}
	if a.status/100 != 2 {
		return fmt.Errorf("GET %s/reboot answered HTTP %d: %s", c.base, a.status, summary(a.body))
	}
	return nil
}

var (
	// ddCopied finds dd's summary line: "N bytes (...) copied, ...".
	ddCopied = regexp.MustCompile(`(?m)^(\d+) bytes\b[^\n]*\bcopied\b`)
	// failureWords are what the tools of the imager's pipeline (nc, unxz,
	// dd) print when they fail.
	failureWords = regexp.MustCompile(`(?i)\b(error|failed|failure|unexpected end of input|not recognized|corrupt|no space left|cannot|can't|refused|timed out)\b`)
)

// copiedBytes returns the byte count of dd's summary in an answer.
func copiedBytes(body string) (int64, bool) {
	m := ddCopied.FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	return n, err == nil
}

// reportsFailure returns the first line of a 2xx answer that reports a
// failure, if any.
func reportsFailure(body string) (string, bool) {
	for _, line := range strings.Split(body, "\n") {
		if failureWords.MatchString(line) {
			return strings.TrimSpace(line), true
		}
	}
	return "", false
}

// summary returns an answer's text for a message: its lines joined, HTML
// tags left as they are, at most 500 bytes from its end.
func summary(body string) string {
	s := strings.Join(strings.Fields(strings.ReplaceAll(body, "\r", "")), " ")
	if len(s) > 500 {
		s = "..." + s[len(s)-500:]
	}
	if s == "" {
		return "(empty answer)"
	}
	return display.Printable(s)
}

// Package sshkeys resolves the entries of a job's reserve_data.ssh_keys
// (lp:<user> for Launchpad, gh:<user> for GitHub) to public keys, as
// Testflinger's reserve phase does with ssh-import-id, but in-process and
// from key-server URLs a lab can point at a mirror of its own when it has
// no internet access.
package sshkeys

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// Default key-server URL templates: "%s" is replaced by the user name.
const (
	DefaultLaunchpadURL = "https://launchpad.net/~%s/+sshkeys"
	DefaultGitHubURL    = "https://github.com/%s.keys"
)

// Defaults of the retry policy, as Testflinger's ssh-import-id loop: 10
// attempts of at most 30 s each, backoff doubling from 1 s up to 100 s.
const (
	DefaultAttempts       = 10
	DefaultAttemptTimeout = 30 * time.Second
	DefaultBackoffInitial = time.Second
	DefaultBackoffMax     = 100 * time.Second
)

// maxBody bounds the response read from a key server.
const maxBody = 1 << 20

// ErrUserNotFound reports that the key server does not know the user (it
// answered 404). Test with errors.Is.
var ErrUserNotFound = errors.New("user not found")

// idPattern is what an ssh_keys entry must look like.
var idPattern = regexp.MustCompile(`^(lp|gh):[A-Za-z0-9._+-]+$`)

// Fetcher fetches public keys from key servers. Its zero value fetches from
// Launchpad and GitHub with the default retry policy.
type Fetcher struct {
	// LaunchpadURL is the URL template for lp: ids, "%s" standing for the
	// user name ("": DefaultLaunchpadURL).
	LaunchpadURL string
	// GitHubURL is the URL template for gh: ids ("": DefaultGitHubURL).
	GitHubURL string
	// Client makes the requests (nil: a client with no timeout of its own;
	// each attempt is bounded by Backoff.AttemptTimeout).
	Client *http.Client
	// Backoff spaces attempts after connection errors, timeouts and 5xx or
	// 429 answers. Zero fields take the defaults above (Attempts
	// DefaultAttempts, AttemptTimeout DefaultAttemptTimeout, Initial
	// DefaultBackoffInitial, Max DefaultBackoffMax), and the others those
	// of sshx.Backoff.
	Backoff sshx.Backoff
	// Log receives a line for each failed attempt (nil: discarded).
	Log *slog.Logger
}

// ParseID checks an ssh_keys entry and splits it into its service ("lp" or
// "gh") and user name.
func ParseID(id string) (service, user string, err error) {
	if !idPattern.MatchString(id) {
		return "", "", fmt.Errorf("ssh key id %q is malformed: want lp:<user> or gh:<user>, the user name made of letters, digits and . _ + -", id)
	}
	service, user, _ = strings.Cut(id, ":")
	if strings.Trim(user, ".") == "" {
		// "." and ".." would walk the key server's URL path.
		return "", "", fmt.Errorf("ssh key id %q is malformed: the user name must not be only dots", id)
	}
	return service, user, nil
}

// URL returns the URL the keys of id are fetched from.
func (f *Fetcher) URL(id string) (string, error) {
	service, user, err := ParseID(id)
	if err != nil {
		return "", err
	}
	tmpl := f.LaunchpadURL
	if tmpl == "" {
		tmpl = DefaultLaunchpadURL
	}
	if service == "gh" {
		if tmpl = f.GitHubURL; tmpl == "" {
			tmpl = DefaultGitHubURL
		}
	}
	if strings.Count(tmpl, "%s") != 1 {
		return "", fmt.Errorf("ssh key server URL template %q must contain %%s exactly once", tmpl)
	}
	// Replaced, not formatted: a template may hold other % signs (%7E).
	return strings.Replace(tmpl, "%s", user, 1), nil
}

// Fetch returns the public keys of id (lp:<user> or gh:<user>), as
// authorized_keys lines without options (a key server has no business
// restricting or widening a key), each checked with ssh.ParseAuthorizedKey.
// Lines that are not keys are skipped; no key at all is an error. A 404
// ends at once with an error wrapping ErrUserNotFound; connection errors,
// timeouts and 5xx and 429 answers are retried as f.Backoff says; other
// answers end at once with an error.
func (f *Fetcher) Fetch(ctx context.Context, id string) ([]string, error) {
	url, err := f.URL(id)
	if err != nil {
		return nil, err
	}
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := f.Backoff
	if b.Attempts == 0 {
		b.Attempts = DefaultAttempts
	}
	if b.AttemptTimeout == 0 {
		b.AttemptTimeout = DefaultAttemptTimeout
	}
	if b.Initial == 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max == 0 {
		b.Max = DefaultBackoffMax
	}
	onRetry := b.OnRetry
	b.OnRetry = func(n int, err error, delay time.Duration) {
		log.Warn("sshkeys: fetching keys failed; retrying", "id", id, "url", url, "attempt", n, "err", err, "delay", delay)
		if onRetry != nil {
			onRetry(n, err, delay)
		}
	}
	var body []byte
	err = sshx.Retry(ctx, b, func(ctx context.Context) error {
		var err error
		body, err = f.get(ctx, url)
		return err
	})
	if err != nil {
		if errors.Is(err, ErrUserNotFound) {
			return nil, fmt.Errorf("ssh keys of %s: %w (404 from %s)", id, err, url)
		}
		return nil, fmt.Errorf("ssh keys of %s from %s: %w", id, url, err)
	}
	keys, skipped := parseKeys(body)
	for _, s := range skipped {
		log.Warn("sshkeys: skipping a line that is not a public key", "id", id, "url", url, "line", s)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("ssh keys of %s: %s returned no public key (%d lines that are not keys)", id, url, len(skipped))
	}
	return keys, nil
}

// get makes one request. Its errors are permanent unless retrying may help.
func (f *Fetcher) get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, sshx.Permanent(err)
	}
	req.Header.Set("User-Agent", "flinger-sshkeys")
	req.Header.Set("Accept", "text/plain")
	client := f.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, sshx.Permanent(ErrUserNotFound)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return nil, fmt.Errorf("key server answered %s", resp.Status)
	case resp.StatusCode != http.StatusOK:
		return nil, sshx.Permanent(fmt.Errorf("key server answered %s", resp.Status))
	case err != nil:
		return nil, fmt.Errorf("reading the answer: %w", err)
	case len(body) > maxBody:
		return nil, sshx.Permanent(fmt.Errorf("the answer is larger than %d bytes", maxBody))
	}
	return body, nil
}

// parseKeys returns the distinct public keys of body, one per line, and the
// lines that are not keys (blank lines and # comments aside), shortened.
func parseKeys(body []byte) (keys, skipped []string) {
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64*1024), maxBody)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pub, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil || len(bytes.TrimSpace(rest)) > 0 {
			if len(line) > 60 {
				line = line[:60] + "..."
			}
			skipped = append(skipped, line)
			continue
		}
		key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
		if seen[key] {
			continue
		}
		seen[key] = true
		if comment = strings.Map(printableOnly, comment); comment != "" {
			key += " " + comment
		}
		keys = append(keys, key)
	}
	return keys, skipped
}

// printableOnly drops control characters from comments.
func printableOnly(r rune) rune {
	if r < 0x20 || r == 0x7f {
		return -1
	}
	return r
}

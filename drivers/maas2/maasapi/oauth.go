package maasapi

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Key is a MAAS API key: the consumer key, token key and token secret that
// `maas apikey` prints as consumer:token:secret. Its parts never appear in
// what it prints or logs (String, GoString, LogValue), so that a Key can
// be passed around and logged without leaking it.
type Key struct {
	consumer, token, secret string
}

// ParseKey reads a MAAS API key (consumer:token:secret, surrounding white
// space ignored). The error never quotes the key.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Key{}, errors.New("the MAAS API key is empty")
	}
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Key{}, fmt.Errorf("a MAAS API key is three parts separated by colons (consumer:token:secret); this one has %d", len(parts))
	}
	for i, p := range parts {
		if p == "" {
			return Key{}, fmt.Errorf("part %d of the MAAS API key (consumer:token:secret) is empty", i+1)
		}
		if strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '"' }) {
			return Key{}, fmt.Errorf("part %d of the MAAS API key holds white space, a quote or a control character", i+1)
		}
	}
	return Key{consumer: parts[0], token: parts[1], secret: parts[2]}, nil
}

// IsZero reports whether k is the zero Key (no key).
func (k Key) IsZero() bool { return k == Key{} }

// String returns a placeholder, never the key.
func (k Key) String() string {
	if k.IsZero() {
		return "<no MAAS API key>"
	}
	return "<MAAS API key>"
}

// GoString returns the same placeholder as String, for %#v.
func (k Key) GoString() string { return k.String() }

// LogValue makes log/slog print the placeholder.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }

// Secrets returns the key and each of its parts: the strings that must
// never be shown (masked in MAAS's own messages, which may quote a token).
func (k Key) Secrets() []string {
	if k.IsZero() {
		return nil
	}
	return []string{k.consumer + ":" + k.token + ":" + k.secret, k.consumer, k.token, k.secret}
}

// Authorization returns the value of the Authorization header of one
// request signed with k: OAuth 1.0 with the PLAINTEXT signature method,
// as MAAS expects (an empty consumer secret, so the signature is
// "&" followed by the token secret), with the given nonce and timestamp.
// Every request needs a nonce of its own: MAAS refuses one it has seen.
func (k Key) Authorization(nonce string, timestamp time.Time) string {
	params := map[string]string{
		"oauth_version":          "1.0",
		"oauth_signature_method": "PLAINTEXT",
		"oauth_consumer_key":     k.consumer,
		"oauth_token":            k.token,
		"oauth_signature":        "&" + percentEncode(k.secret),
		"oauth_nonce":            nonce,
		"oauth_timestamp":        strconv.FormatInt(timestamp.Unix(), 10),
	}
	names := make([]string, 0, len(params))
	for n := range params {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(`OAuth realm=""`)
	for _, n := range names {
		fmt.Fprintf(&b, `, %s="%s"`, n, percentEncode(params[n]))
	}
	return b.String()
}

// NewNonce returns a random nonce for Authorization.
func NewNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// percentEncode encodes s as OAuth 1.0 wants (RFC 5849, section 3.6):
// every byte but the unreserved characters as %XX.
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

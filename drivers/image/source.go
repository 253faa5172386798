package image

import (
	"encoding/hex"
	"net/url"
	"strings"
)

// Source is where an image comes from: a URL (provision_data.url) or a
// local file (an attachment), exactly one of the two.
type Source struct {
	// URL is an http, https or file URL.
	URL string
	// Path is a local file, such as attachments/provision/<use_attachment>.
	Path string
	// SHA256 is the expected sha256 of the image as served (compressed), in
	// hex; empty means it is not checked.
	SHA256 string
}

// String returns the URL or the path, as error messages name the image.
func (s Source) String() string {
	if s.URL != "" {
		return s.URL
	}
	return s.Path
}

// resolved is a checked Source.
type resolved struct {
	name string // for messages: the URL or path as given
	url  string // the http(s) URL, or ""
	path string // the local file, or ""
	sha  string // expected sha256, lower-case hex, or ""
}

// resolve checks s: exactly one of URL and Path, a supported scheme, a
// well-formed sha256.
func (s Source) resolve() (resolved, error) {
	r := resolved{name: s.String()}
	switch {
	case s.URL == "" && s.Path == "":
		return r, newError(Invalid, "", nil, "no url and no path to get the image from")
	case s.URL != "" && s.Path != "":
		return r, newError(Invalid, r.name, nil, "both a url and a path (%s) given; use one", s.Path)
	}
	if s.SHA256 != "" {
		sum := strings.ToLower(strings.TrimSpace(s.SHA256))
		if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 {
			return r, newError(Invalid, r.name, err, "sha256 %q is not 64 hex digits", s.SHA256)
		}
		r.sha = sum
	}
	if s.Path != "" {
		r.path = s.Path
		return r, nil
	}
	u, err := url.Parse(s.URL)
	if err != nil {
		return r, newError(Invalid, r.name, err, "not a valid URL: %v", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		if u.Host == "" {
			return r, newError(Invalid, r.name, nil, "the URL has no host")
		}
		r.url = u.String()
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return r, newError(Invalid, r.name, nil, "file URLs must name a local file (file:///path), not one on host %q", u.Host)
		}
		if u.Path == "" {
			return r, newError(Invalid, r.name, nil, "the file URL has no path")
		}
		r.path = u.Path
	case "":
		return r, newError(Invalid, r.name, nil, "the URL has no scheme; use http://, https:// or file://")
	default:
		return r, newError(Invalid, r.name, nil, "unsupported URL scheme %q: only http, https and file are supported", u.Scheme)
	}
	return r, nil
}

package image

import (
	"context"
	"errors"
	"fmt"
)

// Kind classifies an [*Error].
type Kind int

// The kinds of [*Error]. All of them are provisioning failures: none means
// the device cannot be recovered.
const (
	// NotFound: the server has no such image (HTTP 404 or 410), or the
	// local file does not exist.
	NotFound Kind = iota + 1
	// HTTP: the server answered with another error status, or with a
	// response that makes no sense.
	HTTP
	// Truncated: the server sent fewer bytes than it announced, and
	// resuming did not get the rest.
	Truncated
	// Corrupt: the compressed stream is damaged or incomplete.
	Corrupt
	// Checksum: the image's sha256 is not the one expected.
	Checksum
	// Network: the server could not be reached or the connection kept
	// failing.
	Network
	// Canceled: the caller's context was cancelled or timed out.
	Canceled
	// Invalid: the source itself is wrong (an unsupported URL scheme, a
	// malformed sha256, neither or both of URL and Path).
	Invalid
	// Local: a local file could not be read or written (the cache disk is
	// full, an attachment is unreadable).
	Local
)

var kindNames = map[Kind]string{
	NotFound:  "not found",
	HTTP:      "http",
	Truncated: "truncated",
	Corrupt:   "corrupt",
	Checksum:  "checksum",
	Network:   "network",
	Canceled:  "canceled",
	Invalid:   "invalid",
	Local:     "local",
}

// String returns the kind's name, as in "not found" or "checksum".
func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Error is a failure to fetch, verify or decompress an image. Its message
// reads "image <url>: <detail>", for example
// "image https://example.com/x.img.xz: HTTP 404 Not Found".
type Error struct {
	// Kind says what went wrong.
	Kind Kind
	// URL is the image's URL or path ("" for a bare stream).
	URL string
	// Detail says what went wrong, in words for the job's submitter.
	Detail string
	// Err is the underlying error, if any.
	Err error
}

// Error returns "image <url>: <detail>".
func (e *Error) Error() string {
	if e.URL == "" {
		return "image: " + e.Detail
	}
	return "image " + e.URL + ": " + e.Detail
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the Kind of the *Error that err is or wraps, or 0.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

func newError(kind Kind, url string, err error, format string, args ...any) *Error {
	return &Error{Kind: kind, URL: url, Detail: fmt.Sprintf(format, args...), Err: err}
}

// canceled returns the Canceled error for ctx, which is done.
func canceled(ctx context.Context, url string) *Error {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = context.Canceled
	}
	detail := "cancelled"
	if errors.Is(cause, context.DeadlineExceeded) {
		detail = "timed out"
	}
	if cause != context.Canceled && cause != context.DeadlineExceeded {
		detail += ": " + cause.Error()
	}
	return &Error{Kind: Canceled, URL: url, Detail: detail, Err: cause}
}

// CorruptError returns the Corrupt *Error for the image src names, whose
// stream (compressed as format) was found damaged by cause outside this
// package: by a decompressor on the far side of an SSH connection that
// received the image as served (StreamOptions.Raw), for example. Its
// message reads "image <url>: corrupt <format> stream: <cause>". A caller
// holding a Cache also calls Cache.Forget, so that the next attempt
// downloads the image again, as a corrupt Stream does by itself.
func CorruptError(src Source, format Format, cause error) *Error {
	detail := fmt.Sprintf("corrupt %s stream", format)
	if cause != nil {
		detail += ": " + cause.Error()
	}
	return &Error{Kind: Corrupt, URL: src.String(), Detail: detail, Err: cause}
}

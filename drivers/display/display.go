// Package display formats what drivers print in a job's output for the
// operator: values that come from a job or a device configuration, which
// must not forge lines of that output, and byte counts.
package display

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Printable returns s as it is, or quoted as a Go string literal when it
// holds control characters (a newline, a carriage return, an escape
// sequence) or is not valid UTF-8, so that a value from a job or a device
// configuration cannot forge lines of the output it is printed in nor
// drive the operator's terminal.
func Printable(s string) string {
	if !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		return strconv.Quote(s)
	}
	return s
}

// Bytes returns a byte count for an operator: "512 bytes" below a KiB,
// otherwise one decimal in the largest binary unit that fits ("3.2 GiB").
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

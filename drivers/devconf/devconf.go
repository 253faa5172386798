// Package devconf reads keys of a device's configuration whose shape many
// drivers share: durations with a default and bounds, lists of commands
// that are run as Testflinger's connectors run them (each split on white
// space, as Python's cmd.split()), lists of strings, and absolute paths
// on a remote host. Every error names the key at fault, and the index in
// a list, so that a driver's constructor can report every bad key at once.
//
// It depends on nothing but package events, so that every driver package
// and the packages the drivers package itself uses (controlhost,
// firmware) can share it.
package devconf

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/flingerlab/flinger/events"
)

// Duration reads the duration at key: a whole number of seconds, a Go
// duration ("500ms", "1m30s") or a Testflinger duration ("2h30m", "1d");
// def when the key is absent or null. It does not check bounds (see
// Durations).
func Duration(d events.Data, key string, def time.Duration) (time.Duration, error) {
	if s, ok := d[key].(string); ok {
		if v, err := time.ParseDuration(strings.TrimSpace(s)); err == nil {
			return v, nil
		}
	}
	return d.Duration(key, def)
}

// DurationKey is one duration key for Durations.
type DurationKey struct {
	// Key is the key's name.
	Key string
	// Default is its value when the configuration does not give it.
	Default time.Duration
	// Dst receives the value, or Default when the value is bad.
	Dst *time.Duration
	// ZeroOK allows 0 (a wait that may be skipped); otherwise the value
	// must be more than 0.
	ZeroOK bool
}

// Durations reads each of keys into its Dst (see Duration): more than 0
// (at least 0 with ZeroOK) and at most max. It returns every bad value,
// each error naming its key, joined; a bad key's Dst gets its Default.
func Durations(d events.Data, max time.Duration, keys ...DurationKey) error {
	var errs []error
	for _, k := range keys {
		*k.Dst = k.Default
		v, err := Duration(d, k.Key, k.Default)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if v < 0 || (v == 0 && !k.ZeroOK) || v > max {
			if k.ZeroOK {
				errs = append(errs, fmt.Errorf("%s: %s out of range (0s to %s)", k.Key, v, max))
			} else {
				errs = append(errs, fmt.Errorf("%s: %s out of range (more than 0s, at most %s)", k.Key, v, max))
			}
			continue
		}
		*k.Dst = v
	}
	return errors.Join(errs...)
}

// Strings reads key as a list of strings, or a single string as a list of
// one; nil when the key is absent or null.
func Strings(d events.Data, key string) ([]string, error) {
	return list(d, key, "a list of strings, or a string")
}

// Commands reads key as a list of commands, or a single command as a
// string, each split on white space (see Split); nil when the key is
// absent or null.
func Commands(d events.Data, key string) ([][]string, error) {
	lines, err := list(d, key, "a command or a list of commands")
	if err != nil {
		return nil, err
	}
	return Split(key, lines)
}

// Split splits each of the commands of key on white space, as
// Testflinger's cmd.split(): the words are run as they are, never by a
// shell. An empty command is an error naming key and its index.
func Split(key string, cmds []string) ([][]string, error) {
	var out [][]string
	for i, c := range cmds {
		argv := strings.Fields(c)
		if len(argv) == 0 {
			return nil, fmt.Errorf("%s[%d]: empty command", key, i)
		}
		out = append(out, argv)
	}
	return out, nil
}

// list reads key as a list of strings or a single string; what names the
// expected value in the error for any other type.
func list(d events.Data, key, what string) ([]string, error) {
	switch v := d[key].(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []string:
		return v, nil
	case []any:
		out := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s[%d]: must be a string, got %s", key, i, events.TypeName(e))
			}
			out[i] = s
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%s: must be %s, got %s", key, what, events.TypeName(v))
	}
}

// RemotePath reads key as an absolute path on a remote host, such as a
// device node or a mount point: clean, with no white space or control
// characters, so that it reads the same in every command it is given to;
// def when the key is absent, null or empty.
func RemotePath(d events.Data, key, def string) (string, error) {
	p, err := d.String(key, def)
	if err != nil {
		return def, err
	}
	if p == "" {
		return def, nil
	}
	if !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return def, fmt.Errorf("%s: %q must be a clean absolute path without spaces", key, p)
	}
	return p, nil
}

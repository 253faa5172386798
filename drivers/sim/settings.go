package sim

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/flingerlab/flinger/events"
)

// Settings reads the sim: keys of a device's entry in a lab file
// (LabOptions.Settings) for a simulator's LabStarter. Each getter returns
// the value at its key, or its default when the key is absent or null,
// and remembers the key as known; a value of the wrong type or out of
// range is recorded, and the getter returns the default. Err then
// reports everything at once: the keys no getter asked for, and each
// value that was wrong, naming it as sim.<key>.
//
// The values, as YAML or JSON decode them:
//
//   - String: a string.
//   - Bool: true or false.
//   - Int: a whole number, at least 0.
//   - Size: a number of bytes, at least 0: a whole number, or a string
//     of digits with an optional K, M or G suffix (powers of 1024, as dd
//     takes them: "64M").
//   - Duration: a Go duration ("500ms", "2s", "1m30s"), a Testflinger
//     duration ("90", "2m", "1h 30m"), or seconds as a number (2, 0.5);
//     not negative.
//
// A Settings is for one goroutine.
type Settings struct {
	m     map[string]any
	known map[string]bool
	errs  []error
}

// NewSettings returns a reader of m, a lab entry's sim: keys (nil: none).
func NewSettings(m map[string]any) *Settings {
	return &Settings{m: m, known: map[string]bool{}}
}

// Value returns the raw value at key and whether it is set (present and
// not null), for a setting of a shape no getter reads (such as a list);
// key becomes known. Report a bad value with Invalid.
func (s *Settings) Value(key string) (any, bool) {
	s.known[key] = true
	v, ok := s.m[key]
	return v, ok && v != nil
}

// Invalid records that the value at key is wrong: format and args say
// why (such as `"sideways" is neither test nor master`).
func (s *Settings) Invalid(key, format string, args ...any) {
	s.errs = append(s.errs, fmt.Errorf("sim.%s: %s", key, fmt.Sprintf(format, args...)))
}

// String returns the string at key, or def.
func (s *Settings) String(key, def string) string {
	v, ok := s.Value(key)
	if !ok {
		return def
	}
	str, isStr := v.(string)
	if !isStr {
		s.Invalid(key, "must be a string, got %s", describe(v))
		return def
	}
	return str
}

// Bool returns the boolean at key, or def.
func (s *Settings) Bool(key string, def bool) bool {
	v, ok := s.Value(key)
	if !ok {
		return def
	}
	b, isBool := v.(bool)
	if !isBool {
		s.Invalid(key, "must be true or false, got %s", describe(v))
		return def
	}
	return b
}

// Int returns the whole number at key (at least 0), or def.
func (s *Settings) Int(key string, def int) int {
	v, ok := s.Value(key)
	if !ok {
		return def
	}
	n, isInt := events.AsInt(v)
	switch {
	case !isInt:
		s.Invalid(key, "must be a whole number, got %s", describe(v))
	case n < 0:
		s.Invalid(key, "must be a whole number, at least 0, got %d", n)
	default:
		return n
	}
	return def
}

// Size returns the number of bytes at key (at least 0), or def.
func (s *Settings) Size(key string, def int64) int64 {
	v, ok := s.Value(key)
	if !ok {
		return def
	}
	if str, isStr := v.(string); isStr {
		n, err := ParseSize(str)
		if err != nil {
			s.Invalid(key, "%q is not a number of bytes (such as 1048576 or 64M)", str)
			return def
		}
		return n
	}
	n, isInt := events.AsInt(v)
	switch {
	case !isInt:
		s.Invalid(key, "must be a number of bytes, got %s", describe(v))
	case n < 0:
		s.Invalid(key, "must not be negative, got %d", n)
	default:
		return int64(n)
	}
	return def
}

// maxSettingSeconds bounds a duration given in seconds, so that it fits
// a time.Duration.
const maxSettingSeconds = math.MaxInt64 / int64(time.Second)

// Duration returns the duration at key (not negative), or def.
func (s *Settings) Duration(key string, def time.Duration) time.Duration {
	v, ok := s.Value(key)
	if !ok {
		return def
	}
	var d time.Duration
	switch x := v.(type) {
	case string:
		var err error
		if d, err = time.ParseDuration(x); err != nil {
			secs, serr := events.ParseDuration(x)
			if serr != nil {
				s.Invalid(key, "%q is not a duration (such as 500ms, 2s, 1m or whole seconds)", x)
				return def
			}
			d = time.Duration(secs) * time.Second
		}
	default:
		var ok bool
		if d, ok = seconds(v); !ok {
			s.Invalid(key, "must be a duration such as 2s, got %s", describe(v))
			return def
		}
	}
	if d < 0 {
		s.Invalid(key, "must not be negative, got %s", d)
		return def
	}
	return d
}

// describe names a value for an error message: its kind and, for a
// scalar, the value.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("a string %q", x)
	case bool, float32, float64:
		return fmt.Sprintf("%s %v", events.TypeName(v), x)
	}
	if n, ok := events.AsInt(v); ok {
		return fmt.Sprintf("an integer %d", n)
	}
	return events.TypeName(v)
}

// seconds returns the duration of v seconds, v a number that fits.
func seconds(v any) (time.Duration, bool) {
	if n, ok := events.AsInt(v); ok {
		if int64(n) > maxSettingSeconds || int64(n) < -maxSettingSeconds {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	var f float64
	switch x := v.(type) {
	case float64:
		f = x
	case float32:
		f = float64(x)
	default:
		return 0, false
	}
	if math.IsNaN(f) || math.Abs(f) > float64(maxSettingSeconds) {
		return 0, false
	}
	return time.Duration(f * float64(time.Second)), true
}

// Known returns the keys asked for so far, sorted.
func (s *Settings) Known() []string {
	return slices.Sorted(maps.Keys(s.known))
}

// Err returns nil when every key of the entry was asked for and every
// value was right; otherwise the errors, joined: first one naming the
// unknown keys and listing the known ones, then one for each bad value.
func (s *Settings) Err() error {
	var unknown []string
	for _, k := range slices.Sorted(maps.Keys(s.m)) {
		if !s.known[k] {
			unknown = append(unknown, "sim."+k)
		}
	}
	errs := s.errs
	if len(unknown) > 0 {
		what := "unknown key"
		if len(unknown) > 1 {
			what = "unknown keys"
		}
		errs = append([]error{fmt.Errorf("%s: %s (known: %s)", strings.Join(unknown, ", "), what, strings.Join(s.Known(), ", "))}, errs...)
	}
	return errors.Join(errs...)
}

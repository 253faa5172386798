package events

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// This file holds the small schema machinery behind ValidateJob: it loads a
// generic document (maps, lists and scalars) the way Testflinger's
// marshmallow schemas do, returning the normalised value and every field
// error. Loaders never stop at the first error.

// errList collects field errors.
type errList []FieldError

func (e *errList) add(path, format string, args ...any) {
	if path == "" {
		path = "(job)"
	}
	*e = append(*e, FieldError{Field: path, Message: fmt.Sprintf(format, args...)})
}

// loader checks one value at path and returns its normalised form.
type loader func(v any, path string, errs *errList) any

// field is one declared field of a schema.
type field struct {
	name      string
	required  bool
	allowNull bool
	load      loader
}

// schema is a marshmallow-like schema: declared fields, unknown fields
// rejected, and an optional whole-schema check that runs only when every
// field loaded cleanly (marshmallow's validates_schema).
type schema struct {
	name   string
	fields []field
	// check returns a schema-level error message, or "".
	check func(out map[string]any) string
	// vocab lists the names suggested for misspelt unknown fields; nil
	// means the schema's own field names.
	vocab []string
}

func (s *schema) field(name string) (field, bool) {
	for _, f := range s.fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

func (s *schema) names() []string {
	if s.vocab != nil {
		return s.vocab
	}
	out := make([]string, len(s.fields))
	for i, f := range s.fields {
		out[i] = f.name
	}
	return out
}

// load checks m against the schema and returns the normalised mapping and
// how many of m's keys the schema declares.
func (s *schema) load(m map[string]any, path string, errs *errList) (map[string]any, int) {
	before := len(*errs)
	out := make(map[string]any, len(m))
	known := 0
	keys := sortedKeys(m)
	for _, k := range keys {
		if _, ok := s.field(k); ok {
			known++
			continue
		}
		if s.vocab != nil && slices.Contains(s.vocab, k) {
			// A field of another schema of the same place (another device
			// type's provision_data): name the one the other fields match.
			errs.add(joinPath(path, k), "not a field of %s provision data, which the other fields match (%s is another device type's)", s.name, k)
			continue
		}
		errs.add(joinPath(path, k), "%s", unknownFieldMessage(k, s.names()))
	}
	for _, f := range s.fields {
		v, present := m[f.name]
		p := joinPath(path, f.name)
		switch {
		case !present:
			if f.required {
				errs.add(p, "required")
			}
		case v == nil:
			if f.allowNull {
				out[f.name] = nil
			} else {
				errs.add(p, "must not be null")
			}
		default:
			out[f.name] = f.load(v, p, errs)
		}
	}
	if s.check != nil && len(*errs) == before {
		if msg := s.check(out); msg != "" {
			errs.add(path, "%s", msg)
		}
	}
	return out, known
}

// nested loads a mapping with schema s.
func nested(s *schema) loader {
	return func(v any, path string, errs *errList) any {
		m, ok := v.(map[string]any)
		if !ok {
			errs.add(path, "must be a mapping, got %s", describe(v))
			return nil
		}
		out, _ := s.load(m, path, errs)
		return out
	}
}

// loadString accepts strings only (marshmallow String).
func loadString(v any, path string, errs *errList) any {
	s, ok := v.(string)
	if !ok {
		errs.add(path, "must be a string, got %s", describe(v))
		return nil
	}
	return s
}

// stringWith accepts a string that passes ok, else reports msg.
func stringWith(ok func(string) bool, msg string) loader {
	return func(v any, path string, errs *errList) any {
		s, isStr := v.(string)
		if !isStr {
			errs.add(path, "must be a string, got %s", describe(v))
			return nil
		}
		if !ok(s) {
			errs.add(path, "%s, got %s", msg, quote(s))
			return nil
		}
		return s
	}
}

// matching accepts a string matching re, whose source is named in the error.
func matching(re *regexp.Regexp, what string) loader {
	return stringWith(re.MatchString, "must match "+what)
}

// oneOf accepts one of the given strings (marshmallow OneOf).
func oneOf(choices ...string) loader {
	return stringWith(func(s string) bool { return slices.Contains(choices, s) },
		"must be one of "+strings.Join(choices, ", "))
}

// nonEmptyString accepts a string of at least one character (Length(min=1)).
func nonEmptyString(v any, path string, errs *errList) any {
	s, ok := v.(string)
	if !ok {
		errs.add(path, "must be a string, got %s", describe(v))
		return nil
	}
	if s == "" {
		errs.add(path, "must not be empty")
		return nil
	}
	return s
}

// loadDict accepts any mapping (marshmallow Dict), already cleaned.
func loadDict(v any, path string, errs *errList) any {
	m, ok := v.(map[string]any)
	if !ok {
		errs.add(path, "must be a mapping, got %s", describe(v))
		return nil
	}
	return m
}

// listOf accepts a list whose items load with elem and whose length is
// within [minLen, maxLen] (maxLen < 0: no bound).
func listOf(elem loader, minLen, maxLen int) loader {
	return func(v any, path string, errs *errList) any {
		l, ok := v.([]any)
		if !ok {
			errs.add(path, "must be a list, got %s", describe(v))
			return nil
		}
		out := make([]any, len(l))
		for i, e := range l {
			p := fmt.Sprintf("%s[%d]", path, i)
			if e == nil {
				errs.add(p, "must not be null")
				continue
			}
			out[i] = elem(e, p, errs)
		}
		switch {
		case len(l) < minLen && minLen == 1:
			errs.add(path, "must not be empty")
		case len(l) < minLen:
			errs.add(path, "must have at least %d items, got %d", minLen, len(l))
		case maxLen >= 0 && len(l) > maxLen:
			errs.add(path, "must have at most %d %s, got %d", maxLen, plural(maxLen, "item", "items"), len(l))
		}
		return out
	}
}

// intIn accepts what marshmallow's Integer accepts (integers, integral
// numbers and decimal strings such as "10", but not booleans), bounded to
// [lo, hi]. Unlike marshmallow it refuses a fractional number instead of
// truncating it.
func intIn(lo, hi int) loader {
	return func(v any, path string, errs *errList) any {
		n, ok := toInt(v, path, errs)
		if !ok {
			return nil
		}
		if n < lo {
			if lo == 1 {
				errs.add(path, "must be greater than 0, got %d", n)
			} else {
				errs.add(path, "must be at least %d, got %d", lo, n)
			}
			return nil
		}
		if n > hi {
			errs.add(path, "must be at most %d, got %d", hi, n)
			return nil
		}
		return n
	}
}

// maxSeconds bounds every duration and timeout, in seconds, so that it fits
// an int32 and a time.Duration (about 68 years).
const maxSeconds = math.MaxInt32

// anyInt is marshmallow's Integer with only Flinger's overflow bound.
var anyInt = intIn(-maxSeconds, maxSeconds)

func toInt(v any, path string, errs *errList) (int, bool) {
	switch t := v.(type) {
	case int:
		return t, true
	case string:
		n, err := parsePyInt(strings.TrimFunc(t, isPySpace))
		if err == nil {
			return n, true
		}
		if err == errIntRange {
			errs.add(path, "must be an integer in range, got %s", quote(t))
		} else {
			errs.add(path, "must be an integer, got %s", quote(t))
		}
		return 0, false
	case float64:
		errs.add(path, "must be an integer, got %s", strconv.FormatFloat(t, 'g', -1, 64))
		return 0, false
	}
	errs.add(path, "must be an integer, got %s", describe(v))
	return 0, false
}

var errIntRange = fmt.Errorf("integer out of range")

// parsePyInt reads a decimal integer as Python's int() does: an optional
// sign, then digits with single underscores between them.
func parsePyInt(s string) (int, error) {
	digits := strings.TrimLeft(s, "+-")
	if len(s)-len(digits) > 1 || digits == "" {
		return 0, fmt.Errorf("not an integer")
	}
	prevDigit := false
	for i := range len(digits) {
		c := digits[i]
		switch {
		case c >= '0' && c <= '9':
			prevDigit = true
		case c == '_' && prevDigit && i+1 < len(digits):
			prevDigit = false
		default:
			return 0, fmt.Errorf("not an integer")
		}
	}
	if !prevDigit {
		return 0, fmt.Errorf("not an integer")
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 10, 64)
	if err != nil || n < math.MinInt || n > math.MaxInt {
		return 0, errIntRange
	}
	return int(n), nil
}

// Python's str.isspace, which strip() and \s use: Unicode white space plus
// the ASCII separators U+001C to U+001F.
func isPySpace(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f) }

// marshmallow Boolean's truthy and falsy strings.
var (
	boolTruthy = []string{"t", "T", "true", "True", "TRUE", "on", "On", "ON", "y", "Y", "yes", "Yes", "YES", "1"}
	boolFalsy  = []string{"f", "F", "false", "False", "FALSE", "off", "Off", "OFF", "n", "N", "no", "No", "NO", "0"}
)

// loadBool accepts what marshmallow's Boolean accepts: true and false, 1 and
// 0, and the strings in boolTruthy and boolFalsy. It returns a bool.
func loadBool(v any, path string, errs *errList) any {
	switch t := v.(type) {
	case bool:
		return t
	case int:
		if t == 0 || t == 1 {
			return t == 1
		}
	case string:
		if slices.Contains(boolTruthy, t) {
			return true
		}
		if slices.Contains(boolFalsy, t) {
			return false
		}
	}
	errs.add(path, "must be true or false, got %s", describe(v))
	return nil
}

// strictBool accepts only true and false.
func strictBool(v any, path string, errs *errList) any {
	b, ok := v.(bool)
	if !ok {
		errs.add(path, "must be true or false, got %s", describe(v))
		return nil
	}
	return b
}

// durationIn accepts whole seconds or a duration string as Testflinger's
// DurationField does (see ParseDuration) and returns whole seconds, which
// must be at least lo.
func durationIn(lo int) loader {
	return func(v any, path string, errs *errList) any {
		var n int
		switch t := v.(type) {
		case int:
			if t < 0 {
				errs.add(path, "must not be negative, got %d", t)
				return nil
			}
			if t > maxSeconds {
				errs.add(path, "must be at most %d seconds, got %d", maxSeconds, t)
				return nil
			}
			n = t
		case string:
			secs, err := ParseDuration(t)
			if err != nil {
				errs.add(path, "%v", err)
				return nil
			}
			n = secs
		default:
			errs.add(path, "must be a number of seconds or a duration such as \"2h30m\", got %s", describe(v))
			return nil
		}
		if n < lo {
			errs.add(path, "must be at least %d seconds, got %d", lo, n)
			return nil
		}
		return n
	}
}

// marshmallow's URL validator (absolute, TLD required), in RE2.
var urlRE = regexp.MustCompile(`(?i)^(?:[a-z0-9.+-]*)://` +
	`(?:(?:[a-z0-9\-._~!$&'()*+,;=:]|%[0-9a-f]{2})*@)?` +
	`(?:(?:[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?\.)+(?:[A-Z]{2,6}\.?|[A-Z0-9-]{2,}\.?)` +
	`|localhost` +
	`|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}` +
	`|\[[A-F0-9]*:[A-F0-9:]+\])` +
	`(?::\d+)?` +
	`(?:/?|[/?]\S+)$`)

// validURL reports whether s is an absolute URL with one of schemes and a
// host name with a top-level domain, localhost or an IP address, as
// marshmallow's fields.URL requires.
func validURL(s string, schemes ...string) bool {
	scheme, _, found := strings.Cut(s, "://")
	return found && slices.Contains(schemes, strings.ToLower(scheme)) && urlRE.MatchString(s)
}

// loadURL is marshmallow's fields.URL: http, https, ftp or ftps.
var loadURL = stringWith(func(s string) bool { return validURL(s, "http", "https", "ftp", "ftps") },
	"not a valid URL (want http, https, ftp or ftps and a host such as images.example.com)")

// marshmallow's Email validator, without its quoted local parts and IDNA.
var (
	emailUserRE   = regexp.MustCompile("^[-!#$%&'*+/=?^`{}|~\\w\\p{L}\\p{N}]+(?:\\.[-!#$%&'*+/=?^`{}|~\\w\\p{L}\\p{N}]+)*$")
	emailDomainRE = regexp.MustCompile(`(?i)^(?:(?:[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?\.)+(?:[A-Z]{2,6}|[A-Z0-9-]{2,})` +
		`|\[(?:25[0-5]|2[0-4]\d|[0-1]?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|[0-1]?\d?\d)){3}\])$`)
)

func validEmail(s string) bool {
	i := strings.LastIndexByte(s, '@')
	if i < 0 {
		return false
	}
	user, domain := s[:i], s[i+1:]
	return emailUserRE.MatchString(user) && (domain == "localhost" || emailDomainRE.MatchString(domain))
}

var loadEmail = stringWith(validEmail, "not a valid email address")

// clean turns a decoded document into the generic form the loaders read:
// map[string]any, []any, string, bool, int, float64 and nil. It converts
// every integer kind to int, integral numbers to int, json.Number to int or
// float64, and refuses what JSON cannot carry (non-string keys, binary,
// timestamps, NaN and infinities, invalid UTF-8).
func clean(v any, path string, errs *errList) any {
	switch t := v.(type) {
	case nil, bool:
		return t
	case string:
		if !utf8.ValidString(t) {
			errs.add(path, "must be valid UTF-8 text")
			return nil
		}
		return t
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			if !utf8.ValidString(k) {
				errs.add(path, "has a key that is not valid UTF-8 text")
				continue
			}
			out[k] = clean(e, joinPath(path, k), errs)
		}
		return out
	case Data:
		return clean(map[string]any(t), path, errs)
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			ks, ok := k.(string)
			if !ok {
				errs.add(path, "has key %s, which is %s: keys must be strings", keyText(k), TypeName(k))
				continue
			}
			if !utf8.ValidString(ks) {
				errs.add(path, "has a key that is not valid UTF-8 text")
				continue
			}
			out[ks] = clean(e, joinPath(path, ks), errs)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = clean(e, fmt.Sprintf("%s[%d]", path, i), errs)
		}
		return out
	case []string:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = clean(e, fmt.Sprintf("%s[%d]", path, i), errs)
		}
		return out
	case float32:
		return cleanFloat(float64(t), path, errs)
	case float64:
		return cleanFloat(t, path, errs)
	case json.Number:
		if n, err := t.Int64(); err == nil && n >= math.MinInt && n <= math.MaxInt {
			return int(n)
		}
		f, err := t.Float64()
		if err != nil {
			errs.add(path, "not a valid number: %v", t)
			return nil
		}
		return cleanFloat(f, path, errs)
	case []byte:
		errs.add(path, "must not be binary data")
		return nil
	case time.Time:
		errs.add(path, "must not be a timestamp (write it as a string)")
		return nil
	}
	switch t := v.(type) {
	case uint64:
		if t > math.MaxInt {
			return float64(t)
		}
	case uint:
		if t > math.MaxInt {
			return float64(t)
		}
	}
	if n, ok := AsInt(v); ok {
		return n
	}
	errs.add(path, "unsupported value of type %T", v)
	return nil
}

func cleanFloat(f float64, path string, errs *errList) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		errs.add(path, "must be a finite number")
		return nil
	}
	if n, ok := floatInt(f); ok {
		return n
	}
	return f
}

// floatInt converts an integral f that fits an int.
func floatInt(f float64) (int, bool) {
	if f == math.Trunc(f) && f >= math.MinInt && f < -float64(math.MinInt) {
		return int(f), true
	}
	return 0, false
}

// describe names a value's kind for error messages, quoting short strings.
func describe(v any) string {
	switch t := v.(type) {
	case string:
		return "the string " + quote(t)
	case bool:
		return strconv.FormatBool(t)
	case int:
		return strconv.Itoa(t)
	case float64:
		return strconv.FormatFloat(t, 'g', -1, 64)
	}
	return TypeName(v)
}

// quote quotes s for a message, cutting it short when it is long.
func quote(s string) string {
	const maxRunes = 64
	if utf8.RuneCountInString(s) > maxRunes {
		r := []rune(s)
		return strconv.Quote(string(r[:maxRunes])) + "..."
	}
	return strconv.Quote(s)
}

func keyText(k any) string {
	if k == nil {
		return "null"
	}
	return fmt.Sprint(k)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

var plainKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// joinPath appends a mapping key to a field path: "a.b", or a["odd key"]
// when the key is not a plain name.
func joinPath(path, key string) string {
	if !plainKeyRE.MatchString(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// unknownFieldMessage says a field is unknown, suggesting the closest known
// name when it is a likely misspelling.
func unknownFieldMessage(key string, known []string) string {
	if s := suggest(key, known); s != "" {
		return "unknown field (did you mean " + s + "?)"
	}
	return "unknown field"
}

// suggest returns the known name closest to key when the two differ by
// case alone or by a small edit, else "".
func suggest(key string, known []string) string {
	k := strings.ToLower(key)
	best, bestDist := "", 0
	for _, name := range known {
		d := editDistance(k, name)
		limit := min(2, max(1, len(name)/3))
		if d <= limit && (best == "" || d < bestDist) {
			best, bestDist = name, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b
// (insertions, deletions, substitutions and adjacent transpositions), on
// runes. It gives up early on long inputs, returning a large distance.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		if a == b {
			return 0
		}
		return 1 << 30
	}
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// comparePaths orders field paths naturally: list indices by number, so
// that a[2] comes before a[10].
func comparePaths(a, b string) int {
	for a != "" && b != "" {
		if isDigit(a[0]) && isDigit(b[0]) {
			na, ra := splitDigits(a)
			nb, rb := splitDigits(b)
			na, nb = strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if c := len(na) - len(nb); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func splitDigits(s string) (string, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// sortErrors sorts field errors by path, keeping the order of errors on
// the same path.
func sortErrors(errs []FieldError) {
	slices.SortStableFunc(errs, func(a, b FieldError) int { return comparePaths(a.Field, b.Field) })
}

package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"gopkg.in/yaml.v3"
)

// Format says how a submitted job is written.
type Format string

// The formats ParseJob reads.
const (
	FormatYAML    Format = "yaml"
	FormatJSON    Format = "json"
	FormatMsgpack Format = "msgpack"
)

// MaxJobPriority is the highest job_priority Flinger accepts. Testflinger's
// schema takes any integer and leaves the bound to each client's
// max_priority permission; Flinger has no per-client permissions at intake,
// so it takes 0 (the default, lowest) to MaxJobPriority.
const MaxJobPriority = 100_000

// DetectFormat guesses how a job is written: from the file name's extension
// (.json, .yaml, .yml, .msgpack) when it has one, else from the content: a
// msgpack map (which is never valid UTF-8 text), JSON when the first
// non-blank character is '{', else YAML.
func DetectFormat(name string, data []byte) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return FormatJSON
	case ".yaml", ".yml":
		return FormatYAML
	case ".msgpack", ".mpk":
		return FormatMsgpack
	}
	if len(data) > 0 && (data[0]&0xf0 == 0x80 || data[0] == 0xde || data[0] == 0xdf) && !utf8.Valid(data) {
		return FormatMsgpack
	}
	text := bytes.TrimLeft(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")), " \t\r\n")
	if len(text) > 0 && text[0] == '{' {
		return FormatJSON
	}
	return FormatYAML
}

// ValidationError lists every bad field of a rejected job, sorted by path.
// A job that cannot be read at all has one error on the field "(job)".
type ValidationError struct {
	// Fields are the bad fields, sorted by path.
	Fields []FieldError
}

// Error joins the fields' errors: "invalid job: job_queue: required; ...".
func (e *ValidationError) Error() string {
	if len(e.Fields) == 0 {
		return "invalid job"
	}
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Field + ": " + f.Message
	}
	return "invalid job: " + strings.Join(parts, "; ")
}

func jobError(format string, args ...any) *ValidationError {
	return &ValidationError{Fields: []FieldError{{Field: "(job)", Message: fmt.Sprintf(format, args...)}}}
}

// ParseJob reads a submitted job written in format ("" to detect it),
// checks it against Testflinger's job schema with Flinger's additions (see
// ValidateJob) and returns it normalised as Testflinger's schema loads it:
// durations in whole seconds, numeric strings and integral numbers as
// integers where integers are asked for, marshmallow-style booleans ("yes",
// 1) as booleans, empty lists and mappings left out. Every failure is a
// *ValidationError naming all the bad fields; one that stops the job being
// read at all (too big, not YAML, JSON or msgpack, not a mapping) is on the
// field "(job)", and a YAML error keeps yaml's line number.
// maxBytes <= 0 means DefaultMaxJobBytes.
func ParseJob(data []byte, format Format, maxBytes int) (*Job, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxJobBytes
	}
	if len(data) > maxBytes {
		return nil, jobError("job is %d bytes, over the limit of %d bytes", len(data), maxBytes)
	}
	if format == "" {
		format = DetectFormat("", data)
	}
	doc, err := decodeDocument(data, format)
	if err != nil {
		return nil, err
	}
	var errs errList
	out := loadJob(doc, &errs)
	if len(errs) > 0 {
		sortErrors(errs)
		return nil, &ValidationError{Fields: errs}
	}
	return buildJob(out), nil
}

// ValidateJob checks an already decoded job (a mapping from YAML, JSON or
// msgpack) and returns every bad field, sorted by path; none means the job
// is valid. The rules are Testflinger's job schema (its marshmallow schemas,
// unknown fields rejected), with these Flinger additions:
//   - job_id, when given, must be a UUID (as Testflinger's job POST checks),
//     written in the canonical 8-4-4-4-12 form;
//   - global_timeout, output_timeout and allocation_timeout must be
//     positive, and every duration at most 2^31-1 seconds;
//   - reserve_data.timeout must be positive (0 would silently mean the
//     default hour);
//   - job_priority must be within 0..MaxJobPriority;
//   - job_status_webhook, when not empty, must be an http or https URL;
//   - firmware_update_data.version must be a string and ignore_failure a
//     boolean when present;
//   - test_data.test_cmds may be a list of strings (Testflinger's
//     connectors take one), and attachments may name a local file instead
//     of agent (as the Testflinger CLI takes them);
//   - provision_data may also be Flinger's fake connector's
//     {fail, delay, output_lines};
//   - numbers must be integers where integers are asked for (marshmallow
//     truncates 1.5 to 1), and values JSON cannot carry (NaN, binary,
//     timestamps, non-string keys) are refused.
func ValidateJob(doc map[string]any) []FieldError {
	var errs errList
	loadJob(doc, &errs)
	sortErrors(errs)
	return errs
}

// loadJob cleans and loads a decoded document with the job schema.
func loadJob(doc any, errs *errList) map[string]any {
	before := len(*errs)
	c := clean(doc, "", errs)
	if len(*errs) > before {
		return nil
	}
	m, ok := c.(map[string]any)
	if !ok || m == nil {
		errs.add("", "a job must be a mapping of fields, got %s", TypeName(c))
		return nil
	}
	out, _ := jobSchema.load(m, "", errs)
	return out
}

// decodeDocument parses data into a generic document.
func decodeDocument(data []byte, format Format) (any, error) {
	switch format {
	case FormatYAML:
		return decodeYAML(data)
	case FormatJSON:
		return decodeJSON(data)
	case FormatMsgpack:
		return decodeMsgpack(data)
	}
	return nil, jobError("unknown job format %q (want yaml, json or msgpack)", string(format))
}

func decodeYAML(data []byte) (any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, jobError("empty job")
		}
		return nil, jobError("invalid YAML: %s", yamlMessage(err))
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, jobError("invalid YAML: line %d: more than one document (remove the \"---\" separator)", next.Line)
	case !errors.Is(err, io.EOF):
		return nil, jobError("invalid YAML: %s", yamlMessage(err))
	}
	// yaml.v3 reads unquoted dates as timestamps; Testflinger's JSON has
	// no such type, so keep them as the strings they are written as.
	stringifyTimestamps(&doc)
	var v any
	if err := doc.Decode(&v); err != nil {
		return nil, jobError("invalid YAML: %s", yamlMessage(err))
	}
	return v, nil
}

func stringifyTimestamps(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!timestamp" {
		n.Tag = "!!str"
	}
	for _, c := range n.Content {
		stringifyTimestamps(c)
	}
}

// yamlMessage keeps yaml's line numbers and drops its "yaml: " prefix.
func yamlMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
	return strings.ReplaceAll(fixYAMLLine(msg), "\n  ", "; ")
}

// yamlParserErrors are the yaml.v3 parser's (not scanner's) messages: it
// reports their line counting from 0, and omits "line 0".
var yamlParserErrors = []string{
	"did not find expected key", "did not find expected node content", "did not find expected '-' indicator",
	"did not find expected ',' or ']'", "did not find expected ',' or '}'", "did not find expected <document start>",
}

// fixYAMLLine makes the line number of a yaml.v3 parser error count from 1,
// as its scanner errors and every editor do.
func fixYAMLLine(msg string) string {
	parser := false
	for _, p := range yamlParserErrors {
		if strings.Contains(msg, p) {
			parser = true
			break
		}
	}
	if !parser {
		return msg
	}
	var n int
	if _, err := fmt.Sscanf(msg, "line %d:", &n); err == nil {
		return fmt.Sprintf("line %d:", n+1) + strings.SplitN(msg, ":", 2)[1]
	}
	return "line 1: " + msg
}

func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, jobError("empty job")
		}
		return nil, jobError("invalid JSON: %s", jsonMessage(data, dec.InputOffset(), err))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, jobError("invalid JSON: %s", jsonMessage(data, dec.InputOffset(), errors.New("data after the top-level value")))
	}
	return v, nil
}

// jsonMessage places a JSON error at its line and column.
func jsonMessage(data []byte, offset int64, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		offset = se.Offset
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		offset = te.Offset
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		offset = int64(len(data))
	}
	offset = min(max(offset, 0), int64(len(data)))
	before := data[:offset]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(offset) - bytes.LastIndexByte(before, '\n')
	return fmt.Sprintf("line %d, column %d: %v", line, col, err)
}

func decodeMsgpack(data []byte) (any, error) {
	if err := checkMsgpack(data, maxMsgpackDepth); err != nil {
		return nil, jobError("invalid msgpack: %v", err)
	}
	r := bytes.NewReader(data)
	dec := msgpack.NewDecoder(r)
	v, err := dec.DecodeInterface()
	if err != nil {
		return nil, jobError("invalid msgpack: %v", err)
	}
	if r.Len() > 0 {
		return nil, jobError("invalid msgpack: %d bytes after the top-level value", r.Len())
	}
	return v, nil
}

var (
	uuidRE       = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	sshKeyRE     = regexp.MustCompile(`^(lp|gh):(\S+)$`)
	secretNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	secretPathRE = regexp.MustCompile(`^[a-zA-Z0-9_/-]+$`)
)

// loadJobID takes a UUID, or "" for none (Testflinger then assigns one).
var loadJobID = stringWith(func(s string) bool { return s == "" || uuidRE.MatchString(s) },
	"must be a UUID such as 3fa85f64-5717-4562-b3fc-2c963f66afa6")

// loadWebhook takes an http or https URL, or "" for none.
var loadWebhook = stringWith(func(s string) bool {
	if s == "" {
		return true
	}
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.Hostname() != ""
}, "must be an http or https URL")

// loadTestCmds takes a script (a string) or a list of commands.
func loadTestCmds(v any, path string, errs *errList) any {
	if _, ok := v.([]any); ok {
		return listOf(loadString, 0, -1)(v, path, errs)
	}
	if s, ok := v.(string); ok {
		return s
	}
	errs.add(path, "must be a string or a list of strings, got %s", describe(v))
	return nil
}

// loadSecrets takes a mapping of environment variable names to secret paths.
func loadSecrets(v any, path string, errs *errList) any {
	m, ok := v.(map[string]any)
	if !ok {
		errs.add(path, "must be a mapping, got %s", describe(v))
		return nil
	}
	value := matching(secretPathRE, "^[a-zA-Z0-9_/-]+$")
	out := make(map[string]any, len(m))
	for _, k := range sortedKeys(m) {
		p := joinPath(path, k)
		if !secretNameRE.MatchString(k) {
			errs.add(p, "name must match ^[a-zA-Z_][a-zA-Z0-9_]*$")
		}
		if m[k] == nil {
			errs.add(p, "must not be null")
			continue
		}
		out[k] = value(m[k], p, errs)
	}
	return out
}

// loadFirmware takes firmware_update_data: any mapping, whose version must
// be a string and ignore_failure a boolean when present.
func loadFirmware(v any, path string, errs *errList) any {
	m, ok := v.(map[string]any)
	if !ok {
		errs.add(path, "must be a mapping, got %s", describe(v))
		return nil
	}
	if ver, ok := m["version"]; ok {
		loadString(ver, joinPath(path, "version"), errs)
	}
	if ign, ok := m["ignore_failure"]; ok {
		strictBool(ign, joinPath(path, "ignore_failure"), errs)
	}
	return m
}

var testDataSchema = &schema{name: "test_data", fields: []field{
	{name: "test_cmds", load: loadTestCmds},
	{name: "attachments", load: attachmentList},
	{name: "test_username", load: loadString},
	{name: "test_password", load: loadString},
	{name: "secrets", load: loadSecrets},
}}

var reserveDataSchema = &schema{name: "reserve_data", fields: []field{
	{name: "ssh_keys", load: listOf(matching(sshKeyRE, "lp:<user> or gh:<user>"), 0, -1)},
	{name: "timeout", allowNull: true, load: durationIn(1)},
}}

var jobSchema = &schema{name: "job", fields: []field{
	{name: "job_id", load: loadJobID},
	{name: "parent_job_id", load: loadString},
	{name: "name", load: loadString},
	{name: "tags", load: listOf(loadString, 0, -1)},
	{name: "job_queue", required: true, load: nonEmptyString},
	{name: "global_timeout", load: intIn(1, maxSeconds)},
	{name: "output_timeout", load: intIn(1, maxSeconds)},
	{name: "allocation_timeout", load: intIn(1, maxSeconds)},
	{name: "provision_data", allowNull: true, load: loadProvision},
	{name: "firmware_update_data", load: loadFirmware},
	{name: "test_data", load: nested(testDataSchema)},
	{name: "allocate_data", load: loadDict},
	{name: "reserve_data", load: nested(reserveDataSchema)},
	{name: "job_status_webhook", load: loadWebhook},
	{name: "job_priority", load: intIn(0, MaxJobPriority)},
	{name: "exclude_agents", load: listOf(loadString, 0, -1)},
	{name: "debug", load: loadBool},
}}

// buildJob converts a loaded, valid job document into a Job. Empty lists
// and mappings are left out, as Testflinger's agent treats them as absent,
// so that a job has one form however it was written.
func buildJob(m map[string]any) *Job {
	j := &Job{
		JobID:              asStr(m["job_id"]),
		ParentJobID:        asStr(m["parent_job_id"]),
		Name:               asStr(m["name"]),
		Tags:               asStrs(m["tags"]),
		JobQueue:           asStr(m["job_queue"]),
		GlobalTimeout:      asNum(m["global_timeout"]),
		OutputTimeout:      asNum(m["output_timeout"]),
		AllocationTimeout:  asNum(m["allocation_timeout"]),
		ProvisionData:      asData(m["provision_data"]),
		FirmwareUpdateData: asData(m["firmware_update_data"]),
		AllocateData:       asData(m["allocate_data"]),
		JobStatusWebhook:   asStr(m["job_status_webhook"]),
		JobPriority:        asNum(m["job_priority"]),
		ExcludeAgents:      asStrs(m["exclude_agents"]),
	}
	j.Debug, _ = m["debug"].(bool)
	if td, ok := m["test_data"].(map[string]any); ok {
		t := &TestData{
			TestUsername: asStr(td["test_username"]),
			TestPassword: asStr(td["test_password"]),
		}
		switch c := td["test_cmds"].(type) {
		case string:
			t.TestCmds = ScriptCmds(c)
		case []any:
			t.TestCmds = ListCmds(asStrs(c)...)
		}
		if l, ok := td["attachments"].([]any); ok && len(l) > 0 {
			t.Attachments = make([]Attachment, len(l))
			for i, a := range l {
				am, _ := a.(map[string]any)
				t.Attachments[i] = Attachment{Local: asStr(am["local"]), Agent: asStr(am["agent"]), Device: asStr(am["device"])}
			}
		}
		if s, ok := td["secrets"].(map[string]any); ok && len(s) > 0 {
			t.Secrets = make(map[string]string, len(s))
			for k, v := range s {
				t.Secrets[k] = asStr(v)
			}
		}
		j.TestData = t
	}
	if rd, ok := m["reserve_data"].(map[string]any); ok {
		j.ReserveData = &ReserveData{SSHKeys: asStrs(rd["ssh_keys"]), Timeout: asNum(rd["timeout"])}
	}
	return j
}

func asStr(v any) string { s, _ := v.(string); return s }

func asNum(v any) int { n, _ := v.(int); return n }

// asStrs returns a list of strings, nil when empty.
func asStrs(v any) []string {
	l, ok := v.([]any)
	if !ok || len(l) == 0 {
		return nil
	}
	out := make([]string, len(l))
	for i, e := range l {
		out[i] = asStr(e)
	}
	return out
}

// asData returns a section, nil when empty.
func asData(v any) Data {
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 {
		return nil
	}
	return Data(m)
}

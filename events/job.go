package events

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"gopkg.in/yaml.v3"
)

// Phase names a step of a job, in Testflinger's vocabulary.
type Phase string

// The phases of a job, in the order a device runs them. Cleanup always runs.
const (
	PhaseSetup          Phase = "setup"
	PhaseProvision      Phase = "provision"
	PhaseFirmwareUpdate Phase = "firmware_update"
	PhaseTest           Phase = "test"
	PhaseAllocate       Phase = "allocate"
	PhaseReserve        Phase = "reserve"
	PhaseCleanup        Phase = "cleanup"
)

// Phases lists every phase in the order a device runs them.
var Phases = []Phase{PhaseSetup, PhaseProvision, PhaseFirmwareUpdate, PhaseTest, PhaseAllocate, PhaseReserve, PhaseCleanup}

// Valid reports whether p is one of the known phases.
func (p Phase) Valid() bool { return slices.Contains(Phases, p) }

// Job is a Testflinger job: every field of Testflinger's job schema, with
// the same names on every encoding (YAML and JSON from users, msgpack on the
// wire). A Job read off the wire keeps fields it does not know in Extra so
// that mixed versions can pass it along; jobs from users are validated by
// ParseJob, which rejects unknown fields.
type Job struct {
	// JobID is a UUID; the orchestrator assigns one when a submission has none.
	JobID string `msgpack:"job_id,omitempty" json:"job_id,omitempty" yaml:"job_id,omitempty"`
	// ParentJobID names the multi-device job this job is a child of.
	ParentJobID string `msgpack:"parent_job_id,omitempty" json:"parent_job_id,omitempty" yaml:"parent_job_id,omitempty"`
	// Name is a free-form job name.
	Name string `msgpack:"name,omitempty" json:"name,omitempty" yaml:"name,omitempty"`
	// Tags are free-form labels used to search for jobs.
	Tags []string `msgpack:"tags,omitempty" json:"tags,omitempty" yaml:"tags,omitempty"`
	// JobQueue is the queue (device type or pool) that serves the job. Required.
	JobQueue string `msgpack:"job_queue" json:"job_queue" yaml:"job_queue"`
	// GlobalTimeout bounds the whole job, in seconds (0: the default).
	GlobalTimeout int `msgpack:"global_timeout,omitempty" json:"global_timeout,omitempty" yaml:"global_timeout,omitempty"`
	// OutputTimeout bounds the test phase's silence, in seconds (0: the default).
	OutputTimeout int `msgpack:"output_timeout,omitempty" json:"output_timeout,omitempty" yaml:"output_timeout,omitempty"`
	// AllocationTimeout bounds a multi-device job's wait for its children, in seconds.
	AllocationTimeout int `msgpack:"allocation_timeout,omitempty" json:"allocation_timeout,omitempty" yaml:"allocation_timeout,omitempty"`
	// ProvisionData is read by the device's connector; its shape depends on the connector.
	ProvisionData Data `msgpack:"provision_data,omitempty" json:"provision_data,omitempty" yaml:"provision_data,omitempty"`
	// FirmwareUpdateData holds version and ignore_failure for the firmware_update phase.
	FirmwareUpdateData Data `msgpack:"firmware_update_data,omitempty" json:"firmware_update_data,omitempty" yaml:"firmware_update_data,omitempty"`
	// TestData holds the test phase's commands, attachments, user and secrets.
	TestData *TestData `msgpack:"test_data,omitempty" json:"test_data,omitempty" yaml:"test_data,omitempty"`
	// AllocateData asks for the device to be held (allocate: true) for a multi-device job.
	AllocateData Data `msgpack:"allocate_data,omitempty" json:"allocate_data,omitempty" yaml:"allocate_data,omitempty"`
	// ReserveData asks for the device to be reserved for interactive use.
	ReserveData *ReserveData `msgpack:"reserve_data,omitempty" json:"reserve_data,omitempty" yaml:"reserve_data,omitempty"`
	// JobStatusWebhook is a URL that receives the job's events.
	JobStatusWebhook string `msgpack:"job_status_webhook,omitempty" json:"job_status_webhook,omitempty" yaml:"job_status_webhook,omitempty"`
	// JobPriority orders jobs within a queue: higher first.
	JobPriority int `msgpack:"job_priority,omitempty" json:"job_priority,omitempty" yaml:"job_priority,omitempty"`
	// ExcludeAgents names devices that must not run the job.
	ExcludeAgents []string `msgpack:"exclude_agents,omitempty" json:"exclude_agents,omitempty" yaml:"exclude_agents,omitempty"`
	// Debug asks connectors for more output.
	Debug bool `msgpack:"debug,omitempty" json:"debug,omitempty" yaml:"debug,omitempty"`

	// Extra keeps fields read off the wire that this version does not know.
	Extra map[string]any `msgpack:"-" json:"-" yaml:"-"`
}

// TestData is the test_data section of a job.
type TestData struct {
	// TestCmds is a script (one string) or a list of commands.
	TestCmds *TestCmds `msgpack:"test_cmds,omitempty" json:"test_cmds,omitempty" yaml:"test_cmds,omitempty"`
	// Attachments are files sent with the job for the test phase.
	Attachments []Attachment `msgpack:"attachments,omitempty" json:"attachments,omitempty" yaml:"attachments,omitempty"`
	// TestUsername is the user tests log in to the device as (default ubuntu).
	TestUsername string `msgpack:"test_username,omitempty" json:"test_username,omitempty" yaml:"test_username,omitempty"`
	// TestPassword is that user's password (default ubuntu).
	TestPassword string `msgpack:"test_password,omitempty" json:"test_password,omitempty" yaml:"test_password,omitempty"`
	// Secrets maps environment variable names to secret store paths.
	Secrets map[string]string `msgpack:"secrets,omitempty" json:"secrets,omitempty" yaml:"secrets,omitempty"`

	// Extra keeps fields read off the wire that this version does not know.
	Extra map[string]any `msgpack:"-" json:"-" yaml:"-"`
}

// Empty reports whether the section carries nothing, which skips the phase.
func (t *TestData) Empty() bool {
	return t == nil || (t.TestCmds == nil && len(t.Attachments) == 0 && t.TestUsername == "" &&
		t.TestPassword == "" && len(t.Secrets) == 0 && len(t.Extra) == 0)
}

// Attachment names a file sent with a job: where it is on the submitter's
// machine (local), where it lands in the run directory (agent) and, when
// given, where it is copied on the device (device).
type Attachment struct {
	Local  string `msgpack:"local,omitempty" json:"local,omitempty" yaml:"local,omitempty"`
	Agent  string `msgpack:"agent,omitempty" json:"agent,omitempty" yaml:"agent,omitempty"`
	Device string `msgpack:"device,omitempty" json:"device,omitempty" yaml:"device,omitempty"`
}

// ReserveData is the reserve_data section of a job.
type ReserveData struct {
	// SSHKeys are key-server identities, "lp:user" or "gh:user".
	SSHKeys []string `msgpack:"ssh_keys,omitempty" json:"ssh_keys,omitempty" yaml:"ssh_keys,omitempty"`
	// Timeout is the reservation's length in seconds (0: the default, one hour).
	Timeout int `msgpack:"timeout,omitempty" json:"timeout,omitempty" yaml:"timeout,omitempty"`

	// Extra keeps fields read off the wire that this version does not know.
	Extra map[string]any `msgpack:"-" json:"-" yaml:"-"`
}

// DefaultReserveTimeout is how long a reservation lasts when reserve_data gives no timeout.
const DefaultReserveTimeout = time.Hour

// TestCmds is test_data.test_cmds: Testflinger's schema takes a string (run
// as one script) and its connectors also take a list (run command by
// command). It keeps which form it was given in.
type TestCmds struct {
	// Script is the whole script when test_cmds was one string.
	Script string
	// List holds the commands when test_cmds was a list.
	List []string
	// IsList records that test_cmds was a list.
	IsList bool
}

// ScriptCmds returns test_cmds given as one script.
func ScriptCmds(s string) *TestCmds { return &TestCmds{Script: s} }

// ListCmds returns test_cmds given as a list of commands.
func ListCmds(cmds ...string) *TestCmds { return &TestCmds{List: cmds, IsList: true} }

func (c *TestCmds) value() any {
	if c.IsList {
		if c.List == nil {
			return []string{} // nil would be read back as no test_cmds at all
		}
		return c.List
	}
	return c.Script
}

func (c *TestCmds) set(v any) error {
	switch t := v.(type) {
	case string:
		*c = TestCmds{Script: t}
	case []any:
		list := make([]string, len(t))
		for i, e := range t {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("test_cmds[%d]: must be a string, got %s", i, TypeName(e))
			}
			list[i] = s
		}
		*c = TestCmds{List: list, IsList: true}
	case []string:
		*c = TestCmds{List: slices.Clone(t), IsList: true}
	default:
		return fmt.Errorf("test_cmds: must be a string or a list of strings, got %s", TypeName(v))
	}
	return nil
}

// EncodeMsgpack writes the string or the list.
func (c *TestCmds) EncodeMsgpack(enc *msgpack.Encoder) error { return enc.Encode(c.value()) }

// DecodeMsgpack reads a string or a list of strings.
func (c *TestCmds) DecodeMsgpack(dec *msgpack.Decoder) error {
	v, err := dec.DecodeInterface()
	if err != nil {
		return err
	}
	return c.set(v)
}

// MarshalJSON writes the string or the list.
func (c TestCmds) MarshalJSON() ([]byte, error) { return jsonMarshal(c.value()) }

// UnmarshalJSON reads a string or a list of strings.
func (c *TestCmds) UnmarshalJSON(b []byte) error {
	var v any
	if err := jsonUnmarshal(b, &v); err != nil {
		return err
	}
	return c.set(v)
}

// MarshalYAML writes the string or the list.
func (c TestCmds) MarshalYAML() (any, error) { return c.value(), nil }

// UnmarshalYAML reads a string or a list of strings.
func (c *TestCmds) UnmarshalYAML(n *yaml.Node) error {
	var v any
	if err := n.Decode(&v); err != nil {
		return err
	}
	return c.set(v)
}

// Data is a free-form section of a job (provision_data and the like) with
// typed accessors for connectors.
type Data map[string]any

// Has reports whether key is present.
func (d Data) Has(key string) bool { _, ok := d[key]; return ok }

// String returns the string at key, or def when it is absent. A value of
// another type is an error naming the key.
func (d Data) String(key, def string) (string, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return def, nil
	}
	s, ok := v.(string)
	if !ok {
		return def, fmt.Errorf("%s: must be a string, got %s", key, TypeName(v))
	}
	return s, nil
}

// Bool returns the boolean at key, or def when it is absent.
func (d Data) Bool(key string, def bool) (bool, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return def, nil
	}
	b, ok := v.(bool)
	if !ok {
		return def, fmt.Errorf("%s: must be true or false, got %s", key, TypeName(v))
	}
	return b, nil
}

// Int returns the integer at key, or def when it is absent.
func (d Data) Int(key string, def int) (int, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return def, nil
	}
	n, ok := AsInt(v)
	if !ok {
		return def, fmt.Errorf("%s: must be an integer, got %s", key, TypeName(v))
	}
	return n, nil
}

// Duration returns the duration at key, given as whole seconds or as a
// duration string ("90s", "2h30m"), or def when it is absent.
func (d Data) Duration(key string, def time.Duration) (time.Duration, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return def, nil
	}
	if n, ok := AsInt(v); ok {
		return time.Duration(n) * time.Second, nil
	}
	if s, ok := v.(string); ok {
		secs, err := ParseDuration(s)
		if err != nil {
			return def, fmt.Errorf("%s: %w", key, err)
		}
		return time.Duration(secs) * time.Second, nil
	}
	return def, fmt.Errorf("%s: must be a duration, got %s", key, TypeName(v))
}

// Skip reports whether the section asks for its phase to be skipped (skip: true).
func (d Data) Skip() bool {
	b, _ := d.Bool("skip", false)
	return b
}

// AsInt converts the integer kinds the decoders produce (and integral
// floats, which JSON produces) to int; values out of int's range are refused.
func AsInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int8:
		return int(n), true
	case int16:
		return int(n), true
	case int32:
		return int(n), true
	case int64:
		if n < math.MinInt || n > math.MaxInt {
			return 0, false
		}
		return int(n), true
	case uint:
		if n > math.MaxInt {
			return 0, false
		}
		return int(n), true
	case uint8:
		return int(n), true
	case uint16:
		return int(n), true
	case uint32:
		if uint64(n) > math.MaxInt {
			return 0, false
		}
		return int(n), true
	case uint64:
		if n > math.MaxInt {
			return 0, false
		}
		return int(n), true
	case float64:
		return floatInt(n)
	case float32:
		return floatInt(float64(n))
	}
	return 0, false
}

// TypeName names the kind of a decoded value for error messages.
func TypeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case map[string]any, Data:
		return "a mapping"
	case []any:
		return "a list"
	case float32, float64:
		return "a number"
	}
	if _, ok := AsInt(v); ok {
		return "an integer"
	}
	return fmt.Sprintf("%T", v)
}

// ParseDuration reads a duration as Testflinger's parse_duration does and
// returns whole seconds. It takes whole seconds ("3600", "+90", "1_000") or
// a sequence of numbers with units, white space allowed between them and
// between a number and its unit: s, sec, secs; m, min, mins; h, hour,
// hours; d, day, days, in any case ("2h30m", "1d 12h", "90 sec"). Unlike
// Python, which has no bound, it refuses a total over 2^31-1 seconds.
func ParseDuration(s string) (int, error) {
	t := strings.ToLower(strings.TrimFunc(s, isPySpace))
	if t == "" {
		return 0, fmt.Errorf("invalid duration %q: empty", s)
	}
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("invalid duration %q: negative", s)
	}
	if n, err := parsePyInt(t); err == nil {
		if n > maxSeconds {
			return 0, fmt.Errorf("invalid duration %q: longer than %d seconds", s, maxSeconds)
		}
		return n, nil
	}
	total, i := 0, 0
	for {
		i = skipPySpace(t, i)
		if i == len(t) {
			return total, nil
		}
		start := i
		for i < len(t) && isDigit(t[i]) {
			i++
		}
		if i == start {
			r, _ := utf8.DecodeRuneInString(t[i:])
			return 0, fmt.Errorf("invalid duration %q: unexpected %q (use a number of seconds or units d, h, m, s such as 2h30m)", s, r)
		}
		digits := t[start:i]
		i = skipPySpace(t, i)
		unit, mult := durationUnit(t[i:])
		if unit == "" {
			if i == len(t) {
				return 0, fmt.Errorf("invalid duration %q: %s has no unit (use d, h, m or s)", s, digits)
			}
			r, _ := utf8.DecodeRuneInString(t[i:])
			return 0, fmt.Errorf("invalid duration %q: unknown unit at %q (use d, h, m or s)", s, r)
		}
		i += len(unit)
		n, err := strconv.Atoi(digits)
		if err != nil || n > maxSeconds/mult || total+n*mult > maxSeconds {
			return 0, fmt.Errorf("invalid duration %q: longer than %d seconds", s, maxSeconds)
		}
		total += n * mult
	}
}

// durationUnit returns the unit s starts with, trying the longer spellings
// first as parse_duration's pattern does, and its length in seconds.
func durationUnit(s string) (string, int) {
	for _, u := range []struct {
		name string
		secs int
	}{
		{"secs", 1}, {"sec", 1}, {"mins", 60}, {"min", 60}, {"hours", 3600}, {"hour", 3600},
		{"days", 86400}, {"day", 86400}, {"s", 1}, {"m", 60}, {"h", 3600}, {"d", 86400},
	} {
		if strings.HasPrefix(s, u.name) {
			return u.name, u.secs
		}
	}
	return "", 0
}

func skipPySpace(s string, i int) int {
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !isPySpace(r) {
			break
		}
		i += n
	}
	return i
}

// PhaseData returns the section of the job that drives phase p (nil for
// setup and cleanup, which have none).
func (j *Job) PhaseData(p Phase) Data {
	switch p {
	case PhaseProvision:
		return j.ProvisionData
	case PhaseFirmwareUpdate:
		return j.FirmwareUpdateData
	case PhaseAllocate:
		return j.AllocateData
	}
	return nil
}

// SkipReason returns why Testflinger's skip rules skip phase p for this job,
// or "" when the phase runs: setup and cleanup always run; every other phase
// runs only when its <phase>_data section is present, not empty, and does not
// say skip: true.
func (j *Job) SkipReason(p Phase) string {
	switch p {
	case PhaseSetup, PhaseCleanup:
		return ""
	case PhaseTest:
		if j.TestData.Empty() {
			return "no test_data in the job"
		}
		return ""
	case PhaseReserve:
		if j.ReserveData == nil || (len(j.ReserveData.SSHKeys) == 0 && j.ReserveData.Timeout == 0 && len(j.ReserveData.Extra) == 0) {
			return "no reserve_data in the job"
		}
		return ""
	}
	d := j.PhaseData(p)
	if len(d) == 0 {
		return fmt.Sprintf("no %s_data in the job", p)
	}
	if d.Skip() {
		return fmt.Sprintf("%s_data says skip: true", p)
	}
	return ""
}

// AttachmentPhases are the phases whose data may carry attachments, in
// the order of the directories of a job's attachment archive.
var AttachmentPhases = []Phase{PhaseProvision, PhaseFirmwareUpdate, PhaseTest}

// AttachmentsOf returns the attachments named by phase p's data
// (provision_data, firmware_update_data or test_data), in their order.
func (j *Job) AttachmentsOf(p Phase) []Attachment {
	if p == PhaseTest {
		if j.TestData == nil {
			return nil
		}
		return j.TestData.Attachments
	}
	var d Data
	switch p {
	case PhaseProvision:
		d = j.ProvisionData
	case PhaseFirmwareUpdate:
		d = j.FirmwareUpdateData
	}
	l, _ := d["attachments"].([]any)
	out := make([]Attachment, 0, len(l))
	for _, e := range l {
		m, _ := e.(map[string]any)
		out = append(out, Attachment{Local: asStr(m["local"]), Agent: asStr(m["agent"]), Device: asStr(m["device"])})
	}
	return out
}

// HasAttachments reports whether any phase's data names an attachment:
// such a job waits for its attachment archive before it is queued.
func (j *Job) HasAttachments() bool {
	for _, p := range AttachmentPhases {
		if len(j.AttachmentsOf(p)) > 0 {
			return true
		}
	}
	return false
}

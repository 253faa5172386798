package events_test

import (
	"bytes"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/flingerlab/flinger/events"
)

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 890, time.UTC)

// roundTrip encodes v, decodes it into out and returns the encoding.
func roundTrip(t *testing.T, v, out any) []byte {
	t.Helper()
	b, err := events.Encode(v)
	if err != nil {
		t.Fatalf("Encode(%T): %v", v, err)
	}
	if err := events.Decode(b, out); err != nil {
		t.Fatalf("Decode(%T): %v", out, err)
	}
	return b
}

// utc drops the location msgpack gives decoded times, so they compare equal.
func utc(ts ...*time.Time) {
	for _, t := range ts {
		*t = t.UTC()
	}
}

func sampleJob(cmds *events.TestCmds) *events.Job {
	return &events.Job{
		JobID: uuid1, Name: "n", Tags: []string{"a"}, JobQueue: "q", GlobalTimeout: 60,
		ProvisionData: events.Data{"url": "http://x.example.com/i.img", "create_user": true,
			"nested": map[string]any{"k": "v"}, "list": []any{"a", "b"}},
		TestData: &events.TestData{TestCmds: cmds, Attachments: []events.Attachment{{Agent: "a", Device: "/d"}},
			Secrets: map[string]string{"A": "p/a", "B": "p/b"}},
		ReserveData:   &events.ReserveData{SSHKeys: []string{"lp:x"}, Timeout: 90},
		ExcludeAgents: []string{"d1"}, Debug: true,
	}
}

func TestJobRoundTrip(t *testing.T) {
	for _, cmds := range []*events.TestCmds{
		events.ScriptCmds("echo one\necho two"),
		events.ListCmds("echo one", "echo two"),
		events.ListCmds(),
		events.ScriptCmds(""),
		nil,
	} {
		in := sampleJob(cmds)
		var out events.Job
		roundTrip(t, in, &out)
		if cmds != nil && cmds.IsList && cmds.List == nil {
			// An empty list comes back as an empty list, not a nil one.
			if c := out.TestData.TestCmds; c == nil || !c.IsList || len(c.List) != 0 {
				t.Errorf("empty list test_cmds came back as %+v", c)
			}
			out.TestData.TestCmds.List = nil
		}
		if !reflect.DeepEqual(&out, in) {
			t.Errorf("round trip of test_cmds %+v:\n got %+v\nwant %+v", cmds, out.TestData.TestCmds, in.TestData.TestCmds)
		}
	}
}

func TestEventRoundTrip(t *testing.T) {
	code := 3
	in := &events.Event{Type: events.EventType, ID: "id1", Time: t0, Name: events.PhaseFail(events.PhaseTest),
		JobID: uuid1, Device: "dev", Queue: "q", Host: "h", Phase: events.PhaseTest, Detail: "d",
		ExitCode: &code, Attempt: 2, Data: map[string]any{"fields": []any{"a"}}}
	var out events.Event
	roundTrip(t, in, &out)
	utc(&out.Time)
	if !reflect.DeepEqual(&out, in) {
		t.Errorf("got %+v\nwant %+v", out, in)
	}
}

func TestDeviceStatusRoundTrip(t *testing.T) {
	in := &events.DeviceStatus{Type: events.DeviceType, Name: "dev", Host: "h", Connector: "muxpi",
		Queues: []string{"a", "b"}, State: events.StateBusy, Health: events.HealthGood, JobID: uuid1,
		Phase: events.PhaseProvision, Comment: "c", Since: t0, Heartbeat: t0.Add(time.Minute)}
	var out events.DeviceStatus
	roundTrip(t, in, &out)
	utc(&out.Since, &out.Heartbeat)
	if !reflect.DeepEqual(&out, in) {
		t.Errorf("got %+v\nwant %+v", out, in)
	}
}

func TestJobRecordRoundTrip(t *testing.T) {
	in := &events.JobRecord{Type: events.JobRecordType, Job: *sampleJob(events.ListCmds("x")),
		State: events.JobCompleted, Outcome: events.OutcomeTestFail, EndReason: events.EventNormalExit,
		Device: "dev", Host: "h", Attempt: 1,
		Status:      map[events.Phase]int{events.PhaseSetup: 0, events.PhaseTest: 1, events.PhaseCleanup: 0},
		DeviceInfo:  map[string]any{"ip": "10.0.0.2"},
		SubmittedAt: t0, StartedAt: t0.Add(time.Second), EndedAt: t0.Add(time.Hour)}
	var out events.JobRecord
	roundTrip(t, in, &out)
	utc(&out.SubmittedAt, &out.StartedAt, &out.EndedAt)
	if !reflect.DeepEqual(&out, in) {
		t.Errorf("got %+v\nwant %+v", out, in)
	}
}

func TestEncodeDeterministic(t *testing.T) {
	rec := &events.JobRecord{Type: events.JobRecordType, Job: *sampleJob(events.ScriptCmds("x")),
		Status: map[events.Phase]int{}, DeviceInfo: map[string]any{}}
	for i, p := range events.Phases {
		rec.Status[p] = i
		rec.DeviceInfo[string(p)] = i
		rec.Job.ProvisionData[string(p)] = map[string]any{"a": 1, "b": 2, "c": 3}
	}
	first, err := events.Encode(rec)
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		b, err := events.Encode(rec)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, first) {
			t.Fatal("two encodings of one record differ")
		}
	}
}

// withExtra encodes v, adds the extra keys to its map and encodes it again.
func withExtra(t *testing.T, v any, extra map[string]any) []byte {
	t.Helper()
	b, err := events.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := msgpack.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, e := range extra {
		m[k] = e
	}
	out, err := msgpack.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestUnknownFieldsKept(t *testing.T) {
	extra := map[string]any{"future": map[string]any{"n": 7, "s": "x"}, "zz_flag": true}
	for _, tc := range []struct {
		in    any
		out   func() any
		extra func(any) map[string]any
	}{
		{sampleJob(events.ScriptCmds("x")), func() any { return new(events.Job) }, func(v any) map[string]any { return v.(*events.Job).Extra }},
		{events.NewEvent(events.EventJobStart), func() any { return new(events.Event) }, func(v any) map[string]any { return v.(*events.Event).Extra }},
		{&events.DeviceStatus{Type: events.DeviceType, Name: "d"}, func() any { return new(events.DeviceStatus) }, func(v any) map[string]any { return v.(*events.DeviceStatus).Extra }},
		{&events.JobRecord{Type: events.JobRecordType}, func() any { return new(events.JobRecord) }, func(v any) map[string]any { return v.(*events.JobRecord).Extra }},
	} {
		payload := withExtra(t, tc.in, extra)
		first := tc.out()
		if err := events.Decode(payload, first); err != nil {
			t.Fatalf("%T: %v", first, err)
		}
		second := tc.out()
		again := roundTrip(t, first, second)
		for _, v := range []any{first, second} {
			got := tc.extra(v)
			future, _ := got["future"].(map[string]any)
			n, ok := events.AsInt(future["n"])
			if len(got) != 2 || got["zz_flag"] != true || !ok || n != 7 || future["s"] != "x" {
				t.Errorf("%T: extra = %#v", v, got)
			}
		}
		third := tc.out()
		if err := events.Decode(again, third); err != nil {
			t.Fatal(err)
		}
		if b, _ := events.Encode(third); !bytes.Equal(b, again) {
			t.Errorf("%T: encoding changed on a second round trip", third)
		}
	}
}

func TestDecodeWrongKind(t *testing.T) {
	b, err := events.Encode(events.NewEvent(events.EventJobStart))
	if err != nil {
		t.Fatal(err)
	}
	var ds events.DeviceStatus
	err = events.Decode(b, &ds)
	if !errors.Is(err, events.ErrDecode) {
		t.Fatalf("event decoded as device status: err = %v", err)
	}
	if !strings.Contains(err.Error(), "flinger.device") || !strings.Contains(err.Error(), "flinger.event.v1") {
		t.Errorf("error %q does not name both kinds", err)
	}
	var rec events.JobRecord
	if err := events.Decode(b, &rec); !errors.Is(err, events.ErrDecode) {
		t.Errorf("event decoded as job record: err = %v", err)
	}
	// A payload without a type is refused too.
	nt, _ := msgpack.Marshal(map[string]any{"name": "dev"})
	if err := events.Decode(nt, &ds); !errors.Is(err, events.ErrDecode) {
		t.Errorf("untyped payload: err = %v", err)
	}
}

func TestDecodeNewerVersion(t *testing.T) {
	ev := events.NewEvent(events.EventJobEnd)
	ev.Type = "flinger.event.v2"
	payload := withExtra(t, ev, map[string]any{"severity": "high", "labels": []any{"x"}})
	var out events.Event
	if err := events.Decode(payload, &out); err != nil {
		t.Fatalf("v2 event refused: %v", err)
	}
	if out.Type != "flinger.event.v2" || out.Name != events.EventJobEnd || out.Extra["severity"] != "high" {
		t.Errorf("decoded %+v", out)
	}
	b, err := events.Encode(&out)
	if err != nil {
		t.Fatal(err)
	}
	var again events.Event
	if err := events.Decode(b, &again); err != nil || again.Extra["severity"] != "high" || again.Type != "flinger.event.v2" {
		t.Errorf("second decode: %+v, %v", again, err)
	}
}

func TestDecodeGarbage(t *testing.T) {
	deep := append(bytes.Repeat([]byte{0x91}, 100_000), 0xc0)
	wrongTypes, _ := msgpack.Marshal(map[string]any{"type": events.EventType, "time": "yesterday"})
	for name, b := range map[string][]byte{
		"empty":           nil,
		"never-used 0xc1": {0xc1},
		"truncated map":   {0x83, 0xa4, 't', 'y'},
		"a string":        {0xa3, 'a', 'b', 'c'},
		"text":            []byte("hello, world"),
		"huge array":      {0xdd, 0xff, 0xff, 0xff, 0xff},
		"deep nesting":    deep,
		"trailing bytes":  append(withExtra(t, events.NewEvent("x"), nil), 0xc0),
		"wrong types":     wrongTypes,
		"non-string key":  {0x81, 0x01, 0x02},
	} {
		for _, v := range []any{new(events.Event), new(events.DeviceStatus), new(events.JobRecord), new(events.Job)} {
			if err := events.Decode(b, v); !errors.Is(err, events.ErrDecode) {
				if name == "wrong types" && reflect.TypeOf(v) != reflect.TypeFor[*events.Event]() {
					continue // other kinds have no time field; they fail on the type or not at all
				}
				t.Errorf("%s as %T: err = %v, want ErrDecode", name, v, err)
			}
		}
	}
}

// NATS subject tokens may not be empty or hold white space, '.', '*' or '>'.
func validToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n.*>") && strings.IndexFunc(s, func(r rune) bool { return r > 0x7e || r < 0x21 }) < 0
}

// KV keys as nats.go's jetstream package checks them.
var kvKeyRE = regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`)

func validKey(s string) bool {
	return s != "" && s[0] != '.' && s[len(s)-1] != '.' && !strings.Contains(s, "..") && kvKeyRE.MatchString(s)
}

func TestTokenAndKey(t *testing.T) {
	names := []string{
		"", " ", "a", "A-b_c", "queue.with.dots", "with space", "*", ">", "a*b", "a>b", "tab\tname",
		"ünïcödé", "日本", "~", "~abc", "_b64_", "_b64_x", "lp:user", "a/b", "a=b", "a+b@c",
		"x\x00y", "line\nbreak", "..", "-", uuid1,
	}
	tokens := map[string]string{}
	keys := map[string]string{}
	for _, n := range names {
		tok, key := events.Token(n), events.Key(n)
		if !validToken(tok) {
			t.Errorf("Token(%q) = %q, not a valid subject token", n, tok)
		}
		if !validKey(key) {
			t.Errorf("Key(%q) = %q, not a valid KV key", n, key)
		}
		if prev, dup := tokens[tok]; dup {
			t.Errorf("Token(%q) = Token(%q) = %q", n, prev, tok)
		}
		if prev, dup := keys[key]; dup {
			t.Errorf("Key(%q) = Key(%q) = %q", n, prev, key)
		}
		tokens[tok], keys[key] = n, n
	}
	// Plain names are kept as they are, so subjects stay readable.
	for _, n := range []string{"a", "A-b_c", uuid1, "lp:user"} {
		if events.Token(n) != n {
			t.Errorf("Token(%q) = %q, want it unchanged", n, events.Token(n))
		}
	}
	for _, n := range []string{"a", "A-b_c", uuid1, "a/b"} {
		if events.Key(n) != n {
			t.Errorf("Key(%q) = %q, want it unchanged", n, events.Key(n))
		}
	}
	s := events.MustSubjects("")
	if got := s.Queue("rpi 4.b"); strings.Count(got, ".") != 3 {
		t.Errorf("Queue subject %q has extra tokens", got)
	}
	// A queue's subject lies in its partition's stream.
	for _, q := range []string{"a", "rpi4b", "rpi4b-001", "maas x86", ""} {
		p := events.QueuePartition(q)
		if p < 0 || p >= events.QueuePartitions {
			t.Fatalf("partition of %q is %d", q, p)
		}
		want := strings.TrimSuffix(s.Queues(p), ">")
		if !strings.HasPrefix(s.Queue(q), want) || s.QueueStreamOf(q) != s.QueueStream(p) {
			t.Errorf("queue %q: subject %s outside %s* or stream %s", q, s.Queue(q), want, s.QueueStreamOf(q))
		}
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"3600", 3600, true},
		{"0", 0, true},
		{" 42 ", 42, true},
		{"+5", 5, true},
		{"1_000", 1000, true},
		{"007", 7, true},
		{"30s", 30, true},
		{"30m", 1800, true},
		{"5h", 18000, true},
		{"4d", 345600, true},
		{"1h30m", 5400, true},
		{"2h30m", 9000, true},
		{"2d5h30m", 192600, true},
		{"1H30M", 5400, true},
		{"1h 30m", 5400, true},
		{"1 h 30 m", 5400, true},
		{"30sec", 30, true},
		{"30secs", 30, true},
		{"5min", 300, true},
		{"5mins", 300, true},
		{"2hour", 7200, true},
		{"2hours", 7200, true},
		{"1day", 86400, true},
		{"2days", 172800, true},
		{"1d1d", 172800, true},
		{"0s", 0, true},
		{"\t90s\n", 90, true},
		{"", 0, false},
		{"   ", 0, false},
		{"-5", 0, false},
		{"-5m", 0, false},
		{"5x", 0, false},
		{"1h30", 0, false},
		{"h", 0, false},
		{"1.5h", 0, false},
		{"1 0m", 0, false},
		{"5minutes", 0, false},
		{"1ms", 0, false},
		{"1_0m", 0, false},
		{"1__0", 0, false},
		{"_1", 0, false},
		{"++5", 0, false},
		{"1y", 0, false},
		{"2147483647", 2147483647, true},
		{"2147483648", 0, false},
		{"99999999999999999999999d", 0, false},
		{"24855d", 2147472000, true},
		{"24856d", 0, false},
		{strings.Repeat("2147483647s", 3), 0, false},
	} {
		got, err := events.ParseDuration(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseDuration(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "invalid duration") {
			t.Errorf("ParseDuration(%q): error %q does not say what failed", tc.in, err)
		}
	}
}

func TestAsInt(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want int
		ok   bool
	}{
		{int8(-3), -3, true},
		{uint16(7), 7, true},
		{int64(1) << 40, 1 << 40, true},
		{uint64(1) << 63, 0, false},
		{^uint(0), 0, false},
		{2.0, 2, true},
		{float32(3), 3, true},
		{2.5, 0, false},
		{1e19, 0, false},
		{-9.223372036854775808e18, -1 << 63, true},
		{9.223372036854775808e18, 0, false},
		{"1", 0, false},
		{true, 0, false},
		{nil, 0, false},
	} {
		got, ok := events.AsInt(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("AsInt(%#v) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestDataAccessorsAfterIntake(t *testing.T) {
	// What intake normalises is what the typed accessors read.
	j, err := events.ParseJob([]byte("job_queue: q\nprovision_data: {delay: 2m, output_lines: '5'}\n"), events.FormatYAML, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out events.Job
	roundTrip(t, j, &out)
	d, err := out.ProvisionData.Duration("delay", 0)
	if err != nil || d != 2*time.Minute {
		t.Errorf("delay = %v, %v", d, err)
	}
	n, err := out.ProvisionData.Int("output_lines", 0)
	if err != nil || n != 5 {
		t.Errorf("output_lines = %d, %v", n, err)
	}
}

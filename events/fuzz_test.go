package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/flingerlab/flinger/events"
)

// checkRejection checks the error of a refused job: a *ValidationError
// listing at least one field, sorted by path, each with a message.
func checkRejection(t *testing.T, err error) {
	t.Helper()
	var verr *events.ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("error %T %v is not a *ValidationError", err, err)
	}
	if len(verr.Fields) == 0 {
		t.Fatalf("ValidationError without fields: %v", err)
	}
	for i, f := range verr.Fields {
		if f.Field == "" || f.Message == "" {
			t.Fatalf("field error without a path or a message: %+v", f)
		}
		if i > 0 && events.ComparePaths(verr.Fields[i-1].Field, f.Field) > 0 {
			t.Fatalf("field errors out of order: %q before %q", verr.Fields[i-1].Field, f.Field)
		}
	}
}

// checkAccepted checks that an accepted job travels: its msgpack encoding
// decodes to a job that encodes the same, and its JSON form passes intake
// again unchanged.
func checkAccepted(t *testing.T, j *events.Job) {
	t.Helper()
	if j == nil || j.JobQueue == "" {
		t.Fatalf("accepted job without a queue: %+v", j)
	}
	enc, err := events.Encode(j)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	var back events.Job
	if err := events.Decode(enc, &back); err != nil {
		t.Fatalf("Decode of an accepted job: %v", err)
	}
	if again, err := events.Encode(&back); err != nil || !bytes.Equal(again, enc) {
		t.Fatalf("msgpack round trip changed the job (err %v)", err)
	}
	js, err := json.Marshal(j)
	if err != nil {
		t.Fatalf("JSON of an accepted job: %v", err)
	}
	re, err := events.ParseJob(js, events.FormatJSON, 0)
	if err != nil {
		t.Fatalf("the JSON of an accepted job is refused: %v\n%s", err, js)
	}
	if renc, err := events.Encode(re); err != nil || !bytes.Equal(renc, enc) {
		t.Fatalf("intake of an accepted job's JSON changed it (err %v)\n%s", err, js)
	}
}

func fuzzParseJob(f *testing.F, format events.Format) {
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := events.ParseJob(data, format, 1<<16)
		if err != nil {
			checkRejection(t, err)
			return
		}
		checkAccepted(t, j)
	})
}

func FuzzParseJobYAML(f *testing.F) {
	for _, tc := range jobCases() {
		if tc.format == "" || tc.format == events.FormatYAML {
			f.Add([]byte(tc.doc))
		}
	}
	f.Add([]byte("job_queue: q\nx: &a [*a]\n"))
	f.Add([]byte("job_queue: q\nallocate_data: {? [a] : b}\n"))
	f.Add([]byte("job_queue: q\nallocate_data: !!binary aGVsbG8=\n"))
	fuzzParseJob(f, events.FormatYAML)
}

func FuzzParseJobJSON(f *testing.F) {
	for _, tc := range jobCases() {
		if tc.format == events.FormatJSON {
			f.Add([]byte(tc.doc))
		}
		if tc.fields == nil {
			if j, err := events.ParseJob([]byte(tc.doc), tc.format, 0); err == nil {
				if b, err := json.Marshal(j); err == nil {
					f.Add(b)
				}
			}
		}
	}
	f.Add([]byte(`{"job_queue": "q", "global_timeout": 1e3, "allocate_data": {"x": -0.0, "y": 1e400}}`))
	f.Add([]byte(`{"job_queue": "q", "job_queue": "r"}`))
	fuzzParseJob(f, events.FormatJSON)
}

// fuzzDecode checks that Decode refuses with ErrDecode or gives a value
// that encodes, decodes again and encodes to the same bytes.
func fuzzDecode[T any](f *testing.F, seeds ...any) {
	for _, s := range seeds {
		b, err := events.Encode(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xc1})
	f.Add([]byte{0x81, 0xa4, 't', 'y', 'p', 'e', 0xc0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var v T
		if err := events.Decode(data, &v); err != nil {
			if !errors.Is(err, events.ErrDecode) {
				t.Fatalf("Decode error does not wrap ErrDecode: %v", err)
			}
			return
		}
		enc, err := events.Encode(&v)
		if err != nil {
			t.Fatalf("Encode of a decoded %T: %v", v, err)
		}
		var w T
		if err := events.Decode(enc, &w); err != nil {
			t.Fatalf("Decode of a re-encoded %T: %v", v, err)
		}
		again, err := events.Encode(&w)
		if err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("%T changed on a second round trip (err %v)", v, err)
		}
	})
}

func sampleEvent() *events.Event {
	code := 1
	ev := events.NewEvent(events.PhaseFail(events.PhaseProvision))
	ev.JobID, ev.Device, ev.Phase, ev.ExitCode, ev.Data = uuid1, "dev", events.PhaseProvision, &code, map[string]any{"a": []any{1, "b"}}
	ev.Extra = map[string]any{"future": 1.5}
	return ev
}

func FuzzDecodeEvent(f *testing.F) {
	v2 := sampleEvent()
	v2.Type = "flinger.event.v2"
	fuzzDecode[events.Event](f, sampleEvent(), v2, events.NewEvent(events.EventJobEnd))
}

func FuzzDecodeJobRecord(f *testing.F) {
	rec := &events.JobRecord{Type: events.JobRecordType, Job: *sampleJob(events.ListCmds("a")), State: events.JobWaiting,
		Status: map[events.Phase]int{events.PhaseTest: 1}, SubmittedAt: time.Unix(1700000000, 5)}
	fuzzDecode[events.JobRecord](f, rec, &events.JobRecord{Type: events.JobRecordType})
}

func FuzzDecodeDeviceStatus(f *testing.F) {
	ds := &events.DeviceStatus{Type: events.DeviceType, Name: "dev", Queues: []string{"q"}, State: events.StateIdle,
		Health: events.HealthGood, Since: time.Unix(1700000000, 0), Extra: map[string]any{"x": []any{nil}}}
	fuzzDecode[events.DeviceStatus](f, ds)
}

func FuzzDecodeJob(f *testing.F) {
	fuzzDecode[events.Job](f, sampleJob(events.ScriptCmds("echo")), sampleJob(events.ListCmds("a", "b")), &events.Job{JobQueue: "q"})
}

func FuzzDecodeLogChunk(f *testing.F) {
	fuzzDecode[events.LogChunk](f, &events.LogChunk{JobID: uuid1, Phase: events.PhaseTest, Seq: 3,
		Time: time.Unix(1700000000, 0), Data: []byte("line\n")})
}

func FuzzDecodeSubmitReply(f *testing.F) {
	fuzzDecode[events.SubmitReply](f, &events.SubmitReply{JobID: uuid1, Queue: "q"},
		&events.SubmitReply{JobID: uuid1, Error: "invalid job", Fields: []events.FieldError{{Field: "job_queue", Message: "required"}}})
}

func FuzzDecodeCtlRequest(f *testing.F) {
	fuzzDecode[events.CtlRequest](f, &events.CtlRequest{JobID: uuid1, Comment: "stop"})
}

func FuzzDecodeCtlReply(f *testing.F) {
	fuzzDecode[events.CtlReply](f, &events.CtlReply{State: events.JobCancelled}, &events.CtlReply{Error: "no such job"})
}

package events

import (
	"reflect"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// JobRecordType is the versioned type of JobRecord.
const JobRecordType = "flinger.jobrecord.v1"

// JobState is Testflinger's job_state: waiting, then the phase being run,
// then completed or cancelled.
type JobState string

// Job states. Besides these, a running job's state is the name of its phase.
const (
	JobWaiting   JobState = "waiting"
	JobAllocated JobState = "allocated"
	JobCancelled JobState = "cancelled"
	JobCompleted JobState = "completed"
	// PhaseStateSetup is the state of a job a device has just claimed.
	PhaseStateSetup JobState = "setup"
)

// Terminal reports whether a job in state s has ended.
func (s JobState) Terminal() bool {
	return s == JobCancelled || s == JobCompleted || s == "complete"
}

// Outcome is how a job ended.
type Outcome string

// Job outcomes.
const (
	// OutcomePass: every phase that ran succeeded.
	OutcomePass Outcome = "pass"
	// OutcomeTestFail: the test phase exited non-zero; the others succeeded.
	OutcomeTestFail Outcome = "test_fail"
	// OutcomeFail: a phase other than test failed (its name is in the end reason).
	OutcomeFail Outcome = "fail"
	// OutcomeRecoveryFail: the device could not be recovered (exit 46).
	OutcomeRecoveryFail Outcome = "recovery_fail"
	// OutcomeCancelled: the job was cancelled.
	OutcomeCancelled Outcome = "cancelled"
	// OutcomeTimeout: the job ran out of time (global or output timeout).
	OutcomeTimeout Outcome = "timeout"
)

// JobRecord is a job's entry in the job-record bucket: the job as accepted
// and everything known of its run. It is updated with compare-and-set.
type JobRecord struct {
	// Type is JobRecordType.
	Type string `msgpack:"type" json:"type"`
	// Job is the job as accepted at intake, with its job_id.
	Job Job `msgpack:"job" json:"job"`
	// State is Testflinger's job_state.
	State JobState `msgpack:"state" json:"job_state"`
	// Outcome is how the job ended, once it has.
	Outcome Outcome `msgpack:"outcome,omitempty" json:"outcome,omitempty"`
	// EndReason is job_end's detail: normal_exit or the event that ended the job.
	EndReason string `msgpack:"end_reason,omitempty" json:"end_reason,omitempty"`
	// Device is the device running or that ran the job.
	Device string `msgpack:"device,omitempty" json:"device,omitempty"`
	// Host is that device's lab host.
	Host string `msgpack:"host,omitempty" json:"host,omitempty"`
	// Attempt counts the devices that have started the job.
	Attempt int `msgpack:"attempt,omitempty" json:"attempt,omitempty"`
	// Status maps each phase that ran to its exit status (Testflinger's <phase>_status).
	Status map[Phase]int `msgpack:"status,omitempty" json:"status,omitempty"`
	// DeviceInfo is what the device reported of itself (device-info.json).
	DeviceInfo map[string]any `msgpack:"device_info,omitempty" json:"device_info,omitempty"`
	// CancelRequested is set when someone asks for the job to be cancelled.
	CancelRequested bool `msgpack:"cancel_requested,omitempty" json:"cancel_requested,omitempty"`
	// SubmittedAt is when intake accepted the job.
	SubmittedAt time.Time `msgpack:"submitted_at" json:"created_at"`
	// StartedAt is when a device started the current attempt.
	StartedAt time.Time `msgpack:"started_at,omitempty" json:"started_at,omitzero"`
	// EndedAt is when the job ended.
	EndedAt time.Time `msgpack:"ended_at,omitempty" json:"ended_at,omitzero"`
	// Generation counts the times the orchestrator put the job back in its
	// queue; a queued copy of an older generation is dropped on delivery.
	Generation int `msgpack:"generation,omitempty" json:"generation,omitempty"`
	// Attempts tells the story of every attempt that did not finish the
	// job: which device, how it ended and why.
	Attempts []Attempt `msgpack:"attempts,omitempty" json:"attempts,omitempty"`
	// Children are the child jobs a multi-device job created.
	Children []string `msgpack:"children,omitempty" json:"children,omitempty"`
	// ReservedAt is when the job's reserve phase began holding the device.
	ReservedAt time.Time `msgpack:"reserved_at,omitempty" json:"reserved_at,omitzero"`
	// ReserveUntil is when the job's reservation ends, while it is reserved.
	ReserveUntil time.Time `msgpack:"reserve_until,omitempty" json:"reserve_until,omitzero"`
	// AttachmentsStatus is Testflinger's attachments_status: waiting while
	// the job's attachment archive is being sent (the job is not queued
	// until then), complete once it is stored and checked.
	AttachmentsStatus string `msgpack:"attachments_status,omitempty" json:"attachments_status,omitempty"`
	// Attachments is the job's attachment archive in the object store.
	Attachments *ObjectRef `msgpack:"attachments,omitempty" json:"attachments,omitempty"`
	// Artifacts is the archive of the test's artifacts/ directory (and
	// the serial console log), stored when the job ended.
	Artifacts *ObjectRef `msgpack:"artifacts,omitempty" json:"artifacts,omitempty"`

	// Extra keeps fields this version does not know.
	Extra map[string]any `msgpack:"-" json:"-"`
}

// Values of JobRecord.AttachmentsStatus.
const (
	AttachmentsWaiting  = "waiting"
	AttachmentsComplete = "complete"
)

// ObjectRef names an object in one of the lab's object stores, with what
// a reader checks it against.
type ObjectRef struct {
	// Name is the object's name in its bucket.
	Name string `msgpack:"name" json:"name"`
	// Size is its length in bytes.
	Size int64 `msgpack:"size" json:"size"`
	// SHA256 is the hex SHA-256 of its bytes.
	SHA256 string `msgpack:"sha256" json:"sha256"`
	// Files counts the files the archive holds, when known.
	Files int `msgpack:"files,omitempty" json:"files,omitempty"`
}

// Kind implements Versioned.
func (*JobRecord) Kind() string { return "flinger.jobrecord" }

// EncodeMsgpack writes the record with its unknown fields.
func (r *JobRecord) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeStruct(enc, reflect.ValueOf(r).Elem(), r.Extra)
}

// DecodeMsgpack reads the record, keeping unknown fields.
func (r *JobRecord) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeStruct(dec, reflect.ValueOf(r).Elem(), &r.Extra)
}

// Attempt is one device's try at a job that did not finish it there.
type Attempt struct {
	// N is the attempt's number, from 1.
	N int `msgpack:"n" json:"n"`
	// Device is the device that ran it, and Host its lab host.
	Device string `msgpack:"device" json:"device"`
	Host   string `msgpack:"host,omitempty" json:"host,omitempty"`
	// Phase is the phase it was in when it stopped.
	Phase Phase `msgpack:"phase,omitempty" json:"phase,omitempty"`
	// Result is how it ended: recovery_fail, attempt_lost or handed_back.
	Result string `msgpack:"result" json:"result"`
	// Detail says why.
	Detail string `msgpack:"detail,omitempty" json:"detail,omitempty"`
	// StartedAt and EndedAt bound it.
	StartedAt time.Time `msgpack:"started_at,omitempty" json:"started_at,omitzero"`
	EndedAt   time.Time `msgpack:"ended_at,omitempty" json:"ended_at,omitzero"`
}

// Results of an Attempt.
const (
	AttemptRecoveryFail = "recovery_fail"
	AttemptLost         = "attempt_lost"
	AttemptHandedBack   = "handed_back"
)

// FieldError names one bad field of a job and what is wrong with it.
type FieldError struct {
	// Field is the field's path, such as "reserve_data.ssh_keys[1]".
	Field string `msgpack:"field" json:"field"`
	// Message says what is wrong.
	Message string `msgpack:"message" json:"message"`
}

// SubmitReply answers a submission: the job id, or why it was rejected.
type SubmitReply struct {
	// JobID is the accepted job's id (also set on a rejection, to find its event).
	JobID string `msgpack:"job_id,omitempty" json:"job_id,omitempty"`
	// Queue is the accepted job's queue.
	Queue string `msgpack:"queue,omitempty" json:"job_queue,omitempty"`
	// Error is set when the submission was rejected.
	Error string `msgpack:"error,omitempty" json:"error,omitempty"`
	// Fields lists the bad fields of a rejected job.
	Fields []FieldError `msgpack:"fields,omitempty" json:"fields,omitempty"`
	// Duplicate is set when the job id was already submitted.
	Duplicate bool `msgpack:"duplicate,omitempty" json:"duplicate,omitempty"`
	// AttachmentsStatus is waiting when the job waits for its attachment
	// archive: the submitter stores it under the job's id in the
	// attachments bucket, then sends the attachments control request.
	AttachmentsStatus string `msgpack:"attachments_status,omitempty" json:"attachments_status,omitempty"`
	// AttachmentLimit is the largest attachment archive the lab takes, in bytes.
	AttachmentLimit int64 `msgpack:"attachment_limit,omitempty" json:"attachment_limit,omitempty"`
}

// CtlRequest asks the orchestrator to act on a job or a device.
type CtlRequest struct {
	// JobID is the job acted on.
	JobID string `msgpack:"job_id,omitempty" json:"job_id,omitempty"`
	// Device is the device acted on.
	Device string `msgpack:"device,omitempty" json:"device,omitempty"`
	// Comment says why.
	Comment string `msgpack:"comment,omitempty" json:"comment,omitempty"`
	// State is the device state asked for by `device set`: online
	// (idle), offline or maintenance.
	State string `msgpack:"state,omitempty" json:"state,omitempty"`
	// Duration is how much longer a reservation should last, for
	// `reserve extend` (Go or Testflinger duration syntax: 90m, 2h30m, 3600).
	Duration string `msgpack:"duration,omitempty" json:"duration,omitempty"`
	// Object describes the attachment archive a submitter stored, for
	// the attachments request.
	Object *ObjectRef `msgpack:"object,omitempty" json:"object,omitempty"`
}

// CtlReply answers a CtlRequest.
type CtlReply struct {
	// Error is set when the request could not be carried out.
	Error string `msgpack:"error,omitempty" json:"error,omitempty"`
	// State is the job's state after the request.
	State JobState `msgpack:"state,omitempty" json:"state,omitempty"`
	// Device is the device's status after a device request.
	Device *DeviceStatus `msgpack:"device,omitempty" json:"device,omitempty"`
	// ReserveUntil is when the reservation now ends, after reserve extend.
	ReserveUntil time.Time `msgpack:"reserve_until,omitempty" json:"reserve_until,omitzero"`
}

// LogChunk is a numbered piece of a phase's output or serial log.
type LogChunk struct {
	// JobID is the job the output belongs to.
	JobID string `msgpack:"job_id" json:"job_id"`
	// Phase is the phase that produced it.
	Phase Phase `msgpack:"phase" json:"phase"`
	// Seq numbers the chunks of one phase's stream from 1; a resend is dropped.
	Seq uint64 `msgpack:"seq" json:"fragment_number"`
	// Time is when the chunk was flushed.
	Time time.Time `msgpack:"time" json:"timestamp"`
	// Data is the output itself.
	Data []byte `msgpack:"data" json:"log_data"`
}

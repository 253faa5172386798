package events

import (
	"reflect"
	"time"

	"github.com/nats-io/nuid"
	"github.com/vmihailenco/msgpack/v5"
)

// EventType is the versioned type of Event.
const EventType = "flinger.event.v1"

// Testflinger's event names (testflinger_common.enums.TestEvent), kept so
// that its observers read Flinger's events unchanged. Phase events are built
// with PhaseStart, PhaseSuccess and PhaseFail.
const (
	EventJobStart      = "job_start"
	EventJobEnd        = "job_end"
	EventCancelled     = "cancelled"
	EventGlobalTimeout = "global_timeout"
	EventOutputTimeout = "output_timeout"
	EventRecoveryFail  = "recovery_fail"
	// EventNormalExit is not published on its own: it is job_end's detail
	// when no phase failed.
	EventNormalExit = "normal_exit"
)

// Flinger's own event names.
const (
	// EventJobSubmitted: the orchestrator accepted, recorded and queued a job.
	EventJobSubmitted = "job_submitted"
	// EventJobRejected: intake refused a submission; Detail names the fields.
	EventJobRejected = "job_rejected"
	// EventJobRequeued: the job went back to its queue for another device.
	EventJobRequeued = "job_requeued"
	// EventJobAllocated: the device is held for the job (allocate phase).
	EventJobAllocated = "allocated"
	// EventDeviceState: a device's state, health, job or phase changed; Data holds the status.
	EventDeviceState = "device_state"
	// EventProvisionProgress: how far the writing of the job's image has
	// got, about once a second while it is written. Data holds
	// bytes_in (compressed bytes fetched), bytes_written (image bytes
	// written to the device), total (the compressed size, -1 when
	// unknown) and rate (bytes fetched per second).
	EventProvisionProgress = "provision_progress"
	// EventAllocationTimeout: a multi-device job's children were not all
	// allocated within its allocation_timeout; every child is cancelled.
	EventAllocationTimeout = "allocation_timeout"
	// EventReservationExtended: `flinger reserve extend` moved the end of
	// the job's reservation; Data holds reserve_until.
	EventReservationExtended = "reservation_extended"
	// EventReservationExpired: the job's reservation ran to its end.
	EventReservationExpired = "reservation_expired"
	// EventAttemptLost: the device running the job stopped renewing its
	// lease (its worker was lost); the job is requeued or failed by policy.
	EventAttemptLost = "attempt_lost"
	// EventAttemptEnd: the device whose recovery failed has finished its
	// cleanup; a job that was not requeued at recovery_fail ends now.
	EventAttemptEnd = "attempt_end"
	// EventChildJobs: a multi-device job created its child jobs; Data
	// holds job_ids.
	EventChildJobs = "child_jobs"
	// EventHealthCheck: a device's health check ended; Data holds passed
	// and the health job's id.
	EventHealthCheck = "health_check"
	// EventWebhookRefused: the job's job_status_webhook is not called,
	// because its host is not one the lab allows (or the lab allows none);
	// Detail says why.
	EventWebhookRefused = "webhook_refused"
	// EventAttachmentsComplete: the job's attachment archive is stored and
	// checked, and the job is queued (data: size, sha256).
	EventAttachmentsComplete = "attachments_complete"
	// EventArtifactsStored: the job's artifacts/ archive is stored at its
	// end (data: size, sha256, files).
	EventArtifactsStored = "artifacts_stored"
)

// PhaseStart is the event a phase begins with, such as "provision_start".
func PhaseStart(p Phase) string { return string(p) + "_start" }

// PhaseSuccess is the event of a phase that ended well, such as "test_success".
func PhaseSuccess(p Phase) string { return string(p) + "_success" }

// PhaseFail is the event of a phase that failed, such as "test_fail".
func PhaseFail(p Phase) string { return string(p) + "_fail" }

// Event is the envelope of everything Flinger announces: every step of every
// job and every device state change.
type Event struct {
	// Type is EventType.
	Type string `msgpack:"type" json:"type"`
	// ID is unique per event; it is also the message's de-duplication id.
	ID string `msgpack:"id" json:"id"`
	// Time is when the event happened (UTC).
	Time time.Time `msgpack:"time" json:"timestamp"`
	// Name is the event name (Testflinger's event_name).
	Name string `msgpack:"name" json:"event_name"`
	// JobID is the job the event is about, if any.
	JobID string `msgpack:"job_id,omitempty" json:"job_id,omitempty"`
	// Device is the device (Testflinger's agent name) involved, if any.
	Device string `msgpack:"device,omitempty" json:"device,omitempty"`
	// Queue is the job's queue, if any.
	Queue string `msgpack:"queue,omitempty" json:"job_queue,omitempty"`
	// Host is the lab host whose worker published the event, if any.
	Host string `msgpack:"host,omitempty" json:"host,omitempty"`
	// Phase is the phase the event belongs to, if any.
	Phase Phase `msgpack:"phase,omitempty" json:"phase,omitempty"`
	// Detail is Testflinger's free-text detail (a failure's reason, job_end's end reason).
	Detail string `msgpack:"detail,omitempty" json:"detail,omitempty"`
	// ExitCode is the phase's exit status, on phase end events.
	ExitCode *int `msgpack:"exit_code,omitempty" json:"exit_code,omitempty"`
	// Attempt counts how many times the job has been started, from 1.
	Attempt int `msgpack:"attempt,omitempty" json:"attempt,omitempty"`
	// Data holds structured detail, such as a device's status or a rejection's fields.
	Data map[string]any `msgpack:"data,omitempty" json:"data,omitempty"`

	// Extra keeps fields this version does not know.
	Extra map[string]any `msgpack:"-" json:"-"`
}

// NewEvent returns an event named name, stamped now with a fresh id.
func NewEvent(name string) *Event {
	return &Event{Type: EventType, ID: nuid.Next(), Time: time.Now().UTC(), Name: name}
}

// Kind implements Versioned.
func (*Event) Kind() string { return "flinger.event" }

// EncodeMsgpack writes the event with its unknown fields.
func (e *Event) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeStruct(enc, reflect.ValueOf(e).Elem(), e.Extra)
}

// DecodeMsgpack reads the event, keeping unknown fields.
func (e *Event) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeStruct(dec, reflect.ValueOf(e).Elem(), &e.Extra)
}

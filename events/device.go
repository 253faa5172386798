package events

import (
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// DeviceType is the versioned type of DeviceStatus.
const DeviceType = "flinger.device.v1"

// DeviceState is what a device is doing, after LAVA's device states.
type DeviceState string

// Device states.
const (
	// StateIdle: waiting for a job from the queues it serves.
	StateIdle DeviceState = "idle"
	// StateBusy: running a job.
	StateBusy DeviceState = "busy"
	// StateOffline: taken out of service, by an operator or by a failed recovery.
	StateOffline DeviceState = "offline"
	// StateMaintenance: taken out of service by an operator for work on it.
	StateMaintenance DeviceState = "maintenance"
)

// DeviceHealth is whether a device can be trusted with a job.
type DeviceHealth string

// Device health values.
const (
	HealthGood    DeviceHealth = "good"
	HealthUnknown DeviceHealth = "unknown"
	HealthBad     DeviceHealth = "bad"
)

// DeviceStatus is a device's record in the device-status bucket, kept
// current by the worker that drives it.
type DeviceStatus struct {
	// Type is DeviceType.
	Type string `msgpack:"type" json:"type"`
	// Name is the device's name (Testflinger's agent_name).
	Name string `msgpack:"name" json:"name"`
	// Host is the lab host whose worker drives the device.
	Host string `msgpack:"host,omitempty" json:"host,omitempty"`
	// Connector is the device's connector type, such as "muxpi".
	Connector string `msgpack:"connector,omitempty" json:"connector,omitempty"`
	// Queues are the queues the device serves.
	Queues []string `msgpack:"queues,omitempty" json:"queues,omitempty"`
	// State is what the device is doing.
	State DeviceState `msgpack:"state" json:"state"`
	// Health is whether the device can be trusted with a job.
	Health DeviceHealth `msgpack:"health" json:"health"`
	// JobID is the job the device runs, when busy.
	JobID string `msgpack:"job_id,omitempty" json:"job_id,omitempty"`
	// Phase is the phase the device runs, when busy.
	Phase Phase `msgpack:"phase,omitempty" json:"phase,omitempty"`
	// Comment says why the device is in its state (who set it offline, which job failed recovery).
	Comment string `msgpack:"comment,omitempty" json:"comment,omitempty"`
	// CommentBy says who wrote Comment: "flinger device set", an
	// orchestrator, or "worker on HOST".
	CommentBy string `msgpack:"comment_by,omitempty" json:"comment_by,omitempty"`
	// CommentAt is when Comment was written.
	CommentAt time.Time `msgpack:"comment_at,omitempty" json:"comment_at,omitzero"`
	// Pending is the state (offline or maintenance) an operator asked for
	// while the device was busy: the running job finishes, and the device
	// enters this state when it ends instead of becoming idle.
	Pending DeviceState `msgpack:"pending,omitempty" json:"pending,omitempty"`
	// Lost is set by an orchestrator when the device's heartbeat stopped
	// coming for longer than its device timeout; the worker's next write
	// clears it.
	Lost bool `msgpack:"lost,omitempty" json:"lost,omitempty"`
	// Since is when the device entered its state.
	Since time.Time `msgpack:"since" json:"since"`
	// Heartbeat is when the worker last confirmed the record.
	Heartbeat time.Time `msgpack:"heartbeat" json:"heartbeat"`

	// Extra keeps fields this version does not know.
	Extra map[string]any `msgpack:"-" json:"-"`
}

// Kind implements Versioned.
func (*DeviceStatus) Kind() string { return "flinger.device" }

// OutOfService reports whether s takes a device out of service (offline or maintenance).
func (s DeviceState) OutOfService() bool { return s == StateOffline || s == StateMaintenance }

// HealthCheckPrefix begins the job id of every health-check job, which a
// worker runs on its own device (never from a queue), so that it is known
// as one wherever its record or events are read.
const HealthCheckPrefix = "health-"

// IsHealthCheck reports whether jobID names a health-check job.
func IsHealthCheck(jobID string) bool { return strings.HasPrefix(jobID, HealthCheckPrefix) }

// Serves reports whether the device serves queue q.
func (d *DeviceStatus) Serves(q string) bool { return slices.Contains(d.Queues, q) }

// EncodeMsgpack writes the status with its unknown fields.
func (d *DeviceStatus) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeStruct(enc, reflect.ValueOf(d).Elem(), d.Extra)
}

// DecodeMsgpack reads the status, keeping unknown fields.
func (d *DeviceStatus) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeStruct(dec, reflect.ValueOf(d).Elem(), &d.Extra)
}

// StateEvent is the device_state event announcing status st, with detail
// saying why it changed.
func (st *DeviceStatus) StateEvent(detail string) *Event {
	ev := NewEvent(EventDeviceState)
	ev.Device, ev.Host, ev.Detail = st.Name, st.Host, detail
	ev.Data = map[string]any{"state": string(st.State), "health": string(st.Health)}
	if st.JobID != "" {
		ev.Data["job_id"] = st.JobID
	}
	if st.Pending != "" {
		ev.Data["pending"] = string(st.Pending)
	}
	if st.Comment != "" {
		ev.Data["comment"] = st.Comment
	}
	if st.Lost {
		ev.Data["lost"] = true
	}
	return ev
}

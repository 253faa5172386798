package events

import (
	"encoding/base64"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"unicode"
)

// DefaultPrefix starts every subject, stream and bucket name.
const DefaultPrefix = "flinger"

// Headers Flinger sets on its messages besides Content-Type.
const (
	// HeaderReplyTo on a submission names the inbox that gets the SubmitReply.
	HeaderReplyTo = "Flinger-Reply-To"
	// HeaderSubmitFormat on a submission says how the job is written: yaml, json or msgpack.
	HeaderSubmitFormat = "Flinger-Format"
	// HeaderRecordRevision on a queued job is the revision of its record
	// when it was queued, so that a device can claim it in one round trip.
	HeaderRecordRevision = "Flinger-Record-Revision"
	// HeaderSubmittedAt on a queued job is when intake accepted it (RFC 3339).
	HeaderSubmittedAt = "Flinger-Submitted-At"
	// HeaderGeneration on a queued job is its record's Generation when it
	// was queued; a copy older than the record's is dropped.
	HeaderGeneration = "Flinger-Generation"
	// HeaderMsgID is JetStream's de-duplication header.
	HeaderMsgID = "Nats-Msg-Id"
)

var prefixRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// Subjects builds every subject name under one prefix.
type Subjects struct {
	prefix string
}

// NewSubjects returns the subjects under prefix ("" for DefaultPrefix).
func NewSubjects(prefix string) (Subjects, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(prefix) {
		return Subjects{}, fmt.Errorf("subject prefix %q: use lower-case letters, digits, - and _ only", prefix)
	}
	return Subjects{prefix: prefix}, nil
}

// MustSubjects is NewSubjects that panics on a bad prefix; for constants and tests.
func MustSubjects(prefix string) Subjects {
	s, err := NewSubjects(prefix)
	if err != nil {
		panic(err)
	}
	return s
}

// Prefix returns the prefix.
func (s Subjects) Prefix() string {
	if s.prefix == "" {
		return DefaultPrefix
	}
	return s.prefix
}

func (s Subjects) join(parts ...string) string {
	return s.Prefix() + "." + strings.Join(parts, ".")
}

// Token makes a name (a queue, device or job id) safe to use as one subject
// token. Names made of letters, digits, '-', '_', ':', '+', '@', '=' and '/'
// are kept as they are; any other name is written as '~' and its
// URL-safe base64, so that two names never share a token.
func Token(name string) string {
	if name != "" && !strings.HasPrefix(name, "~") && strings.IndexFunc(name, unsafeRune) < 0 {
		return name
	}
	return "~" + base64.RawURLEncoding.EncodeToString([]byte(name))
}

func unsafeRune(r rune) bool {
	switch {
	case r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r)):
		return false
	case strings.ContainsRune("-_:+@=/", r):
		return false
	}
	return true
}

// Submit is where raw jobs are submitted for intake.
func (s Subjects) Submit() string { return s.join("submit") }

// QueuePartitions is how many work-queue streams the queues are spread
// over. Each queue has one consumer, and JetStream checks every consumer
// of a work-queue stream on each acknowledgement, so a lab with thousands
// of queues (one per device is common) keeps that check short by
// partitioning. Changing it strands jobs queued under the old value.
const QueuePartitions = 16

// QueuePartition is the partition queue belongs to.
func QueuePartition(queue string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(queue))
	return int(h.Sum32() % QueuePartitions)
}

// Queue is the subject a queue's jobs wait on:
// <prefix>.queue.<partition>.<queue>.
func (s Subjects) Queue(queue string) string {
	return s.join("queue", fmt.Sprintf("%02d", QueuePartition(queue)), Token(queue))
}

// Queues matches every queue subject of partition p, priority subjects
// included.
func (s Subjects) Queues(p int) string { return s.join("queue", fmt.Sprintf("%02d", p), ">") }

// QueuePriority is the subject a job of queue with job_priority p waits
// on. Jobs of priority 0 wait on Queue(queue) itself; a job of priority
// p > 0 waits one token below it, on <prefix>.queue.<partition>.<queue>.p<p>,
// in the same stream, so that each priority level has a consumer of its
// own and a device can take the highest level first.
func (s Subjects) QueuePriority(queue string, p int) string {
	if p <= 0 {
		return s.Queue(queue)
	}
	return s.Queue(queue) + fmt.Sprintf(".p%d", p)
}

// QueuePriorities matches the subjects of every priority level above 0 of
// queue (not Queue(queue) itself).
func (s Subjects) QueuePriorities(queue string) string { return s.Queue(queue) + ".*" }

// PriorityQueues matches the subjects of every priority level above 0 of
// every queue of partition p.
func (s Subjects) PriorityQueues(p int) string {
	return s.join("queue", fmt.Sprintf("%02d", p), "*", "*")
}

// QueueReoffer is where a worker says, with a core NATS message whose
// body is its host's name, that a job of queue at priority p waits again
// without having been published again (passed on or handed back), so
// that the other workers serving queue fetch it.
func (s Subjects) QueueReoffer(queue string, p int) string {
	return s.join("reoffer", fmt.Sprintf("%02d", QueuePartition(queue)), Token(queue), fmt.Sprintf("p%d", p))
}

// QueueReoffers matches every QueueReoffer subject.
func (s Subjects) QueueReoffers() string { return s.join("reoffer", ">") }

// SplitPriority splits a QueuePriority (with p > 0) or QueueReoffer
// subject into the subject before its last token and the priority that
// token names; ok is false when the last token names no priority. Only
// the last token is looked at: callers match subjects of the right length.
func SplitPriority(subject string) (rest string, p int, ok bool) {
	i := strings.LastIndexByte(subject, '.')
	tok := subject[i+1:]
	if i < 0 || len(tok) < 2 || len(tok) > 10 || tok[0] != 'p' {
		return "", 0, false
	}
	for _, c := range tok[1:] {
		if c < '0' || c > '9' {
			return "", 0, false
		}
		p = p*10 + int(c-'0')
	}
	return subject[:i], p, true
}

// JobEvent is the subject of event name about job id.
func (s Subjects) JobEvent(jobID, name string) string {
	return s.join("events", "job", Token(jobID), Token(name))
}

// EveryJobEvent matches the event called name about any job.
func (s Subjects) EveryJobEvent(name string) string {
	return s.join("events", "job", "*", Token(name))
}

// JobEvents matches every event about job id.
func (s Subjects) JobEvents(jobID string) string { return s.join("events", "job", Token(jobID), ">") }

// DeviceEvent is the subject of an event of kind about device.
func (s Subjects) DeviceEvent(device, kind string) string {
	return s.join("events", "device", Token(device), Token(kind))
}

// DeviceEvents matches every event about device.
func (s Subjects) DeviceEvents(device string) string {
	return s.join("events", "device", Token(device), ">")
}

// Events matches every event.
func (s Subjects) Events() string { return s.join("events", ">") }

// Log is the subject of a job's phase output ("output") or serial log ("serial").
func (s Subjects) Log(jobID string, phase Phase, stream string) string {
	return s.join("logs", Token(jobID), string(phase), stream)
}

// Logs matches every log of job id.
func (s Subjects) Logs(jobID string) string { return s.join("logs", Token(jobID), ">") }

// StreamLogs matches one log stream ("output" or "serial") of every phase of job id.
func (s Subjects) StreamLogs(jobID, stream string) string {
	return s.join("logs", Token(jobID), "*", stream)
}

// AllLogs matches every log.
func (s Subjects) AllLogs() string { return s.join("logs", ">") }

// CancelSignal is where the orchestrator tells the worker running job id to stop it.
func (s Subjects) CancelSignal(jobID string) string { return s.join("signal", "cancel", Token(jobID)) }

// CancelSignals matches every job's cancel signal; the job's token is the
// last one.
func (s Subjects) CancelSignals() string { return s.join("signal", "cancel", "*") }

// ReserveSignal is where the orchestrator tells the worker holding job id's
// reservation that its end moved (the record holds the new end).
func (s Subjects) ReserveSignal(jobID string) string {
	return s.join("signal", "reserve", Token(jobID))
}

// ReserveSignals matches every job's reservation signal; the job's token is
// the last one.
func (s Subjects) ReserveSignals() string { return s.join("signal", "reserve", "*") }

// Ctl is the control service's request subject for verb, such as "cancel".
func (s Subjects) Ctl(verb string) string { return s.join("ctl", verb) }

// Names of the streams and buckets under the prefix.
func (s Subjects) upper() string {
	return strings.ToUpper(strings.ReplaceAll(s.Prefix(), "-", "_"))
}

// SubmitStream names the stream holding submissions.
func (s Subjects) SubmitStream() string { return s.upper() + "_SUBMIT" }

// QueueStream names the work-queue stream holding partition p's queued jobs.
func (s Subjects) QueueStream(p int) string { return fmt.Sprintf("%s_QUEUES_%02d", s.upper(), p) }

// QueueStreamOf names the work-queue stream holding queue's jobs.
func (s Subjects) QueueStreamOf(queue string) string { return s.QueueStream(QueuePartition(queue)) }

// EventStream names the stream holding events.
func (s Subjects) EventStream() string { return s.upper() + "_EVENTS" }

// LogStream names the stream holding output and serial logs.
func (s Subjects) LogStream() string { return s.upper() + "_LOGS" }

// JobBucket names the KV bucket of job records.
func (s Subjects) JobBucket() string { return s.upper() + "_JOBS" }

// SecretBucket names the KV bucket of secrets (secret path → value) that
// workers resolve test_data.secrets from. Only workers should be allowed
// to read it.
func (s Subjects) SecretBucket() string { return s.upper() + "_SECRETS" }

// AttachmentBucket names the object store holding jobs' attachment
// archives, one per job, named by job id.
func (s Subjects) AttachmentBucket() string { return s.upper() + "_ATTACHMENTS" }

// ArtifactBucket names the object store holding jobs' artifact archives,
// one per job, named by job id.
func (s Subjects) ArtifactBucket() string { return s.upper() + "_ARTIFACTS" }

// DeviceBucket names the KV bucket of device status records.
func (s Subjects) DeviceBucket() string { return s.upper() + "_DEVICES" }

// QueueConsumer names the durable consumer shared by the devices serving queue.
func (s Subjects) QueueConsumer(queue string) string {
	// Consumer names may not contain '.', '*', '>', or whitespace; '~' and base64url are fine.
	return "queue-" + strings.NewReplacer("/", "_2F", ":", "_3A", "+", "_2B", "@", "_40", "=", "_3D").Replace(Token(queue))
}

// QueuePriorityConsumer names the durable consumer shared by the devices
// serving queue for its jobs of job_priority p (QueueConsumer for p = 0).
func (s Subjects) QueuePriorityConsumer(queue string, p int) string {
	if p <= 0 {
		return s.QueueConsumer(queue)
	}
	return s.QueueConsumer(queue) + fmt.Sprintf("-p%d", p)
}

// DeviceRecords matches the subjects device status records are stored on
// (those of the KV bucket DeviceBucket), so that a core NATS subscriber
// sees each change of any device as it is stored.
func (s Subjects) DeviceRecords() string { return "$KV." + s.DeviceBucket() + ".>" }

var keyRE = regexp.MustCompile(`^[-_=a-zA-Z0-9/]+$`)

// Key makes a name safe to use as a KV key. Names of letters, digits and
// "-_=/" are kept; any other is written as "_b64_" and its URL-safe base64.
func Key(name string) string {
	if keyRE.MatchString(name) && !strings.HasPrefix(name, "_b64_") {
		return name
	}
	return "_b64_" + base64.RawURLEncoding.EncodeToString([]byte(name))
}

package events

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StoreOptions sizes and places Flinger's streams and buckets.
type StoreOptions struct {
	// Replicas for every stream and bucket (1 on one server, 3 on a cluster).
	Replicas int
	// EventMaxAge is how long events are kept (default 7 days, as Testflinger keeps jobs).
	EventMaxAge time.Duration
	// LogMaxAge is how long output and serial logs are kept (default 7 days).
	LogMaxAge time.Duration
	// JobMaxAge is how long job records are kept (default 7 days).
	JobMaxAge time.Duration
	// AttachmentMaxAge is how long attachment archives are kept (default 7 days).
	AttachmentMaxAge time.Duration
	// ArtifactMaxAge is how long artifact archives are kept (default 7 days).
	ArtifactMaxAge time.Duration
	// MaxJobBytes is the largest submission accepted (default 1 MiB).
	MaxJobBytes int32
	// Memory keeps everything in memory instead of on disk (for tests and benchmarks).
	Memory bool
}

// Defaults used where StoreOptions leaves a value zero.
const (
	DefaultMaxAge      = 7 * 24 * time.Hour
	DefaultMaxJobBytes = 1 << 20
	// DuplicateWindow is how long a job id is remembered to drop a second submission of it.
	DuplicateWindow = 10 * time.Minute
	// MaxQueues is how many queues (one consumer each) a lab may have.
	MaxQueues = 100_000
)

func (o StoreOptions) withDefaults() StoreOptions {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.EventMaxAge <= 0 {
		o.EventMaxAge = DefaultMaxAge
	}
	if o.LogMaxAge <= 0 {
		o.LogMaxAge = DefaultMaxAge
	}
	if o.JobMaxAge <= 0 {
		o.JobMaxAge = DefaultMaxAge
	}
	if o.AttachmentMaxAge <= 0 {
		o.AttachmentMaxAge = DefaultMaxAge
	}
	if o.ArtifactMaxAge <= 0 {
		o.ArtifactMaxAge = DefaultMaxAge
	}
	if o.MaxJobBytes <= 0 {
		o.MaxJobBytes = DefaultMaxJobBytes
	}
	return o
}

// Limits returns o with its defaults filled in.
func (o StoreOptions) Limits() StoreOptions { return o.withDefaults() }

func (o StoreOptions) storage() jetstream.StorageType {
	if o.Memory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

// Streams returns the definitions of Flinger's streams.
func (s Subjects) Streams(o StoreOptions) []jetstream.StreamConfig {
	o = o.withDefaults()
	streams := []jetstream.StreamConfig{
		{
			Name:        s.SubmitStream(),
			Description: "Jobs submitted for intake",
			Subjects:    []string{s.Submit()},
			Retention:   jetstream.WorkQueuePolicy,
			// No size limit here: intake rejects an oversize job itself,
			// answering the submitter and publishing a job_rejected event.
			Duplicates: 2 * time.Minute,
			Storage:    o.storage(),
			Replicas:   o.Replicas,
		},
		{
			Name:        s.EventStream(),
			Description: "Every job and device event",
			Subjects:    []string{s.Events()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      o.EventMaxAge,
			Duplicates:  2 * time.Minute,
			Storage:     o.storage(),
			Replicas:    o.Replicas,
		},
		{
			Name:        s.LogStream(),
			Description: "Phase output and serial logs in numbered chunks",
			Subjects:    []string{s.AllLogs()},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      o.LogMaxAge,
			Duplicates:  2 * time.Minute,
			Storage:     o.storage(),
			Replicas:    o.Replicas,
		},
	}
	for p := range QueuePartitions {
		streams = append(streams, jetstream.StreamConfig{
			Name:        s.QueueStream(p),
			Description: fmt.Sprintf("Accepted jobs waiting for a device: queues of partition %02d, one subject per queue", p),
			Subjects:    []string{s.Queues(p)},
			Retention:   jetstream.WorkQueuePolicy,
			// One consumer per queue: lift the server's default of 1,000
			// consumers per stream, since a lab often gives every device
			// a queue of its own.
			MaxConsumers: MaxQueues,
			Duplicates:   DuplicateWindow,
			Storage:      o.storage(),
			Replicas:     o.Replicas,
		})
	}
	return streams
}

// Buckets returns the definitions of Flinger's KV buckets.
func (s Subjects) Buckets(o StoreOptions) []jetstream.KeyValueConfig {
	o = o.withDefaults()
	storage := o.storage()
	return []jetstream.KeyValueConfig{
		{Bucket: s.JobBucket(), Description: "Job records by job id", History: 1, TTL: o.JobMaxAge, Storage: storage, Replicas: o.Replicas},
		{Bucket: s.DeviceBucket(), Description: "Device status by device name", History: 1, Storage: storage, Replicas: o.Replicas},
	}
}

// ObjectStores returns the definitions of Flinger's object stores: job
// attachments and job artifacts, each expiring after its age.
func (s Subjects) ObjectStores(o StoreOptions) []jetstream.ObjectStoreConfig {
	o = o.withDefaults()
	return []jetstream.ObjectStoreConfig{
		{Bucket: s.AttachmentBucket(), Description: "Jobs' attachment archives (tar.gz), by job id", TTL: o.AttachmentMaxAge, Storage: o.storage(), Replicas: o.Replicas},
		{Bucket: s.ArtifactBucket(), Description: "Jobs' artifact archives (tar.gz), by job id", TTL: o.ArtifactMaxAge, Storage: o.storage(), Replicas: o.Replicas},
	}
}

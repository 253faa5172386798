// Package access says what each kind of Flinger client may do on NATS, as
// nats-server permissions: which subjects it may publish to and subscribe
// to. A lab that runs on a shared NATS system gives each process the
// credentials of its role:
//
//   - orchestrator: everything under the lab's prefix, streams, buckets
//     and object stores included;
//   - worker: one lab host. It takes jobs only from the queues its host
//     file's devices serve, writes only its own devices' records, publishes
//     job events and logs, reads secrets and attachments, and stores
//     artifacts. It cannot submit jobs (unless one of its devices is a
//     multi device, which submits child jobs), read another host's
//     queues, or set another host's devices;
//   - submitter: submits jobs, sends their attachments, cancels and
//     extends them, and reads jobs, events, logs and artifacts;
//   - observer: reads events, logs, job records and device records, and
//     publishes nothing but the JetStream API requests reading needs.
//
// Config writes them as a nats-server configuration block.
package access

import (
	"fmt"
	"slices"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// Role names a kind of Flinger client.
type Role string

// The roles.
const (
	Orchestrator Role = "orchestrator"
	Worker       Role = "worker"
	Submitter    Role = "submitter"
	Observer     Role = "observer"
)

// Roles lists every role.
var Roles = []Role{Orchestrator, Worker, Submitter, Observer}

// DefaultMaxPriority is the highest job_priority whose queue a worker may
// take jobs from, by default: each level is a consumer of its own, named
// in the worker's permissions.
const DefaultMaxPriority = 10

// Options shape the permissions.
type Options struct {
	// Subjects names the lab's subjects, streams and buckets.
	Subjects events.Subjects
	// Host is the worker's host file (Worker only).
	Host *drivers.HostConfig
	// MaxPriority is the highest job_priority a worker takes jobs of
	// (default DefaultMaxPriority).
	MaxPriority int
}

// list collects subjects without repeats.
type list []string

func (l *list) add(subjects ...string) {
	for _, s := range subjects {
		if !slices.Contains(*l, s) {
			*l = append(*l, s)
		}
	}
}

// Permissions returns what role may publish and subscribe to.
func Permissions(role Role, o Options) (*server.Permissions, error) {
	s := o.Subjects
	if o.MaxPriority <= 0 {
		o.MaxPriority = DefaultMaxPriority
	}
	var pub, sub list
	// Every client gets replies on its inboxes and asks JetStream about
	// its account and streams.
	sub.add("_INBOX.>")
	pub.add("$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST")
	switch role {
	case Orchestrator:
		pub.add(s.Prefix()+".>", "$JS.>", "$KV.>", "$O.>", "$SRV.>", "_INBOX.>")
		sub.add(s.Prefix()+".>", "$JS.>", "$KV.>", "$O.>", "$SRV.>")
	case Observer:
		readEvents(&pub, &sub, s)
	case Submitter:
		readEvents(&pub, &sub, s)
		pub.add(s.Submit(), s.Ctl("cancel"), s.Ctl("reserve-extend"), s.Ctl("attachments"))
		// Its jobs' attachment archives: chunks and descriptions, and the
		// reads and purge a put does.
		att := "OBJ_" + s.AttachmentBucket()
		pub.add("$O."+s.AttachmentBucket()+".>", "$JS.API.DIRECT.GET."+att+".>", "$JS.API.STREAM.MSG.GET."+att,
			"$JS.API.STREAM.PURGE."+att)
		readObjects(&pub, s.ArtifactBucket())
	case Worker:
		if o.Host == nil {
			return nil, fmt.Errorf("access: the worker role needs its host file")
		}
		worker(&pub, &sub, o)
	default:
		return nil, fmt.Errorf("access: unknown role %q (one of %v)", role, Roles)
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}, nil
}

// readEvents allows reading events, logs, job and device records, and
// the control service's description.
func readEvents(pub, sub *list, s events.Subjects) {
	for _, stream := range []string{s.EventStream(), s.LogStream(), "KV_" + s.JobBucket(), "KV_" + s.DeviceBucket()} {
		orderedConsumer(pub, stream)
	}
	pub.add("$JS.API.DIRECT.GET.KV_"+s.JobBucket()+".>", "$JS.API.DIRECT.GET.KV_"+s.DeviceBucket()+".>",
		"$JS.API.STREAM.MSG.GET."+s.EventStream(), "$JS.API.DIRECT.GET."+s.EventStream()+".>",
		"$JS.API.STREAM.MSG.GET."+s.LogStream(), "$SRV.>")
	sub.add(s.Events(), s.AllLogs(), s.DeviceRecords())
}

// orderedConsumer allows the ephemeral consumers a reader of stream makes.
func orderedConsumer(pub *list, stream string) {
	pub.add("$JS.API.CONSUMER.CREATE."+stream+".>", "$JS.API.CONSUMER.CREATE."+stream,
		"$JS.API.CONSUMER.INFO."+stream+".*", "$JS.API.CONSUMER.DELETE."+stream+".*",
		"$JS.API.CONSUMER.MSG.NEXT."+stream+".*", "$JS.FC."+stream+".>")
}

// readObjects allows reading objects of bucket.
func readObjects(pub *list, bucket string) {
	stream := "OBJ_" + bucket
	orderedConsumer(pub, stream)
	pub.add("$JS.API.DIRECT.GET."+stream+".>", "$JS.API.STREAM.MSG.GET."+stream)
}

// worker is what a lab host's worker may do.
func worker(pub, sub *list, o Options) {
	s := o.Subjects
	multi := false
	for _, d := range o.Host.Devices {
		name := d.Name
		// Its devices' records: written with compare-and-set, read and
		// watched; their events.
		pub.add("$KV."+s.DeviceBucket()+"."+events.Key(name), s.DeviceEvent(name, events.EventDeviceState))
		if typ, _ := drivers.Canonical(d.Type); typ == "multi" {
			multi = true
		}
		for _, q := range d.Queues {
			queue(pub, sub, s, q, o.MaxPriority)
		}
	}
	// Device records are read (the dispatcher hands priority jobs on to
	// idle devices elsewhere) but written only for its own devices.
	pub.add("$JS.API.DIRECT.GET.KV_"+s.DeviceBucket()+".>", "$JS.API.CONSUMER.CREATE.KV_"+s.DeviceBucket()+".*",
		"$JS.API.CONSUMER.CREATE.KV_"+s.DeviceBucket()+".*.>")
	orderedConsumer(pub, "KV_"+s.DeviceBucket())
	sub.add(s.DeviceRecords())
	// Job records: claimed and updated with compare-and-set; any job,
	// since a queue's jobs are known only when they arrive.
	pub.add("$KV."+s.JobBucket()+".>", "$JS.API.DIRECT.GET.KV_"+s.JobBucket()+".>", "$JS.API.STREAM.MSG.GET.KV_"+s.JobBucket())
	// Job events and logs; signals from orchestrators; priority jobs put
	// back for another device.
	pub.add(s.Prefix()+".events.job.*.*", s.AllLogs(), s.QueueReoffers())
	sub.add(s.CancelSignals(), s.ReserveSignals(), s.QueueReoffers(), s.EveryJobEvent(events.EventJobEnd))
	// Secrets, attachments in; artifacts out.
	pub.add("$JS.API.DIRECT.GET.KV_"+s.SecretBucket()+".>", "$JS.API.STREAM.MSG.GET.KV_"+s.SecretBucket())
	readObjects(pub, s.AttachmentBucket())
	art := "OBJ_" + s.ArtifactBucket()
	pub.add("$O."+s.ArtifactBucket()+".>", "$JS.API.DIRECT.GET."+art+".>", "$JS.API.STREAM.MSG.GET."+art, "$JS.API.STREAM.PURGE."+art)
	if multi {
		// A multi device submits its child jobs, follows and cancels them.
		pub.add(s.Submit(), s.Ctl("cancel"))
		readEvents(pub, sub, s)
	}
}

// queue allows taking jobs of queue q, at every priority level up to max.
func queue(pub, sub *list, s events.Subjects, q string, max int) {
	stream := s.QueueStreamOf(q)
	for p := 0; p <= max; p++ {
		c := s.QueuePriorityConsumer(q, p)
		pub.add("$JS.API.CONSUMER.CREATE."+stream+"."+c, "$JS.API.CONSUMER.CREATE."+stream+"."+c+".>",
			"$JS.API.CONSUMER.DURABLE.CREATE."+stream+"."+c,
			"$JS.API.CONSUMER.INFO."+stream+"."+c, "$JS.API.CONSUMER.MSG.NEXT."+stream+"."+c,
			"$JS.ACK."+stream+"."+c+".>")
	}
	// Learning of a priority job from its publish.
	sub.add(s.QueuePriorities(q))
}

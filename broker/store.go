package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

// ErrNoJob reports that no job record has the id asked for.
var ErrNoJob = errors.New("no such job")

// ErrNoDevice reports that no device status record has the name asked for.
var ErrNoDevice = errors.New("no such device")

// ErrUnchanged is returned by an update function to leave a record as it is.
var ErrUnchanged = errors.New("record left unchanged")

// ErrConflict reports a compare-and-set write that lost to another writer:
// the record changed since the revision the writer read.
var ErrConflict = errors.New("record changed by another writer")

// GetJob returns the record of job id and its revision.
func (c *Client) GetJob(ctx context.Context, id string) (*events.JobRecord, uint64, error) {
	e, err := c.Jobs.Get(ctx, events.Key(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("job %s: %w", id, ErrNoJob)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read job %s: %w", id, err)
	}
	var rec events.JobRecord
	if err := events.Decode(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("job %s: %w", id, err)
	}
	return &rec, e.Revision(), nil
}

// CreateJob stores a new job record; it fails with jetstream.ErrKeyExists
// when the id is taken.
func (c *Client) CreateJob(ctx context.Context, rec *events.JobRecord) (uint64, error) {
	rec.Type = events.JobRecordType
	data, err := events.Encode(rec)
	if err != nil {
		return 0, err
	}
	rev, err := c.Jobs.Create(ctx, events.Key(rec.Job.JobID), data)
	if err != nil {
		return 0, fmt.Errorf("create job %s: %w", rec.Job.JobID, err)
	}
	return rev, nil
}

// UpdateJob applies fn to the current record of job id and stores the
// result with compare-and-set, retrying on a concurrent change. fn may be
// called more than once; it returns ErrUnchanged to store nothing, or
// another error to abort. UpdateJob returns the record as stored (or as
// found, with ErrUnchanged) and its revision.
func (c *Client) UpdateJob(ctx context.Context, id string, fn func(*events.JobRecord) error) (*events.JobRecord, uint64, error) {
	for attempt := 0; ; attempt++ {
		rec, rev, err := c.GetJob(ctx, id)
		if err != nil {
			if noLeader(err) && waitLeader(ctx) {
				continue
			}
			return nil, 0, err
		}
		if err := fn(rec); err != nil {
			return rec, rev, err
		}
		rec.Type = events.JobRecordType
		data, err := events.Encode(rec)
		if err != nil {
			return nil, 0, err
		}
		nrev, err := c.Jobs.Update(ctx, events.Key(id), data, rev)
		if err == nil {
			return rec, nrev, nil
		}
		if noLeader(err) && waitLeader(ctx) {
			continue
		}
		if !isWrongSequence(err) || attempt >= 100 {
			return nil, 0, fmt.Errorf("update job %s: %w", id, err)
		}
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
	}
}

// UpdateJobFrom is UpdateJob starting from a copy of the record the caller
// holds at revision rev: when nobody else has changed the record since, it
// costs one round trip instead of two. fn must not keep known.
func (c *Client) UpdateJobFrom(ctx context.Context, id string, known *events.JobRecord, rev uint64, fn func(*events.JobRecord) error) (*events.JobRecord, uint64, error) {
	if known != nil && rev > 0 {
		data, err := events.Encode(known)
		if err != nil {
			return nil, 0, err
		}
		var rec events.JobRecord
		if err := events.Decode(data, &rec); err != nil {
			return nil, 0, err
		}
		if err := fn(&rec); err != nil {
			return &rec, rev, err
		}
		rec.Type = events.JobRecordType
		if data, err = events.Encode(&rec); err != nil {
			return nil, 0, err
		}
		nrev, err := c.Jobs.Update(ctx, events.Key(id), data, rev)
		if err == nil {
			return &rec, nrev, nil
		}
		if !isWrongSequence(err) && !noLeader(err) {
			return nil, 0, fmt.Errorf("update job %s: %w", id, err)
		}
	}
	return c.UpdateJob(ctx, id, fn)
}

// noLeader reports an error that says no stream leader answered: a NATS
// node went away and its streams are electing new leaders, and nothing was
// stored, so the write may be tried again.
func noLeader(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// waitLeader waits a little before a write is tried again while a stream
// has no leader; false when ctx ends first.
func waitLeader(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(250 * time.Millisecond):
		return true
	}
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists) || strings.Contains(err.Error(), "wrong last sequence")
}

// PutDevice stores a device's status.
func (c *Client) PutDevice(ctx context.Context, st *events.DeviceStatus) error {
	st.Type = events.DeviceType
	data, err := events.Encode(st)
	if err != nil {
		return err
	}
	if _, err := c.Devices.Put(ctx, events.Key(st.Name), data); err != nil {
		return fmt.Errorf("store status of device %s: %w", st.Name, err)
	}
	return nil
}

// PutDeviceAsync stores a device's status without waiting for the
// server's acknowledgement; updates from one client keep their order. A
// failed store is logged.
func (c *Client) PutDeviceAsync(st *events.DeviceStatus) error {
	st.Type = events.DeviceType
	m, err := events.NewMsg("$KV."+c.Subj.DeviceBucket()+"."+events.Key(st.Name), st)
	if err != nil {
		return err
	}
	if _, err := c.JS.PublishMsgAsync(m); err != nil {
		return fmt.Errorf("store status of device %s: %w", st.Name, err)
	}
	return nil
}

// GetDevice returns a device's status.
func (c *Client) GetDevice(ctx context.Context, name string) (*events.DeviceStatus, error) {
	st, _, err := c.GetDeviceRev(ctx, name)
	return st, err
}

// GetDeviceRev returns a device's status and its revision, for a later
// StoreDevice. A record that cannot be decoded is returned as an error
// along with its revision, so that its owner can overwrite it.
func (c *Client) GetDeviceRev(ctx context.Context, name string) (*events.DeviceStatus, uint64, error) {
	e, err := c.Devices.Get(ctx, events.Key(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("device %s: %w", name, ErrNoDevice)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read device %s: %w", name, err)
	}
	var st events.DeviceStatus
	if err := events.Decode(e.Value(), &st); err != nil {
		return nil, e.Revision(), fmt.Errorf("device %s: %w", name, err)
	}
	return &st, e.Revision(), nil
}

// StoreDevice stores a device's status with compare-and-set: rev is the
// revision the caller last read (0: the device must have no record). It
// returns the new revision, or an error wrapping ErrConflict when another
// writer changed the record since.
func (c *Client) StoreDevice(ctx context.Context, st *events.DeviceStatus, rev uint64) (uint64, error) {
	st.Type = events.DeviceType
	data, err := events.Encode(st)
	if err != nil {
		return 0, err
	}
	key := events.Key(st.Name)
	var nrev uint64
	if rev == 0 {
		nrev, err = c.Devices.Create(ctx, key, data)
	} else {
		nrev, err = c.Devices.Update(ctx, key, data, rev)
	}
	switch {
	case err == nil:
		return nrev, nil
	case isWrongSequence(err):
		return 0, fmt.Errorf("store status of device %s: %w", st.Name, ErrConflict)
	default:
		return 0, fmt.Errorf("store status of device %s: %w", st.Name, err)
	}
}

// UpdateDevice applies fn to the current status of device name and stores
// the result with compare-and-set, retrying on a concurrent change. fn may
// be called more than once; it returns ErrUnchanged to store nothing, or
// another error to abort. UpdateDevice returns the status as stored (or,
// with ErrUnchanged or fn's error, as fn left it) and its revision; a
// device without a record is an error wrapping ErrNoDevice.
func (c *Client) UpdateDevice(ctx context.Context, name string, fn func(*events.DeviceStatus) error) (*events.DeviceStatus, uint64, error) {
	for attempt := 0; ; attempt++ {
		st, rev, err := c.GetDeviceRev(ctx, name)
		if err != nil {
			return nil, 0, err
		}
		if err := fn(st); err != nil {
			return st, rev, err
		}
		nrev, err := c.StoreDevice(ctx, st, rev)
		if err == nil {
			return st, nrev, nil
		}
		if !errors.Is(err, ErrConflict) || attempt >= 100 {
			return nil, 0, fmt.Errorf("update device %s: %w", name, err)
		}
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
	}
}

// ListDevices returns every device's status, sorted by name. Records that
// cannot be read are skipped and reported in the returned error list.
func (c *Client) ListDevices(ctx context.Context) ([]*events.DeviceStatus, []error, error) {
	lister, err := c.Devices.ListKeys(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list devices: %w", err)
	}
	var out []*events.DeviceStatus
	var bad []error
	for key := range lister.Keys() {
		e, err := c.Devices.Get(ctx, key)
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyNotFound) {
				bad = append(bad, fmt.Errorf("device %s: %w", key, err))
			}
			continue
		}
		var st events.DeviceStatus
		if err := events.Decode(e.Value(), &st); err != nil {
			bad = append(bad, fmt.Errorf("device %s: %w", key, err))
			continue
		}
		out = append(out, &st)
	}
	slices.SortFunc(out, func(a, b *events.DeviceStatus) int { return strings.Compare(a.Name, b.Name) })
	return out, bad, nil
}

// EventSubject returns the subject an event is published on: the job's
// when it names one, else the device's.
func (c *Client) EventSubject(ev *events.Event) string {
	if ev.JobID != "" {
		return c.Subj.JobEvent(ev.JobID, ev.Name)
	}
	return c.Subj.DeviceEvent(ev.Device, ev.Name)
}

// PublishEvent publishes an event to the event stream without waiting for
// its acknowledgement; events from one client keep their order. A failed
// publish is logged.
func (c *Client) PublishEvent(ev *events.Event) error {
	m, err := c.eventMsg(ev)
	if err != nil {
		return err
	}
	c.out.publish(m)
	return nil
}

// PublishEventSync publishes an event and waits until the stream has
// stored it. When ctx ends first the event stays queued: it is stored
// later, in order, and the error says so.
func (c *Client) PublishEventSync(ctx context.Context, ev *events.Event) error {
	m, err := c.eventMsg(ev)
	if err != nil {
		return err
	}
	select {
	case <-c.out.publish(m):
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publish event %s: %w (%v)", ev.Name, errNotStored, ctx.Err())
	}
}

// PublishLog publishes a log chunk (or any message with a de-duplication
// id to a stream) in order with the client's events, keeping it until the
// stream has stored it.
func (c *Client) PublishLog(m *nats.Msg) {
	c.out.publish(m)
}

func (c *Client) eventMsg(ev *events.Event) (*nats.Msg, error) {
	if ev.Type == "" {
		ev.Type = events.EventType
	}
	m, err := events.NewMsg(c.EventSubject(ev), ev)
	if err != nil {
		return nil, err
	}
	m.Header.Set(events.HeaderMsgID, ev.ID)
	return m, nil
}

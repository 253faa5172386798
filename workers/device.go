package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// device is one device this worker drives.
type device struct {
	w   *Worker
	cfg *drivers.DeviceConfig
	drv drivers.Driver
	log *slog.Logger

	// wmu serialises this worker's writes of the device's record.
	wmu sync.Mutex
	// readyMu serialises the decisions that put the device in or out of
	// service (see ready).
	readyMu sync.Mutex

	mu sync.Mutex
	// status is the device's record as last stored or read, and rev its
	// revision in the device bucket: each write is a compare-and-set from
	// it, so that a change made meanwhile by `flinger device set` or an
	// orchestrator is merged, never overwritten.
	status events.DeviceStatus
	rev    uint64
	// writing is the record being stored, while a write is in flight.
	writing *events.DeviceStatus

	// inJob (guarded by w.mu) is set from the moment the device is taken
	// for a job or a health check until that ends; the device is then in
	// no idle set, whatever its record says.
	inJob bool
}

// storeTimeout bounds one write of a device's record.
const storeTimeout = 10 * time.Second

// start loads the device's last known status and stores it as this
// worker's: an offline or maintenance device stays so across restarts, an
// idle one stays idle, and one that was busy (its worker stopped during a
// job) becomes idle, or the state an operator asked for meanwhile, with
// its health unknown. Run then makes the device ready for jobs.
func (d *device) start(ctx context.Context) error {
	d.wmu.Lock()
	var st events.DeviceStatus
	for attempt := 0; ; attempt++ {
		prev, rev, err := d.w.c.GetDeviceRev(ctx, d.cfg.Name)
		switch {
		case errors.Is(err, broker.ErrNoDevice):
			prev = nil
		case err != nil && prev == nil && rev > 0:
			d.log.Warn("previous device status unreadable; starting afresh", "err", err)
		case err != nil:
			d.wmu.Unlock()
			return fmt.Errorf("device %s: %w", d.cfg.Name, err)
		}
		st = d.restarted(prev)
		nrev, err := d.w.c.StoreDevice(ctx, &st, rev)
		if errors.Is(err, broker.ErrConflict) && attempt < maxConflicts {
			continue
		}
		if err != nil {
			d.wmu.Unlock()
			return fmt.Errorf("device %s: %w", d.cfg.Name, err)
		}
		d.set(&st, nrev)
		break
	}
	d.wmu.Unlock()
	d.announce("worker started")
	if st.State.OutOfService() {
		d.log.Warn("device out of service; it takes no jobs until set online", "state", st.State, "comment", st.Comment)
	}
	return nil
}

// maxConflicts bounds the retries of a write that keeps losing to others.
const maxConflicts = 20

// restarted is the status a starting worker gives its device, from the
// device's last record (nil: none).
func (d *device) restarted(prev *events.DeviceStatus) events.DeviceStatus {
	now := time.Now().UTC()
	st := events.DeviceStatus{Name: d.cfg.Name, State: events.StateIdle, Health: events.HealthUnknown, Since: now}
	if prev != nil {
		st = *prev
		switch {
		case prev.State.OutOfService(), prev.State == events.StateIdle:
		case prev.State == events.StateBusy:
			st.State, st.Since = events.StateIdle, now
			if prev.Pending.OutOfService() {
				st.State = prev.Pending
			}
			if st.Health == events.HealthGood {
				st.Health = events.HealthUnknown
				st.Comment = fmt.Sprintf("worker on %s restarted while job %s ran; health unknown until a job passes", d.w.Host(), prev.JobID)
				st.CommentBy, st.CommentAt = d.by(), now
			}
		default:
			st.State, st.Since = events.StateIdle, now
		}
		if st.Health == "" {
			st.Health = events.HealthUnknown
		}
	}
	st.Name, st.Host, st.Connector, st.Queues = d.cfg.Name, d.w.Host(), d.cfg.Type, slices.Clone(d.cfg.Queues)
	st.JobID, st.Phase, st.Pending, st.Lost, st.Heartbeat = "", "", "", false, now
	return st
}

// by names this worker as the author of a comment.
func (d *device) by() string { return "worker on " + d.w.Host() }

// update changes the device's status with fn, stores it and, when its
// state, health or job changed, announces it with a device_state event.
func (d *device) update(detail string, fn func(*events.DeviceStatus)) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	d.write(ctx, detail, fn)
}

// write applies fn to the device's status and stores the result with
// compare-and-set. When the record was changed meanwhile by someone else
// (`flinger device set`, an orchestrator), their change is merged into
// this worker's copy and fn applied again, so that a heartbeat or a phase
// change never undoes it. A write that cannot be stored (NATS
// unreachable) is kept here and goes out with the next one.
func (d *device) write(ctx context.Context, detail string, fn func(*events.DeviceStatus)) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	var before, st events.DeviceStatus
	for attempt := 0; ; attempt++ {
		var rev uint64
		before, rev = d.snapshot()
		st = before
		st.Queues = slices.Clone(before.Queues)
		fn(&st)
		d.settle(&before, &st)
		d.mu.Lock()
		d.writing = &st
		d.mu.Unlock()
		nrev, err := d.w.c.StoreDevice(ctx, &st, rev)
		d.mu.Lock()
		d.writing = nil
		d.mu.Unlock()
		if err == nil {
			d.set(&st, nrev)
			break
		}
		if errors.Is(err, broker.ErrConflict) && attempt < maxConflicts {
			err = d.refresh(ctx)
			if err == nil {
				continue
			}
		}
		if ctx.Err() == nil {
			d.log.Warn("device status not stored", "err", err)
		}
		d.set(&st, rev)
		break
	}
	if st.State != before.State || st.Health != before.Health || st.JobID != before.JobID || st.Pending != before.Pending {
		d.announce(detail)
	}
}

// settle completes a change from before to st with what always goes
// along: a device that becomes busy while out of service keeps that state
// as pending; a device that leaves busy enters its pending state instead
// of idle; a new state starts its Since, a new comment is signed, and
// every write is a heartbeat that clears the lost mark.
func (d *device) settle(before, st *events.DeviceStatus) {
	now := time.Now().UTC()
	if st.State == events.StateBusy && before.State.OutOfService() {
		st.Pending = before.State
	}
	if st.State != events.StateBusy {
		if st.State == events.StateIdle && st.Pending.OutOfService() {
			st.State = st.Pending
		}
		st.Pending = ""
	}
	if st.State != before.State {
		st.Since = now
	}
	if st.Comment != before.Comment && st.CommentBy == before.CommentBy {
		st.CommentBy, st.CommentAt = d.by(), now
	}
	st.Heartbeat, st.Lost = now, false
}

// refresh reads the device's record and merges it into this worker's copy.
func (d *device) refresh(ctx context.Context) error {
	stored, rev, err := d.w.c.GetDeviceRev(ctx, d.cfg.Name)
	switch {
	case errors.Is(err, broker.ErrNoDevice):
		d.mu.Lock()
		d.rev = 0
		d.mu.Unlock()
		return nil
	case err != nil:
		return err
	}
	d.adopt(stored, rev)
	return nil
}

// adopt merges a record of the device stored by someone else at revision
// rev into this worker's copy, unless the copy is as new. It reports
// whether anything was merged.
func (d *device) adopt(stored *events.DeviceStatus, rev uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rev <= d.rev {
		return false
	}
	local := d.status
	if d.writing != nil && stored.Heartbeat.Equal(d.writing.Heartbeat) {
		// This worker's write in flight (each carries a new heartbeat), or
		// a change made on top of it: it holds all of this worker's.
		local = *d.writing
	}
	m := *stored
	// The worker knows what it runs and what it drives.
	m.Name, m.Host, m.Connector, m.Queues = local.Name, local.Host, local.Connector, slices.Clone(local.Queues)
	m.JobID, m.Phase, m.Heartbeat = local.JobID, local.Phase, local.Heartbeat
	switch {
	case local.State == events.StateBusy && stored.State != events.StateBusy:
		if stored.State.OutOfService() {
			m.Pending = stored.State
		}
		m.State, m.Since = events.StateBusy, local.Since
	case local.State != events.StateBusy && stored.State == events.StateBusy:
		m.State, m.Since, m.Pending = local.State, local.Since, ""
		if m.State == events.StateIdle && stored.Pending.OutOfService() {
			m.State = stored.Pending
		}
	}
	if m.State != local.State || m.Health != local.Health || m.Pending != local.Pending {
		d.log.Info("device status changed elsewhere", "state", m.State, "health", m.Health, "pending", m.Pending,
			"comment", m.Comment, "by", m.CommentBy)
	}
	d.status, d.rev = m, rev
	return true
}

// set makes st, stored at revision rev, this worker's copy, unless a newer
// record has been adopted meanwhile (it was written over st, so it holds it).
func (d *device) set(st *events.DeviceStatus, rev uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rev < d.rev {
		return
	}
	d.status, d.rev = *st, rev
}

// snapshot returns a copy of the device's status and its revision.
func (d *device) snapshot() (events.DeviceStatus, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status, d.rev
}

// announce publishes the device's current status as a device_state event.
func (d *device) announce(detail string) {
	st, _ := d.snapshot()
	ev := st.StateEvent(detail)
	d.w.cfg.Metrics.Observe(ev)
	if err := d.w.c.PublishEvent(ev); err != nil {
		d.log.Warn("device event not published", "err", err)
	}
}

// heartbeatNow confirms the device's record.
func (d *device) heartbeatNow(ctx context.Context) {
	d.write(ctx, "", func(*events.DeviceStatus) {})
}

// ready puts the device in or out of service after its status changed
// (a job ended, the worker started, `flinger device set` or an
// orchestrator changed its record): an idle device joins the idle set,
// after its health check when its health is unknown or bad and it has
// one; any other leaves the set. A device running a job or a health check
// is left alone: ready is called again when that ends.
func (d *device) ready() {
	d.readyMu.Lock()
	defer d.readyMu.Unlock()
	st, _ := d.snapshot()
	if st.State != events.StateIdle || isClosed(d.w.draining) {
		d.w.withdraw(d)
		return
	}
	if d.needsCheck(&st) {
		if d.w.reserve(d) {
			d.w.jobs.Add(1)
			go func() {
				defer d.w.jobs.Done()
				d.healthCheck()
			}()
		}
		return
	}
	d.w.setIdle(d)
}

// jobEnded returns the device to service after a job or a health check.
func (d *device) jobEnded() {
	d.w.endJob(d)
	d.ready()
}

// watchDevices follows the records of this worker's devices in the device
// bucket until ctx is done (the returned channel is closed then), and
// adopts every change made by someone else: `flinger device set`
// (offline, maintenance, online) or an orchestrator (health unknown when
// the device was found lost). A device that goes out of service leaves
// the idle set (a running job finishes first); one set online becomes
// idle, after its health check when it needs one.
func (w *Worker) watchDevices(ctx context.Context) (<-chan struct{}, error) {
	byKey := make(map[string]*device, len(w.devices))
	keys := make([]string, 0, len(w.devices))
	for _, d := range w.devices {
		k := events.Key(d.cfg.Name)
		byKey[k] = d
		keys = append(keys, k)
	}
	kw, err := w.c.Devices.WatchFiltered(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("worker: watch device records: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { _ = kw.Stop() }()
		for {
			var e jetstream.KeyValueEntry
			var ok bool
			select {
			case <-ctx.Done():
				return
			case e, ok = <-kw.Updates():
				if !ok {
					return
				}
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			d := byKey[e.Key()]
			if d == nil {
				continue
			}
			var st events.DeviceStatus
			if err := events.Decode(e.Value(), &st); err != nil {
				d.log.Warn("unreadable device record ignored", "revision", e.Revision(), "err", err)
				continue
			}
			d.adopt(&st, e.Revision())
			d.ready()
		}
	}()
	return done, nil
}

// reachInfo is what the job's record tells of how to reach the device:
// Testflinger's device_info (device_ip, agent_name) and, when configured,
// its SSH port and serial console.
func (d *device) reachInfo() map[string]any {
	info, _ := d.cfg.DeviceInfo()["device_info"].(map[string]any)
	if info == nil {
		info = map[string]any{}
	}
	if d.cfg.SSHPort > 0 && d.cfg.SSHPort != 22 {
		info["ssh_port"] = d.cfg.SSHPort
	}
	if d.cfg.SerialHost != "" && d.cfg.SerialPort > 0 {
		info["serial_host"], info["serial_port"] = d.cfg.SerialHost, d.cfg.SerialPort
	}
	return info
}

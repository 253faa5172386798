package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
)

// The states `flinger device set` takes.
const (
	// DeviceOnline puts a device back in service: idle, after its health
	// check when its health is not good.
	DeviceOnline = "online"
	// DeviceOffline takes a device out of service.
	DeviceOffline = "offline"
	// DeviceMaintenance takes a device out of service for work on it.
	DeviceMaintenance = "maintenance"
)

// DeviceSetBy signs the comments `flinger device set` writes.
const DeviceSetBy = "flinger device set"

// lostBy signs the comments an orchestrator writes on a lost device.
const lostBy = "orchestrator"

// errNoState reports a device-set request without a known state.
var errNoState = errors.New("unknown state (use online, offline or maintenance)")

func (o *Orchestrator) ctlDeviceSet(ctx context.Context, req *events.CtlRequest) *events.CtlReply {
	st, err := o.SetDevice(ctx, req.Device, req.State, req.Comment)
	reply := &events.CtlReply{Device: st}
	if err != nil {
		reply.Error = err.Error()
	}
	return reply
}

// SetDevice sets device name online, offline or maintenance, as an
// operator does with `flinger device set`, and returns its status after.
// The change is made with compare-and-set on the device's record, so it is
// never lost to a concurrent write; the device's worker adopts it at once.
// A busy device finishes its job first: offline or maintenance is then
// pending, and the worker applies it when the job ends (online cancels a
// pending change). A device set online whose health is not good becomes
// idle with its health unknown, so that its health check, if it has one,
// runs before any user job. The comment is kept with who set it and when.
func (o *Orchestrator) SetDevice(ctx context.Context, name, state, comment string) (*events.DeviceStatus, error) {
	if name == "" {
		return nil, errors.New("device set: a device name is required")
	}
	want := strings.ToLower(strings.TrimSpace(state))
	switch want {
	case DeviceOnline, DeviceOffline, DeviceMaintenance:
	default:
		return nil, fmt.Errorf("device set %s: %q: %w", name, state, errNoState)
	}
	var before events.DeviceStatus
	st, _, err := o.c.UpdateDevice(ctx, name, func(st *events.DeviceStatus) error {
		before = *st
		now := time.Now().UTC()
		applyDeviceSet(st, events.DeviceState(want), now)
		st.Comment, st.CommentBy, st.CommentAt = comment, DeviceSetBy, now
		if comment == "" {
			st.Comment = "set " + want + " with " + DeviceSetBy
		}
		return nil
	})
	switch {
	case errors.Is(err, broker.ErrNoDevice):
		return nil, fmt.Errorf("device set: no device named %q (flinger devices lists them): %w", name, broker.ErrNoDevice)
	case err != nil:
		return nil, fmt.Errorf("device set %s: %w", name, err)
	}
	detail := "set " + want
	if st.Pending != "" {
		detail = fmt.Sprintf("set %s: busy with job %s; it goes %s when that job ends", want, st.JobID, st.Pending)
	} else if before.Pending != "" && want == DeviceOnline {
		detail = fmt.Sprintf("set online: stays in service after job %s", st.JobID)
	}
	o.announceDevice(st, detail+": "+st.Comment)
	o.log.Info("device set", "device", name, "state", st.State, "pending", st.Pending, "health", st.Health, "comment", st.Comment)
	return st, nil
}

// applyDeviceSet changes st as `device set` asks for want: online,
// offline or maintenance.
func applyDeviceSet(st *events.DeviceStatus, want events.DeviceState, now time.Time) {
	busy := st.State == events.StateBusy
	switch {
	case want == DeviceOnline && busy:
		st.Pending = ""
	case want == DeviceOnline:
		if st.State != events.StateIdle {
			st.State, st.Since = events.StateIdle, now
		}
		if st.Health != events.HealthGood {
			st.Health = events.HealthUnknown
		}
	case busy:
		st.Pending = want
	default:
		if st.State != want {
			st.State, st.Since = want, now
		}
		st.Pending = ""
	}
}

// announceDevice publishes st as a device_state event.
func (o *Orchestrator) announceDevice(st *events.DeviceStatus, detail string) {
	ev := st.StateEvent(detail)
	if err := o.c.PublishEvent(ev); err != nil {
		o.log.Warn("device event not published", "device", st.Name, "err", err)
	}
}

// startDevices watches every device's record and marks lost each device
// whose heartbeat stops coming (see watchDevices).
func (o *Orchestrator) startDevices(ctx, runCtx context.Context) error {
	kw, err := o.c.Devices.WatchAll(runCtx)
	if err != nil {
		return fmt.Errorf("watch device records: %w", err)
	}
	o.goLoop(func() { o.watchDevices(runCtx, kw) })
	return nil
}

// seenDevice is what an orchestrator keeps of a device's record while it
// watches it: the last heartbeat written, and when it saw it arrive.
type seenDevice struct {
	name      string
	heartbeat time.Time
	lost      bool
}

// deadline is when the device whose heartbeat hb was seen is lost unless
// another heartbeat comes.
type deadline struct {
	at        time.Time
	key       string
	heartbeat time.Time
}

// watchDevices follows every device's record until ctx is done. A device
// whose record is not rewritten with a new heartbeat within DeviceTimeout
// of the last one arriving (time measured on this orchestrator's clock,
// so clocks need not agree) is lost: see markLost. Deadlines come in the
// order heartbeats arrive, so one queue and one timer serve every device.
func (o *Orchestrator) watchDevices(ctx context.Context, kw jetstream.KeyWatcher) {
	defer func() { _ = kw.Stop() }()
	timeout := o.cfg.DeviceTimeout
	seen := map[string]*seenDevice{}
	var queue []deadline
	timer := time.NewTimer(timeout)
	timer.Stop()
	defer timer.Stop()
	armed := false
	arm := func() {
		if armed || len(queue) == 0 {
			return
		}
		timer.Reset(time.Until(queue[0].at))
		armed = true
	}
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-kw.Updates():
			if !ok {
				return
			}
			if e == nil {
				o.devices.ready()
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				delete(seen, e.Key())
				o.devices.remove(e.Key())
				continue
			}
			var st events.DeviceStatus
			if err := events.Decode(e.Value(), &st); err != nil {
				o.log.Warn("unreadable device record", "key", e.Key(), "err", err)
				continue
			}
			o.devices.put(e.Key(), &st)
			s := seen[e.Key()]
			if s == nil {
				s = &seenDevice{}
				seen[e.Key()] = s
			}
			s.name, s.lost = st.Name, st.Lost
			if !st.Heartbeat.Equal(s.heartbeat) {
				s.heartbeat = st.Heartbeat
				if !st.Lost {
					queue = append(queue, deadline{at: time.Now().Add(timeout), key: e.Key(), heartbeat: st.Heartbeat})
					arm()
				}
			}
		case <-timer.C:
			armed = false
			now := time.Now()
			for len(queue) > 0 && !queue[0].at.After(now) {
				dl := queue[0]
				queue = queue[1:]
				if s := seen[dl.key]; s != nil && !s.lost && s.heartbeat.Equal(dl.heartbeat) {
					o.markLost(ctx, s.name, dl.heartbeat)
				}
			}
			if len(queue) == 0 {
				queue = nil // let the backing array go
			}
			arm()
		}
	}
}

// markLost marks device name lost when its record still holds heartbeat
// hb, with compare-and-set so that of several orchestrators one marks it
// and the others change nothing. After LAVA, whose devices keep their
// state when their worker goes away and have their health downgraded to
// unknown when it comes back: the device's state says what an operator
// asked for, so offline and maintenance stay, and it would never become
// good again by itself if set offline (Testflinger's #1328); its health
// becomes unknown (bad stays bad), so that its health check, if it has
// one, runs before any user job once its worker is back. A busy device's
// job is taken from it (requeued or failed by policy, see requeueLost), as
// LAVA ends a job whose worker is gone: the device becomes idle, or the
// state pending for it.
func (o *Orchestrator) markLost(ctx context.Context, name string, hb time.Time) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var before events.DeviceStatus
	why := ""
	st, _, err := o.c.UpdateDevice(ctx, name, func(st *events.DeviceStatus) error {
		if st.Lost || !st.Heartbeat.Equal(hb) {
			return broker.ErrUnchanged
		}
		before = *st
		now := time.Now().UTC()
		why = fmt.Sprintf("worker on %s lost: no heartbeat since %s", st.Host, st.Heartbeat.UTC().Format(time.RFC3339))
		st.Lost = true
		if st.Health == events.HealthGood {
			st.Health = events.HealthUnknown
		}
		if st.State == events.StateBusy {
			st.State, st.Since = events.StateIdle, now
			if st.Pending.OutOfService() {
				st.State = st.Pending
			}
		}
		st.JobID, st.Phase, st.Pending = "", "", ""
		if !st.State.OutOfService() || st.Comment == "" {
			// An operator's comment on an offline device says more; keep it.
			st.Comment, st.CommentBy, st.CommentAt = why, lostBy, now
		}
		return nil
	})
	switch {
	case errors.Is(err, broker.ErrUnchanged), errors.Is(err, broker.ErrNoDevice):
		return
	case err != nil:
		o.log.Error("lost device not marked", "device", name, "err", err)
		return
	}
	o.log.Warn("device lost", "device", name, "host", st.Host, "job", before.JobID, "reason", why)
	o.announceDevice(st, why)
	if before.JobID != "" {
		o.requeueLost(ctx, &before)
	}
}

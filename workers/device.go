package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

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

	mu     sync.Mutex
	status events.DeviceStatus
}

// start loads the device's last known status (an offline or maintenance
// device stays so across restarts), publishes it and, when the device is
// in service, makes it idle.
func (d *device) start(ctx context.Context) error {
	now := time.Now().UTC()
	st := events.DeviceStatus{Name: d.cfg.Name, State: events.StateIdle, Health: events.HealthUnknown, Since: now}
	prev, err := d.w.c.GetDevice(ctx, d.cfg.Name)
	switch {
	case err == nil:
		st.Health, st.Comment = prev.Health, prev.Comment
		if prev.State == events.StateOffline || prev.State == events.StateMaintenance {
			st.State, st.Since = prev.State, prev.Since
		}
		if st.Health == "" {
			st.Health = events.HealthUnknown
		}
	case !errors.Is(err, broker.ErrNoDevice):
		d.log.Warn("previous device status unreadable; starting afresh", "err", err)
	}
	st.Host, st.Connector, st.Queues, st.Heartbeat = d.w.Host(), d.cfg.Type, d.cfg.Queues, now
	d.mu.Lock()
	d.status = st
	d.mu.Unlock()
	if err := d.w.c.PutDevice(ctx, &st); err != nil {
		return fmt.Errorf("device %s: %w", d.cfg.Name, err)
	}
	d.announce("worker started")
	if st.State == events.StateIdle {
		d.w.setIdle(d)
	} else {
		d.log.Warn("device out of service; it takes no jobs until set online", "state", st.State, "comment", st.Comment)
	}
	return nil
}

// update changes the device's status with fn, stores it (without waiting:
// updates keep their order) and, when its state, health or job changed,
// announces it with a device_state event.
func (d *device) update(detail string, fn func(*events.DeviceStatus)) {
	d.mu.Lock()
	before := d.status
	fn(&d.status)
	now := time.Now().UTC()
	if d.status.State != before.State {
		d.status.Since = now
	}
	d.status.Heartbeat = now
	st := d.status
	st.Queues = append([]string(nil), st.Queues...)
	d.mu.Unlock()
	if err := d.w.c.PutDeviceAsync(&st); err != nil {
		d.log.Warn("device status not stored", "err", err)
	}
	if st.State != before.State || st.Health != before.Health || st.JobID != before.JobID {
		d.announce(detail)
	}
}

// announce publishes the device's current status as a device_state event.
func (d *device) announce(detail string) {
	d.mu.Lock()
	st := d.status
	d.mu.Unlock()
	ev := events.NewEvent(events.EventDeviceState)
	ev.Device, ev.Host, ev.JobID, ev.Detail = st.Name, st.Host, "", detail
	ev.Data = map[string]any{"state": string(st.State), "health": string(st.Health)}
	if st.JobID != "" {
		ev.Data["job_id"] = st.JobID
	}
	if st.Comment != "" {
		ev.Data["comment"] = st.Comment
	}
	if err := d.w.c.PublishEvent(ev); err != nil {
		d.log.Warn("device event not published", "err", err)
	}
}

func (d *device) heartbeatNow(ctx context.Context) {
	d.mu.Lock()
	d.status.Heartbeat = time.Now().UTC()
	st := d.status
	d.mu.Unlock()
	if err := d.w.c.PutDevice(ctx, &st); err != nil && ctx.Err() == nil {
		d.log.Warn("heartbeat not stored", "err", err)
	}
}

func (d *device) state() events.DeviceState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status.State
}

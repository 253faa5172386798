package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
)

// devWait bounds every wait in these tests.
const devWait = 30 * time.Second

// devServer starts an in-memory NATS server with Flinger's streams and
// buckets and returns a client of it and a function that connects more.
func devServer(t *testing.T) (*broker.Client, func(name string) *broker.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), devWait)
	defer cancel()
	srv, err := broker.StartEmbedded(broker.ServerOptions{Memory: true, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	log := slog.New(slog.DiscardHandler)
	c, err := broker.SetupAndConnect(ctx, broker.ConnOptions{URL: srv.ClientURL(), Name: "test", Log: log}, events.StoreOptions{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	connect := func(name string) *broker.Client {
		ctx, cancel := context.WithTimeout(context.Background(), devWait)
		defer cancel()
		cc, err := broker.Connect(ctx, broker.ConnOptions{URL: srv.ClientURL(), Name: name, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cc.Close)
		return cc
	}
	return c, connect
}

// startOrchestrator starts an orchestrator on its own connection.
func startOrchestrator(t *testing.T, c *broker.Client, cfg orchestrator.Config) {
	t.Helper()
	cfg.Client, cfg.Log = c, slog.New(slog.DiscardHandler)
	o, err := orchestrator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), devWait)
	defer cancel()
	if err := o.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Stop)
}

// putDevice stores st as a worker would, with a fresh heartbeat.
func putDevice(t *testing.T, c *broker.Client, st events.DeviceStatus) {
	t.Helper()
	st.Host, st.Connector, st.Queues = "h1", "fake_connector", []string{"q-" + st.Name}
	st.Heartbeat, st.Since = time.Now().UTC(), time.Now().Add(-time.Hour).UTC()
	if err := c.PutDevice(context.Background(), &st); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceSet sets devices online, offline and maintenance through the
// control service, and checks the replies, the records and the events.
func TestDeviceSet(t *testing.T) {
	c, connect := devServer(t)
	startOrchestrator(t, connect("orchestrator"), orchestrator.Config{})
	tests := []struct {
		name        string
		device      *events.DeviceStatus // nil: no record
		state       string
		comment     string
		wantState   events.DeviceState
		wantPending events.DeviceState
		wantHealth  events.DeviceHealth
		wantComment string
		wantErr     string
	}{
		{
			name:        "idle device offline",
			device:      &events.DeviceStatus{State: events.StateIdle, Health: events.HealthGood},
			state:       "offline",
			comment:     "replacing the PSU",
			wantState:   events.StateOffline,
			wantHealth:  events.HealthGood,
			wantComment: "replacing the PSU",
		},
		{
			name:        "idle device into maintenance, no comment",
			device:      &events.DeviceStatus{State: events.StateIdle, Health: events.HealthUnknown},
			state:       "Maintenance",
			wantState:   events.StateMaintenance,
			wantHealth:  events.HealthUnknown,
			wantComment: "set maintenance with flinger device set",
		},
		{
			name:        "bad device online: idle, health unknown",
			device:      &events.DeviceStatus{State: events.StateOffline, Health: events.HealthBad, Comment: "recovery failed"},
			state:       "online",
			comment:     "reflashed by hand",
			wantState:   events.StateIdle,
			wantHealth:  events.HealthUnknown,
			wantComment: "reflashed by hand",
		},
		{
			name:        "good device back from maintenance",
			device:      &events.DeviceStatus{State: events.StateMaintenance, Health: events.HealthGood},
			state:       "online",
			wantState:   events.StateIdle,
			wantHealth:  events.HealthGood,
			wantComment: "set online with flinger device set",
		},
		{
			name:        "busy device offline: after its job",
			device:      &events.DeviceStatus{State: events.StateBusy, Health: events.HealthGood, JobID: "j1", Phase: events.PhaseTest},
			state:       "offline",
			comment:     "after this job",
			wantState:   events.StateBusy,
			wantPending: events.StateOffline,
			wantHealth:  events.HealthGood,
			wantComment: "after this job",
		},
		{
			name:        "busy device online again: the pending change is dropped",
			device:      &events.DeviceStatus{State: events.StateBusy, Pending: events.StateMaintenance, Health: events.HealthGood, JobID: "j1"},
			state:       "online",
			wantState:   events.StateBusy,
			wantHealth:  events.HealthGood,
			wantComment: "set online with flinger device set",
		},
		{
			name:    "unknown device",
			state:   "offline",
			wantErr: `no device named "unknown-device" (flinger devices lists them)`,
		},
		{
			name:    "unknown state",
			device:  &events.DeviceStatus{State: events.StateIdle, Health: events.HealthGood},
			state:   "retired",
			wantErr: `"retired": unknown state (use online, offline or maintenance)`,
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), devWait)
			defer cancel()
			name := "unknown-device"
			if tc.device != nil {
				name = "dev-" + string(rune('a'+i))
				st := *tc.device
				st.Name = name
				putDevice(t, c, st)
			}
			sub, err := c.NC.SubscribeSync(c.Subj.DeviceEvent(name, events.EventDeviceState))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			reply, err := client.Control(ctx, c, "device-set", &events.CtlRequest{Device: name, State: tc.state, Comment: tc.comment})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			stored, err := c.GetDevice(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			for _, got := range []*events.DeviceStatus{reply.Device, stored} {
				if got.State != tc.wantState || got.Pending != tc.wantPending || got.Health != tc.wantHealth || got.Comment != tc.wantComment {
					t.Errorf("device %s pending %q health %s comment %q; want %s pending %q health %s comment %q",
						got.State, got.Pending, got.Health, got.Comment, tc.wantState, tc.wantPending, tc.wantHealth, tc.wantComment)
				}
				if got.CommentBy != orchestrator.DeviceSetBy || time.Since(got.CommentAt) > devWait {
					t.Errorf("comment by %q at %s: want %q, now", got.CommentBy, got.CommentAt, orchestrator.DeviceSetBy)
				}
				if got.JobID != tc.device.JobID || got.Host != "h1" {
					t.Errorf("job %q host %q: the worker's fields changed", got.JobID, got.Host)
				}
			}
			if movedSince := time.Since(stored.Since) < devWait; movedSince != (tc.device.State != tc.wantState) {
				t.Errorf("since %s: moved %v, want %v", stored.Since, movedSince, tc.device.State != tc.wantState)
			}
			m, err := sub.NextMsg(devWait)
			if err != nil {
				t.Fatalf("no device_state event: %v", err)
			}
			var ev events.Event
			if err := events.Decode(m.Data, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Device != name || ev.Data["state"] != string(tc.wantState) || !strings.Contains(ev.Detail, tc.wantComment) {
				t.Errorf("event %s %q %v", ev.Device, ev.Detail, ev.Data)
			}
			if tc.wantPending != "" && !strings.Contains(ev.Detail, "when that job ends") {
				t.Errorf("event %q does not say the change waits for the job", ev.Detail)
			}
		})
	}
}

// TestControlServiceInfo checks that the control service lists its
// endpoints, device-set among them, as `nats micro info` shows them.
func TestControlServiceInfo(t *testing.T) {
	c, connect := devServer(t)
	startOrchestrator(t, connect("orchestrator"), orchestrator.Config{})
	m, err := c.NC.Request("$SRV.INFO."+orchestrator.ControlService, nil, devWait)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for _, ep := range info.Endpoints {
		found[ep.Name] = ep.Subject
	}
	for _, verb := range []string{"cancel", "device-set", "reserve-extend"} {
		if found[verb] != c.Subj.Ctl(verb) {
			t.Errorf("endpoint %s: subject %q, want %q (endpoints: %v)", verb, found[verb], c.Subj.Ctl(verb), found)
		}
	}
}

// TestLostDevices checks that a device whose heartbeat stops is marked
// lost, once, within the device timeout, even with two orchestrators;
// that one whose heartbeat keeps coming is not; and that a device whose
// worker comes back and goes again is marked again.
func TestLostDevices(t *testing.T) {
	c, connect := devServer(t)
	const timeout = 2 * time.Second
	for _, name := range []string{"orchestrator-1", "orchestrator-2"} {
		startOrchestrator(t, connect(name), orchestrator.Config{DeviceTimeout: timeout})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*devWait)
	defer cancel()
	sub, err := c.NC.SubscribeSync(c.Subj.Prefix() + ".events.device.*." + events.EventDeviceState)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	putDevice(t, c, events.DeviceStatus{Name: "alive", State: events.StateIdle, Health: events.HealthGood})
	putDevice(t, c, events.DeviceStatus{Name: "busy", State: events.StateBusy, Health: events.HealthGood, JobID: "j1",
		Phase: events.PhaseTest, Pending: events.StateMaintenance})
	putDevice(t, c, events.DeviceStatus{Name: "idle", State: events.StateIdle, Health: events.HealthGood})
	putDevice(t, c, events.DeviceStatus{Name: "offline", State: events.StateOffline, Health: events.HealthBad, Comment: "broken PSU"})
	start := time.Now()

	// The live worker's heartbeats, twenty per timeout.
	beat, stopBeat := context.WithCancel(ctx)
	var beats sync.WaitGroup
	beats.Add(1)
	go func() {
		defer beats.Done()
		for beat.Err() == nil {
			_, _, err := c.UpdateDevice(beat, "alive", func(st *events.DeviceStatus) error {
				st.Heartbeat = time.Now().UTC()
				return nil
			})
			if err != nil && beat.Err() == nil {
				t.Errorf("heartbeat: %v", err)
				return
			}
			select {
			case <-beat.Done():
			case <-time.After(timeout / 20):
			}
		}
	}()
	defer func() { stopBeat(); beats.Wait() }()

	lost := func(name string) *events.DeviceStatus {
		t.Helper()
		for {
			st, err := c.GetDevice(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if st.Lost {
				return st
			}
			if ctx.Err() != nil {
				t.Fatalf("device %s not marked lost", name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	tests := []struct {
		name        string
		wantState   events.DeviceState
		wantHealth  events.DeviceHealth
		wantComment string
	}{
		{"busy", events.StateMaintenance, events.HealthUnknown, "worker on h1 lost: no heartbeat since "},
		{"idle", events.StateIdle, events.HealthUnknown, "worker on h1 lost: no heartbeat since "},
		{"offline", events.StateOffline, events.HealthBad, "broken PSU"},
	}
	for _, tc := range tests {
		st := lost(tc.name)
		if st.State != tc.wantState || st.Health != tc.wantHealth || !strings.HasPrefix(st.Comment, tc.wantComment) ||
			st.JobID != "" || st.Phase != "" || st.Pending != "" {
			t.Errorf("%s lost: %s/%s job %q phase %q pending %q comment %q; want %s/%s comment %q", tc.name,
				st.State, st.Health, st.JobID, st.Phase, st.Pending, st.Comment, tc.wantState, tc.wantHealth, tc.wantComment)
		}
	}
	if took := time.Since(start); took < timeout {
		t.Errorf("devices marked lost after %s, before the device timeout of %s", took, timeout)
	}

	// Another timeout later the live device is still fine, and each lost
	// device was announced once although two orchestrators watch.
	time.Sleep(timeout)
	if st, _ := c.GetDevice(ctx, "alive"); st == nil || st.Lost || st.Health != events.HealthGood {
		t.Errorf("device with a live heartbeat: %+v", st)
	}
	counts := lostEvents(t, sub)
	for _, tc := range tests {
		if counts[tc.name] != 1 {
			t.Errorf("device %s: %d lost events, want 1 (all: %v)", tc.name, counts[tc.name], counts)
		}
	}

	// The worker of idle comes back (a write clears the mark, health stays
	// unknown), then goes again: marked again.
	if _, _, err := c.UpdateDevice(ctx, "idle", func(st *events.DeviceStatus) error {
		st.Lost, st.Heartbeat = false, time.Now().UTC()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	lost("idle")
	if n := lostEvents(t, sub)["idle"]; n != 1 {
		t.Errorf("device idle lost again: %d new events, want 1", n)
	}
}

// lostEvents counts the device_state events sub has received that mark a
// device lost, by device.
func lostEvents(t *testing.T, sub *nats.Subscription) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for {
		m, err := sub.NextMsg(100 * time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			return counts
		}
		if err != nil {
			t.Fatal(err)
		}
		var ev events.Event
		if err := events.Decode(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Data["lost"] == true {
			counts[ev.Device]++
		}
	}
}

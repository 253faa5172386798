package workers

import (
	"log/slog"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

func testDevice() *device {
	w := &Worker{cfg: Config{Host: &drivers.HostConfig{Host: "h1"}}, idle: map[*device]bool{}, wake: map[string]chan struct{}{}}
	return &device{w: w, cfg: &drivers.DeviceConfig{Name: "dev-1", Type: "fake_connector", Queues: []string{"q"}},
		log: slog.New(slog.DiscardHandler)}
}

// TestSettle checks what every write of a device's record carries along:
// pending states, Since, signed comments, the heartbeat and the lost mark.
func TestSettle(t *testing.T) {
	past := time.Now().Add(-time.Hour).UTC()
	tests := []struct {
		name        string
		before      events.DeviceStatus
		change      func(*events.DeviceStatus)
		wantState   events.DeviceState
		wantPending events.DeviceState
		newSince    bool
		signed      bool
	}{
		{
			name:      "heartbeat keeps everything",
			before:    events.DeviceStatus{State: events.StateIdle, Since: past, Lost: true},
			change:    func(*events.DeviceStatus) {},
			wantState: events.StateIdle,
		},
		{
			name:        "job starts on a device set offline meanwhile",
			before:      events.DeviceStatus{State: events.StateOffline, Since: past},
			change:      func(s *events.DeviceStatus) { s.State = events.StateBusy },
			wantState:   events.StateBusy,
			wantPending: events.StateOffline,
			newSince:    true,
		},
		{
			name:        "phase change keeps the pending state",
			before:      events.DeviceStatus{State: events.StateBusy, Pending: events.StateMaintenance, Since: past},
			change:      func(s *events.DeviceStatus) { s.Phase = events.PhaseTest },
			wantState:   events.StateBusy,
			wantPending: events.StateMaintenance,
		},
		{
			name:      "job ends: the pending state is entered",
			before:    events.DeviceStatus{State: events.StateBusy, Pending: events.StateMaintenance, Since: past},
			change:    func(s *events.DeviceStatus) { s.State = events.StateIdle },
			wantState: events.StateMaintenance,
			newSince:  true,
		},
		{
			name:      "job ends without a pending state",
			before:    events.DeviceStatus{State: events.StateBusy, Since: past},
			change:    func(s *events.DeviceStatus) { s.State = events.StateIdle },
			wantState: events.StateIdle,
			newSince:  true,
		},
		{
			name:   "recovery failure wins over a pending maintenance",
			before: events.DeviceStatus{State: events.StateBusy, Pending: events.StateMaintenance, Since: past},
			change: func(s *events.DeviceStatus) {
				s.State, s.Comment = events.StateOffline, "recovery failed"
			},
			wantState: events.StateOffline,
			newSince:  true,
			signed:    true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := testDevice()
			st := tc.before
			tc.change(&st)
			start := time.Now()
			d.settle(&tc.before, &st)
			if st.State != tc.wantState || st.Pending != tc.wantPending {
				t.Errorf("state %s pending %q, want %s pending %q", st.State, st.Pending, tc.wantState, tc.wantPending)
			}
			if got := !st.Since.Equal(past); got != tc.newSince {
				t.Errorf("since changed: %v, want %v", got, tc.newSince)
			}
			if got := st.CommentBy == "worker on h1" && !st.CommentAt.Before(start); got != tc.signed {
				t.Errorf("comment signed %v (%q at %s), want %v", got, st.CommentBy, st.CommentAt, tc.signed)
			}
			if st.Heartbeat.Before(start) || st.Lost {
				t.Errorf("heartbeat %s lost %v: want a fresh heartbeat, no lost mark", st.Heartbeat, st.Lost)
			}
		})
	}
}

// TestAdopt checks how a record written by someone else merges into the
// worker's copy: the operator's state, health and comment are taken, the
// worker's job and identity kept, and an older revision ignored.
func TestAdopt(t *testing.T) {
	tests := []struct {
		name        string
		local       events.DeviceStatus
		writing     *events.DeviceStatus // the worker's write in flight
		stored      events.DeviceStatus
		rev         uint64
		wantState   events.DeviceState
		wantPending events.DeviceState
		wantHealth  events.DeviceHealth
		wantJob     string
		adopted     bool
	}{
		{
			name:       "idle device set offline",
			local:      events.DeviceStatus{State: events.StateIdle, Health: events.HealthGood},
			stored:     events.DeviceStatus{State: events.StateOffline, Health: events.HealthGood, Comment: "psu"},
			rev:        5,
			wantState:  events.StateOffline,
			wantHealth: events.HealthGood,
			adopted:    true,
		},
		{
			name:        "busy device set maintenance before the worker said busy",
			local:       events.DeviceStatus{State: events.StateBusy, JobID: "j1", Health: events.HealthGood},
			stored:      events.DeviceStatus{State: events.StateMaintenance, Health: events.HealthGood},
			rev:         5,
			wantState:   events.StateBusy,
			wantPending: events.StateMaintenance,
			wantHealth:  events.HealthGood,
			wantJob:     "j1",
			adopted:     true,
		},
		{
			name:       "device found lost while the worker runs a job",
			local:      events.DeviceStatus{State: events.StateBusy, JobID: "j1", Health: events.HealthGood},
			stored:     events.DeviceStatus{State: events.StateIdle, Health: events.HealthUnknown, Lost: true},
			rev:        5,
			wantState:  events.StateBusy,
			wantHealth: events.HealthUnknown,
			wantJob:    "j1",
			adopted:    true,
		},
		{
			name:       "offline device set online with health unknown",
			local:      events.DeviceStatus{State: events.StateOffline, Health: events.HealthBad},
			stored:     events.DeviceStatus{State: events.StateIdle, Health: events.HealthUnknown},
			rev:        5,
			wantState:  events.StateIdle,
			wantHealth: events.HealthUnknown,
			adopted:    true,
		},
		{
			name:       "stale busy record of a job that has ended here",
			local:      events.DeviceStatus{State: events.StateIdle, Health: events.HealthGood},
			stored:     events.DeviceStatus{State: events.StateBusy, JobID: "old", Pending: events.StateOffline, Health: events.HealthGood},
			rev:        5,
			wantState:  events.StateOffline,
			wantHealth: events.HealthGood,
			adopted:    true,
		},
		{
			name:    "the worker's own write in flight",
			local:   events.DeviceStatus{State: events.StateBusy, JobID: "j1", Health: events.HealthGood},
			writing: &events.DeviceStatus{State: events.StateOffline, JobID: "j1", Health: events.HealthBad, Heartbeat: time.Unix(7, 0)},
			stored: events.DeviceStatus{State: events.StateOffline, JobID: "j1", Health: events.HealthBad, Heartbeat: time.Unix(7, 0),
				Host: "h1"},
			rev:        5,
			wantState:  events.StateOffline,
			wantHealth: events.HealthBad,
			wantJob:    "j1",
			adopted:    true,
		},
		{
			name:       "older revision ignored",
			local:      events.DeviceStatus{State: events.StateIdle, Health: events.HealthGood},
			stored:     events.DeviceStatus{State: events.StateOffline, Health: events.HealthBad},
			rev:        3,
			wantState:  events.StateIdle,
			wantHealth: events.HealthGood,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := testDevice()
			tc.local.Name, tc.local.Host, tc.local.Queues = "dev-1", "h1", []string{"q"}
			tc.stored.Name, tc.stored.Host = "dev-1", "elsewhere"
			d.status, d.rev, d.writing = tc.local, 4, tc.writing
			if tc.writing != nil {
				tc.writing.Name, tc.writing.Host, tc.writing.Queues = "dev-1", "h1", []string{"q"}
			}
			if got := d.adopt(&tc.stored, tc.rev); got != tc.adopted {
				t.Fatalf("adopted %v, want %v", got, tc.adopted)
			}
			st, rev := d.snapshot()
			if st.State != tc.wantState || st.Pending != tc.wantPending || st.Health != tc.wantHealth || st.JobID != tc.wantJob {
				t.Errorf("got %s pending %q health %s job %q; want %s pending %q health %s job %q",
					st.State, st.Pending, st.Health, st.JobID, tc.wantState, tc.wantPending, tc.wantHealth, tc.wantJob)
			}
			if st.Host != "h1" || len(st.Queues) != 1 {
				t.Errorf("the worker's host and queues were not kept: %q %v", st.Host, st.Queues)
			}
			if want := max(tc.rev, 4); rev != want {
				t.Errorf("revision %d, want %d", rev, want)
			}
		})
	}
}

// TestIdleSet checks that a device taken for a job or a health check is
// never offered for another until that ends.
func TestIdleSet(t *testing.T) {
	d := testDevice()
	w := d.w
	w.wake["q"] = make(chan struct{}, 1)
	w.setIdle(d)
	if got := w.take("q", nil); got != d {
		t.Fatalf("take: got %v, want the idle device", got)
	}
	w.setIdle(d)
	if w.hasIdle("q") || w.reserve(d) {
		t.Fatal("a device in a job was offered again or reserved for a health check")
	}
	w.endJob(d)
	if !w.reserve(d) {
		t.Fatal("reserve after the job ended: refused")
	}
	w.setIdle(d)
	if w.hasIdle("q") {
		t.Fatal("a device running its health check was offered for a job")
	}
	w.endJob(d)
	w.setIdle(d)
	if !w.hasIdle("q") {
		t.Fatal("device not idle after its health check")
	}
	w.withdraw(d)
	if w.hasIdle("q") {
		t.Fatal("withdrawn device still idle")
	}
}

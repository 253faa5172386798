package workers

import (
	"testing"
	"time"

	"github.com/flingerlab/flinger/events"
)

func TestParkFor(t *testing.T) {
	for _, tc := range []struct {
		deliveries uint64
		lease      time.Duration
		want       time.Duration
	}{
		{0, time.Minute, 2 * time.Second},
		{1, time.Minute, 2 * time.Second},
		{2, time.Minute, 4 * time.Second},
		{3, time.Minute, 8 * time.Second},
		{4, time.Minute, 16 * time.Second},
		{5, time.Minute, 30 * time.Second},
		{40, time.Minute, 30 * time.Second},
		{1 << 40, time.Minute, 30 * time.Second},
		{4, 10 * time.Second, 5 * time.Second}, // never past half the lease
		{1, time.Second, 500 * time.Millisecond},
		{3, 0, 8 * time.Second},
	} {
		if got := parkFor(tc.deliveries, tc.lease); got != tc.want {
			t.Errorf("parkFor(%d, %s) = %s, want %s", tc.deliveries, tc.lease, got, tc.want)
		}
	}
}

// TestPrioritySubjects checks that the subjects a worker hears of and
// looks for jobs on lead back to their queue and priority.
func TestPrioritySubjects(t *testing.T) {
	s := events.MustSubjects("lab")
	for _, tc := range []struct {
		queue    string
		priority int
	}{
		{"rpi4b", 1},
		{"rpi4b", 10},
		{"maas:x86/64", events.MaxJobPriority},
		{"two words", 7},
	} {
		subject := s.QueuePriority(tc.queue, tc.priority)
		stem, p, ok := events.SplitPriority(subject)
		if !ok || stem != s.Queue(tc.queue) || p != tc.priority {
			t.Errorf("SplitPriority(%q) = %q, %d, %v; want %q, %d", subject, stem, p, ok, s.Queue(tc.queue), tc.priority)
		}
		reoffer := s.QueueReoffer(tc.queue, tc.priority)
		if _, p, ok := events.SplitPriority(reoffer); !ok || p != tc.priority {
			t.Errorf("SplitPriority(%q) = %d, %v", reoffer, p, ok)
		}
		if s.QueuePriorityConsumer(tc.queue, tc.priority) == s.QueueConsumer(tc.queue) {
			t.Errorf("priority %d of %q shares level 0's consumer", tc.priority, tc.queue)
		}
	}
	if got, want := s.QueuePriority("q", 0), s.Queue("q"); got != want {
		t.Errorf("priority 0 waits on %q, want the queue's own %q", got, want)
	}
	for _, subject := range []string{s.Queue("q"), "lab.queue.03.q.px", "lab.queue.03.q.p", "lab.queue.03.q.p-1", "lab.queue.03.q.p12345678901", "p7", ""} {
		if stem, p, ok := events.SplitPriority(subject); ok {
			t.Errorf("SplitPriority(%q) = %q, %d: not a priority subject", subject, stem, p)
		}
	}
}

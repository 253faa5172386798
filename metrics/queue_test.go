package metrics

import (
	"testing"

	"github.com/flingerlab/flinger/events"
)

func TestQueueOf(t *testing.T) {
	tests := []struct {
		subject, queue string
		ok             bool
	}{
		{"flinger.queue.03.rpi4b", "rpi4b", true},
		{"flinger.queue.03.rpi4b.p5", "rpi4b", true},
		{"lab2.queue.11." + events.Token("p q"), "p q", true},
		{"flinger.queue.03.*", "", false},
		{"flinger.queue.03.>", "", false},
		{"flinger.events.job.x", "", false},
		{"flinger.queue.03", "", false},
		{"flinger.queue.03.~!!", "", false},
	}
	for _, tt := range tests {
		q, ok := queueOf(tt.subject)
		if q != tt.queue || ok != tt.ok {
			t.Errorf("queueOf(%q) = %q, %v; want %q, %v", tt.subject, q, ok, tt.queue, tt.ok)
		}
	}
}

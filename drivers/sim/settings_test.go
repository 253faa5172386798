package sim_test

import (
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
)

func TestSettingsValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		value any // nil: the key is absent
		get   func(s *sim.Settings) any
		want  any
		err   string // "" : no error
	}{
		{"string", "/dev/sda", func(s *sim.Settings) any { return s.String("k", "def") }, "/dev/sda", ""},
		{"string default", nil, func(s *sim.Settings) any { return s.String("k", "def") }, "def", ""},
		{"string of a number", 3.5, func(s *sim.Settings) any { return s.String("k", "def") }, "def", "sim.k: must be a string, got a number 3.5"},
		{"bool", true, func(s *sim.Settings) any { return s.Bool("k", false) }, true, ""},
		{"bool default", nil, func(s *sim.Settings) any { return s.Bool("k", true) }, true, ""},
		{"bool of a string", "yes", func(s *sim.Settings) any { return s.Bool("k", false) }, false, `sim.k: must be true or false, got a string "yes"`},
		{"int", 3, func(s *sim.Settings) any { return s.Int("k", 1) }, 3, ""},
		{"int of a whole float", 3.0, func(s *sim.Settings) any { return s.Int("k", 1) }, 3, ""},
		{"int of a fraction", 2.5, func(s *sim.Settings) any { return s.Int("k", 1) }, 1, "sim.k: must be a whole number"},
		{"negative int", -1, func(s *sim.Settings) any { return s.Int("k", 1) }, 1, "sim.k: must be a whole number, at least 0"},
		{"size", 1 << 20, func(s *sim.Settings) any { return s.Size("k", 0) }, int64(1 << 20), ""},
		{"size of a string", "1048576", func(s *sim.Settings) any { return s.Size("k", 0) }, int64(1 << 20), ""},
		{"size with a suffix", "64M", func(s *sim.Settings) any { return s.Size("k", 0) }, int64(64 << 20), ""},
		{"size of a word", "big", func(s *sim.Settings) any { return s.Size("k", 7) }, int64(7), `sim.k: "big" is not a number of bytes`},
		{"negative size", -3, func(s *sim.Settings) any { return s.Size("k", 0) }, int64(0), "sim.k: must not be negative"},
		{"negative size string", "-3", func(s *sim.Settings) any { return s.Size("k", 0) }, int64(0), "sim.k:"},
		{"size of a bool", true, func(s *sim.Settings) any { return s.Size("k", 0) }, int64(0), "sim.k: must be a number of bytes, got a boolean true"},
		{"Go duration", "500ms", func(s *sim.Settings) any { return s.Duration("k", time.Second) }, 500 * time.Millisecond, ""},
		{"Testflinger duration", "1h 30m", func(s *sim.Settings) any { return s.Duration("k", time.Second) }, 90 * time.Minute, ""},
		{"seconds as a string", "90", func(s *sim.Settings) any { return s.Duration("k", time.Second) }, 90 * time.Second, ""},
		{"seconds", 2, func(s *sim.Settings) any { return s.Duration("k", time.Second) }, 2 * time.Second, ""},
		{"fractional seconds", 0.25, func(s *sim.Settings) any { return s.Duration("k", time.Second) }, 250 * time.Millisecond, ""},
		{"zero duration", 0, func(s *sim.Settings) any { return s.Duration("k", time.Second) }, time.Duration(0), ""},
		{"duration default", nil, func(s *sim.Settings) any { return s.Duration("k", time.Second) }, time.Second, ""},
		{"not a duration", "soon", func(s *sim.Settings) any { return s.Duration("k", time.Second) }, time.Second, `sim.k: "soon" is not a duration`},
		{"negative duration", "-1s", func(s *sim.Settings) any { return s.Duration("k", time.Second) }, time.Second, "sim.k: must not be negative"},
		{"negative seconds", -5, func(s *sim.Settings) any { return s.Duration("k", time.Second) }, time.Second, "sim.k: must not be negative"},
		{"too many seconds", 1e300, func(s *sim.Settings) any { return s.Duration("k", time.Second) }, time.Second, "sim.k: must be a duration"},
		{"duration of a list", []any{1}, func(s *sim.Settings) any { return s.Duration("k", time.Second) }, time.Second, "sim.k: must be a duration such as 2s, got a list"},
	} {
		m := map[string]any{}
		if tc.value != nil {
			m["k"] = tc.value
		}
		s := sim.NewSettings(m)
		got := tc.get(s)
		err := s.Err()
		if got != tc.want {
			t.Errorf("%s: got %v (%T), want %v (%T)", tc.name, got, got, tc.want, tc.want)
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one with %q", tc.name, err, tc.err)
		}
	}
}

func TestSettingsErrors(t *testing.T) {
	t.Parallel()
	s := sim.NewSettings(map[string]any{
		"boot_tme": 1, "never_boots": "yes", "bogus": nil, "start": "sideways", "boot_time": "2s", "empty": nil,
	})
	if d := s.Duration("boot_time", 0); d != 2*time.Second {
		t.Errorf("boot_time = %s", d)
	}
	s.Bool("never_boots", false)
	if v, ok := s.Value("empty"); ok || v != nil {
		t.Errorf("Value of a null = %v, %t; want unset", v, ok)
	}
	if start := s.String("start", "test"); start != "test" && start != "master" {
		s.Invalid("start", "%q is neither test nor master", start)
	}
	s.String("test_device", "")
	err := s.Err()
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		"sim.bogus, sim.boot_tme: unknown keys (known: boot_time, empty, never_boots, start, test_device)",
		`sim.never_boots: must be true or false, got a string "yes"`,
		`sim.start: "sideways" is neither test nor master`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("Err() =\n%s\nwant\n%s", err, strings.Join(want, "\n"))
	}
	if got := strings.Join(s.Known(), ","); got != "boot_time,empty,never_boots,start,test_device" {
		t.Errorf("Known() = %s", got)
	}

	one := sim.NewSettings(map[string]any{"bogus": 1})
	one.Bool("never_boots", false)
	if err := one.Err(); err == nil || err.Error() != "sim.bogus: unknown key (known: never_boots)" {
		t.Errorf("one unknown key: %v", err)
	}
	if err := sim.NewSettings(nil).Err(); err != nil {
		t.Errorf("no settings: %v", err)
	}
}

package devconf_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/devconf"
	"github.com/flingerlab/flinger/events"
)

func TestDuration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		value   any
		want    time.Duration
		wantErr string
	}{
		{"absent", nil, 7 * time.Second, ""},
		{"seconds", 90, 90 * time.Second, ""},
		{"seconds as a float from JSON", float64(30), 30 * time.Second, ""},
		{"seconds as a string", "45", 45 * time.Second, ""},
		{"Go duration", "500ms", 500 * time.Millisecond, ""},
		{"Go duration with spaces", " 1m30s ", 90 * time.Second, ""},
		{"Testflinger duration", "1d", 24 * time.Hour, ""},
		{"Testflinger duration with a space", "2h 30m", 150 * time.Minute, ""},
		{"hours and minutes", "1h30m", 90 * time.Minute, ""},
		{"negative Go duration", "-5s", -5 * time.Second, ""},
		{"not a duration", "soon", 0, "t: invalid duration"},
		{"wrong type", true, 0, "t: must be a duration, got a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := events.Data{}
			if tc.value != nil {
				d["t"] = tc.value
			}
			got, err := devconf.Duration(d, "t", 7*time.Second)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Duration = %v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Duration = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestDurations(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		d        events.Data
		wait     time.Duration // want for "wait" (ZeroOK)
		timeout  time.Duration // want for "timeout"
		wantErrs []string
	}{
		{"defaults", events.Data{}, time.Minute, 2 * time.Minute, nil},
		{"given", events.Data{"wait": "0", "timeout": "90s"}, 0, 90 * time.Second, nil},
		{"zero where not allowed", events.Data{"timeout": 0}, time.Minute, 2 * time.Minute,
			[]string{"timeout: 0s out of range (more than 0s, at most 1h0m0s)"}},
		{"negative", events.Data{"wait": "-1s"}, time.Minute, 2 * time.Minute,
			[]string{"wait: -1s out of range (0s to 1h0m0s)"}},
		{"too long, and not a duration: both reported", events.Data{"wait": "2h", "timeout": "later"}, time.Minute, 2 * time.Minute,
			[]string{"wait: 2h0m0s out of range", `timeout: invalid duration "later"`}},
		{"at the maximum", events.Data{"timeout": "1h"}, time.Minute, time.Hour, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var wait, timeout time.Duration
			err := devconf.Durations(tc.d, time.Hour,
				devconf.DurationKey{Key: "wait", Default: time.Minute, Dst: &wait, ZeroOK: true},
				devconf.DurationKey{Key: "timeout", Default: 2 * time.Minute, Dst: &timeout},
			)
			if wait != tc.wait || timeout != tc.timeout {
				t.Errorf("wait, timeout = %v, %v; want %v, %v", wait, timeout, tc.wait, tc.timeout)
			}
			if len(tc.wantErrs) == 0 {
				if err != nil {
					t.Fatalf("Durations: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Durations succeeded, want errors %q", tc.wantErrs)
			}
			for _, w := range tc.wantErrs {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Durations = %v, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestCommands(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		value   any
		want    [][]string
		wantErr string
	}{
		{"absent", nil, nil, ""},
		{"one command", "pdu-cycle  --port 3", [][]string{{"pdu-cycle", "--port", "3"}}, ""},
		{"a list", []any{"a 1", "b\t2"}, [][]string{{"a", "1"}, {"b", "2"}}, ""},
		{"a list of strings from Go", []string{"a", "b c"}, [][]string{{"a"}, {"b", "c"}}, ""},
		{"shell words stay words", "echo $(id); rm -rf /", [][]string{{"echo", "$(id);", "rm", "-rf", "/"}}, ""},
		{"empty command", []any{"a", "  "}, nil, "s[1]: empty command"},
		{"empty string", "", nil, "s[0]: empty command"},
		{"not a string", []any{"a", 3}, nil, "s[1]: must be a string, got an integer"},
		{"wrong type", map[string]any{}, nil, "s: must be a command or a list of commands, got a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := events.Data{}
			if tc.value != nil {
				d["s"] = tc.value
			}
			got, err := devconf.Commands(d, "s")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Commands = %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("Commands = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestStrings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		value   any
		want    []string
		wantErr string
	}{
		{"absent", nil, nil, ""},
		{"one", "sudo dell-restore-system -y", []string{"sudo dell-restore-system -y"}, ""},
		{"a list", []any{"a b", ""}, []string{"a b", ""}, ""},
		{"not a string", []any{false}, nil, "s[0]: must be a string, got a boolean"},
		{"wrong type", 4, nil, "s: must be a list of strings, or a string, got an integer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := events.Data{}
			if tc.value != nil {
				d["s"] = tc.value
			}
			got, err := devconf.Strings(d, "s")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Strings = %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("Strings = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestRemotePath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		value   any
		want    string
		wantErr string
	}{
		{"absent", nil, "/dev/sda", ""},
		{"empty", "", "/dev/sda", ""},
		{"given", "/dev/mmcblk0", "/dev/mmcblk0", ""},
		{"relative", "dev/sda", "/dev/sda", "must be a clean absolute path"},
		{"not clean", "/mnt/../etc", "/dev/sda", "must be a clean absolute path"},
		{"space", "/dev/sda; reboot", "/dev/sda", "must be a clean absolute path"},
		{"newline", "/dev/sda\n", "/dev/sda", "must be a clean absolute path"},
		{"not a string", 3, "/dev/sda", "p: must be a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := events.Data{}
			if tc.value != nil {
				d["p"] = tc.value
			}
			got, err := devconf.RemotePath(d, "p", "/dev/sda")
			if got != tc.want {
				t.Errorf("RemotePath = %q, want %q", got, tc.want)
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("RemotePath error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

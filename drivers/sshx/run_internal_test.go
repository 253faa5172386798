package sshx

import (
	"bytes"
	"strings"
	"testing"
)

func TestPGIDFilter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		writes   []string
		wantPGID int64
		wantOut  string
	}{
		{"marker first", []string{"flinger-pgid:123\nerr\n"}, 123, "err\n"},
		{"split writes", []string{"flin", "ger-pgid:4", "56\n", "e", "rr"}, 456, "err"},
		{"noise before", []string{"pyenv: warning\n", "flinger-pgid:7\nafter\n"}, 7, "pyenv: warning\nafter\n"},
		{"no marker", []string{"a\nb\n", "c"}, 0, "a\nb\nc"},
		{"bad number", []string{"flinger-pgid:x\nrest\n"}, 0, "flinger-pgid:x\nrest\n"},
		{"marker later is output", []string{strings.Repeat("n\n", pgidMaxLines), "flinger-pgid:9\n"}, 0, strings.Repeat("n\n", pgidMaxLines) + "flinger-pgid:9\n"},
		{"long line", []string{strings.Repeat("x", pgidMaxBuffer+1), "\nflinger-pgid:9\n"}, 0, strings.Repeat("x", pgidMaxBuffer+1) + "\nflinger-pgid:9\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			f := &pgidFilter{w: &out, found: make(chan struct{})}
			for _, w := range tc.writes {
				if n, err := f.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			f.flush()
			if got := f.pgid.Load(); got != tc.wantPGID {
				t.Errorf("pgid %d, want %d", got, tc.wantPGID)
			}
			if out.String() != tc.wantOut {
				t.Errorf("output %q, want %q", out.String(), tc.wantOut)
			}
			select {
			case <-f.found:
				if tc.wantPGID == 0 {
					t.Error("found closed without a pgid")
				}
			default:
				if tc.wantPGID != 0 {
					t.Error("found not closed")
				}
			}
		})
	}
}

package sshx_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// shells are the local POSIX shells quoting is checked against.
func shells(t testing.TB) []string {
	var found []string
	for _, sh := range []string{"/bin/sh", "/bin/dash", "/bin/bash"} {
		if _, err := os.Stat(sh); err == nil {
			found = append(found, sh)
		}
	}
	if len(found) == 0 {
		t.Skip("no local POSIX shell to check quoting against")
	}
	return found
}

// roundTrip has sh print the quoted word back.
func roundTrip(t testing.TB, sh, s string) string {
	t.Helper()
	out, err := exec.Command(sh, "-c", "printf '%s' "+sshx.Quote(s)).Output()
	if err != nil {
		t.Fatalf("%s: printf %s: %v", sh, sshx.Quote(s), err)
	}
	return string(out)
}

var quoteCases = []struct {
	in, want string
}{
	{"", "''"},
	{"plain", "plain"},
	{"/usr/bin/x-y_z.1,2:3@h%4+5", "/usr/bin/x-y_z.1,2:3@h%4+5"},
	{"two words", "'two words'"},
	{"it's", `'it'\''s'`},
	{"'", `''\'''`},
	{"$(touch PWNED)", "'$(touch PWNED)'"},
	{"`id`", "'`id`'"},
	{"a;b", "'a;b'"},
	{"a=b", "'a=b'"},
	{"~", "'~'"},
	{"line1\nline2", "'line1\nline2'"},
	{`back\slash`, `'back\slash'`},
	{"*", "'*'"},
	{"!x", "'!x'"},
	{"ünï", "'ünï'"},
}

func TestQuote(t *testing.T) {
	sh := shells(t)
	for _, tc := range quoteCases {
		if got := sshx.Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %q, want %q", tc.in, got, tc.want)
		}
		for _, s := range sh {
			if got := roundTrip(t, s, tc.in); got != tc.in {
				t.Errorf("%s read Quote(%q) back as %q", s, tc.in, got)
			}
		}
	}
}

func TestCommand(t *testing.T) {
	for _, tc := range []struct {
		argv    []string
		want    string
		wantErr string
	}{
		{[]string{"echo", "a b", "it's"}, `echo 'a b' 'it'\''s'`, ""},
		{[]string{"a=b", "c"}, "'a=b' c", ""},
		{nil, "", "empty command"},
		{[]string{"echo", "nul\x00"}, "", "argument 1 contains a NUL byte"},
	} {
		got, err := sshx.Command(tc.argv)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Command(%q) error = %v, want %q", tc.argv, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Command(%q) = %q, %v, want %q", tc.argv, got, err, tc.want)
		}
	}
}

func FuzzQuote(f *testing.F) {
	for _, tc := range quoteCases {
		f.Add(tc.in)
	}
	sh := shells(f)
	f.Fuzz(func(t *testing.T, s string) {
		if strings.IndexByte(s, 0) >= 0 {
			return // cannot be passed as an argument at all
		}
		for _, shell := range sh {
			if got := roundTrip(t, shell, s); got != s {
				t.Fatalf("%s read Quote(%q) = %s back as %q", shell, s, sshx.Quote(s), got)
			}
		}
	})
}

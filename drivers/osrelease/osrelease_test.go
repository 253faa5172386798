package osrelease_test

import (
	"maps"
	"testing"

	"github.com/flingerlab/flinger/drivers/osrelease"
)

const noble = `PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
# a comment
VERSION_CODENAME=noble
ID='ubuntu'
HOME_URL="https://www.ubuntu.com/"
`

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   string
		want map[string]string
	}{
		{"empty", "", map[string]string{}},
		{"ubuntu", noble, map[string]string{
			"PRETTY_NAME": "Ubuntu 24.04.1 LTS", "NAME": "Ubuntu", "VERSION_ID": "24.04",
			"VERSION_CODENAME": "noble", "ID": "ubuntu", "HOME_URL": "https://www.ubuntu.com/",
		}},
		{"comments, single quotes and broken lines", "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nNAME=Ubuntu\n# comment=x\nVERSION_ID='24.04'\n\nbroken line\n",
			map[string]string{"PRETTY_NAME": "Ubuntu 24.04 LTS", "NAME": "Ubuntu", "VERSION_ID": "24.04"}},
		{"escapes and space", "  NAME=\"A \\\"B\\\"\"  \r\nX=\n=y\nnot a variable\n", map[string]string{"NAME": `A "B"`, "X": ""}},
	} {
		if got := osrelease.Parse(tc.in); !maps.Equal(got, tc.want) {
			t.Errorf("%s: Parse = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestPrettyName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{noble, "Ubuntu 24.04.1 LTS"},
		{"NAME=Debian\n", ""},
		{"PRETTY_NAME='Ubuntu Core 22'", "Ubuntu Core 22"},
	} {
		if got := osrelease.PrettyName(tc.in); got != tc.want {
			t.Errorf("PrettyName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSame(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		a, b string
		want bool
	}{
		{"identical", noble, noble, true},
		{"blank lines and spaces", "A=1\n\nB=2\n", "  A=1\nB=2  \n\n", true},
		{"other value", "A=1\nB=2\n", "A=1\nB=3\n", false},
		{"other order", "A=1\nB=2\n", "B=2\nA=1\n", false},
		{"one empty", "", "A=1", false},
	} {
		if got := osrelease.Same(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: Same = %v, want %v", tc.name, got, tc.want)
		}
	}
}

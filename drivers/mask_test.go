package drivers_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
)

func TestMaskerWriter(t *testing.T) {
	secrets := []string{"hunter2", "s3cr3t-token-value", "token", ""}
	m := drivers.NewMasker(secrets)
	for _, tc := range []struct {
		name string
		in   string
		want string
	}{
		{"none", "nothing to hide\n", "nothing to hide\n"},
		{"one", "password=hunter2\n", "password=****\n"},
		{"longest first", "t=s3cr3t-token-value token\n", "t=**** ****\n"},
		{"adjacent", "hunter2hunter2", "********"},
		{"prefix only", "hunter", "hunter"},
		{"multibyte around", "→hunter2←", "→****←"},
	} {
		// Every way of splitting the input into two writes, and one
		// byte at a time, gives the same masked output.
		for split := 0; split <= len(tc.in); split++ {
			var out bytes.Buffer
			w := m.Writer(&out)
			w.Write([]byte(tc.in[:split]))
			w.Write([]byte(tc.in[split:]))
			w.Close()
			if out.String() != tc.want {
				t.Errorf("%s split at %d: %q, want %q", tc.name, split, out.String(), tc.want)
			}
		}
		var out bytes.Buffer
		w := m.Writer(&out)
		for i := range len(tc.in) {
			w.Write([]byte{tc.in[i]})
		}
		w.Close()
		if out.String() != tc.want {
			t.Errorf("%s byte by byte: %q, want %q", tc.name, out.String(), tc.want)
		}
		if got := m.String(tc.in); got != tc.want {
			t.Errorf("%s String: %q, want %q", tc.name, got, tc.want)
		}
	}
	if drivers.NewMasker([]string{"", ""}) != nil {
		t.Error("a Masker of empty values is not nil")
	}
	var nilMasker *drivers.Masker
	var out bytes.Buffer
	w := nilMasker.Writer(&out)
	w.Write([]byte("hunter2"))
	w.Close()
	if out.String() != "hunter2" || nilMasker.String("x") != "x" {
		t.Error("a nil Masker changed its input")
	}
}

func FuzzMasker(f *testing.F) {
	f.Add("some output with hunter2 inside", 5)
	f.Fuzz(func(t *testing.T, in string, split int) {
		m := drivers.NewMasker([]string{"hunter2", "hun"})
		if split < 0 || split > len(in) {
			split = len(in) / 2
		}
		var out bytes.Buffer
		w := m.Writer(&out)
		w.Write([]byte(in[:split]))
		w.Write([]byte(in[split:]))
		w.Close()
		if strings.Contains(out.String(), "hunter2") || out.String() != m.String(in) {
			t.Errorf("masked %q (split %d) as %q; String gives %q", in, split, out.String(), m.String(in))
		}
	})
}

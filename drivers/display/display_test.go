package display_test

import (
	"math"
	"testing"

	"github.com/flingerlab/flinger/drivers/display"
)

func TestPrintable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain", "rpi-3 /dev/sda", "rpi-3 /dev/sda"},
		{"empty", "", ""},
		{"unicode", "Éric's “board”", "Éric's “board”"},
		{"newline", "x\nProvisioning done", `"x\nProvisioning done"`},
		{"carriage return", "ok\rFAIL", `"ok\rFAIL"`},
		{"escape sequence", "\x1b[2Jgone", `"\x1b[2Jgone"`},
		{"delete", "a\x7fb", `"a\x7fb"`},
		{"C1 control", "a\u009bb", `"a\u009bb"`},
		{"invalid UTF-8", "a\x9bb", `"a\x9bb"`},
		{"tab", "a\tb", `"a\tb"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := display.Printable(tc.in); got != tc.want {
				t.Errorf("Printable(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}

func TestBytes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{-1, "-1 bytes"},
		{1023, "1023 bytes"},
		{1024, "1.0 KiB"},
		{512, "512 bytes"},
		{1536, "1.5 KiB"},
		{1 << 20, "1.0 MiB"},
		{3<<30 + 1<<29, "3.5 GiB"},
		{3<<30 + 200<<20, "3.2 GiB"},
		{5 << 40, "5.0 TiB"},
		{math.MaxInt64, "8.0 EiB"},
	} {
		if got := display.Bytes(tc.n); got != tc.want {
			t.Errorf("Bytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

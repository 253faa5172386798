package sshx

import "testing"

func TestNormalizeAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"10.0.0.1", "10.0.0.1:22", true},
		{"10.0.0.1:2222", "10.0.0.1:2222", true},
		{"device.lab", "device.lab:22", true},
		{"device.lab:22", "device.lab:22", true},
		{"fe80::1", "[fe80::1]:22", true},
		{"[fe80::1]", "[fe80::1]:22", true},
		{"[fe80::1]:2222", "[fe80::1]:2222", true},
		{"", "", false},
		{"host:", "", false},
		{":22", "", false},
		{"a b", "", false},
		{"a b:22", "", false},
		{"host:port", "", false},
		{"host:0", "", false},
		{"host:70000", "", false},
		{"user@host", "", false},
		{"host/x", "", false},
		{"a:b:c", "", false},
		{"host\n:22", "", false},
	} {
		got, err := normalizeAddr(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("normalizeAddr(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

package sshx_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/flingerlab/flinger/drivers/sshx"
)

func TestIsHostKeyError(t *testing.T) {
	t.Parallel()
	changed := &sshx.HostKeyChangedError{Device: "d", Addr: "10.0.0.1:22", Want: "SHA256:a", Got: "SHA256:b"}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"changed", changed, true},
		{"changed, wrapped", fmt.Errorf("dialing: %w", changed), true},
		{"unknown", fmt.Errorf("dialing: %w", sshx.ErrUnknownHost), true},
		{"refused login", fmt.Errorf("dialing: %w", sshx.ErrAuth), false},
		{"other", errors.New("connection refused"), false},
	} {
		if got := sshx.IsHostKeyError(tc.err); got != tc.want {
			t.Errorf("%s: IsHostKeyError(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

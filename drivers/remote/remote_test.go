package remote_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/remote"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

// rig is a simulated host and a Host that reaches it.
type rig struct {
	dut   *sim.DUT
	host  *remote.Host
	calls atomic.Int64 // calls of the "step" command
}

// newRig starts a simulated host whose command "step" counts its calls
// and runs behave, and returns it with a Host reaching it.
func newRig(t *testing.T, behave func(ctx context.Context, x *sim.Exec, call int64) int) *rig {
	t.Helper()
	r := &rig{}
	dut, err := sim.StartDUT(t.Context(), sim.DUTOptions{Name: "host", Users: map[string]string{"ubuntu": "ubuntu"}, BootTime: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dut.Close)
	dut.Handle("step", func(ctx context.Context, x *sim.Exec) int {
		return behave(ctx, x, r.calls.Add(1))
	})
	dut.Handle("chmod", func(context.Context, *sim.Exec) int { return 0 })
	r.dut = dut
	r.host = &remote.Host{
		Config: sshx.Config{
			Addr: dut.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: sshx.TOFU(t.TempDir()),
			DialTimeout: 2 * time.Second, KeepAlive: -1,
		},
		Name:     "host",
		What:     "the test host",
		Timeout:  2 * time.Second,
		Backoff:  sshx.Backoff{Initial: 20 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2, Jitter: -1},
		RetryFor: time.Second,
	}
	t.Cleanup(r.host.Close)
	return r
}

func ok(context.Context, *sim.Exec, int64) int { return 0 }

// powerCycle power-cycles the host under the command, which never
// returns its status: its connection breaks.
func powerCycle(ctx context.Context, x *sim.Exec) int {
	go x.DUT.PowerCycle()
	<-ctx.Done()
	return 1
}

// hang blocks until the command is cancelled.
func hang(ctx context.Context, _ *sim.Exec, _ int64) int {
	<-ctx.Done()
	return 1
}

func TestRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		behave  func(ctx context.Context, x *sim.Exec, call int64) int
		host    func(h *remote.Host)
		opts    remote.RunOptions
		want    string // the output, on success
		wantErr func(error) bool
		errText string
		calls   int64
	}{
		{name: "succeeds", opts: remote.RunOptions{Stdin: []byte("in")}, calls: 1, want: "got in",
			behave: func(_ context.Context, x *sim.Exec, _ int64) int {
				b, _ := io.ReadAll(x.Stdin)
				_, _ = io.WriteString(x.Stdout, "got "+string(b))
				return 0
			}},
		{name: "exit status", calls: 1,
			behave: func(_ context.Context, x *sim.Exec, _ int64) int {
				return x.Errorf(3, "line 1\nline 2")
			},
			wantErr: func(err error) bool {
				var ce *remote.CommandError
				return errors.As(err, &ce) && ce.Status == 3 && remote.IsExit(err)
			},
			errText: "step a exited with status 3 on the test host: step: line 1 / line 2"},
		{name: "exit status, retried", opts: remote.RunOptions{RetryExit: true}, calls: 3,
			host:   func(h *remote.Host) { h.Backoff.Attempts = 3 },
			behave: func(context.Context, *sim.Exec, int64) int { return 1 },
			wantErr: func(err error) bool {
				var ce *remote.CommandError
				return errors.As(err, &ce)
			}},
		{name: "exit status, retried until it succeeds", opts: remote.RunOptions{RetryExit: true}, calls: 2,
			behave: func(_ context.Context, _ *sim.Exec, call int64) int { return int(2 - call) }},
		{name: "timeout", opts: remote.RunOptions{Timeout: 200 * time.Millisecond}, calls: 1, behave: hang,
			wantErr: func(err error) bool {
				var te *remote.TimeoutError
				return errors.As(err, &te) && te.Timeout == 200*time.Millisecond && errors.Is(err, context.DeadlineExceeded)
			},
			errText: "step a on the test host did not finish within 200ms"},
		{name: "timeout, retried", opts: remote.RunOptions{Timeout: 100 * time.Millisecond}, calls: 2, behave: hang,
			host:    func(h *remote.Host) { h.RetryTimeouts, h.Backoff.Attempts, h.RetryFor = true, 2, 0 },
			wantErr: remote.IsUnreachable, errText: "cannot reach the test host: running step"},
		{name: "connection drops, run again", calls: 2,
			behave: func(ctx context.Context, x *sim.Exec, call int64) int {
				if call == 1 {
					return powerCycle(ctx, x)
				}
				return 0
			}},
		{name: "connection drops, once", opts: remote.RunOptions{Once: true}, calls: 1,
			behave:  func(ctx context.Context, x *sim.Exec, _ int64) int { return powerCycle(ctx, x) },
			wantErr: remote.IsUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			behave := tc.behave
			if behave == nil {
				behave = ok
			}
			r := newRig(t, behave)
			if tc.host != nil {
				tc.host(r.host)
			}
			out, err := r.host.Run(t.Context(), []string{"step", "a"}, tc.opts)
			if tc.wantErr == nil {
				if err != nil || out != tc.want {
					t.Fatalf("Run = %q, %v; want %q", out, err, tc.want)
				}
			} else if err == nil || !tc.wantErr(err) || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("Run = %q, %v; want another error, with %q", out, err, tc.errText)
			}
			if n := r.calls.Load(); n != tc.calls {
				t.Errorf("the command ran %d times, want %d", n, tc.calls)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, r *rig)
		check func(error) bool
		// within bounds how long the failure may take.
		within time.Duration
	}{
		{"powered off", func(_ *testing.T, r *rig) { r.dut.PowerOff() }, func(error) bool { return true }, 10 * time.Second},
		{"host key changed", func(t *testing.T, r *rig) {
			k := drivertest.RandomHostKey(t)
			if err := r.host.Config.HostKeys.Callback(r.host.Name)(r.dut.Addr(), &net.TCPAddr{}, k); err != nil {
				t.Fatal(err)
			}
			r.host.RetryFor = time.Minute
		}, sshx.IsHostKeyError, 5 * time.Second},
		{"login refused", func(_ *testing.T, r *rig) {
			r.host.Config.Password = "wrong"
			r.host.RetryFor = time.Minute
		}, func(err error) bool { return errors.Is(err, sshx.ErrAuth) }, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, ok)
			tc.setup(t, r)
			start := time.Now()
			_, err := r.host.Connect(t.Context())
			if !remote.IsUnreachable(err) || !tc.check(err) || !strings.Contains(err.Error(), "cannot reach the test host") {
				t.Errorf("Connect = %v", err)
			}
			_, err = r.host.Run(t.Context(), []string{"step"}, remote.RunOptions{})
			if !remote.IsUnreachable(err) || !tc.check(err) {
				t.Errorf("Run = %v", err)
			}
			if took := time.Since(start); took > tc.within {
				t.Errorf("failing took %s", took)
			}
			if r.calls.Load() != 0 {
				t.Error("the command ran")
			}
		})
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	r := newRig(t, func(ctx context.Context, x *sim.Exec, call int64) int {
		started <- struct{}{}
		return hang(ctx, x, call)
	})
	r.host.Timeout = time.Minute
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := r.host.Run(ctx, []string{"step"}, remote.RunOptions{})
		done <- err
	}()
	<-started
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || remote.IsUnreachable(err) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Run returned %s after the cancellation", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the cancellation")
	}
}

func TestWriteFile(t *testing.T) {
	t.Parallel()
	r := newRig(t, ok)
	for _, tc := range []struct {
		file    string
		content string
		perm    uint32
		chmod   bool
	}{
		{"/mnt/var/lib/cloud/seed/nocloud-net/user-data", "#cloud-config\n", 0, false},
		{"/mnt/etc/sudoers.d/ubuntu", "ubuntu ALL=(ALL) NOPASSWD:ALL\n", 0o440, true},
	} {
		if err := r.host.WriteFile(t.Context(), tc.file, []byte(tc.content), fileMode(tc.perm)); err != nil {
			t.Fatalf("WriteFile(%s): %v", tc.file, err)
		}
		if got, ok := r.dut.ReadFile(tc.file); !ok || string(got) != tc.content {
			t.Errorf("%s holds %q, %v; want %q", tc.file, got, ok, tc.content)
		}
		chmod := false
		for _, c := range r.dut.Commands() {
			if strings.Contains(c, "chmod 0440 "+tc.file) {
				chmod = true
			}
		}
		if chmod != tc.chmod {
			t.Errorf("%s: chmod run: %v, want %v; commands: %q", tc.file, chmod, tc.chmod, r.dut.Commands())
		}
	}
	if !strings.Contains(strings.Join(r.dut.Commands(), "\n"), "mkdir -p /mnt/etc/sudoers.d") {
		t.Errorf("no mkdir -p for the directory: %q", r.dut.Commands())
	}
}

func TestOutput(t *testing.T) {
	t.Parallel()
	r := newRig(t, func(_ context.Context, x *sim.Exec, _ int64) int {
		_, _ = io.WriteString(x.Stdout, "partial")
		return x.Errorf(2, "no such file")
	})
	c, err := r.host.Connect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if out, err := remote.Output(t.Context(), c, []string{"echo", "hello"}); err != nil || out != "hello\n" {
		t.Errorf("Output(echo) = %q, %v", out, err)
	}
	out, err := remote.Output(t.Context(), c, []string{"step"})
	var ce *remote.CommandError
	if !errors.As(err, &ce) || ce.Status != 2 || out != "partial" || err.Error() != "step exited with status 2: step: no such file" {
		t.Errorf("Output(step) = %q, %v", out, err)
	}
}

func TestBuffer(t *testing.T) {
	t.Parallel()
	var b remote.Buffer
	chunk := strings.Repeat("x", remote.MaxOutput/2+1)
	for range 3 {
		if n, err := b.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := len(b.String()); got != remote.MaxOutput {
		t.Errorf("kept %d bytes, want %d", got, remote.MaxOutput)
	}
}

func fileMode(perm uint32) os.FileMode { return os.FileMode(perm) }

package sshx_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sshx"
)

var errFlaky = errors.New("flaky")

func TestRetry(t *testing.T) {
	fast := sshx.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond}
	for _, tc := range []struct {
		name      string
		backoff   sshx.Backoff
		failures  int   // attempts that fail before one succeeds
		permanent bool  // the first failure is permanent
		cancelAt  int   // cancel the context during this attempt (0: never)
		wantCalls int   // attempts made
		wantErr   error // nil: success
		wantMsg   string
	}{
		{"first try", fast, 0, false, 0, 1, nil, ""},
		{"third try", fast, 2, false, 0, 3, nil, ""},
		{"unlimited attempts", fast, 20, false, 0, 21, nil, ""},
		{"attempts exhausted", withAttempts(fast, 3), 10, false, 0, 3, errFlaky, "gave up after 3 attempts"},
		{"permanent", fast, 10, true, 0, 1, errFlaky, ""},
		{"cancelled", fast, 100, false, 4, 4, context.Canceled, "last error: flaky"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			calls := 0
			var retries []int
			b := tc.backoff
			b.OnRetry = func(n int, err error, d time.Duration) {
				retries = append(retries, n)
				if !errors.Is(err, errFlaky) || d > b.Max {
					t.Errorf("OnRetry(%d, %v, %v)", n, err, d)
				}
			}
			err := sshx.Retry(ctx, b, func(context.Context) error {
				calls++
				if calls == tc.cancelAt {
					cancel()
				}
				if calls > tc.failures {
					return nil
				}
				if tc.permanent {
					return sshx.Permanent(errFlaky)
				}
				return errFlaky
			})
			if calls != tc.wantCalls {
				t.Errorf("%d attempts, want %d", calls, tc.wantCalls)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Errorf("err = %v", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			case !strings.Contains(errString(err), tc.wantMsg):
				t.Errorf("err = %v, want it to contain %q", err, tc.wantMsg)
			}
			if tc.permanent && err != errFlaky {
				t.Errorf("a permanent error came back as %#v, want fn's error itself", err)
			}
			if len(retries) != max(0, min(calls-1, tc.failures)) && tc.cancelAt == 0 {
				t.Errorf("OnRetry called for attempts %v", retries)
			}
		})
	}
}

func withAttempts(b sshx.Backoff, n int) sshx.Backoff {
	b.Attempts = n
	return b
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestRetryAttemptTimeout(t *testing.T) {
	var calls atomic.Int32
	start := time.Now()
	err := sshx.Retry(testCtx(t), sshx.Backoff{Initial: time.Millisecond, AttemptTimeout: 100 * time.Millisecond}, func(ctx context.Context) error {
		if calls.Add(1) < 3 {
			<-ctx.Done() // a hung attempt
			return ctx.Err()
		}
		return nil
	})
	if err != nil || calls.Load() != 3 {
		t.Errorf("err %v after %d attempts", err, calls.Load())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestRetryStopsWhileWaiting(t *testing.T) {
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := sshx.Retry(ctx, sshx.Backoff{Initial: time.Hour}, func(context.Context) error { return errFlaky })
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errFlaky) {
		t.Errorf("err = %v, want both DeadlineExceeded and the last error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestBackoffDelay(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    sshx.Backoff
		base []time.Duration // delay before jitter, for attempts 1..
	}{
		{"defaults", sshx.Backoff{}, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute}},
		{"testflinger", sshx.Backoff{Initial: time.Second, Max: 100 * time.Second}, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, 64 * time.Second, 100 * time.Second, 100 * time.Second}},
		{"constant", sshx.Backoff{Initial: time.Second, Multiplier: 1, Jitter: -1}, []time.Duration{time.Second, time.Second, time.Second}},
		{"triple", sshx.Backoff{Initial: 10 * time.Millisecond, Multiplier: 3, Max: time.Second}, []time.Duration{10 * time.Millisecond, 30 * time.Millisecond, 90 * time.Millisecond, 270 * time.Millisecond, 810 * time.Millisecond, time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			jitter := tc.b.Jitter
			if jitter == 0 {
				jitter = sshx.DefaultBackoffJitter
			}
			jitter = max(jitter, 0)
			for i, base := range tc.base {
				for range 50 {
					d := tc.b.Delay(i + 1)
					lo := time.Duration(float64(base) * (1 - jitter))
					if d > base || d < lo {
						t.Fatalf("Delay(%d) = %v, want within [%v, %v]", i+1, d, lo, base)
					}
				}
			}
			// No overflow for absurd attempt numbers.
			if d := tc.b.Delay(100000); d <= 0 {
				t.Errorf("Delay(100000) = %v", d)
			}
		})
	}
}

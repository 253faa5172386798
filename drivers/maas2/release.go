package maas2

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/maas2/maasapi"
)

// unreachable reports whether err means that MAAS could not be asked at
// all: it did not answer (after the retries) or refused the key. Such a
// failure is the phase's, not the machine's.
func unreachable(err error) bool {
	var e *maasapi.Error
	return !errors.As(err, &e) || e.Unauthorized()
}

// keyNote returns err, saying where the key comes from when MAAS
// refused it (never the key).
func (s *session) keyNote(err error) error {
	var e *maasapi.Error
	if errors.As(err, &e) && e.Status == 401 {
		src := "maas_credentials " + s.d.opts.credentials
		if s.d.opts.inlineKey != "" {
			src = "maas_api_key"
		}
		return fmt.Errorf("MAAS refused the API key of device %s (%s): %w", display.Printable(s.dev.Name), src, err)
	}
	return err
}

// notReadyError reports a machine that did not reach Ready in time.
type notReadyError struct {
	status string
	after  time.Duration
}

func (e *notReadyError) Error() string {
	return fmt.Sprintf("the machine is still %s after %s", e.status, e.after.Round(time.Millisecond))
}

// release brings the machine back to Ready, as Testflinger's
// node_release does, with fallbacks: release and wait release_timeout;
// then mark it broken and fixed and wait fallback_timeout; then power it
// off, release it again and wait fallback_timeout. A machine still not
// Ready is a *drivers.RecoveryError. A MAAS that cannot be reached or
// refuses the key is a plain error.
func (s *session) release(ctx context.Context) error {
	o := s.d.opts
	m, err := s.api.Machine(ctx, s.node)
	if err != nil {
		return fmt.Errorf("%s: %w", "reading machine "+s.node, err)
	}
	if m.StatusName == maasapi.StatusReady {
		s.printf("MAAS: machine %s (%s) is Ready: nothing to release", s.node, display.Printable(m.Hostname))
		return nil
	}
	s.printf("MAAS: releasing machine %s (%s), which is %s", s.node, display.Printable(m.Hostname), describe(m))
	var tried []string
	_, err = s.api.Release(ctx, s.node, s.comment("release"))
	switch {
	case err == nil:
		tried = append(tried, "a release")
		err = s.waitReady(ctx, o.releaseTimeout)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || abort(err) {
			return fmt.Errorf("%s: %w", "waiting for machine "+s.node+" to be released", err)
		}
		s.printf("MAAS: %v", err)
	case ctx.Err() != nil || unreachable(err):
		return fmt.Errorf("%s: %w", "releasing machine "+s.node, err)
	default:
		s.printf("MAAS: the release was refused: %v", err)
	}

	fallbacks := []struct {
		say, tried string
		steps      func() error
	}{
		{"marking machine " + s.node + " broken, then fixed, to bring it back", "mark broken/mark fixed", func() error {
			if _, err := s.api.MarkBroken(ctx, s.node, s.comment("recovery: the release did not complete")); err != nil {
				return err
			}
			_, err := s.api.MarkFixed(ctx, s.node, s.comment("recovery"))
			return err
		}},
		{"powering machine " + s.node + " off and releasing it again", "a power off and a release", func() error {
			if _, err := s.api.PowerOff(ctx, s.node, "hard", s.comment("recovery: power off")); err != nil {
				return err
			}
			_, err := s.api.Release(ctx, s.node, s.comment("release after power off"))
			return err
		}},
	}
	for i, f := range fallbacks {
		s.printf("MAAS: %s", f.say)
		tried = append(tried, f.tried)
		if err = f.steps(); err == nil {
			if err = s.waitReady(ctx, o.fallbackTimeout); err == nil {
				return nil
			}
		}
		if ctx.Err() != nil || abort(err) {
			return fmt.Errorf("%s: %w", "recovering machine "+s.node, err)
		}
		if i < len(fallbacks)-1 {
			s.printf("MAAS: that did not help: %v", err)
		}
	}
	status := "not Ready"
	if m, merr := s.api.Machine(ctx, s.node); merr == nil {
		status = describe(m)
	}
	return drivers.Recovery("MAAS could not bring machine %s (%s) back to Ready: it is %s after %s (last error: %v)",
		s.node, display.Printable(s.dev.Name), status, joinAnd(tried), err)
}

func isNotReady(err error) bool {
	var nr *notReadyError
	return errors.As(err, &nr)
}

// abort reports whether err, met while bringing the machine back, ends
// the attempt: MAAS did not answer (after the retries) or refused the
// key. MAAS refusing one step (409, 403) or a machine not Ready in time
// leads to the next step instead.
func abort(err error) bool {
	if isNotReady(err) {
		return false
	}
	var e *maasapi.Error
	return !errors.As(err, &e) || e.Status == 401
}

// joinAnd joins words with commas and a final "and".
func joinAnd(words []string) string {
	switch len(words) {
	case 0:
		return "nothing"
	case 1:
		return words[0]
	}
	s := ""
	for i, w := range words {
		switch {
		case i == 0:
		case i == len(words)-1:
			s += " and "
		default:
			s += ", "
		}
		s += w
	}
	return s
}

// describe names a machine's status, with MAAS's message when it adds to it.
func describe(m *maasapi.Machine) string {
	if m.StatusMessage != "" && m.StatusMessage != m.StatusName {
		return fmt.Sprintf("%s (%s)", m.StatusName, display.Printable(m.StatusMessage))
	}
	return m.StatusName
}

// waitReady polls the machine until it is Ready, for at most timeout.
func (s *session) waitReady(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	last := ""
	var status string
	done, err := s.poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		m, err := s.api.Machine(ctx, s.node)
		if err != nil {
			return false, err
		}
		status = m.StatusName
		if d := describe(m); d != last {
			s.printf("MAAS: machine %s is %s", s.node, d)
			last = d
		}
		return m.StatusName == maasapi.StatusReady, nil
	})
	if err != nil {
		return err
	}
	if !done {
		return &notReadyError{status: status, after: time.Since(start)}
	}
	return nil
}

// poll calls check until it reports done, fails, or timeout passes; the
// wait between two calls grows from poll_interval to poll_max (and never
// passes the deadline). It returns whether check reported done.
func (s *session) poll(ctx context.Context, timeout time.Duration, check func(context.Context) (bool, error)) (bool, error) {
	o := s.d.opts
	deadline := time.Now().Add(timeout)
	wait := o.pollInterval
	for {
		done, err := check(ctx)
		if err != nil || done {
			return done, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		t := time.NewTimer(min(wait, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
		wait = min(wait*3/2, o.pollMax)
	}
}

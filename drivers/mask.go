package drivers

import (
	"bytes"
	"io"
	"slices"
	"sync"
)

// Mask is what a secret is replaced with in output, logs and events.
const Mask = "****"

// Masker hides secret values: in a stream of output (Writer), where a
// secret may be split across writes, and in strings such as error
// messages (String).
type Masker struct {
	secrets [][]byte // longest first, so that a secret containing another is masked whole
	max     int
}

// NewMasker returns a Masker of the non-empty values (nil when there are
// none, which masks nothing).
func NewMasker(values []string) *Masker {
	m := &Masker{}
	seen := map[string]bool{}
	for _, v := range values {
		if v == "" || seen[v] {
			continue
		}
		seen[v] = true
		m.secrets = append(m.secrets, []byte(v))
		m.max = max(m.max, len(v))
	}
	if len(m.secrets) == 0 {
		return nil
	}
	slices.SortFunc(m.secrets, func(a, b []byte) int { return len(b) - len(a) })
	return m
}

// String returns s with every secret replaced by Mask: scanning from the
// start, the longest secret that begins at each position is masked, as
// the Writer does.
func (m *Masker) String(s string) string {
	if m == nil {
		return s
	}
	out, _ := m.mask([]byte(s), true)
	return string(out)
}

// mask masks b and returns the masked bytes that can be written now and
// how many bytes at the end of b were held back because they may be the
// start of a secret the next write completes (none when final).
func (m *Masker) mask(b []byte, final bool) (out []byte, held int) {
	out = make([]byte, 0, len(b))
	i := 0
scan:
	for i < len(b) {
		if !final && len(b)-i < m.max {
			// A longer secret may still begin here: wait for more.
			for _, sec := range m.secrets {
				if len(sec) > len(b)-i && bytes.HasPrefix(sec, b[i:]) {
					return out, len(b) - i
				}
			}
		}
		for _, sec := range m.secrets {
			if bytes.HasPrefix(b[i:], sec) {
				out = append(out, Mask...)
				i += len(sec)
				continue scan
			}
		}
		out = append(out, b[i])
		i++
	}
	return out, 0
}

// Writer returns a writer that passes what is written to w with every
// secret masked. It holds back the end of a write that may be the start of
// a secret until the next write or Close says otherwise; Close writes
// what is held (it does not close w). A nil Masker returns w itself
// wrapped so that Close is still a no-op.
func (m *Masker) Writer(w io.Writer) io.WriteCloser {
	return &maskWriter{m: m, w: w}
}

type maskWriter struct {
	m    *Masker
	w    io.Writer
	mu   sync.Mutex
	hold []byte
}

func (mw *maskWriter) Write(p []byte) (int, error) {
	if mw.m == nil {
		return mw.w.Write(p)
	}
	mw.mu.Lock()
	defer mw.mu.Unlock()
	buf := append(mw.hold, p...)
	out, held := mw.m.mask(buf, false)
	mw.hold = append([]byte(nil), buf[len(buf)-held:]...)
	if len(out) > 0 {
		if _, err := mw.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (mw *maskWriter) Close() error {
	if mw.m == nil {
		return nil
	}
	mw.mu.Lock()
	defer mw.mu.Unlock()
	out, _ := mw.m.mask(mw.hold, true)
	mw.hold = nil
	if len(out) == 0 {
		return nil
	}
	_, err := mw.w.Write(out)
	return err
}

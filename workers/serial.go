package workers

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/flingerlab/flinger/console"
	"github.com/flingerlab/flinger/events"
)

// serialFile is the serial console's log for the whole job, in the run
// directory; it goes into the artifact archive under the same name.
const serialFile = "serial-console.log"

// serialLog captures a device's serial console (serial_host and
// serial_port of its configuration) for a job: from the first phase after
// setup until the job's artifacts are stored, across phases and
// reconnects. Each phase's share goes to the log stream as that phase's
// "serial" log, in numbered chunks, and all of it to serial-console.log,
// with the job's secrets masked.
type serialLog struct {
	r    *jobRun
	addr string

	mu     sync.Mutex
	phase  events.Phase
	out    *phaseOutput
	file   *os.File
	masked io.WriteCloser
	cap    *console.Capture
}

// startSerial starts capturing the device's serial console, if it has
// one, for phase p onwards.
func (r *jobRun) startSerial(p events.Phase) {
	cfg := r.d.cfg
	if r.serial != nil || cfg.SerialHost == "" || cfg.SerialPort == 0 {
		r.serialPhase(p)
		return
	}
	addr, err := console.Addr(cfg.SerialHost, cfg.SerialPort)
	if err != nil {
		r.log.Warn("serial console not captured", "err", err)
		return
	}
	s := &serialLog{r: r, addr: addr}
	if f, err := os.OpenFile(filepath.Join(r.dir, serialFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640); err == nil {
		s.file = f
	} else {
		r.log.Warn("serial console file not opened", "err", err)
	}
	raw := io.Writer(serialRaw{s})
	if r.masker != nil {
		s.masked = r.masker.Writer(raw)
	}
	s.switchPhase(p)
	var w io.Writer = raw
	if s.masked != nil {
		w = s.masked
	}
	s.cap = console.Start(context.Background(), addr, w, console.Options{
		Log: r.log,
		Notice: func(msg string) {
			s.mu.Lock()
			defer s.mu.Unlock()
			line := fmt.Sprintf("\n[flinger %s] %s\n", time.Now().UTC().Format(time.RFC3339), msg)
			s.writeLocked([]byte(line))
		},
	})
	r.serial = s
}

// serialPhase moves the serial console's log to phase p.
func (r *jobRun) serialPhase(p events.Phase) {
	if r.serial != nil {
		r.serial.switchPhase(p)
	}
}

func (s *serialLog) switchPhase(p events.Phase) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.phase == p && s.out != nil {
		return
	}
	if s.out != nil {
		_ = s.out.Close()
	}
	s.phase = p
	s.out = newPhaseLog(s.r.d.w.c, s.r.job.JobID, s.r.attempt, p, streamSerial, "", nil)
}

// serialRaw writes the (already masked) console bytes to the phase's log
// and the job's file.
type serialRaw struct{ s *serialLog }

func (w serialRaw) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	w.s.writeLocked(p)
	return len(p), nil
}

func (s *serialLog) writeLocked(p []byte) {
	if s.file != nil {
		_, _ = s.file.Write(p)
	}
	if s.out != nil {
		_, _ = s.out.write(p)
	}
}

// stop ends the capture and closes its logs; it returns what was read.
func (s *serialLog) stop() console.Stats {
	st := s.cap.Stop()
	if s.masked != nil {
		_ = s.masked.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out != nil {
		_ = s.out.Close()
		s.out = nil
	}
	if s.file != nil {
		_ = s.file.Close()
		s.file = nil
	}
	return st
}

// serialArtifact stops the serial capture and puts its log among the
// artifacts in dir (under another name if the test left a file of its
// own by that name).
func (r *jobRun) serialArtifact(dir string) {
	if r.serial == nil {
		return
	}
	st := r.serial.stop()
	r.serial = nil
	r.log.Info("serial console captured", "bytes", st.Bytes, "connects", st.Connects, "drops", st.Drops)
	src := filepath.Join(r.dir, serialFile)
	if _, err := os.Stat(src); err != nil {
		return
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return
	}
	name := serialFile
	for i := 1; ; i++ {
		if _, err := os.Lstat(filepath.Join(dir, name)); os.IsNotExist(err) {
			break
		}
		name = fmt.Sprintf("serial-console.%d.log", i)
	}
	if err := os.Link(src, filepath.Join(dir, name)); err != nil {
		r.log.Warn("serial console log not added to the artifacts", "err", err)
	}
}

package workers

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// Output chunking: a chunk is sent when it reaches maxChunk bytes or
// flushDelay after its first byte, whichever comes first.
const (
	maxChunk   = 32 << 10
	flushDelay = 100 * time.Millisecond
)

// phaseOutput is a phase's output: written to <phase>.log in the run
// directory and sent to the log stream in numbered chunks (the chunk's
// number is its de-duplication id, so a resend is dropped). Every write
// calls onWrite, which the output timeout uses.
type phaseOutput struct {
	c       *broker.Client
	jobID   string
	phase   events.Phase
	stream  string // output or serial
	attempt int
	subject string
	onWrite func()
	masked  io.WriteCloser // masks the job's secrets, or nil

	mu     sync.Mutex
	buf    []byte
	seq    uint64
	file   *os.File
	timer  *time.Timer
	closed bool
}

// Log streams of a phase: what its commands print, and the device's
// serial console.
const (
	streamOutput = "output"
	streamSerial = "serial"
)

// newPhaseOutput returns the output of one phase of a job's attempt,
// also appended to logFile when it is not empty, with the secrets of
// masker masked.
func newPhaseOutput(c *broker.Client, jobID string, attempt int, phase events.Phase, logFile string, masker *drivers.Masker) *phaseOutput {
	return newPhaseLog(c, jobID, attempt, phase, streamOutput, logFile, masker)
}

// newPhaseLog is newPhaseOutput for either log stream of a phase.
func newPhaseLog(c *broker.Client, jobID string, attempt int, phase events.Phase, stream, logFile string, masker *drivers.Masker) *phaseOutput {
	o := &phaseOutput{c: c, jobID: jobID, phase: phase, stream: stream, attempt: attempt, subject: c.Subj.Log(jobID, phase, stream)}
	if masker != nil {
		o.masked = masker.Writer(rawOutput{o})
	}
	if logFile != "" {
		if f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640); err == nil {
			o.file = f
		}
	}
	return o
}

// rawOutput writes to a phaseOutput without masking.
type rawOutput struct{ o *phaseOutput }

func (r rawOutput) Write(p []byte) (int, error) { return r.o.write(p) }

// Write implements io.Writer: p goes out with the job's secrets masked.
func (o *phaseOutput) Write(p []byte) (int, error) {
	if o.masked != nil {
		return o.masked.Write(p)
	}
	return o.write(p)
}

// write sends p as it is.
func (o *phaseOutput) write(p []byte) (int, error) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return 0, os.ErrClosed
	}
	if o.file != nil {
		_, _ = o.file.Write(p)
	}
	o.buf = append(o.buf, p...)
	if len(o.buf) >= maxChunk {
		o.flushLocked()
	} else if o.timer == nil {
		o.timer = time.AfterFunc(flushDelay, o.flush)
	}
	onWrite := o.onWrite
	o.mu.Unlock()
	if onWrite != nil && len(p) > 0 {
		onWrite()
	}
	return len(p), nil
}

// Printf writes a formatted line of the worker's own to the output.
func (o *phaseOutput) Printf(format string, args ...any) {
	_, _ = fmt.Fprintf(o, format+"\n", args...)
}

func (o *phaseOutput) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushLocked()
}

func (o *phaseOutput) flushLocked() {
	if o.timer != nil {
		o.timer.Stop()
		o.timer = nil
	}
	for len(o.buf) > 0 {
		n := min(len(o.buf), maxChunk)
		o.seq++
		chunk := &events.LogChunk{JobID: o.jobID, Phase: o.phase, Seq: o.seq, Time: time.Now().UTC(), Data: o.buf[:n]}
		msg, err := events.NewMsg(o.subject, chunk)
		if err == nil {
			// The attempt is part of the id: a requeued job's next
			// device numbers its chunks from 1 again.
			msg.Header.Set(events.HeaderMsgID, fmt.Sprintf("%s.%s.%s.%d.%d", o.jobID, o.phase, o.stream, o.attempt, o.seq))
			o.c.PublishLog(msg)
		}
		if err != nil {
			o.c.Log().Warn("log chunk not sent", "job", o.jobID, "phase", o.phase, "stream", o.stream, "seq", o.seq, "err", err)
		}
		o.buf = o.buf[n:]
	}
	o.buf = nil
}

// Close sends what is left and closes the log file.
func (o *phaseOutput) Close() error {
	if o.masked != nil {
		_ = o.masked.Close() // writes what it held back
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.flushLocked()
	o.closed = true
	if o.file != nil {
		return o.file.Close()
	}
	return nil
}

package image

import (
	"sync/atomic"
	"time"
)

// Progress is how far a download or stream has got. A worker turns it
// into provision_progress events.
type Progress struct {
	// BytesIn is the compressed bytes received from the server (counting
	// any sent again after a restart) or read from disk.
	BytesIn int64
	// BytesOut is the decompressed bytes written to the destination (0 for
	// Cache.Open, which does not decompress).
	BytesOut int64
	// Total is the size of the compressed image, or -1 when the server did
	// not say.
	Total int64
	// Rate is the recent rate of BytesIn, in bytes per second.
	Rate float64
}

// ProgressInterval is the shortest time between two progress reports.
const ProgressInterval = 250 * time.Millisecond

// reporter calls a progress callback from one goroutine, at most every
// ProgressInterval, with what its counters say.
type reporter struct {
	fn             func(Progress)
	in, out, total *atomic.Int64
	stopc          chan bool
	done           chan struct{}

	last   time.Time
	lastIn int64
	rate   float64
}

// startReporter reports in, out (may be nil) and total to fn until stop
// is called. A nil fn reports nothing.
func startReporter(fn func(Progress), in, out, total *atomic.Int64) *reporter {
	r := &reporter{fn: fn, in: in, out: out, total: total, stopc: make(chan bool, 1), done: make(chan struct{})}
	if fn == nil {
		close(r.done)
		return r
	}
	r.last = time.Now()
	go r.loop()
	return r
}

func (r *reporter) loop() {
	defer close(r.done)
	t := time.NewTicker(ProgressInterval)
	defer t.Stop()
	for {
		select {
		case final := <-r.stopc:
			if final {
				// One last report with the final counts, still no sooner
				// than ProgressInterval after the previous one.
				if wait := ProgressInterval - time.Since(r.last); wait > 0 {
					time.Sleep(wait)
				}
				r.report()
			}
			return
		case <-t.C:
			r.report()
		}
	}
}

func (r *reporter) report() {
	now := time.Now()
	in := r.in.Load()
	if dt := now.Sub(r.last).Seconds(); dt > 0 {
		inst := float64(in-r.lastIn) / dt
		if r.rate == 0 {
			r.rate = inst
		} else {
			r.rate = 0.5*r.rate + 0.5*inst
		}
	}
	r.last, r.lastIn = now, in
	p := Progress{BytesIn: in, Total: -1, Rate: r.rate}
	if r.out != nil {
		p.BytesOut = r.out.Load()
	}
	if r.total != nil {
		p.Total = r.total.Load()
	}
	r.fn(p)
}

// stop ends the reports, with a last one when final, and waits for the
// callback to return.
func (r *reporter) stop(final bool) {
	if r.fn != nil {
		select {
		case r.stopc <- final:
		default:
		}
	}
	<-r.done
}

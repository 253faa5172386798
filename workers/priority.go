package workers

// Dispatch order: job_priority and exclude_agents.
//
// A job of job_priority 0 waits on its queue's subject and is taken through
// the queue's durable consumer, with a long-held pull request while a
// device serving the queue is idle. A job of priority p > 0 waits on a
// subject of its own below the queue's (events.Subjects.QueuePriority), in
// the same stream, and is taken through a durable consumer per level,
// created the first time a worker meets that level and removed by the
// server after a while without use. A device takes the highest level that
// holds a job, each level in the order its jobs came (FIFO), and level 0
// last; as in Testflinger's pop_job.
//
// A worker learns at once that a level holds a job: JetStream publishes
// are ordinary NATS messages, so a core subscription to the queue's
// priority subjects sees every priority job as it is queued. It then
// fetches from the level without waiting, while the pull of level 0 stays
// open: cancelling a pull request can lose a message that is already on
// its way, which would then wait for the lease to come back. Jobs that
// wait again without a new publish (a lease run out on a dead worker, a
// job passed on) are found by asking the queue streams which priority
// subjects hold messages, at start and then every pullWait, and, when a
// worker passes a priority job on, by the reoffer message it sends.
//
// A job whose exclude_agents name every idle device of this host serving
// its queue is held here ("parked") rather than offered again and again:
// its lease allows it, and the other jobs of the queue keep flowing past
// it. A device of this host that can run it and becomes idle takes it at
// once. It goes back to the queue, for the devices of other hosts, when
// its park time ends (growing with its deliveries, 2 s to 30 s), when this
// host has no idle device left for the queue, or soon after a device of
// another host that the job allows is seen idle in its status record.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

const (
	// discoverEvery is how often the queue streams are asked which
	// priority levels hold jobs.
	discoverEvery = pullWait
	// parkMax bounds how long a job excluded by every idle device here is
	// held before it goes back to its queue.
	parkMax = 30 * time.Second
	// maxParked bounds the jobs held per queue; beyond it a job goes back
	// to its queue with a delay of its park time.
	maxParked = 64
	// handoffDelay is how long after a device of another host is seen
	// idle a held job it may run goes back to the queue: time for that
	// device's pull request to be open.
	handoffDelay = 250 * time.Millisecond
	// handoffWindow is how long a job passed on is passed on once more if
	// it comes back here, and how long this worker leaves a priority
	// level it passed a job on to the other workers.
	handoffWindow = 2 * time.Second
	// levelInactive is how long the server keeps a priority level's
	// consumer that nobody uses.
	levelInactive = 15 * time.Minute
	// notesBuffer is how many priority notices may wait to be sorted.
	notesBuffer = 4096
)

// parkFor is how long a job delivered n times is held when it excludes
// every idle device here: excludedRetry doubled with each delivery, up to
// parkMax, and at most half the lease so that it never runs out meanwhile.
func parkFor(n uint64, lease time.Duration) time.Duration {
	d := parkMax
	if n <= 1 {
		d = excludedRetry
	} else if n < 16 {
		d = min(excludedRetry<<(n-1), parkMax)
	}
	if lease > 0 {
		d = min(d, lease/2)
	}
	return d
}

// dispatcher is what the pullers of one worker share: the subscriptions
// that tell them of priority jobs, the periodic look at the queue streams,
// and, while some job is held, the subscription to device status records.
type dispatcher struct {
	w       *Worker
	pullers map[string]*queuePuller // by queue
	byQueue map[string]*queuePuller // by the queue's level-0 subject
	byOffer map[string]*queuePuller // by the queue's reoffer subject without its level
	streams map[int]jetstream.Stream
	notes   chan *nats.Msg
	subs    []*nats.Subscription

	mu        sync.Mutex
	parked    int
	deviceSub *nats.Subscription
}

// startDispatch makes the pullers of the queues in consumers (level 0's
// consumer of each), subscribes to the notices of priority jobs and finds
// the priority levels that already hold jobs.
func (w *Worker) startDispatch(ctx context.Context, consumers map[string]jetstream.Consumer) (*dispatcher, error) {
	d := &dispatcher{
		w:       w,
		pullers: map[string]*queuePuller{},
		byQueue: map[string]*queuePuller{},
		byOffer: map[string]*queuePuller{},
		streams: map[int]jetstream.Stream{},
		notes:   make(chan *nats.Msg, notesBuffer),
	}
	subj := w.c.Subj
	for q, cons := range consumers {
		p := &queuePuller{
			w: w, d: d, q: q, base: cons, stream: subj.QueueStreamOf(q), wake: w.wake[q],
			signal:  make(chan struct{}, 1),
			levels:  map[int]bool{},
			holdOff: map[int]time.Time{},
			cons:    map[int]jetstream.Consumer{},
			passOn:  map[string]time.Time{},
			log:     w.log.With("queue", q),
		}
		d.pullers[q] = p
		d.byQueue[subj.Queue(q)] = p
		stem, _, _ := events.SplitPriority(subj.QueueReoffer(q, 1))
		d.byOffer[stem] = p
		if _, ok := d.streams[events.QueuePartition(q)]; !ok {
			st, err := w.c.JS.Stream(ctx, p.stream)
			if err != nil {
				d.close()
				return nil, fmt.Errorf("queue %s: stream %s: %w", q, p.stream, err)
			}
			d.streams[events.QueuePartition(q)] = st
		}
		sub, err := w.c.NC.ChanSubscribe(subj.QueuePriorities(q), d.notes)
		if err != nil {
			d.close()
			return nil, fmt.Errorf("queue %s: listen for priority jobs: %w", q, err)
		}
		d.subs = append(d.subs, sub)
	}
	sub, err := w.c.NC.ChanSubscribe(subj.QueueReoffers(), d.notes)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("listen for reoffered jobs: %w", err)
	}
	d.subs = append(d.subs, sub)
	// Listen before looking, so that no job queued in between is missed.
	if err := w.c.NC.FlushWithContext(ctx); err != nil {
		d.close()
		return nil, fmt.Errorf("listen for priority jobs: %w", err)
	}
	d.discover(ctx)
	return d, nil
}

// puller returns queue q's puller.
func (d *dispatcher) puller(q string) *queuePuller { return d.pullers[q] }

// run sorts the notices of priority jobs to the pullers, and looks at the
// queue streams every discoverEvery, until ctx is done. Notices wait in a
// channel of notesBuffer; one that finds it full is dropped by the NATS
// client, and its job found by the next look.
func (d *dispatcher) run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(discoverEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				d.discover(dctx)
				cancel()
			}
		}
	}()
	defer func() { <-done }()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-d.notes:
			d.onNotice(m)
		}
	}
}

// onNotice tells a puller that a level of its queue holds a job: m is a
// priority job being queued, or another worker's reoffer.
func (d *dispatcher) onNotice(m *nats.Msg) {
	stem, level, ok := events.SplitPriority(m.Subject)
	if !ok || level <= 0 {
		return
	}
	if p := d.byQueue[stem]; p != nil {
		p.hear(level, true)
		return
	}
	if p := d.byOffer[stem]; p != nil && string(m.Data) != d.w.Host() {
		p.hear(level, false)
	}
}

// discover asks each queue stream of the worker's queues which priority
// subjects hold messages, and tells their pullers.
func (d *dispatcher) discover(ctx context.Context) {
	for part, st := range d.streams {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(d.w.c.Subj.PriorityQueues(part)))
		if err != nil {
			if ctx.Err() == nil {
				d.w.log.Warn("cannot see which priority levels hold jobs; retrying later", "stream", d.w.c.Subj.QueueStream(part), "err", err)
			}
			continue
		}
		for subject, n := range info.State.Subjects {
			stem, level, ok := events.SplitPriority(subject)
			if !ok || level <= 0 || n == 0 {
				continue
			}
			if p := d.byQueue[stem]; p != nil {
				p.hear(level, false)
			}
		}
	}
}

// parkedDelta counts jobs held, and follows the device status records
// while there are any, to see devices of other hosts become idle.
func (d *dispatcher) parkedDelta(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.parked += n
	switch {
	case d.parked > 0 && d.deviceSub == nil:
		sub, err := d.w.c.NC.Subscribe(d.w.c.Subj.DeviceRecords(), d.onDevice)
		if err != nil {
			d.w.log.Warn("cannot follow device records; held jobs go back to their queues on their own time", "err", err)
			return
		}
		d.deviceSub = sub
	case d.parked <= 0 && d.deviceSub != nil:
		_ = d.deviceSub.Unsubscribe()
		d.deviceSub = nil
	}
}

// onDevice tells the pullers of a device's queues that the device, on
// another host, is idle.
func (d *dispatcher) onDevice(m *nats.Msg) {
	if len(m.Data) == 0 { // a deleted record
		return
	}
	var st events.DeviceStatus
	if err := events.Decode(m.Data, &st); err != nil || st.Host == d.w.Host() || st.State != events.StateIdle {
		return
	}
	for _, q := range st.Queues {
		if p := d.pullers[q]; p != nil {
			p.hearIdleElsewhere(&st)
		}
	}
}

// close ends the subscriptions.
func (d *dispatcher) close() {
	for _, s := range d.subs {
		_ = s.Unsubscribe()
	}
	d.mu.Lock()
	if d.deviceSub != nil {
		_ = d.deviceSub.Unsubscribe()
		d.deviceSub = nil
	}
	d.mu.Unlock()
}

// parkedJob is a job held by this worker because it excludes every idle
// device here that serves its queue.
type parkedJob struct {
	msg   jetstream.Msg
	job   *events.Job
	level int
	seq   uint64    // stream sequence: the order jobs of a level came in
	until time.Time // when it goes back to the queue
	// handoff is set when a device elsewhere that may run it was seen
	// idle: it goes back sooner, and is passed on if it comes back.
	handoff bool
}

// queuePuller hands the jobs of one queue to this worker's idle devices
// serving it, highest priority level first. Only its run goroutine uses
// its fields below mu's.
type queuePuller struct {
	w      *Worker
	d      *dispatcher
	q      string
	base   jetstream.Consumer // level 0's consumer
	stream string
	wake   chan struct{} // a device serving q became idle
	signal chan struct{} // something was heard
	log    *slog.Logger

	mu            sync.Mutex
	heard         []heardLevel
	idleElsewhere []*events.DeviceStatus

	levels  map[int]bool               // levels above 0 that may hold jobs
	holdOff map[int]time.Time          // levels left to other workers until then
	cons    map[int]jetstream.Consumer // levels' consumers, once made
	parked  []*parkedJob               // by level (highest first), then seq
	passOn  map[string]time.Time       // job id → until when it is passed on if it comes back
	timer   *time.Timer
}

type heardLevel struct {
	level int
	fresh bool // a job was just queued at it (not a reoffer or a discovery)
}

// hear notes that level may hold a job.
func (p *queuePuller) hear(level int, fresh bool) {
	p.mu.Lock()
	p.heard = append(p.heard, heardLevel{level, fresh})
	p.mu.Unlock()
	p.poke()
}

// hearIdleElsewhere notes that st, a device of another host serving q, is idle.
func (p *queuePuller) hearIdleElsewhere(st *events.DeviceStatus) {
	p.mu.Lock()
	p.idleElsewhere = append(p.idleElsewhere, st)
	p.mu.Unlock()
	p.poke()
}

func (p *queuePuller) poke() {
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

// run keeps one pull request open on level 0 while some idle device here
// serves q, takes the higher levels first whenever they hold jobs, and
// hands each job to such a device.
func (p *queuePuller) run(ctx context.Context) {
	var batch jetstream.MessageBatch
	stop := context.CancelFunc(func() {})
	defer func() {
		stop()
		p.releaseAll("worker stopping")
		if p.timer != nil {
			p.timer.Stop()
		}
	}()
	for ctx.Err() == nil {
		p.absorb()
		if !p.w.hasIdle(p.q) {
			p.releaseAll("no idle device here serves the queue")
		} else {
			p.offer(ctx)
		}
		if batch == nil && p.w.hasIdle(p.q) {
			fctx, cancel := context.WithTimeout(ctx, pullWait)
			b, err := p.base.Fetch(1, jetstream.FetchContext(fctx))
			if err != nil {
				cancel()
				p.pullFailed(ctx, err)
				continue
			}
			batch, stop = b, cancel
		}
		var msgs <-chan jetstream.Msg
		if batch != nil {
			msgs = batch.Messages()
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
			// A device became idle: what was left to others may suit it.
			clear(p.holdOff)
		case <-p.signal:
		case <-p.due():
			p.releaseDue()
		case m, ok := <-msgs:
			err := batch.Error()
			// A batch of one is over once it has its message.
			stop()
			batch, stop = nil, func() {}
			if !ok {
				if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) &&
					!errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
					p.pullFailed(ctx, err)
				}
				continue
			}
			// Priority jobs heard of meanwhile go first.
			p.absorb()
			p.offer(ctx)
			p.handle(m, 0)
		}
	}
}

func (p *queuePuller) pullFailed(ctx context.Context, err error) {
	p.log.Warn("pull failed; retrying", "err", err)
	select {
	case <-ctx.Done():
	case <-time.After(500 * time.Millisecond):
	}
}

// absorb takes in what was heard since last time.
func (p *queuePuller) absorb() {
	p.mu.Lock()
	if len(p.heard) == 0 && len(p.idleElsewhere) == 0 {
		p.mu.Unlock()
		return
	}
	heard, idle := p.heard, p.idleElsewhere
	p.heard, p.idleElsewhere = nil, nil
	p.mu.Unlock()
	for _, h := range heard {
		p.levels[h.level] = true
		if h.fresh {
			delete(p.holdOff, h.level)
		}
	}
	now := time.Now()
	for _, st := range idle {
		for _, pj := range p.parked {
			if !pj.handoff && !slices.Contains(pj.job.ExcludeAgents, st.Name) {
				p.log.Debug("a device elsewhere may run a held job; passing it on", "job", pj.job.JobID, "device", st.Name, "host", st.Host)
				pj.handoff = true
				if soon := now.Add(handoffDelay); soon.Before(pj.until) {
					pj.until = soon
				}
			}
		}
	}
}

// offer gives this host's idle devices serving q the jobs of the levels
// above 0, highest first, and the held jobs they may run, until no device
// is idle or no such job is left.
func (p *queuePuller) offer(ctx context.Context) {
	for ctx.Err() == nil && p.w.hasIdle(p.q) {
		top := p.topLevel(time.Now())
		if p.runParked(top) {
			continue
		}
		if top <= 0 {
			return
		}
		m, err := p.fetch(ctx, top)
		if err != nil && ctx.Err() == nil {
			p.log.Warn("cannot fetch from a priority level; it is looked at again later", "priority", top, "err", err)
		}
		if m == nil {
			delete(p.levels, top)
			continue
		}
		p.handle(m, top)
	}
}

// topLevel is the highest level above 0 that may hold a job and is not
// left to other workers, or 0.
func (p *queuePuller) topLevel(now time.Time) int {
	top := 0
	for l := range p.levels {
		if l > top && !now.Before(p.holdOff[l]) {
			top = l
		}
	}
	return top
}

// runParked starts the first held job of level at least min that an
// idle device here may run, and reports whether it did.
func (p *queuePuller) runParked(minLevel int) bool {
	for i, pj := range p.parked {
		if pj.level < minLevel {
			return false
		}
		if d := p.w.take(p.q, pj.job.ExcludeAgents); d != nil {
			p.parked = slices.Delete(p.parked, i, i+1)
			p.d.parkedDelta(-1)
			delete(p.passOn, pj.job.JobID)
			p.start(d, pj.msg, pj.job, pj.level)
			return true
		}
	}
	return false
}

// fetch takes the next job of level without waiting; nil when there is none.
func (p *queuePuller) fetch(ctx context.Context, level int) (jetstream.Msg, error) {
	for try := 0; ; try++ {
		cons, err := p.levelConsumer(ctx, level)
		if err != nil {
			return nil, err
		}
		b, err := cons.FetchNoWait(1)
		if err == nil {
			if m, ok := <-b.Messages(); ok {
				return m, nil
			}
			if err = b.Error(); err == nil {
				return nil, nil
			}
		}
		// The consumer may have been removed for disuse: make it again, once.
		delete(p.cons, level)
		if try > 0 || ctx.Err() != nil {
			return nil, fmt.Errorf("queue %s, priority %d: %w", p.q, level, err)
		}
	}
}

// levelConsumer returns the durable consumer of q's jobs at level, shared
// by every device serving q, creating it with level 0's settings.
func (p *queuePuller) levelConsumer(ctx context.Context, level int) (jetstream.Consumer, error) {
	if c := p.cons[level]; c != nil {
		return c, nil
	}
	base := p.base.CachedInfo().Config
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := p.w.c.JS.CreateOrUpdateConsumer(ctx, p.stream, jetstream.ConsumerConfig{
		Durable:           p.w.c.Subj.QueuePriorityConsumer(p.q, level),
		Description:       fmt.Sprintf("Devices serving queue %s: its jobs of job_priority %d", p.q, level),
		FilterSubject:     p.w.c.Subj.QueuePriority(p.q, level),
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           base.AckWait,
		MaxDeliver:        base.MaxDeliver,
		MaxAckPending:     base.MaxAckPending,
		MaxWaiting:        base.MaxWaiting,
		InactiveThreshold: levelInactive,
	})
	if err != nil {
		return nil, fmt.Errorf("queue %s: consumer of priority %d: %w", p.q, level, err)
	}
	p.cons[level] = c
	return c, nil
}

// handle hands a job taken from level to an idle device here that it does
// not exclude; else holds it or puts it back.
func (p *queuePuller) handle(m jetstream.Msg, level int) {
	var job events.Job
	if err := events.Decode(m.Data(), &job); err != nil || job.JobID == "" || job.JobQueue == "" {
		p.log.Error("dropping a queued message that is not a job", "subject", m.Subject(), "err", err)
		_ = m.TermWithReason("not a flinger job")
		return
	}
	if d := p.w.take(p.q, job.ExcludeAgents); d != nil {
		delete(p.passOn, job.JobID)
		p.start(d, m, &job, level)
		return
	}
	until, passing := p.passOn[job.JobID]
	delete(p.passOn, job.JobID)
	switch {
	case !p.w.hasIdle(p.q):
		// Every device that served q took a job from another queue meanwhile.
		p.release(m, level)
	case passing && time.Now().Before(until):
		// Passed on to a device elsewhere and come back: this worker has
		// no pull request open for it now, so it goes to that device's.
		p.log.Debug("passing a job on again", "job", job.JobID)
		p.release(m, level)
	default:
		p.park(m, &job, level)
	}
}

// start runs a job taken from level on device d.
func (p *queuePuller) start(d *device, m jetstream.Msg, job *events.Job, level int) {
	p.w.jobs.Add(1)
	go func() {
		defer p.w.jobs.Done()
		d.runJob(m, job, p.q)
		if level > 0 && isClosed(p.w.draining) {
			// The job may have been handed back unfinished: tell the
			// other workers, which look at a level only when told.
			p.reoffer(level)
		}
	}()
}

// park holds a job that excludes every idle device here.
func (p *queuePuller) park(m jetstream.Msg, job *events.Job, level int) {
	var n, seq uint64 = 1, 0
	if md, err := m.Metadata(); err == nil {
		n, seq = md.NumDelivered, md.Sequence.Stream
	}
	wait := parkFor(n, p.w.leases[p.q])
	if len(p.parked) >= maxParked {
		p.log.Debug("job excluded by every idle device here; too many held, back to the queue", "job", job.JobID, "delay", wait)
		_ = m.NakWithDelay(wait)
		if level > 0 {
			p.levels[level] = true
			p.holdOff[level] = time.Now().Add(wait)
		}
		return
	}
	pj := &parkedJob{msg: m, job: job, level: level, seq: seq, until: time.Now().Add(wait)}
	i, _ := slices.BinarySearchFunc(p.parked, pj, func(a, b *parkedJob) int {
		if a.level != b.level {
			return b.level - a.level
		}
		return cmp.Compare(a.seq, b.seq)
	})
	p.parked = slices.Insert(p.parked, i, pj)
	p.d.parkedDelta(1)
	p.log.Debug("job excluded by every idle device here; held", "job", job.JobID, "deliveries", n, "for", wait)
}

// due fires when the first held job is to go back, or the first level
// left to others is to be looked at again; nil when there is none.
func (p *queuePuller) due() <-chan time.Time {
	var next time.Time
	for _, pj := range p.parked {
		if next.IsZero() || pj.until.Before(next) {
			next = pj.until
		}
	}
	now := time.Now()
	for l, t := range p.holdOff {
		if !t.After(now) {
			delete(p.holdOff, l)
			continue
		}
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if next.IsZero() {
		return nil
	}
	if p.timer == nil {
		p.timer = time.NewTimer(time.Until(next))
	} else {
		p.timer.Reset(time.Until(next))
	}
	return p.timer.C
}

// releaseDue puts back the held jobs whose time has come.
func (p *queuePuller) releaseDue() {
	now := time.Now()
	for id, until := range p.passOn {
		if now.After(until) {
			delete(p.passOn, id)
		}
	}
	kept := p.parked[:0]
	for _, pj := range p.parked {
		if pj.until.After(now) {
			kept = append(kept, pj)
			continue
		}
		p.d.parkedDelta(-1)
		if pj.handoff {
			p.passOn[pj.job.JobID] = now.Add(handoffWindow)
		}
		p.log.Debug("held job goes back to the queue", "job", pj.job.JobID, "passed_on", pj.handoff)
		p.release(pj.msg, pj.level)
	}
	clear(p.parked[len(kept):])
	p.parked = kept
}

// releaseAll puts back every held job.
func (p *queuePuller) releaseAll(why string) {
	for _, pj := range p.parked {
		p.d.parkedDelta(-1)
		p.log.Debug("held job goes back to the queue", "job", pj.job.JobID, "why", why)
		p.release(pj.msg, pj.level)
	}
	clear(p.parked)
	p.parked = p.parked[:0]
}

// release puts a job back in its queue for any device. A job of a level
// above 0 is announced to the other workers, which fetch such levels only
// when told, and this worker leaves the level to them for a moment.
func (p *queuePuller) release(m jetstream.Msg, level int) {
	if err := m.Nak(); err != nil {
		p.log.Warn("job not put back; it returns when its lease ends", "err", err)
	}
	if level <= 0 {
		return
	}
	p.levels[level] = true
	p.holdOff[level] = time.Now().Add(handoffWindow)
	p.reoffer(level)
}

// reoffer tells the other workers serving q that level may hold a job.
func (p *queuePuller) reoffer(level int) {
	if err := p.w.c.NC.Publish(p.w.c.Subj.QueueReoffer(p.q, level), []byte(p.w.Host())); err != nil {
		p.log.Warn("reoffer not sent; other workers find the job later", "err", err)
	}
}

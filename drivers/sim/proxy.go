package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// proxyDialTimeout bounds a Proxy's connection to its target.
const proxyDialTimeout = 2 * time.Second

// Proxy is a device's network address standing in front of whichever
// simulated host answers there at the time: a board that boots one of
// two images (each a DUT with its own port), or a module that does not
// answer at all while it is held in another boot mode. Each connection
// accepted is forwarded to the address its target function returns then;
// when that is "" or does not answer, the connection is closed at once,
// as a device that is not up. The Proxy's own port never changes.
type Proxy struct {
	ln     net.Listener
	target func() string
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// StartProxy listens on a free port of 127.0.0.1 and forwards what it
// accepts to target() (see Proxy). It stops when ctx is done or Close is
// called.
func StartProxy(ctx context.Context, target func() string, log *slog.Logger) (*Proxy, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sim: proxy: %w", err)
	}
	p := &Proxy{ln: ln, target: target, log: log, conns: map[net.Conn]struct{}{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.serve()
	context.AfterFunc(ctx, p.Close)
	return p, nil
}

// Addr returns the host:port the Proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops the Proxy: it cuts every connection and waits for its
// goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.cancel()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

// track records c for Close; it returns false when the Proxy is closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) forget(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// handle connects c to the target; with none, or one that does not
// answer, c is closed.
func (p *Proxy) handle(c net.Conn) {
	defer p.wg.Done()
	if !p.track(c) {
		_ = c.Close()
		return
	}
	defer p.forget(c)
	addr := p.target()
	if addr == "" {
		return
	}
	d := net.Dialer{Timeout: proxyDialTimeout}
	up, err := d.DialContext(p.ctx, "tcp", addr)
	if err != nil {
		p.log.Debug("sim: proxy: the target does not answer", "addr", addr, "err", err)
		return
	}
	if !p.track(up) {
		_ = up.Close()
		return
	}
	defer p.forget(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	// One side ended: end both, which ends the other copy.
	_ = c.Close()
	_ = up.Close()
	<-done
}

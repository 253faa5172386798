package dragonboardsim

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// proxy forwards the board's address to the image it booted.
type proxy struct {
	ln     net.Listener
	target func() string
	log    *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func startProxy(target func() string, log *slog.Logger) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("board address: %w", err)
	}
	p := &proxy{ln: ln, target: target, log: log, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *proxy) serve() {
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

// track records c for close; it returns false when the proxy is closed.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) forget(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// handle connects c to the image booted; with none up, c is closed, as
// a board that does not answer yet.
func (p *proxy) handle(c net.Conn) {
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
	d := net.Dialer{Timeout: 2 * time.Second}
	up, err := d.Dial("tcp", addr)
	if err != nil {
		p.log.Debug("dragonboardsim: the board does not answer", "err", err)
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

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

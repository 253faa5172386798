package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// linkProxy is a TCP link that a test can cut and restore: every
// connection through it is dropped on cut, and new ones are refused
// until restore.
type linkProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newLinkProxy(t *testing.T, target string) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
	return p
}

func (p *linkProxy) addr() string { return p.ln.Addr().String() }

func (p *linkProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *linkProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// startServerConf starts a nats-server from configuration text, written
// as server.conf in dir (a new directory when dir is ""), where its
// includes are found.
func startServerConf(t *testing.T, dir, conf string) *server.Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("configuration: %v\n%s", err, conf)
	}
	opts.NoSigs, opts.NoLog = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// TestLeafLinkDrop runs a remote lab site's worker on a leaf node of the
// lab's JetStream server (as deploy/leaf/leaf.conf does), and cuts the
// leaf's link to the hub while a job runs on it, for less than the
// worker's fence: the job finishes on its device, once, with its whole
// event history in order.
func TestLeafLinkDrop(t *testing.T) {
	t.Parallel()
	leafPort := freePort(t)
	hub := startServerConf(t, "", fmt.Sprintf("server_name: hub\nlisten: 127.0.0.1:-1\njetstream { store_dir: %q, domain: hub }\nleafnodes { listen: \"127.0.0.1:%d\" }\n", filepath.Join(t.TempDir(), "js"), leafPort))
	link := newLinkProxy(t, fmt.Sprintf("127.0.0.1:%d", leafPort))
	leaf := startServerConf(t, "", fmt.Sprintf("server_name: site-a\nlisten: 127.0.0.1:-1\nleafnodes { remotes = [ { url: %q } ] }\n", "nats-leaf://"+link.addr()))
	probe, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	waitLeaf := func(what string) {
		// Connected, and the hub's JetStream answers through the leaf.
		eventually(t, what, func() bool {
			if leaf.NumLeafNodes() != 1 || hub.NumLeafNodes() != 1 {
				return false
			}
			_, err := probe.Request("$JS.hub.API.INFO", nil, time.Second)
			return err == nil
		})
	}
	waitLeaf("leaf connected")

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	orchC, err := broker.SetupAndConnect(ctx, broker.ConnOptions{URL: hub.ClientURL(), Name: "orch", Log: testLog(t)}, events.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(orchC.Close)
	orch, err := orchestrator.New(orchestrator.Config{Client: orchC, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := orch.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(orch.Stop)
	host := hostFile(t, "site-a", "remote-1:remote")
	wc, err := broker.Connect(ctx, broker.ConnOptions{URL: leaf.ClientURL(), Name: "worker-site-a", Domain: "hub", Log: testLog(t)})
	if err != nil {
		t.Fatalf("worker through the leaf node: %v", err)
	}
	t.Cleanup(wc.Close)
	w, err := workers.New(workers.Config{Client: wc, Host: host, RunDir: t.TempDir(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() { wcancel(); <-done })

	marker := filepath.Join(t.TempDir(), "may-end")
	id := submit(t, orchC, fmt.Sprintf("job_queue: remote\ntest_data:\n  test_cmds: |\n    echo before the cut\n    while [ ! -e %s ]; do sleep 0.1; done\n    echo after the cut\n", marker))
	waitEvent(t, orchC, id, events.PhaseStart(events.PhaseTest))
	link.cut()
	eventually(t, "leaf cut off", func() bool { return hub.NumLeafNodes() == 0 })
	// The test ends while the site is cut off: its events and output wait
	// for the link.
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	link.restore()
	waitLeaf("leaf reconnected")

	rec := waitEnd(t, orchC, id)
	if rec.Outcome != events.OutcomePass || rec.Attempt != 1 {
		t.Errorf("job over a dropped leaf link: %s (%s), attempt %d", rec.Outcome, rec.EndReason, rec.Attempt)
	}
	// Every event is there once, and in the order the worker made them
	// (by their own times: a message sent as the link came back may be
	// stored before one sent again after it, see the outbox).
	all := jobEvents(t, orchC, id)
	slices.SortStableFunc(all, func(a, b *events.Event) int { return a.Time.Compare(b.Time) })
	evs := names(all)
	want := []string{events.EventJobSubmitted, events.EventJobStart,
		events.PhaseStart(events.PhaseSetup), events.PhaseSuccess(events.PhaseSetup),
		events.PhaseStart(events.PhaseTest), events.PhaseSuccess(events.PhaseTest),
		events.PhaseStart(events.PhaseCleanup), events.PhaseSuccess(events.PhaseCleanup), events.EventJobEnd}
	pos := 0
	for _, name := range evs {
		if pos < len(want) && name == want[pos] {
			pos++
		}
	}
	if pos != len(want) {
		t.Errorf("event history over a dropped link, missing or out of order from %q:\n%v", want[pos], evs)
	}
	for _, name := range want {
		if n := countOf(evs, name); n != 1 {
			t.Errorf("%d %s events, want 1", n, name)
		}
	}
	out := output(t, orchC, id)
	for _, s := range []string{"before the cut", "after the cut"} {
		if !slices.ContainsFunc([]string{out}, func(o string) bool { return contains(splitLines(o), s) }) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	eventually(t, "remote-1 idle", func() bool {
		d, err := orchC.GetDevice(t.Context(), "remote-1")
		return err == nil && d.State == events.StateIdle
	})
}

func countOf(l []string, s string) int {
	n := 0
	for _, e := range l {
		if e == s {
			n++
		}
	}
	return n
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

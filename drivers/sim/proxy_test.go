package sim_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers/sim"
)

// echoServer answers each line it receives with name, a colon and the
// line. It stops with the test.
func echoServer(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, name+":"+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// ask sends line over a new connection to addr and returns the answer, or
// the error of a connection closed without one.
func ask(t *testing.T, addr, line string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return answer, nil
}

func TestProxy(t *testing.T) {
	t.Parallel()
	a, b := echoServer(t, "a"), echoServer(t, "b")
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()

	var mu sync.Mutex
	target := a
	p, err := sim.StartProxy(t.Context(), func() string {
		mu.Lock()
		defer mu.Unlock()
		return target
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	setTarget := func(s string) {
		mu.Lock()
		target = s
		mu.Unlock()
	}

	for _, tc := range []struct {
		name, target, want string
	}{
		{"first target", a, "a:hello\n"},
		{"second target", b, "b:hello\n"},
		{"no target", "", ""},
		{"target does not answer", dead, ""},
		{"back to the first", a, "a:hello\n"},
	} {
		setTarget(tc.target)
		got, err := ask(t, p.Addr(), "hello")
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: answered %q, want the connection closed", tc.name, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestProxyClose(t *testing.T) {
	t.Parallel()
	a := echoServer(t, "a")
	ctx, cancel := context.WithCancel(t.Context())
	p, err := sim.StartProxy(ctx, func() string { return a }, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := io.WriteString(c, "x\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadString('\n'); err != nil || got != "a:x\n" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}
	// The context ending closes the proxy: the connection in progress is
	// cut and the port refuses new ones.
	cancel()
	if got, err := r.ReadString('\n'); err == nil {
		t.Errorf("a connection survived the proxy's end: %q", got)
	}
	p.Close() // a second Close is harmless
	if got, err := ask(t, p.Addr(), "y"); err == nil {
		t.Errorf("a closed proxy answered %q", got)
	}
}

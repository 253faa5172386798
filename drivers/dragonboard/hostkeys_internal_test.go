package dragonboard

import (
	"errors"
	"net"
	"testing"

	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func TestConfirmingPolicy(t *testing.T) {
	t.Parallel()
	store := sshx.TOFU(t.TempDir())
	p := newConfirmingPolicy(store)
	master, test := drivertest.RandomHostKey(t), drivertest.RandomHostKey(t)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}

	// Nothing recorded: any key is let through, and nothing is recorded
	// until the image is confirmed.
	if err := p.Callback("db-master")("board", addr, test); err != nil {
		t.Fatalf("first key refused: %v", err)
	}
	if k, _ := store.Recorded("db-master"); k != nil {
		t.Fatal("an unconfirmed key was recorded")
	}
	if err := p.Callback("db-master")("board", addr, master); err != nil {
		t.Fatal(err)
	}
	if err := p.confirm("db-master"); err != nil {
		t.Fatal(err)
	}
	if k, _ := store.Recorded("db-master"); k == nil || string(k.Marshal()) != string(master.Marshal()) {
		t.Fatalf("recorded %v, want the confirmed master key", k)
	}
	// Recorded: only that key passes.
	var changed *sshx.HostKeyChangedError
	if err := p.Callback("db-master")("board", addr, test); !errors.As(err, &changed) {
		t.Errorf("another key for the master = %v, want a *HostKeyChangedError", err)
	}
	if err := p.Callback("db-master")("board", addr, master); err != nil {
		t.Errorf("the recorded key: %v", err)
	}
	// Reset forgets both the record and what was seen.
	_ = p.Callback("db")("board", addr, test)
	if err := p.Reset("db"); err != nil {
		t.Fatal(err)
	}
	if err := p.confirm("db"); err != nil {
		t.Fatal(err)
	}
	if k, _ := store.Recorded("db"); k != nil {
		t.Error("confirm after Reset recorded a key seen before it")
	}
	if err := p.confirm("nothing-seen"); err != nil {
		t.Errorf("confirm with nothing seen: %v", err)
	}
}

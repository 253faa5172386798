package oemscript

import (
	"os"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers/sim/oemsim"
)

func TestUBRImage(t *testing.T) {
	t.Parallel()
	for u, want := range map[string]bool{
		"https://h/pc-stella-cmit-focal-amd64-X00-20210618-1563.iso": true,
		"https://h/sutton-newell-jammy.iso?token=stella":             true,
		"https://h/dell-bto-jammy-jellyfish-X10.iso":                 false,
		"https://stella.example.com/noble.iso":                       false,
	} {
		if got := ubrImage(u); got != want {
			t.Errorf("ubrImage(%s) = %v, want %v", u, got, want)
		}
	}
}

func TestWorkerKey(t *testing.T) {
	t.Parallel()
	key, pub, err := oemsim.NewKeyFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	line, err := workerKey(key)
	if err != nil || !strings.HasSuffix(line, " flinger-lab") || !strings.HasPrefix(line, pub.Type()+" ") {
		t.Errorf("workerKey with a .pub = %q, %v", line, err)
	}
	if err := os.Remove(key + ".pub"); err != nil {
		t.Fatal(err)
	}
	derived, err := workerKey(key)
	if err != nil || strings.Fields(derived)[1] != strings.Fields(line)[1] {
		t.Errorf("workerKey without a .pub = %q, %v; want the key %q", derived, err, line)
	}
	if line, err := workerKey(""); line != "" || err != nil {
		t.Errorf("workerKey without a key file = %q, %v", line, err)
	}
	if _, err := workerKey(key + ".missing"); err == nil {
		t.Error("workerKey of a missing file succeeded")
	}
}

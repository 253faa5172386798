package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/broker"
)

func TestSecretCommand(t *testing.T) {
	l := startTestLab(t)
	steps := []struct {
		name    string
		args    []string
		stdin   string
		code    int
		want    string
		notWant string
	}{
		{"ls before any secret", []string{"secret", "ls"}, "", 1, "no secrets bucket", ""},
		{"set from an argument", []string{"secret", "set", "lab/token", "v4lue-one"}, "", 0, "secret lab/token set", ""},
		{"set from stdin", []string{"secret", "set", "lab/odd.path"}, "v4lue-two\n", 0, "secret lab/odd.path set", ""},
		{"set empty", []string{"secret", "set", "lab/empty"}, "", 1, "the value is empty", ""},
		{"ls shows paths, not values", []string{"secret", "ls"}, "", 0, "lab/odd.path\nlab/token\n", "v4lue"},
		{"rm", []string{"secret", "rm", "lab/token"}, "", 0, "secret lab/token removed", ""},
		{"rm again", []string{"secret", "rm", "lab/token"}, "", 1, "no secret lab/token", ""},
		{"ls after rm", []string{"secret", "ls"}, "", 0, "lab/odd.path\n", "lab/token"},
	}
	for _, s := range steps {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetIn(strings.NewReader(s.stdin))
		root.SetArgs(append(s.args, "--nats", l.URL))
		err := root.ExecuteContext(ctx)
		cancel()
		code := 0
		if err != nil {
			code = 1
			out.WriteString(err.Error())
		}
		if code != s.code || !strings.Contains(out.String(), s.want) || (s.notWant != "" && strings.Contains(out.String(), s.notWant)) {
			t.Fatalf("%s: exit %d, output %q; want exit %d with %q", s.name, code, out.String(), s.code, s.want)
		}
	}
	kv, err := l.Client.SecretBucket(context.Background(), false, 0)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), broker.SecretKey("lab/odd.path"))
	if err != nil || string(e.Value()) != "v4lue-two" {
		t.Fatalf("stored value %q (%v), want the stdin value without its newline", e.Value(), err)
	}
}

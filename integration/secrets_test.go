package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/workers"
)

// TestSecrets runs jobs whose test_data.secrets the worker resolves from
// its secret store, a file on the lab host or the lab's secrets bucket on
// NATS: the test sees the values, and they appear nowhere in the output,
// the events, the job record or the device status.
func TestSecrets(t *testing.T) {
	for _, store := range []string{"file", "kv"} {
		t.Run(store, func(t *testing.T) { testSecrets(t, store) })
	}
}

func testSecrets(t *testing.T, store string) {
	t.Parallel()
	const value = "s3cr3t-Value-7f6e"
	host := hostFile(t, "secret-host", "sec-1:secq")
	if store == "file" {
		file := filepath.Join(t.TempDir(), "secrets.yaml")
		if err := os.WriteFile(file, []byte("lab/api-token: "+value+"\nlab/other: x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		host.SecretsFile = file
	} else {
		host.SecretsKV = true
	}
	l := startLab(t, host, workers.Config{})
	c := connect(t, l, "secrets-test")
	if store == "kv" {
		kv, err := c.SecretBucket(context.Background(), true, 1)
		if err != nil {
			t.Fatal(err)
		}
		for p, v := range map[string]string{"lab/api-token": value, "lab/other": "x"} {
			if _, err := kv.PutString(context.Background(), broker.SecretKey(p), v); err != nil {
				t.Fatal(err)
			}
		}
	}

	id := submit(t, c, `job_queue: secq
test_data:
  secrets: {API_TOKEN: lab/api-token}
  test_cmds: |
    echo "token=$API_TOKEN"
    printf '%s' "$API_TOKEN" >&2
    echo "split: ${API_TOKEN%%-*}-" "${API_TOKEN#*-}"
    [ "$API_TOKEN" = "s3cr3t-Value-"'7f6e' ] || exit 9
    exit 3
`)
	rec := waitEnd(t, c, id)
	if rec.Status[events.PhaseTest] != 3 {
		t.Errorf("test exit status %d, want 3 (9: the secret did not reach the test)", rec.Status[events.PhaseTest])
	}
	out := output(t, c, id)
	if !strings.Contains(out, "token=****") {
		t.Errorf("output lacks the masked secret:\n%s", out)
	}
	evs, _ := json.Marshal(jobEvents(t, c, id))
	recJSON, _ := json.Marshal(rec)
	for what, s := range map[string]string{"output": out, "events": string(evs), "record": string(recJSON)} {
		if strings.Contains(s, value) {
			t.Errorf("the secret's value appears in the %s", what)
		}
	}

	// A secret the store does not hold fails the job before the test runs,
	// naming its path.
	id = submit(t, c, "job_queue: secq\ntest_data:\n  secrets: {X: lab/missing}\n  test_cmds: echo never-runs\n")
	rec = waitEnd(t, c, id)
	out = output(t, c, id)
	if rec.Outcome != events.OutcomeFail || !strings.Contains(out, "lab/missing") || strings.Contains(out, "never-runs") {
		t.Errorf("missing secret: outcome %s, output:\n%s", rec.Outcome, out)
	}
}

func TestFileSecrets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		secrets       map[string]string
		want, err     string
	}{
		{"found", "a/b: v1\n", 0o600, map[string]string{"A": "a/b"}, "v1", ""},
		{"missing path named", "a/b: v1\n", 0o600, map[string]string{"A": "a/c", "B": "a/b"}, "", "a/c (for A)"},
		{"world readable refused", "a/b: v1\n", 0o644, map[string]string{"A": "a/b"}, "", "readable by every user"},
		{"not a string", "a/b: [1]\n", 0o600, map[string]string{"A": "a/b"}, "", "not a string"},
		{"not yaml, no content quoted", "a/b: 'unterminated v1\n", 0o600, map[string]string{"A": "a/b"}, "", "not a YAML mapping"},
	} {
		f := workers.FileSecrets{Path: write(strings.ReplaceAll(tc.name, " ", "-"), tc.content, tc.mode)}
		got, err := f.Resolve(t.Context(), tc.secrets)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "v1") {
				t.Errorf("%s: %v, want an error with %q and no secret", tc.name, err, tc.err)
			}
		case err != nil || got["A"] != tc.want:
			t.Errorf("%s: %v, %v", tc.name, got, err)
		}
	}
}

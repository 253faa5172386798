package workers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/broker"
)

// SecretStore resolves the secret paths of a job's test_data.secrets
// (environment variable name → secret path) to their values.
type SecretStore interface {
	// Resolve returns the value of every path of secrets by variable
	// name. A path the store does not hold is an error naming it.
	Resolve(ctx context.Context, secrets map[string]string) (map[string]string, error)
}

// ErrNoSecret reports a secret path a store does not hold.
var ErrNoSecret = errors.New("no such secret")

// FileSecrets is a SecretStore kept in a YAML file on the lab host: a
// mapping of secret paths to values, read again on every Resolve so that
// a change applies to the next job. The file must not be readable by
// other users (mode 0600 or 0640): a file anyone can read is refused.
type FileSecrets struct {
	// Path is the file.
	Path string
}

// Resolve implements SecretStore.
func (f FileSecrets) Resolve(_ context.Context, secrets map[string]string) (map[string]string, error) {
	st, err := os.Stat(f.Path)
	if err != nil {
		return nil, fmt.Errorf("secrets_file: %w", err)
	}
	if st.Mode().Perm()&0o004 != 0 {
		return nil, fmt.Errorf("secrets_file %s: readable by every user (mode %04o): allow only the worker's user (chmod 600)", f.Path, st.Mode().Perm())
	}
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, fmt.Errorf("secrets_file: %w", err)
	}
	var all map[string]any
	if err := yaml.Unmarshal(data, &all); err != nil {
		// The YAML error may quote the file, secrets included: say where only.
		return nil, fmt.Errorf("secrets_file %s: not a YAML mapping of secret paths to values", f.Path)
	}
	out := make(map[string]string, len(secrets))
	names := make([]string, 0, len(secrets))
	for name := range secrets {
		names = append(names, name)
	}
	slices.Sort(names)
	var missing []string
	for _, name := range names {
		path := secrets[name]
		v, ok := all[path]
		if !ok {
			missing = append(missing, fmt.Sprintf("%s (for %s)", path, name))
			continue
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("test_data.secrets.%s: secret %s is not a string in the secrets file", name, path)
		}
		out[name] = s
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("test_data.secrets: %w: %s", ErrNoSecret, strings.Join(missing, ", "))
	}
	return out, nil
}

// KVSecrets is a SecretStore kept in the lab's secrets bucket on NATS
// (secret path → value, set with `flinger secret set`), read on every
// Resolve so that a change applies to the next job. NATS permissions
// should let only workers read the bucket.
type KVSecrets struct {
	// Client is the worker's connection.
	Client *broker.Client
}

// Resolve implements SecretStore.
func (k KVSecrets) Resolve(ctx context.Context, secrets map[string]string) (map[string]string, error) {
	kv, err := k.Client.SecretBucket(ctx, false, 0)
	if err != nil {
		return nil, fmt.Errorf("test_data.secrets: %w", err)
	}
	names := make([]string, 0, len(secrets))
	for name := range secrets {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make(map[string]string, len(secrets))
	var missing []string
	for _, name := range names {
		path := secrets[name]
		e, err := kv.Get(ctx, broker.SecretKey(path))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			missing = append(missing, fmt.Sprintf("%s (for %s)", path, name))
		case err != nil:
			return nil, fmt.Errorf("test_data.secrets.%s: secret %s: %w", name, path, err)
		default:
			out[name] = string(e.Value())
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("test_data.secrets: %w: %s", ErrNoSecret, strings.Join(missing, ", "))
	}
	return out, nil
}

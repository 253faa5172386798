package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

// ErrNoSecretBucket reports that the lab has no secrets bucket yet (no
// secret was ever set).
var ErrNoSecretBucket = errors.New("the lab has no secrets bucket (set one with flinger secret set)")

// SecretBucket returns the lab's secrets bucket. With create it is made
// when missing, with replicas copies; without, a missing bucket is
// ErrNoSecretBucket.
func (c *Client) SecretBucket(ctx context.Context, create bool, replicas int) (jetstream.KeyValue, error) {
	name := c.Subj.SecretBucket()
	kv, err := c.JS.KeyValue(ctx, name)
	switch {
	case err == nil:
		return kv, nil
	case errors.Is(err, jetstream.ErrBucketNotFound) && !create:
		return nil, ErrNoSecretBucket
	case !errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, fmt.Errorf("secrets bucket %s: %w", name, err)
	}
	if replicas <= 0 {
		replicas = 1
	}
	kv, err = c.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "Secrets for jobs' test_data.secrets, by secret path; only workers should read them",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("create secrets bucket %s: %w", name, err)
	}
	return kv, nil
}

// SecretKey is the bucket key of secret path p.
func SecretKey(p string) string { return events.Key(p) }

// SecretPath is the secret path of bucket key k (SecretKey's inverse).
func SecretPath(k string) string {
	if enc, ok := strings.CutPrefix(k, "_b64_"); ok {
		if p, err := base64.RawURLEncoding.DecodeString(enc); err == nil {
			return string(p)
		}
	}
	return k
}

package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

// ConnOptions says how to reach NATS.
type ConnOptions struct {
	// URL is one or more comma-separated server URLs.
	URL string
	// Name identifies the connection on the server (shown by monitoring).
	Name string
	// Creds is a NATS credentials file (JWT and NKey seed).
	Creds string
	// NKeySeed is a file holding an NKey seed, for NKey authentication.
	NKeySeed string
	// User and Password, for user/password authentication.
	User, Password string
	// Token, for token authentication.
	Token string
	// TLSCA is a PEM file of the CAs to trust; TLSCert and TLSKey a client certificate.
	TLSCA, TLSCert, TLSKey string
	// Prefix is the subject prefix ("" for events.DefaultPrefix).
	Prefix string
	// Domain is the JetStream domain of the lab's servers, for a client
	// of a leaf node whose own server has no JetStream (a remote lab
	// site): its JetStream requests go to $JS.<domain>.API.
	Domain string
	// Log receives connection notices (nil: slog.Default()).
	Log *slog.Logger
}

// Client is a connection to NATS with Flinger's streams and buckets at hand.
type Client struct {
	// NC is the core NATS connection.
	NC *nats.Conn
	// JS is the JetStream context.
	JS jetstream.JetStream
	// Subj names every subject, stream and bucket.
	Subj events.Subjects
	// Jobs is the job-record bucket.
	Jobs jetstream.KeyValue
	// Devices is the device-status bucket.
	Devices jetstream.KeyValue

	log    *slog.Logger
	domain string
	out    *outbox // events and log chunks, in order, until stored
	objMu  sync.Mutex
	objs   map[string]jetstream.ObjectStore
}

// Connect dials NATS and binds to Flinger's streams and buckets, which must
// exist (see Setup). It retries the first connection for up to 10 s.
func Connect(ctx context.Context, o ConnOptions) (*Client, error) {
	c, err := dial(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := c.bind(ctx); err != nil {
		c.NC.Close()
		return nil, err
	}
	return c, nil
}

func dial(ctx context.Context, o ConnOptions) (*Client, error) {
	subj, err := events.NewSubjects(o.Prefix)
	if err != nil {
		return nil, err
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(64 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("NATS error", "subject", subject, "err", err)
		}),
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.NKeySeed != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeySeed)
		if err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", o.NKeySeed, err)
		}
		opts = append(opts, opt)
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.TLSCert != "" || o.TLSKey != "" {
		if o.TLSCert == "" || o.TLSKey == "" {
			return nil, errors.New("TLS client certificate: give both the certificate and its key")
		}
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	url := o.URL
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: no server answered within 10s", url)
		}
		time.Sleep(50 * time.Millisecond)
	}
	js, err := newJetStream(nc, o.Domain, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		log.Error("publish failed", "subject", m.Subject, "err", err)
	}), jetstream.WithPublishAsyncMaxPending(4096),
		// An acknowledgement lost with a link (a leaf node cut off from
		// its hub) fails the publish instead of leaving it pending: the
		// outbox sends it again.
		jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c := &Client{NC: nc, JS: js, Subj: subj, log: log, domain: o.Domain}
	c.out = newOutbox(c)
	return c, nil
}

// newJetStream is a JetStream context in domain ("": the server's own).
func newJetStream(nc *nats.Conn, domain string, opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	if domain != "" {
		return jetstream.NewWithDomain(nc, domain, opts...)
	}
	return jetstream.New(nc, opts...)
}

func (c *Client) bind(ctx context.Context) error {
	var err error
	if c.Jobs, err = c.JS.KeyValue(ctx, c.Subj.JobBucket()); err != nil {
		return fmt.Errorf("job records bucket %s: %w (is the orchestrator or `flinger lab` running, with the same --prefix?)", c.Subj.JobBucket(), err)
	}
	if c.Devices, err = c.JS.KeyValue(ctx, c.Subj.DeviceBucket()); err != nil {
		return fmt.Errorf("device status bucket %s: %w", c.Subj.DeviceBucket(), err)
	}
	return nil
}

// Setup creates or updates Flinger's streams and buckets; it is idempotent
// and safe to run from several processes at once.
func Setup(ctx context.Context, js jetstream.JetStream, subj events.Subjects, o events.StoreOptions) error {
	for _, cfg := range subj.Streams(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range subj.Buckets(o) {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
	}
	for _, cfg := range subj.ObjectStores(o) {
		if _, err := js.CreateOrUpdateObjectStore(ctx, cfg); err != nil {
			return fmt.Errorf("object store %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// SetupAndConnect dials NATS, creates the streams and buckets, and binds to them.
func SetupAndConnect(ctx context.Context, o ConnOptions, so events.StoreOptions) (*Client, error) {
	c, err := dial(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := Setup(ctx, c.JS, c.Subj, so); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.bind(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close drains and closes the connection.
func (c *Client) Close() {
	if c == nil || c.NC == nil {
		return
	}
	if c.out != nil {
		if c.NC.IsConnected() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := c.out.flush(ctx); err != nil {
				c.log.Warn("closing with events or logs not stored", "err", err)
			}
			cancel()
		}
		c.out.close()
	}
	_ = c.NC.Drain()
	deadline := time.Now().Add(5 * time.Second)
	for !c.NC.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	c.NC.Close()
}

// Log returns the client's logger.
func (c *Client) Log() *slog.Logger { return c.log }

package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flingerlab/flinger/access"
	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// securedServer starts a NATS server with JetStream whose users are those
// of the configuration `flinger auth` writes for hosts, and returns its URL
// and the users with their passwords.
func securedServer(t *testing.T, hosts ...*drivers.HostConfig) (string, map[string]access.User) {
	t.Helper()
	users, err := access.LabUsers(hosts)
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := events.NewSubjects("")
	conf, err := access.Config(users, access.Options{Subjects: subj, MaxPriority: 3})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServerConf(t, dir, "listen: 127.0.0.1:-1\njetstream { store_dir: "+quoteConf(filepath.Join(dir, "js"))+" }\ninclude auth.conf\n")
	byName := usersByName(users)
	return srv.ClientURL(), byName
}

func quoteConf(s string) string { return `"` + s + `"` }

func usersByName(users []access.User) map[string]access.User {
	m := map[string]access.User{}
	for _, u := range users {
		m[u.Name] = u
	}
	return m
}

// connectAs connects to url as user u (setting up the streams when setup).
func connectAs(t *testing.T, url string, u access.User, setup bool) *broker.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	o := broker.ConnOptions{URL: url, Name: u.Name, User: u.Name, Password: u.Password, Log: testLog(t)}
	var c *broker.Client
	var err error
	if setup {
		c, err = broker.SetupAndConnect(ctx, o, events.StoreOptions{})
	} else {
		c, err = broker.Connect(ctx, o)
	}
	if err != nil {
		t.Fatalf("connect as %s: %v", u.Name, err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestPermissions runs a lab whose every process has only its role's
// permissions (the configuration `flinger auth` writes): jobs run end to
// end on two hosts, and what a role must not do is refused.
func TestPermissions(t *testing.T) {
	t.Parallel()
	hostA := hostFile(t, "perm-a", "pa-1:qa", "pa-2:qa")
	hostB := hostFile(t, "perm-b", "pb-1:qb")
	url, users := securedServer(t, hostA, hostB)

	orchC := connectAs(t, url, users["orchestrator"], true)
	orch, err := orchestrator.New(orchestrator.Config{Client: orchC, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := orch.Start(ctx); err != nil {
		t.Fatalf("orchestrator with its role's permissions: %v", err)
	}
	t.Cleanup(orch.Stop)
	for _, h := range []*drivers.HostConfig{hostA, hostB} {
		c := connectAs(t, url, users["worker-"+h.Host], false)
		w, err := workers.New(workers.Config{Client: c, Host: h, RunDir: t.TempDir(), Log: testLog(t)})
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		t.Cleanup(func() {
			wcancel()
			select {
			case <-done:
			case <-time.After(waitLong):
			}
		})
	}

	sub := connectAs(t, url, users["submitter"], false)
	obs := connectAs(t, url, users["observer"], false)
	eventually(t, "three devices idle", func() bool {
		devs, _, err := obs.ListDevices(t.Context())
		if err != nil || len(devs) != 3 {
			return false
		}
		for _, d := range devs {
			if d.State != events.StateIdle {
				return false
			}
		}
		return true
	})

	// Jobs run end to end: with a priority, an attachment and artifacts,
	// and a cancel.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "in.txt"), []byte("attached\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	job := "job_queue: qa\njob_priority: 2\ntest_data:\n  attachments: [{local: in.txt}]\n  test_cmds: |\n    mkdir -p artifacts\n    cp attachments/test/in.txt artifacts/out.txt\n"
	packed, err := client.PrepareJob([]byte(job), events.FormatYAML, dir)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := client.SubmitJob(ctx, sub, packed, nil)
	if err != nil {
		t.Fatalf("submitter: %v", err)
	}
	plain := submit(t, sub, "job_queue: qb\ntest_data: {test_cmds: 'echo on b'}\n")
	for _, id := range []string{reply.JobID, plain} {
		rec := waitEnd(t, obs, id)
		if rec.Outcome != events.OutcomePass {
			t.Errorf("job %s: %s (%s)\n%s", id, rec.Outcome, rec.EndReason, output(t, obs, id))
		}
	}
	art := t.TempDir()
	if _, _, err := client.DownloadArtifacts(ctx, sub, reply.JobID, art, 0); err != nil {
		t.Errorf("submitter reads artifacts: %v", err)
	} else if b, _ := os.ReadFile(filepath.Join(art, "out.txt")); string(b) != "attached\n" {
		t.Errorf("artifact: %q", b)
	}
	long := submit(t, sub, "job_queue: qb\ntest_data: {test_cmds: 'sleep 600'}\n")
	waitEvent(t, obs, long, events.PhaseStart(events.PhaseTest))
	if _, err := client.Cancel(ctx, sub, long, "perm test"); err != nil {
		t.Errorf("submitter cancels: %v", err)
	}
	if rec := waitEnd(t, obs, long); rec.Outcome != events.OutcomeCancelled {
		t.Errorf("cancelled job: %s", rec.Outcome)
	}

	// What each role must not do: each try is refused by the server with
	// a permissions violation naming the subject.
	subj := orchC.Subj
	secrets, err := orchC.SecretBucket(ctx, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.PutString(ctx, broker.SecretKey("lab/token"), "s3cret"); err != nil {
		t.Fatal(err)
	}
	refused := []struct {
		name, user, subject string
		try                 func(ctx context.Context, c *broker.Client) error
	}{
		{"worker submits a job", "worker-perm-a", subj.Submit(), func(ctx context.Context, c *broker.Client) error {
			_, err := c.JS.Publish(ctx, c.Subj.Submit(), []byte("job_queue: qa\n"))
			return err
		}},
		{"worker reads another host's queue", "worker-perm-a", "$JS.API.CONSUMER.MSG.NEXT." + subj.QueueStreamOf("qb"), func(ctx context.Context, c *broker.Client) error {
			_, err := c.NC.Request("$JS.API.CONSUMER.MSG.NEXT."+c.Subj.QueueStreamOf("qb")+"."+c.Subj.QueueConsumer("qb"), []byte(`{"batch":1,"expires":1000000000}`), 2*time.Second)
			return err
		}},
		{"worker sets another host's device", "worker-perm-a", "$KV." + subj.DeviceBucket() + ".pb-1", func(ctx context.Context, c *broker.Client) error {
			_, err := c.Devices.Put(ctx, events.Key("pb-1"), []byte("x"))
			return err
		}},
		{"worker publishes another host's device event", "worker-perm-a", subj.DeviceEvent("pb-1", events.EventDeviceState), func(ctx context.Context, c *broker.Client) error {
			_, err := c.JS.Publish(ctx, c.Subj.DeviceEvent("pb-1", events.EventDeviceState), []byte("x"))
			return err
		}},
		{"worker cancels a job", "worker-perm-a", subj.Ctl("cancel"), func(ctx context.Context, c *broker.Client) error {
			_, err := client.Cancel(ctx, c, plain, "no")
			return err
		}},
		{"observer submits", "observer", subj.Submit(), func(ctx context.Context, c *broker.Client) error {
			_, err := c.JS.Publish(ctx, c.Subj.Submit(), []byte("job_queue: qa\n"))
			return err
		}},
		{"observer publishes an event", "observer", subj.JobEvent(plain, events.EventJobEnd), func(ctx context.Context, c *broker.Client) error {
			_, err := c.JS.Publish(ctx, c.Subj.JobEvent(plain, events.EventJobEnd), []byte("x"))
			return err
		}},
		{"observer writes a job record", "observer", "$KV." + subj.JobBucket(), func(ctx context.Context, c *broker.Client) error {
			_, err := c.Jobs.Put(ctx, events.Key(plain), []byte("x"))
			return err
		}},
		{"observer cancels", "observer", subj.Ctl("cancel"), func(ctx context.Context, c *broker.Client) error {
			_, err := client.Cancel(ctx, c, plain, "no")
			return err
		}},
		{"observer stores an object", "observer", "$O." + subj.AttachmentBucket(), func(ctx context.Context, c *broker.Client) error {
			_, err := c.PutObject(ctx, c.Subj.AttachmentBucket(), plain, "", strings.NewReader("x"))
			return err
		}},
		{"submitter writes a job record", "submitter", "$KV." + subj.JobBucket(), func(ctx context.Context, c *broker.Client) error {
			_, err := c.Jobs.Put(ctx, events.Key(plain), []byte("x"))
			return err
		}},
		{"submitter sets a device", "submitter", subj.Ctl("device-set"), func(ctx context.Context, c *broker.Client) error {
			_, err := client.Control(ctx, c, "device-set", &events.CtlRequest{Device: "pa-1", State: "offline"})
			return err
		}},
		{"submitter reads a secret", "submitter", "$JS.API.DIRECT.GET.KV_" + subj.SecretBucket(), func(ctx context.Context, c *broker.Client) error {
			_, err := c.NC.Request("$JS.API.DIRECT.GET.KV_"+c.Subj.SecretBucket()+".$KV."+c.Subj.SecretBucket()+"."+broker.SecretKey("lab/token"), nil, 2*time.Second)
			return err
		}},
	}
	t.Run("refused", func(t *testing.T) {
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				c := connectAs(t, url, users[tc.user], false)
				tctx, tcancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer tcancel()
				if err := tc.try(tctx, c); err == nil {
					t.Fatalf("%s: allowed", tc.name)
				}
				deadline := time.Now().Add(5 * time.Second)
				for {
					last := c.NC.LastError()
					if last != nil && errors.Is(last, nats.ErrPermissionViolation) && strings.Contains(last.Error(), tc.subject) {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: no permissions violation for %s from the server (last error: %v)", tc.name, tc.subject, last)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	})
	ctx2, cancel2 := context.WithTimeout(context.Background(), waitLong)
	defer cancel2()
	// The record of the job on b is still the worker's and orchestrator's.
	if rec, _, err := obs.GetJob(ctx2, plain); err != nil || rec.Outcome != events.OutcomePass {
		t.Errorf("job record after the refused writes: %v %v", rec, err)
	}
	if d, err := obs.GetDevice(ctx2, "pb-1"); err != nil || d.State != events.StateIdle {
		t.Errorf("pb-1 after the refused writes: %+v %v", d, err)
	}

	// No credentials, or a wrong password: refused at connect.
	for name, opts := range map[string][]nats.Option{
		"no credentials": nil,
		"wrong password": {nats.UserInfo("submitter", "not-the-password")},
		"unknown user":   {nats.UserInfo("mallory", users["submitter"].Password)},
	} {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: %v, want an authorization error", name, err)
		}
	}
}

// TestTLS runs a server that requires TLS with a client certificate from
// the lab's CA (`flinger auth --tls`) and the lab's users: a client with
// its certificate and password gets in and runs a job; one without a
// certificate, with a certificate from another CA, or trusting another
// CA for the server, is refused.
func TestTLS(t *testing.T) {
	t.Parallel()
	host := hostFile(t, "tls-host", "tls-1:tq")
	users, err := access.LabUsers([]*drivers.HostConfig{host})
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := events.NewSubjects("")
	auth, err := access.Config(users, access.Options{Subjects: subj, MaxPriority: 1})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	names := make([]string, len(users))
	for i, u := range users {
		names[i] = u.Name
	}
	if err := access.WriteLabTLS(tlsDir, []string{"localhost", "127.0.0.1"}, names); err != nil {
		t.Fatal(err)
	}
	// Another CA's certificate for the same user name.
	rogue := filepath.Join(dir, "rogue")
	if err := access.WriteLabTLS(rogue, []string{"127.0.0.1"}, []string{"submitter"}); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"auth.conf": auth, "tls.conf": access.TLSConfig(tlsDir)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv := startServerConf(t, dir, "listen: 127.0.0.1:-1\njetstream { store_dir: "+quoteConf(filepath.Join(dir, "js"))+" }\ninclude auth.conf\ninclude tls.conf\n")
	url := srv.ClientURL()
	byName := usersByName(users)
	conn := func(user, certDir, caDir string) broker.ConnOptions {
		u := byName[user]
		o := broker.ConnOptions{URL: url, Name: user, User: u.Name, Password: u.Password, Log: testLog(t), TLSCA: filepath.Join(caDir, "ca.pem")}
		if certDir != "" {
			o.TLSCert, o.TLSKey = filepath.Join(certDir, user+".pem"), filepath.Join(certDir, user+"-key.pem")
		}
		return o
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	// The lab runs over TLS.
	orchC, err := broker.SetupAndConnect(ctx, conn("orchestrator", tlsDir, tlsDir), events.StoreOptions{})
	if err != nil {
		t.Fatalf("orchestrator over TLS: %v", err)
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
	wc, err := broker.Connect(ctx, conn("worker-tls-host", tlsDir, tlsDir))
	if err != nil {
		t.Fatalf("worker over TLS: %v", err)
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
	sub, err := broker.Connect(ctx, conn("submitter", tlsDir, tlsDir))
	if err != nil {
		t.Fatalf("submitter over TLS: %v", err)
	}
	t.Cleanup(sub.Close)
	id := submit(t, sub, "job_queue: tq\ntest_data: {test_cmds: 'echo over tls'}\n")
	if rec := waitEnd(t, sub, id); rec.Outcome != events.OutcomePass {
		t.Errorf("job over TLS: %s", rec.Outcome)
	}

	// Refused at connect, for the reason named.
	pw := byName["submitter"].Password
	cert := func(d string) nats.Option {
		return nats.ClientCert(filepath.Join(d, "submitter.pem"), filepath.Join(d, "submitter-key.pem"))
	}
	refused := []struct {
		name string
		opts []nats.Option
		want []string // any of these in the error
	}{
		{"no client certificate", []nats.Option{nats.RootCAs(filepath.Join(tlsDir, "ca.pem")), nats.UserInfo("submitter", pw)},
			[]string{"certificate required"}},
		{"certificate from another CA", []nats.Option{nats.RootCAs(filepath.Join(tlsDir, "ca.pem")), cert(rogue), nats.UserInfo("submitter", pw)},
			[]string{"unknown certificate authority"}},
		{"server checked against another CA", []nats.Option{nats.RootCAs(filepath.Join(rogue, "ca.pem")), cert(tlsDir), nats.UserInfo("submitter", pw)},
			[]string{"certificate signed by unknown authority"}},
		{"right certificate, no password", []nats.Option{nats.RootCAs(filepath.Join(tlsDir, "ca.pem")), cert(tlsDir)},
			[]string{"Authorization Violation"}},
		{"no TLS", []nats.Option{nats.UserInfo("submitter", pw)},
			[]string{"tls"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := nats.Connect(url, append(tc.opts, nats.Timeout(5*time.Second))...)
			if err == nil {
				nc.Close()
				t.Fatalf("%s: connected", tc.name)
			}
			t.Logf("refused: %v", err)
			for _, w := range tc.want {
				if strings.Contains(err.Error(), w) {
					return
				}
			}
			t.Errorf("%s: %v, want an error saying one of %q", tc.name, err, tc.want)
		})
	}
}

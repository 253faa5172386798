//go:build unix

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	mnetwork "github.com/moby/moby/api/types/network"
	dockerclient "github.com/moby/moby/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/testcontainers/testcontainers-go"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/events"
)

// The images the cluster tests run, built from this checkout by
// deploy/images/build.sh under tags of their own.
const (
	clusterFlingerImage = "flinger:cluster-test"
	clusterNATSImage    = "flinger-nats:cluster-test"
)

// clusterWait bounds the cluster tests' waits: generous, since three NATS
// nodes fsyncing every write share the machine with the lab.
const clusterWait = 4 * time.Minute

var (
	clusterImagesOnce sync.Once
	clusterImagesErr  error
)

// requireDocker skips the test without a Docker engine, or fails it when
// $CI is set; it also skips in -short.
func requireDocker(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a NATS cluster in containers")
	}
	if _, err := os.Stat("/var/run/docker.sock"); err != nil && os.Getenv("DOCKER_HOST") == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("no Docker engine: %v", err)
		}
		t.Skip("no Docker engine here")
	}
	t.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
}

// buildClusterImages builds both images once per test binary, with the
// script `make images` runs.
func buildClusterImages(t *testing.T) {
	t.Helper()
	clusterImagesOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			clusterImagesErr = err
			return
		}
		cmd := exec.Command(filepath.Join(root, "deploy", "images", "build.sh"))
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "FLINGER_IMAGE="+clusterFlingerImage, "NATS_IMAGE="+clusterNATSImage)
		if out, err := cmd.CombinedOutput(); err != nil {
			clusterImagesErr = fmt.Errorf("deploy/images/build.sh: %w\n%s", err, out)
		}
	})
	if clusterImagesErr != nil {
		t.Fatal(clusterImagesErr)
	}
}

// natsNode is one NATS server of a test cluster, published on fixed
// loopback ports so that a restarted node is found where it was.
type natsNode struct {
	name       string // server_name: n1, n2, n3
	ctr        testcontainers.Container
	clientPort int
	httpPort   int
}

// testCluster is a three-node NATS cluster with orchestrators and workers
// in containers, and a client of the test process connected to it.
type testCluster struct {
	t       *testing.T
	nodes   []*natsNode
	docker  *testcontainers.DockerClient
	client  *broker.Client
	devices int
}

// clusterHost is a lab host of a test cluster: its name and devices, each
// serving the queues named.
type clusterHost struct {
	name    string
	devices map[string][]string
}

// yaml renders the host file.
func (h clusterHost) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "host: %s\nrun_dir: /var/lib/flinger/runs\ndevices:\n", h.name)
	for _, name := range slices.Sorted(maps.Keys(h.devices)) {
		fmt.Fprintf(&b, "  - agent_name: %s\n    provision_type: fake_connector\n    device_ip: 127.0.0.1\n    job_queues: [%s]\n",
			name, strings.Join(h.devices[name], ", "))
	}
	return b.String()
}

// startCluster builds the images, starts three NATS nodes with the
// configurations of deploy/cluster/nats, two orchestrators (--replicas 3)
// and a worker per host on one Docker network, and connects the test to
// every node through its published client port. Every container's log
// tail is printed if the test fails.
func startCluster(t *testing.T, hosts []clusterHost) *testCluster {
	t.Helper()
	requireDocker(t)
	buildClusterImages(t)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	dc, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		t.Fatalf("docker client: %v", err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	nw, err := tcnetwork.New(ctx)
	if err != nil {
		t.Fatalf("network: %v", err)
	}
	testcontainers.CleanupNetwork(t, nw)
	tc := &testCluster{t: t, docker: dc}
	start := func(name string, req testcontainers.ContainerRequest) testcontainers.Container {
		t.Helper()
		req.Name = fmt.Sprintf("flinger-%s-%d-%s", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), os.Getpid(), name)
		req.Networks = []string{nw.Name}
		req.NetworkAliases = map[string][]string{nw.Name: {name}}
		ctr, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{ContainerRequest: req, Started: true})
		testcontainers.CleanupContainer(t, ctr)
		if ctr != nil {
			// Cleanups run last first: this one before the container goes.
			t.Cleanup(func() {
				if t.Failed() {
					dumpLogs(t, name, ctr)
				}
			})
		}
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		return ctr
	}

	var internal []string
	for i := 1; i <= 3; i++ {
		n := &natsNode{name: fmt.Sprintf("n%d", i), clientPort: freePort(t), httpPort: freePort(t)}
		alias := fmt.Sprintf("nats%d", i)
		internal = append(internal, "nats://"+alias+":4222")
		n.ctr = start(alias, testcontainers.ContainerRequest{
			Image:        clusterNATSImage,
			Cmd:          []string{"-c", "/etc/nats/nats.conf"},
			ExposedPorts: []string{"4222/tcp", "8222/tcp"},
			Files: []testcontainers.ContainerFile{{
				HostFilePath:      filepath.Join(root, "deploy", "cluster", "nats", n.name+".conf"),
				ContainerFilePath: "/etc/nats/nats.conf",
				FileMode:          0o644,
			}},
			HostConfigModifier: publishOn(map[string]int{"4222/tcp": n.clientPort, "8222/tcp": n.httpPort}),
			WaitingFor:         wait.ForLog("Server is ready").WithStartupTimeout(time.Minute),
		})
		tc.nodes = append(tc.nodes, n)
	}
	tc.waitMetaLeader(ctx, tc.nodes)

	urls := strings.Join(internal, ",")
	for i := 1; i <= 2; i++ {
		start(fmt.Sprintf("orchestrator%d", i), testcontainers.ContainerRequest{
			Image:      clusterFlingerImage,
			Cmd:        []string{"orchestrator", "--replicas", "3", "--nats", urls},
			WaitingFor: wait.ForLog("orchestrator running").WithStartupTimeout(2 * time.Minute),
		})
	}
	for _, h := range hosts {
		tc.devices += len(h.devices)
		start(h.name, testcontainers.ContainerRequest{
			Image: clusterFlingerImage,
			Cmd:   []string{"worker", "--host", "/etc/flinger/host.yaml", "--nats", urls},
			Files: []testcontainers.ContainerFile{{
				Reader:            strings.NewReader(h.yaml()),
				ContainerFilePath: "/etc/flinger/host.yaml",
				FileMode:          0o644,
			}},
			WaitingFor: wait.ForLog("worker started").WithStartupTimeout(2 * time.Minute),
		})
	}

	c, err := broker.Connect(ctx, broker.ConnOptions{URL: tc.urls(), Name: "cluster-test", Log: testLog(t)})
	if err != nil {
		t.Fatalf("connect to the cluster: %v", err)
	}
	t.Cleanup(c.Close)
	tc.client = c
	tc.waitDevicesIdle(time.Minute)
	return tc
}

// publishOn binds each container port to its loopback host port.
func publishOn(ports map[string]int) func(*container.HostConfig) {
	return func(hc *container.HostConfig) {
		if hc.PortBindings == nil {
			hc.PortBindings = mnetwork.PortMap{}
		}
		for p, host := range ports {
			hc.PortBindings[mnetwork.MustParsePort(p)] = []mnetwork.PortBinding{{HostPort: strconv.Itoa(host)}}
		}
	}
}

// urls are the nodes' client URLs as the test process reaches them.
func (tc *testCluster) urls() string {
	var out []string
	for _, n := range tc.nodes {
		out = append(out, fmt.Sprintf("nats://127.0.0.1:%d", n.clientPort))
	}
	return strings.Join(out, ",")
}

// jsz is the part of a node's /jsz monitoring answer the tests read.
type jsz struct {
	Config struct {
		SyncAlways bool `json:"sync_always"`
	} `json:"config"`
	Meta *struct {
		Leader string `json:"leader"`
		Size   int    `json:"cluster_size"`
	} `json:"meta_cluster"`
}

// jsz fetches node n's /jsz.
func (tc *testCluster) jsz(ctx context.Context, n *natsNode) (*jsz, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/jsz", n.httpPort), nil)
	if err != nil {
		return nil, fmt.Errorf("jsz %s: %w", n.name, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jsz %s: %w", n.name, err)
	}
	defer resp.Body.Close()
	var out jsz
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("jsz %s: %w", n.name, err)
	}
	return &out, nil
}

// waitMetaLeader waits until every node of nodes sees the same JetStream
// meta leader in a cluster of three, and returns the leader's name. It
// also checks that each node fsyncs every write (sync_interval: always).
func (tc *testCluster) waitMetaLeader(ctx context.Context, nodes []*natsNode) string {
	tc.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for {
		leader, ok := "", true
		for _, n := range nodes {
			z, err := tc.jsz(ctx, n)
			switch {
			case err != nil:
				ok, last = false, err.Error()
			case !z.Config.SyncAlways:
				tc.t.Fatalf("node %s: JetStream does not fsync every write (sync_interval: always)", n.name)
			case z.Meta == nil || z.Meta.Leader == "" || z.Meta.Size != 3:
				ok, last = false, fmt.Sprintf("node %s: no meta leader yet", n.name)
			case leader != "" && z.Meta.Leader != leader:
				ok, last = false, fmt.Sprintf("nodes disagree on the meta leader: %s, %s", leader, z.Meta.Leader)
			default:
				leader = z.Meta.Leader
			}
		}
		if ok {
			return leader
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("JetStream meta leader: none within 2m: %s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// node returns the node named name (n1, n2, n3).
func (tc *testCluster) node(name string) *natsNode {
	tc.t.Helper()
	for _, n := range tc.nodes {
		if n.name == name {
			return n
		}
	}
	tc.t.Fatalf("no NATS node %q", name)
	return nil
}

// kill sends SIGKILL to the nodes' containers, all at once.
func (tc *testCluster) kill(ctx context.Context, nodes ...*natsNode) {
	tc.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Go(func() {
			_, errs[i] = tc.docker.ContainerKill(ctx, n.ctr.GetContainerID(), dockerclient.ContainerKillOptions{Signal: "KILL"})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tc.t.Fatalf("kill %s: %v", nodes[i].name, err)
		}
	}
}

// restart starts the nodes' containers again, on their own store, and
// waits for the cluster to have a meta leader.
func (tc *testCluster) restart(ctx context.Context, nodes ...*natsNode) {
	tc.t.Helper()
	for _, n := range nodes {
		if err := n.ctr.Start(ctx); err != nil {
			tc.t.Fatalf("restart %s: %v", n.name, err)
		}
	}
	tc.waitMetaLeader(ctx, tc.nodes)
}

// submitJobs submits n copies of job with up to `parallel` submissions at
// once, each retried until it is acknowledged (a submission cut off by a
// failover may or may not have been stored: it is counted, and any job it
// created is found by the checks among the extras). It returns the
// acknowledged job ids and the number of failed tries.
func (tc *testCluster) submitJobs(ctx context.Context, job string, n, parallel int, progress func(done int)) (ids []string, failures int) {
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for range next {
				for ctx.Err() == nil {
					sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
					reply, err := client.Submit(sctx, tc.client, []byte(job), events.FormatYAML)
					cancel()
					mu.Lock()
					if err != nil {
						failures++
						mu.Unlock()
						tc.t.Logf("submit: %v (trying again)", err)
						time.Sleep(250 * time.Millisecond)
						continue
					}
					ids = append(ids, reply.JobID)
					done := len(ids)
					mu.Unlock()
					if progress != nil {
						progress(done)
					}
					break
				}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return ids, failures
}

// waitJobsEnded waits until the record of every job of ids is terminal,
// and returns the records.
func (tc *testCluster) waitJobsEnded(ids []string, within time.Duration) map[string]*events.JobRecord {
	tc.t.Helper()
	deadline := time.Now().Add(within)
	recs := make(map[string]*events.JobRecord, len(ids))
	pending := slices.Clone(ids)
	for len(pending) > 0 {
		var still []string
		for _, id := range pending {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			rec, _, err := tc.client.GetJob(ctx, id)
			cancel()
			if err == nil && rec.State.Terminal() {
				recs[id] = rec
				continue
			}
			still = append(still, id)
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("%d of %d jobs not ended within %s; first: %s", len(pending), len(ids), within, pending[0])
		}
		time.Sleep(500 * time.Millisecond)
	}
	return recs
}

// waitDevicesIdle waits until every device of the cluster's hosts is idle.
func (tc *testCluster) waitDevicesIdle(within time.Duration) {
	tc.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		devs, _, err := tc.client.ListDevices(ctx)
		cancel()
		idle := 0
		var busy []string
		for _, d := range devs {
			if d.State == events.StateIdle {
				idle++
			} else {
				busy = append(busy, fmt.Sprintf("%s:%s", d.Name, d.State))
			}
		}
		if err == nil && idle == tc.devices && len(devs) == tc.devices {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("devices: %d of %d idle within %s (err %v; others %v)", idle, tc.devices, within, err, busy)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// allJobEvents reads every job event stored, up to the stream's last
// message, grouped by job, in stream order.
func (tc *testCluster) allJobEvents() map[string][]seqEvent {
	tc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := tc.client.JS.Stream(ctx, tc.client.Subj.EventStream())
	if err != nil {
		tc.t.Fatalf("event stream: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		tc.t.Fatalf("event stream: %v", err)
	}
	last := info.State.LastSeq
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		tc.t.Fatalf("event stream: %v", err)
	}
	out := map[string][]seqEvent{}
	var seen uint64
	for seen < last {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			tc.t.Fatalf("read events: %v", err)
		}
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				tc.t.Fatalf("event metadata: %v", err)
			}
			seen = meta.Sequence.Stream
			if !strings.HasPrefix(m.Subject(), tc.client.Subj.Prefix()+".events.job.") {
				continue
			}
			var ev events.Event
			if err := events.Decode(m.Data(), &ev); err != nil {
				tc.t.Fatalf("event: %v", err)
			}
			out[ev.JobID] = append(out[ev.JobID], seqEvent{seq: seen, ev: &ev})
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			tc.t.Fatalf("read events: %v", err)
		}
		if ctx.Err() != nil {
			tc.t.Fatalf("read events: only up to %d of %d within 2m", seen, last)
		}
	}
	return out
}

// seqEvent is an event with its stream sequence.
type seqEvent struct {
	seq uint64
	ev  *events.Event
}

// dumpLogs prints the last lines of a container's log.
func dumpLogs(t *testing.T, name string, c testcontainers.Container) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := c.Logs(ctx)
	if err != nil {
		t.Logf("=== %s: no log: %v", name, err)
		return
	}
	defer rc.Close()
	if dir := os.Getenv("FLINGER_CLUSTER_LOGS"); dir != "" {
		// Keep whole logs for a closer look.
		if f, err := os.Create(filepath.Join(dir, name+".log")); err == nil {
			_, _ = io.Copy(f, rc)
			_ = f.Close()
			t.Logf("=== %s: log in %s", name, f.Name())
			return
		}
	}
	var lines []string
	sc := bufio.NewScanner(io.LimitReader(rc, 64<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 60 {
			lines = lines[1:]
		}
	}
	t.Logf("=== %s: last %d log lines\n%s", name, len(lines), strings.Join(lines, "\n"))
}

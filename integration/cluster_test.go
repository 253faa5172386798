//go:build unix

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/events"
)

// clusterJob is the job the cluster tests run: a little output while
// provisioning and a test command run by the image's /bin/sh.
const clusterJob = `job_queue: cluster
provision_data: {output_lines: 20}
test_data:
  test_cmds: ["echo ok on $AGENT_NAME"]
`

// clusterSlowJob is clusterJob with a second of provisioning, so that
// jobs are still queued and running when the whole cluster goes down.
const clusterSlowJob = `job_queue: cluster
provision_data: {delay: 1}
test_data:
  test_cmds: ["echo ok on $AGENT_NAME"]
`

// clusterHosts are three lab hosts of four fake devices each, all serving
// queue cluster.
func clusterHosts() []clusterHost {
	var hosts []clusterHost
	for h := 1; h <= 3; h++ {
		host := clusterHost{name: fmt.Sprintf("lab-host-%d", h), devices: map[string][]string{}}
		for d := 1; d <= 4; d++ {
			name := fmt.Sprintf("h%d-dev-%d", h, d)
			host.devices[name] = []string{"cluster", name}
		}
		hosts = append(hosts, host)
	}
	return hosts
}

// TestClusterMetaLeaderKill runs 500 jobs on three lab hosts against a
// three-node cluster and SIGKILLs the JetStream meta leader while they
// run, restarting it a few seconds later: every acknowledged submission
// must end exactly once, with a pass, never on two devices at once, with
// its events in order, and every device must end idle.
func TestClusterMetaLeaderKill(t *testing.T) {
	const jobs = 500
	began := time.Now()
	tc := startCluster(t, clusterHosts())
	t.Logf("cluster up in %s", time.Since(began).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	var acked atomic.Int64
	type result struct {
		ids      []string
		failures int
	}
	done := make(chan result, 1)
	runStart := time.Now()
	go func() {
		ids, failures := tc.submitJobs(ctx, clusterJob, jobs, 4, func(n int) { acked.Store(int64(n)) })
		done <- result{ids, failures}
	}()

	// Kill the meta leader once a good share of the jobs is in, while
	// jobs run and more are being submitted.
	for acked.Load() < jobs/4 {
		if ctx.Err() != nil {
			t.Fatalf("submissions: only %d acknowledged before the kill", acked.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	leader := tc.waitMetaLeader(ctx, tc.nodes)
	victim := tc.node(leader)
	killedAt := time.Now()
	tc.kill(ctx, victim)
	t.Logf("killed meta leader %s (SIGKILL) with %d submissions acknowledged", leader, acked.Load())
	time.Sleep(5 * time.Second)
	tc.restart(ctx, victim)
	newLeader := tc.waitMetaLeader(ctx, tc.nodes)
	t.Logf("restarted %s after %s; meta leader now %s", leader, time.Since(killedAt).Round(time.Millisecond), newLeader)

	res := <-done
	if len(res.ids) != jobs {
		t.Fatalf("%d of %d submissions acknowledged", len(res.ids), jobs)
	}
	recs := tc.waitJobsEnded(res.ids, clusterWait)
	t.Logf("all %d jobs ended %s after the first submission", len(recs), time.Since(runStart).Round(time.Millisecond))
	tc.waitDevicesIdle(time.Minute)
	checkClusterJobs(t, tc, res.ids, res.failures, recs)
}

// TestClusterAllNodesRestart submits jobs, SIGKILLs all three NATS nodes
// at once and starts them again: workers and orchestrators reconnect on
// their own, and every acknowledged submission ends exactly once.
func TestClusterAllNodesRestart(t *testing.T) {
	const jobs = 120
	began := time.Now()
	tc := startCluster(t, clusterHosts())
	t.Logf("cluster up in %s", time.Since(began).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	runStart := time.Now()
	ids, failures := tc.submitJobs(ctx, clusterSlowJob, jobs, 4, nil)
	if len(ids) != jobs {
		t.Fatalf("%d of %d submissions acknowledged", len(ids), jobs)
	}
	ended := 0
	for _, id := range ids {
		if rec, _, err := tc.client.GetJob(ctx, id); err == nil && rec.State.Terminal() {
			ended++
		}
	}
	killedAt := time.Now()
	tc.kill(ctx, tc.nodes...)
	t.Logf("killed all three NATS nodes (SIGKILL) with %d of %d jobs ended", ended, jobs)
	time.Sleep(2 * time.Second)
	tc.restart(ctx, tc.nodes...)
	t.Logf("cluster back %s after the kill", time.Since(killedAt).Round(time.Millisecond))

	recs := tc.waitJobsEnded(ids, clusterWait)
	t.Logf("all %d jobs ended %s after the first submission", len(recs), time.Since(runStart).Round(time.Millisecond))
	tc.waitDevicesIdle(2 * time.Minute)
	checkClusterJobs(t, tc, ids, failures, recs)
}

// checkClusterJobs checks, from the job records and the event stream,
// that every acknowledged job ended once with a pass, ran on one device
// at a time and has its events in order; it logs the counts.
func checkClusterJobs(t *testing.T, tc *testCluster, ids []string, failures int, recs map[string]*events.JobRecord) {
	t.Helper()
	// Events are stored apart from the records: give any a worker still
	// holds (sent again after a failover) time to arrive.
	var evs map[string][]seqEvent
	deadline := time.Now().Add(90 * time.Second)
	for {
		evs = tc.allJobEvents()
		missing := 0
		for _, id := range ids {
			if !slices.ContainsFunc(evs[id], func(e seqEvent) bool { return e.ev.Name == events.EventJobEnd }) {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			if missing > 0 {
				t.Logf("%d jobs still without a job_end event after 90s", missing)
			}
			break
		}
		time.Sleep(2 * time.Second)
	}
	acked := map[string]bool{}
	for _, id := range ids {
		acked[id] = true
	}
	var extras []string
	for id := range evs {
		if !acked[id] {
			extras = append(extras, id)
		}
	}
	var passed, oneEnd, requeued, bad int
	for _, id := range ids {
		rec := recs[id]
		if rec.Outcome == events.OutcomePass {
			passed++
		} else {
			t.Errorf("job %s: outcome %q (%s), want pass", id, rec.Outcome, rec.EndReason)
		}
		if rec.Attempt > 1 {
			requeued++
		}
		if problems := checkJobHistory(evs[id]); len(problems) > 0 {
			bad++
			if bad <= 10 {
				t.Errorf("job %s: %s\n  events: %s", id, strings.Join(problems, "; "), historyString(evs[id]))
			}
		} else {
			oneEnd++
		}
	}
	// Jobs nobody was told of (a submission stored but not acknowledged
	// before a failover) must still end exactly once.
	for _, id := range extras {
		if rec, _, err := tc.client.GetJob(context.Background(), id); err != nil || !rec.State.Terminal() {
			t.Errorf("unacknowledged job %s: not ended (%v)", id, err)
		}
		if problems := checkJobHistory(evs[id]); len(problems) > 0 {
			t.Errorf("unacknowledged job %s: %s\n  events: %s", id, strings.Join(problems, "; "), historyString(evs[id]))
		}
	}
	t.Logf("submitted (acknowledged) %d, failed submission tries %d, ended %d, passed %d, "+
		"one job_end and clean history %d, with a bad history %d, run by more than one device %d, unacknowledged jobs found %d",
		len(ids), failures, len(recs), passed, oneEnd, bad, requeued, len(extras))
	if bad > 0 {
		t.Errorf("%d of %d jobs have a bad history", bad, len(ids))
	}
}

// checkJobHistory returns what is wrong with one job's events: not exactly
// one job_end, job_end not last, a phase event outside job_start..job_end,
// or events of two attempts on two devices interleaved.
func checkJobHistory(evs []seqEvent) []string {
	var problems []string
	ends, starts := 0, 0
	endAt, firstStart := -1, -1
	for i, e := range evs {
		switch e.ev.Name {
		case events.EventJobEnd:
			ends++
			endAt = i
		case events.EventJobStart:
			starts++
			if firstStart < 0 {
				firstStart = i
			}
		}
		if i > 0 && evs[i-1].seq >= e.seq {
			problems = append(problems, "events out of stream order")
		}
	}
	if ends != 1 {
		problems = append(problems, fmt.Sprintf("%d job_end events", ends))
	}
	if starts == 0 {
		problems = append(problems, "no job_start")
	}
	if endAt >= 0 && endAt != len(evs)-1 {
		problems = append(problems, fmt.Sprintf("job_end is not the last event (%s follows)", evs[len(evs)-1].ev.Name))
	}
	for i, e := range evs {
		if e.ev.Phase == "" {
			continue
		}
		if firstStart < 0 || i < firstStart || (endAt >= 0 && i > endAt) {
			problems = append(problems, fmt.Sprintf("%s outside job_start..job_end", e.ev.Name))
		}
	}
	// One device at a time: an attempt is open from its first event on a
	// device until its attempt_end, attempt_lost or the job's end; no
	// other device may publish for the job while it is open.
	open := map[int]string{}
	for _, e := range evs {
		ev := e.ev
		if ev.Device == "" || ev.Attempt == 0 {
			continue
		}
		switch ev.Name {
		case events.EventAttemptEnd, events.EventAttemptLost, events.EventJobRequeued:
			delete(open, ev.Attempt)
			continue
		}
		for a, d := range open {
			if a != ev.Attempt && d != ev.Device {
				problems = append(problems, fmt.Sprintf("%s from %s (attempt %d) while attempt %d runs on %s", ev.Name, ev.Device, ev.Attempt, a, d))
			}
		}
		if d, ok := open[ev.Attempt]; ok && d != ev.Device {
			problems = append(problems, fmt.Sprintf("attempt %d on two devices: %s and %s", ev.Attempt, d, ev.Device))
		}
		open[ev.Attempt] = ev.Device
		if ev.Name == events.EventJobEnd {
			clear(open)
		}
	}
	return problems
}

func historyString(evs []seqEvent) string {
	var parts []string
	for _, e := range evs {
		parts = append(parts, fmt.Sprintf("%d:%s@%s#%d", e.seq, e.ev.Name, e.ev.Device, e.ev.Attempt))
	}
	return strings.Join(parts, " ")
}

// TestClusterDeployFiles checks deploy/cluster: the compose file's
// services, images, commands and mounted files, the NATS configurations
// (as nats-server reads them) and the host files.
func TestClusterDeployFiles(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy", "cluster")
	raw, err := os.ReadFile(filepath.Join(dir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image      string            `yaml:"image"`
			Command    []string          `yaml:"command"`
			Entrypoint []string          `yaml:"entrypoint"`
			Volumes    []string          `yaml:"volumes"`
			Ports      []string          `yaml:"ports"`
			Profiles   []string          `yaml:"profiles"`
			Env        map[string]string `yaml:"environment"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	count := map[string]int{}
	for name, svc := range compose.Services {
		kind := ""
		switch {
		case svc.Image == "flinger-nats:dev":
			kind = "nats"
		case svc.Image != "flinger:dev":
			t.Errorf("service %s: image %q, want flinger:dev or flinger-nats:dev", name, svc.Image)
		case len(svc.Profiles) > 0:
			kind = "tool"
		case len(svc.Command) > 0:
			kind = svc.Command[0]
		}
		count[kind]++
		if kind != "nats" && kind != "tool" && !strings.Contains(svc.Env["FLINGER_NATS"], "nats3:4222") {
			t.Errorf("service %s: FLINGER_NATS %q does not name every node", name, svc.Env["FLINGER_NATS"])
		}
		if kind == "orchestrator" && !slices.Equal(svc.Command, []string{"orchestrator", "--replicas", "3"}) {
			t.Errorf("service %s: command %q, want orchestrator --replicas 3", name, svc.Command)
		}
		for _, v := range svc.Volumes {
			src, dst, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, ".") {
				if _, ok := compose.Volumes[src]; !ok {
					t.Errorf("service %s: volume %s is not declared", name, src)
				}
				continue
			}
			path := filepath.Join(dir, src)
			if _, err := os.Stat(path); err != nil {
				t.Errorf("service %s: mounts %s: %v", name, src, err)
				continue
			}
			dst, _, _ = strings.Cut(dst, ":")
			switch dst {
			case "/etc/nats/nats.conf":
				checkNATSConf(t, path, name)
				if !slices.Contains(svc.Command, dst) {
					t.Errorf("service %s: command %q does not read %s", name, svc.Command, dst)
				}
			case "/etc/flinger/host.yaml":
				if _, err := drivers.LoadHost(path); err != nil {
					t.Errorf("service %s: host file %s: %v", name, src, err)
				}
				if !slices.Contains(svc.Command, dst) {
					t.Errorf("service %s: command %q does not read %s", name, svc.Command, dst)
				}
			}
		}
	}
	want := map[string]int{"nats": 3, "orchestrator": 2, "worker": 3}
	for kind, n := range want {
		if count[kind] != n {
			t.Errorf("compose.yaml: %d %s services, want %d", count[kind], kind, n)
		}
	}
}

// checkNATSConf reads a cluster node's configuration as nats-server does
// and checks what Flinger's cluster relies on.
func checkNATSConf(t *testing.T, path, service string) {
	t.Helper()
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Errorf("service %s: %s: %v", service, path, err)
		return
	}
	checks := []struct {
		what string
		ok   bool
	}{
		{"JetStream enabled", o.JetStream},
		{"store dir under the /data volume", strings.HasPrefix(o.StoreDir, "/data/")},
		{"fsync on every write (sync_interval: always)", o.SyncAlways},
		{"server_name n1..n3", slices.Contains([]string{"n1", "n2", "n3"}, o.ServerName)},
		{"cluster with routes to all three nodes", o.Cluster.Name != "" && len(o.Routes) == 3},
		{"monitoring port 8222", o.HTTPPort == 8222},
		{"no authentication yet", o.Username == "" && o.Authorization == "" && len(o.Users) == 0 && len(o.Nkeys) == 0},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("service %s: %s: want %s", service, filepath.Base(path), c.what)
		}
	}
}

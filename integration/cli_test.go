//go:build unix

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/events"
)

// This file tests the real `flinger` binary across processes: a lab started
// with `flinger lab`, jobs submitted, followed, inspected and cancelled with
// the other subcommands, `flinger watch` checked against the event stream,
// and the lab's streams and buckets checked with a plain NATS client.

const (
	// cliWait bounds every wait for the lab and its jobs: generous, so that
	// a loaded machine (or a -race build) slows the test down without
	// failing it.
	cliWait = 60 * time.Second
	// cliCmdTimeout bounds a single run of a flinger command.
	cliCmdTimeout = 2 * time.Minute
	// cliCancelWithin is how soon a cancelled running job must show as cancelled.
	cliCancelWithin = 10 * time.Second
)

// cliLabFile is the lab TestCLI runs: two devices on queue cli and one on
// queue other, so that a recovery failure leaves the cli devices in service.
const cliLabFile = `host: cli-host
devices:
  - agent_name: cli-1
    provision_type: fake_connector
    job_queues: [cli]
    device_ip: 127.0.0.1
  - agent_name: cli-2
    provision_type: fake_connector
    job_queues: [cli]
    device_ip: 127.0.0.1
  - agent_name: other-1
    provision_type: fake_connector
    job_queues: [other]
    device_ip: 127.0.0.1
`

// cliDevices are the devices of cliLabFile.
var cliDevices = []string{"cli-1", "cli-2", "other-1"}

// uuidLine matches a job id alone on its line.
var uuidLine = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// flingerBin is the binary built once per test run by flingerBinary.
var flingerBin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// TestMain removes the flinger binary built for the CLI tests, if any.
func TestMain(m *testing.M) {
	code := m.Run()
	if flingerBin.dir != "" {
		_ = os.RemoveAll(flingerBin.dir)
	}
	os.Exit(code)
}

// flingerBinary builds ./cmd/flinger once per test run (with -race when
// this test binary has it, so that races in the real binary show up too)
// and returns the binary's path.
func flingerBinary(t testing.TB) string {
	t.Helper()
	flingerBin.once.Do(func() {
		flingerBin.path, flingerBin.err = buildFlinger()
	})
	if flingerBin.err != nil {
		t.Fatalf("build flinger: %v", flingerBin.err)
	}
	return flingerBin.path
}

// buildFlinger runs `go build -o <tmpdir>/flinger ./cmd/flinger` from the
// module root.
func buildFlinger() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	// `go test` puts its own GOROOT/bin first on the PATH of the test
	// binary, so this finds the go command that is running the test.
	goTool, err := exec.LookPath("go")
	if err != nil {
		if gr := os.Getenv("GOROOT"); gr != "" {
			goTool = filepath.Join(gr, "bin", "go")
		} else {
			return "", fmt.Errorf("no go command on PATH: %w", err)
		}
	}
	dir, err := os.MkdirTemp("", "flinger-cli-test-")
	if err != nil {
		return "", err
	}
	flingerBin.dir = dir
	bin := filepath.Join(dir, "flinger")
	args := []string{"build"}
	if raceEnabled() {
		args = append(args, "-race")
	}
	args = append(args, "-o", bin, "./cmd/flinger")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s in %s: %v\n%s", goTool, strings.Join(args, " "), root, err, out)
	}
	return bin, nil
}

// moduleRoot walks up from the working directory to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// cliEnv is the environment of flinger subprocesses: this process's,
// without FLINGER_* variables that could point them elsewhere. A -race
// build of flinger waits a second at exit for late race reports; unless
// GORACE says otherwise, a tenth of that is enough here.
func cliEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "FLINGER_") })
	if _, ok := os.LookupEnv("GORACE"); !ok {
		env = append(env, "GORACE=atexit_sleep_ms=100")
	}
	return env
}

// raceReport is what a -race build prints when it finds a data race. Such
// a build exits 66 when it finds one, but only if it would have exited 0,
// so stderr is checked as well.
const raceReport = "WARNING: DATA RACE"

// cliResult is what a finished flinger command left.
type cliResult struct {
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// runFlinger runs the flinger binary with args until it exits and returns
// its exit status and output. It fails the test if the command cannot be
// started or outlives cliCmdTimeout.
func runFlinger(t testing.TB, bin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cliEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("flinger %s: still running after %s\n%s", strings.Join(args, " "), cliCmdTimeout, res)
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("flinger %s: %v", strings.Join(args, " "), err)
	}
	if strings.Contains(res.stderr, raceReport) {
		t.Errorf("flinger %s: data race:\n%s", strings.Join(args, " "), res.stderr)
	}
	return res
}

// bgProc is a flinger command running in the background in its own
// process group, with its output going to files.
type bgProc struct {
	name       string
	cmd        *exec.Cmd
	stdoutPath string
	stderrPath string
	done       chan struct{}
	waitErr    error
}

// startBackground starts the flinger binary with args in its own process
// group. The test's cleanup kills the group if the process still runs.
func startBackground(t testing.TB, bin, name string, args ...string) *bgProc {
	t.Helper()
	dir := t.TempDir()
	p := &bgProc{
		name:       name,
		stdoutPath: filepath.Join(dir, name+".stdout"),
		stderrPath: filepath.Join(dir, name+".stderr"),
		done:       make(chan struct{}),
	}
	stdout, err := os.Create(p.stdoutPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(p.stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = cliEnv()
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start flinger %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return p
}

// exited reports whether the process has ended.
func (p *bgProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stdout returns what the process has written to its standard output so far.
func (p *bgProc) stdout(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(p.stdoutPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// stderr returns what the process has written to its standard error so far.
func (p *bgProc) stderr() string {
	data, _ := os.ReadFile(p.stderrPath)
	return string(data)
}

// stop sends sig to the process (not its group) and returns its exit
// status; it fails the test if the process outlives cliWait.
func (p *bgProc) stop(t testing.TB, sig syscall.Signal) int {
	t.Helper()
	if !p.exited() {
		if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Fatalf("signal %s: %v", p.name, err)
		}
	}
	select {
	case <-p.done:
	case <-time.After(cliWait):
		t.Fatalf("flinger %s still running %s after %s\n--- stderr:\n%s", p.name, cliWait, sig, p.stderr())
	}
	if stderr := p.stderr(); strings.Contains(stderr, raceReport) {
		t.Errorf("flinger %s: data race:\n%s", p.name, stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

// cliLab is a `flinger lab` subprocess and the means to run commands against it.
type cliLab struct {
	bin  string
	url  string
	proc *bgProc
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCLILab writes cliLabFile, starts `flinger lab` on a free port with
// its data and run directories under the test's temporary directory, and
// waits until `flinger devices` lists every device. A lab that exits
// before it is ready (say, because another process took the port) is
// started again on another port, up to three times.
func startCLILab(t *testing.T, bin string) *cliLab {
	t.Helper()
	dir := t.TempDir()
	labFile := filepath.Join(dir, "lab.yaml")
	if err := os.WriteFile(labFile, []byte(cliLabFile), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		data, runs := filepath.Join(dir, fmt.Sprint("data-", attempt)), filepath.Join(dir, fmt.Sprint("runs-", attempt))
		for _, d := range []string{data, runs} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		l := &cliLab{bin: bin, url: "nats://" + addr}
		l.proc = startBackground(t, bin, "lab", "lab", "--listen", addr, "--data", data, "--lab", labFile, "--run-dir", runs)
		err := l.waitReady(t)
		if err == nil {
			return l
		}
		if l.proc.exited() && attempt < 3 {
			t.Logf("lab on %s exited before it was ready (%v); starting it again:\n%s", addr, err, l.proc.stderr())
			continue
		}
		t.Fatalf("lab on %s: %v\n--- lab stderr:\n%s", addr, err, l.proc.stderr())
	}
}

// waitReady polls `flinger devices` until it lists every device of the lab.
func (l *cliLab) waitReady(t *testing.T) error {
	t.Helper()
	deadline := time.Now().Add(cliWait)
	var last cliResult
	for {
		if l.proc.exited() {
			return fmt.Errorf("lab exited: %v", l.proc.waitErr)
		}
		last = l.flinger(t, "devices")
		if last.code == 0 && len(parseDevices(last.stdout)) == len(cliDevices) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("`flinger devices` does not list the %d devices after %s; last:\n%s", len(cliDevices), cliWait, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// flinger runs a flinger command against the lab (with --nats added).
func (l *cliLab) flinger(t testing.TB, args ...string) cliResult {
	t.Helper()
	return runFlinger(t, l.bin, append(args, "--nats", l.url)...)
}

// status runs `flinger status id` and fails the test unless it exits 0.
func (l *cliLab) status(t testing.TB, id string) string {
	t.Helper()
	r := l.flinger(t, "status", id)
	if r.code != 0 {
		t.Fatalf("flinger status %s: %s", id, r)
	}
	return r.stdout
}

// waitStatus polls `flinger status id` until its output matches re, and
// returns that output; it fails the test after within.
func (l *cliLab) waitStatus(t testing.TB, id string, re *regexp.Regexp, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		out := l.status(t, id)
		if re.MatchString(out) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("status of job %s does not match %q within %s:\n%s", id, re, within, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// deviceRow is one line of `flinger devices`.
type deviceRow struct {
	name, host, typ, state, health, line string
}

// parseDevices reads the table `flinger devices` prints, by device name.
func parseDevices(out string) map[string]deviceRow {
	rows := map[string]deviceRow{}
	for i, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 5 {
			continue
		}
		rows[f[0]] = deviceRow{name: f[0], host: f[1], typ: f[2], state: f[3], health: f[4], line: line}
	}
	return rows
}

// writeJob writes a job file into dir and returns its path.
func writeJob(t testing.TB, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// watchedEvent is the part of a `flinger watch --json` line the test compares.
type watchedEvent struct {
	ID    string `json:"id"`
	Name  string `json:"event_name"`
	JobID string `json:"job_id"`
}

// parseWatch decodes the lines `flinger watch --json` printed.
func parseWatch(t testing.TB, out string) []watchedEvent {
	t.Helper()
	var evs []watchedEvent
	for i, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		var ev watchedEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("watch output line %d is not JSON: %v: %q", i+1, err, line)
		}
		evs = append(evs, ev)
	}
	return evs
}

// natsConnect opens a plain NATS connection to url, as the nats CLI would.
func natsConnect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("flinger-cli-test"), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// streamEvents reads events from the event stream with an ordered
// consumer, restricted to filter when it is not empty, until the stream
// has no more.
func streamEvents(t testing.TB, js jetstream.JetStream, filter string) []*events.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	cons, err := js.OrderedConsumer(ctx, "FLINGER_EVENTS", cfg)
	if err != nil {
		t.Fatalf("ordered consumer on FLINGER_EVENTS: %v", err)
	}
	var out []*events.Event
	for {
		batch, err := cons.FetchNoWait(500)
		if err != nil {
			t.Fatalf("read FLINGER_EVENTS: %v", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var ev events.Event
			if err := events.Decode(m.Data(), &ev); err != nil {
				t.Fatalf("event on %s: %v", m.Subject(), err)
			}
			out = append(out, &ev)
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("read FLINGER_EVENTS: %v", err)
		}
		if n == 0 {
			return out
		}
	}
}

// eventCount returns how many messages the event stream holds.
func eventCount(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	s, err := js.Stream(ctx, "FLINGER_EVENTS")
	if err != nil {
		t.Fatalf("stream FLINGER_EVENTS: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream FLINGER_EVENTS info: %v", err)
	}
	return info.State.Msgs
}

// TestCLI runs a lab with `flinger lab` and drives it only through the
// flinger binary (and, to check it, a plain NATS client): validate,
// submit with and without --follow and the exit status of each outcome,
// status, cancel of a waiting and of a running job, devices, and watch,
// which must show every event the lab published.
func TestCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the flinger binary")
	}
	bin := flingerBinary(t)
	jobs := t.TempDir()
	lab := startCLILab(t, bin)
	nc, js := natsConnect(t, lab.url)

	t.Run("streams and buckets", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), cliWait)
		defer cancel()
		streams := []string{"FLINGER_SUBMIT", "FLINGER_EVENTS", "FLINGER_LOGS"}
		for p := range events.QueuePartitions {
			streams = append(streams, fmt.Sprintf("FLINGER_QUEUES_%02d", p))
		}
		for _, name := range streams {
			if _, err := js.Stream(ctx, name); err != nil {
				t.Errorf("stream %s: %v", name, err)
			}
		}
		for _, bucket := range []string{"FLINGER_JOBS", "FLINGER_DEVICES"} {
			if _, err := js.KeyValue(ctx, bucket); err != nil {
				t.Errorf("KV bucket %s: %v", bucket, err)
			}
		}
		// The device bucket holds a record for each device of the lab file.
		kv, err := js.KeyValue(ctx, "FLINGER_DEVICES")
		if err != nil {
			t.Fatalf("KV bucket FLINGER_DEVICES: %v", err)
		}
		for _, d := range cliDevices {
			if _, err := kv.Get(ctx, events.Key(d)); err != nil {
				t.Errorf("FLINGER_DEVICES has no record for %s: %v", d, err)
			}
		}
	})

	// The watcher starts before any job and replays every stored event,
	// so it must end up with all of them.
	watcher := startBackground(t, bin, "watch", "watch", "--json", "--all", "--nats", lab.url)
	func() {
		deadline := time.Now().Add(cliWait)
		for len(parseWatch(t, watcher.stdout(t))) < len(cliDevices) {
			if watcher.exited() || time.Now().After(deadline) {
				t.Fatalf("flinger watch did not print the devices' start events (exited: %v):\n%s\n--- stderr:\n%s",
					watcher.exited(), watcher.stdout(t), watcher.stderr())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	t.Run("validate", func(t *testing.T) {
		good := writeJob(t, jobs, "good.yaml", "job_queue: cli\nname: good\ntest_data:\n  test_cmds: echo fine\n")
		bad := writeJob(t, jobs, "bad.yaml", "job_queue: cli\nname: bad\ntest_data:\n  test_cmd: echo typo\n")
		// The indented mapping on line 4 is a YAML syntax error.
		syntax := writeJob(t, jobs, "syntax.yaml", "job_queue: cli\nname: syntax\nreserve_data: x\n  oops: here\n")
		goodJSON := writeJob(t, jobs, "good.json", `{"job_queue": "cli", "test_data": {"test_cmds": ["true"]}}`)
		tests := []struct {
			name       string
			files      []string
			code       int
			stdout     []string
			stderr     []string
			notInStdio []string
		}{
			{name: "good", files: []string{good}, code: 0, stdout: []string{good + ": valid"}},
			{name: "good json", files: []string{goodJSON}, code: 0, stdout: []string{goodJSON + ": valid"}},
			{name: "typo", files: []string{bad}, code: 1, stderr: []string{bad + ": invalid job", "test_data.test_cmd", "1 of 1 job files invalid"}},
			{name: "syntax error", files: []string{syntax}, code: 1, stderr: []string{syntax + ": invalid job", "invalid YAML", "line 4"}},
			{name: "good and bad", files: []string{good, bad}, code: 1, stdout: []string{good + ": valid"},
				stderr: []string{"test_data.test_cmd", "1 of 2 job files invalid"}, notInStdio: []string{bad + ": valid"}},
			{name: "missing file", files: []string{filepath.Join(jobs, "no-such-job.yaml")}, code: 1, stderr: []string{"no-such-job.yaml"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := runFlinger(t, bin, append([]string{"validate"}, tc.files...)...)
				if r.code != tc.code {
					t.Errorf("exit %d, want %d\n%s", r.code, tc.code, r)
				}
				for _, s := range tc.stdout {
					if !strings.Contains(r.stdout, s) {
						t.Errorf("stdout lacks %q\n%s", s, r)
					}
				}
				for _, s := range tc.stderr {
					if !strings.Contains(r.stderr, s) {
						t.Errorf("stderr lacks %q\n%s", s, r)
					}
				}
				for _, s := range tc.notInStdio {
					if strings.Contains(r.stdout+r.stderr, s) {
						t.Errorf("output has %q\n%s", s, r)
					}
				}
			})
		}
	})

	// ids maps the name of each job submitted below to its id.
	ids := map[string]string{}

	t.Run("submit --follow", func(t *testing.T) {
		tests := []struct {
			name, file, job string
			code            int
			stdout          []string // in the job's output
			notStdout       []string
			stderr          []string
			rejected        bool
		}{
			{
				name: "pass", file: "pass.yaml",
				job:    "job_queue: cli\nname: cli-pass\ntest_data:\n  test_cmds: |\n    echo \"pass-marker on $AGENT_NAME\"\n",
				code:   0,
				stdout: []string{"pass-marker on cli-", "Starting testflinger test phase on cli-"},
				stderr: []string{"job_start", "test_success", "ended: pass"},
			},
			{
				name: "test exits 3", file: "test-fail.yaml",
				job:    "job_queue: cli\nname: cli-test-fail\ntest_data:\n  test_cmds: |\n    echo test-fail-marker\n    exit 3\n",
				code:   3,
				stdout: []string{"test-fail-marker"},
				stderr: []string{"test_fail (exit 3)", "ended: test_fail", "exit status 3"},
			},
			{
				name: "provision fails", file: "provision-fail.json",
				job:       `{"job_queue": "cli", "name": "cli-provision-fail", "provision_data": {"fail": "provision"}, "test_data": {"test_cmds": "echo never-runs-marker"}}`,
				code:      1,
				stdout:    []string{"Fake provisioning failed"},
				notStdout: []string{"never-runs-marker"},
				stderr:    []string{"provision_fail", "ended: fail"},
			},
			{
				name: "recovery fails", file: "recovery-fail.yaml",
				job:       "job_queue: other\nname: other-recovery-fail\nprovision_data: {fail: recovery}\ntest_data: {test_cmds: echo never-runs-marker}\n",
				code:      46,
				stdout:    []string{"could not be recovered", "on other-1"},
				notStdout: []string{"never-runs-marker"},
				stderr:    []string{"recovery_fail", "ended: recovery_fail", "exit status 46"},
			},
			{
				name: "typo", file: "typo.yaml",
				job:      "job_queue: cli\nname: cli-typo\ntest_data:\n  test_cmd: echo typo\n",
				code:     1,
				stderr:   []string{"invalid job", "test_data.test_cmd"},
				rejected: true,
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				path := writeJob(t, jobs, tc.file, tc.job)
				r := lab.flinger(t, "submit", path, "--follow")
				if r.code != tc.code {
					t.Errorf("exit %d, want %d\n%s", r.code, tc.code, r)
				}
				if tc.rejected {
					if r.stdout != "" {
						t.Errorf("a rejected job printed on stdout:\n%s", r)
					}
				} else {
					first, _, _ := strings.Cut(r.stdout, "\n")
					if !uuidLine.MatchString(first) {
						t.Fatalf("stdout does not start with the job id:\n%s", r)
					}
					ids[tc.name] = first
				}
				for _, s := range tc.stdout {
					if !strings.Contains(r.stdout, s) {
						t.Errorf("stdout lacks %q\n%s", s, r)
					}
				}
				for _, s := range tc.notStdout {
					if strings.Contains(r.stdout, s) {
						t.Errorf("stdout has %q\n%s", s, r)
					}
				}
				for _, s := range tc.stderr {
					if !strings.Contains(r.stderr, s) {
						t.Errorf("stderr lacks %q\n%s", s, r)
					}
				}
			})
		}
	})

	t.Run("submit prints the id", func(t *testing.T) {
		path := writeJob(t, jobs, "quiet.yaml", "job_queue: cli\nname: cli-quiet\ntest_data: {test_cmds: 'true'}\n")
		r := lab.flinger(t, "submit", path)
		if r.code != 0 {
			t.Fatalf("submit: %s", r)
		}
		if !uuidLine.MatchString(strings.TrimSuffix(r.stdout, "\n")) || !strings.HasSuffix(r.stdout, "\n") {
			t.Fatalf("stdout is not just a job id:\n%s", r)
		}
		id := strings.TrimSpace(r.stdout)
		ids["quiet"] = id
		lab.waitStatus(t, id, regexp.MustCompile(`(?m)^status:\s+ended \(pass\)`), cliWait)
	})

	t.Run("status of finished jobs", func(t *testing.T) {
		tests := []struct {
			job  string
			want []string // regular expressions
		}{
			{"pass", []string{`(?m)^state:\s+completed$`, `(?m)^status:\s+ended \(pass\): normal_exit$`, `(?m)^device:\s+cli-[12] `, `(?m)^\s+test\s+exit 0$`}},
			{"test exits 3", []string{`(?m)^state:\s+completed$`, `(?m)^status:\s+ended \(test_fail\)`, `(?m)^\s+test\s+exit 3$`}},
			{"provision fails", []string{`(?m)^status:\s+ended \(fail\): provision_fail$`, `(?m)^\s+provision\s+exit 1$`}},
			{"recovery fails", []string{`(?m)^status:\s+ended \(recovery_fail\)`, `(?m)^device:\s+other-1 `, `(?m)^\s+provision\s+exit 46$`}},
		}
		for _, tc := range tests {
			t.Run(tc.job, func(t *testing.T) {
				id := ids[tc.job]
				if id == "" {
					t.Skipf("job %q was not submitted", tc.job)
				}
				out := lab.status(t, id)
				if !strings.Contains(out, id) {
					t.Errorf("status does not name job %s:\n%s", id, out)
				}
				for _, re := range tc.want {
					if !regexp.MustCompile(re).MatchString(out) {
						t.Errorf("status lacks %q:\n%s", re, out)
					}
				}
			})
		}
		t.Run("json", func(t *testing.T) {
			id := ids["pass"]
			if id == "" {
				t.Skip("the passing job was not submitted")
			}
			r := lab.flinger(t, "status", id, "--json")
			if r.code != 0 {
				t.Fatalf("status --json: %s", r)
			}
			var st struct {
				Record struct {
					Job struct {
						JobID string `json:"job_id"`
					} `json:"job"`
					State   string `json:"job_state"`
					Outcome string `json:"outcome"`
				} `json:"record"`
				Explain string `json:"explain"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
				t.Fatalf("status --json: %v\n%s", err, r)
			}
			if st.Record.Job.JobID != id || st.Record.State != "completed" || st.Record.Outcome != "pass" || !strings.HasPrefix(st.Explain, "ended (pass)") {
				t.Errorf("status --json: %+v", st)
			}
		})
		t.Run("unknown job", func(t *testing.T) {
			r := lab.flinger(t, "status", "00000000-0000-4000-8000-000000000000")
			if r.code == 0 || !strings.Contains(r.stderr, "no such job") {
				t.Errorf("status of an unknown job: %s", r)
			}
		})
	})

	t.Run("cancel a waiting job", func(t *testing.T) {
		path := writeJob(t, jobs, "unserved.yaml", "job_queue: cli-unserved\nname: cli-unserved\ntest_data: {test_cmds: 'true'}\n")
		r := lab.flinger(t, "submit", path)
		if r.code != 0 {
			t.Fatalf("submit: %s", r)
		}
		id := strings.TrimSpace(r.stdout)
		ids["unserved"] = id
		out := lab.status(t, id)
		for _, re := range []string{`(?m)^state:\s+waiting$`, `(?m)^status:\s+waiting: no device serves queue cli-unserved$`} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("status of a job nobody serves lacks %q:\n%s", re, out)
			}
		}
		r = lab.flinger(t, "cancel", id)
		if r.code != 0 || !strings.Contains(r.stdout, "job "+id+" cancelled") {
			t.Fatalf("cancel: %s", r)
		}
		out = lab.status(t, id)
		for _, re := range []string{`(?m)^state:\s+cancelled$`, `(?m)^status:\s+ended \(cancelled\)`} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("status after cancel lacks %q:\n%s", re, out)
			}
		}
		if strings.Contains(out, "device:") {
			t.Errorf("a job cancelled while waiting names a device:\n%s", out)
		}
		r = lab.flinger(t, "cancel", id)
		if r.code == 0 || !strings.Contains(r.stderr, "already ended") {
			t.Errorf("second cancel: want a non-zero exit and \"already ended\":\n%s", r)
		}
	})

	t.Run("cancel a running test", func(t *testing.T) {
		path := writeJob(t, jobs, "long.yaml", "job_queue: cli\nname: cli-long\ntest_data: {test_cmds: 'echo long-started; sleep 300'}\n")
		r := lab.flinger(t, "submit", path)
		if r.code != 0 {
			t.Fatalf("submit: %s", r)
		}
		id := strings.TrimSpace(r.stdout)
		ids["long"] = id
		lab.waitStatus(t, id, regexp.MustCompile(`(?m)^state:\s+test$`), cliWait)
		r = lab.flinger(t, "cancel", id, "--comment", "cli test says stop")
		if r.code != 0 || !strings.Contains(r.stdout, id) {
			t.Fatalf("cancel: %s", r)
		}
		sent := time.Now()
		out := lab.waitStatus(t, id, regexp.MustCompile(`(?m)^state:\s+cancelled$`), cliCancelWithin)
		t.Logf("cancelled job ended %s after the cancel", time.Since(sent).Round(time.Millisecond))
		if !regexp.MustCompile(`(?m)^status:\s+ended \(cancelled\)`).MatchString(out) {
			t.Errorf("status after cancel:\n%s", out)
		}
		if m := regexp.MustCompile(`(?m)^\s+test\s+exit (\d+)$`).FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Errorf("status after cancel: want the test phase's non-zero exit:\n%s", out)
		}
	})

	t.Run("devices", func(t *testing.T) {
		want := map[string]string{"cli-1": "idle", "cli-2": "idle", "other-1": "offline"}
		var rows map[string]deviceRow
		var r cliResult
		deadline := time.Now().Add(cliWait)
		for {
			r = lab.flinger(t, "devices")
			rows = parseDevices(r.stdout)
			settled := r.code == 0
			for name, state := range want {
				settled = settled && rows[name].state == state
			}
			if settled {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("devices did not reach %v within %s:\n%s", want, cliWait, r)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if len(rows) != len(cliDevices) {
			t.Errorf("devices lists %d devices, want %d:\n%s", len(rows), len(cliDevices), r.stdout)
		}
		for _, name := range cliDevices {
			row := rows[name]
			if row.host != "cli-host" || row.typ != "fake_connector" {
				t.Errorf("device %s: host %s type %s, want cli-host fake_connector:\n%s", name, row.host, row.typ, row.line)
			}
		}
		for _, name := range []string{"cli-1", "cli-2"} {
			if rows[name].health == "bad" {
				t.Errorf("device %s is unhealthy: %s", name, rows[name].line)
			}
		}
		other := rows["other-1"]
		if other.health != "bad" {
			t.Errorf("device other-1 after a recovery failure: health %s, want bad: %s", other.health, other.line)
		}
		if id := ids["recovery fails"]; id != "" && !strings.Contains(other.line, id) {
			t.Errorf("device other-1's comment does not name the job %s that failed recovery: %s", id, other.line)
		}
	})

	t.Run("watch shows every event", func(t *testing.T) {
		// Wait until the stream and the watcher agree and the stream no
		// longer grows: every job has ended, so the lab is quiet.
		var n uint64
		var seen []watchedEvent
		deadline := time.Now().Add(cliWait)
		for {
			prev := n
			n = eventCount(t, js)
			seen = parseWatch(t, watcher.stdout(t))
			if uint64(len(seen)) == n && n == prev {
				break
			}
			if watcher.exited() || time.Now().After(deadline) {
				t.Fatalf("flinger watch printed %d events, the stream holds %d (watcher exited: %v)\n--- stderr:\n%s",
					len(seen), n, watcher.exited(), watcher.stderr())
			}
			time.Sleep(300 * time.Millisecond)
		}
		if code := watcher.stop(t, syscall.SIGINT); code != 0 {
			t.Errorf("flinger watch exited %d on SIGINT\n--- stderr:\n%s", code, watcher.stderr())
		}
		if s := watcher.stderr(); strings.Contains(s, "flinger watch:") {
			t.Errorf("flinger watch reported errors:\n%s", s)
		}
		seen = parseWatch(t, watcher.stdout(t))
		if after := eventCount(t, js); uint64(len(seen)) != after {
			t.Fatalf("flinger watch printed %d events, FLINGER_EVENTS holds %d", len(seen), after)
		}
		stored := streamEvents(t, js, "")
		if len(stored) != len(seen) {
			t.Fatalf("read %d events from FLINGER_EVENTS, flinger watch printed %d", len(stored), len(seen))
		}
		for i, ev := range stored {
			if seen[i].ID != ev.ID || seen[i].Name != ev.Name || seen[i].JobID != ev.JobID {
				t.Fatalf("event %d: stream has %s %s (job %q), flinger watch printed %s %s (job %q)",
					i, ev.ID, ev.Name, ev.JobID, seen[i].ID, seen[i].Name, seen[i].JobID)
			}
		}
		subj, err := events.NewSubjects("")
		if err != nil {
			t.Fatal(err)
		}
		for _, job := range []string{"pass", "test exits 3", "recovery fails", "unserved", "long"} {
			id := ids[job]
			if id == "" {
				t.Errorf("job %q was not submitted", job)
				continue
			}
			var fromStream, fromWatch []string
			for _, ev := range streamEvents(t, js, subj.JobEvents(id)) {
				fromStream = append(fromStream, ev.Name)
			}
			for _, ev := range seen {
				if ev.JobID == id {
					fromWatch = append(fromWatch, ev.Name)
				}
			}
			// Only what the comparison needs: the job's events are there.
			// (Their order in the stream is not this test's concern.)
			if len(fromStream) < 3 || !slices.Contains(fromStream, events.EventJobSubmitted) || !slices.Contains(fromStream, events.EventJobEnd) {
				t.Errorf("job %q: events in the stream %v, want job_submitted and job_end among them", job, fromStream)
			}
			if !slices.Equal(fromWatch, fromStream) {
				t.Errorf("job %q: flinger watch showed\n %v\nthe stream holds\n %v", job, fromWatch, fromStream)
			}
		}
	})

	nc.Close()
	if code := lab.proc.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("flinger lab exited %d on SIGTERM, want 0\n--- stderr:\n%s", code, lab.proc.stderr())
	}
}

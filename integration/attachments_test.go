package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flingerlab/flinger/broker"
	"github.com/flingerlab/flinger/client"
	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/events"
	"github.com/flingerlab/flinger/orchestrator"
	"github.com/flingerlab/flinger/workers"
)

// submitFile writes files (name → content) and the job into a fresh
// directory and submits the job as `flinger submit` does, attachments and
// all.
func submitFile(t *testing.T, c *broker.Client, job string, files map[string][]byte) (*events.SubmitReply, error) {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	packed, err := client.PrepareJob([]byte(job), events.FormatYAML, dir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	return client.SubmitJob(ctx, c, packed, nil)
}

// TestAttachmentsEndToEnd runs a job with provision and test attachments
// on a simulated MuxPi: it provisions from its attachment, its test reads
// a test attachment and a secret and leaves artifacts, which come back
// byte for byte; the secret's value is nowhere in logs, events, the
// record or the artifacts; the serial console is captured.
func TestAttachmentsEndToEnd(t *testing.T) {
	t.Parallel()
	const secret = "att-S3cret-91c2"
	secrets := filepath.Join(t.TempDir(), "secrets.yaml")
	if err := os.WriteFile(secrets, []byte("lab/token: "+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runDir := t.TempDir()
	host, err := drivers.ParseHost(fmt.Appendf(nil, `host: att-host
run_dir: %s
secrets_file: %s
devices:
  - agent_name: att-muxpi
    provision_type: muxpi
    job_queues: [attq]
    sim: {boot_time: 200ms}
`, runDir, secrets), "att-host.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := startSimLab(t, host)
	c := connect(t, l, "att-test")

	im := sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "pi-desktop", Size: 1 << 20, Seed: 77}
	image, err := sim.Compress("zst", im.Reader())
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 300<<10)
	_, _ = rand.Read(data)
	reply, err := submitFile(t, c, `job_queue: attq
provision_data:
  use_attachment: pi.img.zst
  attachments:
    - local: images/pi.img.zst
      agent: pi.img.zst
test_data:
  secrets: {TOKEN: lab/token}
  attachments:
    - local: data/blob.bin
    - local: data/check.sh
      agent: bin/check.sh
  test_cmds: |
    set -e
    sh attachments/test/bin/check.sh
`, map[string][]byte{
		"images/pi.img.zst": image,
		"data/blob.bin":     data,
		"data/check.sh": []byte(`set -e
mkdir -p artifacts/nested
cp attachments/test/data/blob.bin artifacts/nested/blob-copy.bin
printf 'token %s\n' "$TOKEN"
[ "$TOKEN" = "att-S3cret-"'91c2' ] || exit 7
echo "artifact text" > artifacts/report.txt
ls attachments/provision > artifacts/provision-list.txt
`),
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if reply.AttachmentsStatus != events.AttachmentsWaiting {
		t.Errorf("reply's attachments_status %q, want waiting", reply.AttachmentsStatus)
	}
	rec := waitEndWithin(t, c, reply.JobID, simWait)
	out := output(t, c, reply.JobID)
	if rec.Outcome != events.OutcomePass {
		t.Fatalf("outcome %s (%s), want pass; output:\n%s", rec.Outcome, rec.EndReason, tail(out, 4000))
	}
	if rec.AttachmentsStatus != events.AttachmentsComplete || rec.Attachments == nil || rec.Attachments.Files != 3 {
		t.Errorf("record's attachments: %q %+v, want complete with 3 files", rec.AttachmentsStatus, rec.Attachments)
	}
	if !strings.Contains(out, "pi.img.zst") {
		t.Errorf("provisioning does not name its attachment:\n%s", tail(out, 3000))
	}
	// The device booted the image sent as an attachment.
	eventually(t, "att-muxpi idle after the job", func() bool {
		st, err := c.GetDevice(t.Context(), "att-muxpi")
		return err == nil && st.State == events.StateIdle
	})

	dir := t.TempDir()
	stats, _, err := client.DownloadArtifacts(t.Context(), c, reply.JobID, dir, 0)
	if err != nil {
		t.Fatalf("download artifacts: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "nested", "blob-copy.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("artifact blob-copy.bin: %d bytes (err %v), want the %d bytes sent", len(got), err, len(data))
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "report.txt")); string(b) != "artifact text\n" {
		t.Errorf("report.txt = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "provision-list.txt")); !strings.Contains(string(b), "pi.img.zst") {
		t.Errorf("provision attachments seen by the test: %q", b)
	}
	serialLog, err := os.ReadFile(filepath.Join(dir, "serial-console.log"))
	if err != nil || !strings.Contains(string(serialLog), "login:") {
		t.Errorf("serial console log among the artifacts: %d bytes (err %v), want a boot to a login prompt:\n%s", len(serialLog), err, tail(string(serialLog), 1500))
	}
	// The device last booted the image sent as the attachment (24.04;
	// the simulated card starts with 22.04).
	if i := strings.LastIndex(string(serialLog), "Ubuntu "); i < 0 || !strings.HasPrefix(string(serialLog[i:]), "Ubuntu 24.04") {
		t.Errorf("the serial console shows no boot of the attached 24.04 image last:\n%s", tail(string(serialLog), 1500))
	}
	if stats.Files < 4 || rec.Artifacts == nil || rec.Artifacts.Size == 0 {
		t.Errorf("artifacts: %+v, record %+v", stats, rec.Artifacts)
	}
	serialChunks, err := client.StreamSoFar(t.Context(), c, reply.JobID, events.PhaseProvision, client.StreamSerial)
	if err != nil || len(serialChunks) == 0 {
		t.Errorf("provision phase's serial log: %d chunks (err %v)", len(serialChunks), err)
	}

	var serialAll strings.Builder
	chunks, _ := client.StreamSoFar(t.Context(), c, reply.JobID, "", client.StreamSerial)
	for _, ch := range chunks {
		serialAll.Write(ch.Data)
	}
	evs, _ := json.Marshal(jobEvents(t, c, reply.JobID))
	recJSON, _ := json.Marshal(rec)
	var arts strings.Builder
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			arts.Write(b)
		}
		return nil
	})
	for what, s := range map[string]string{"output": out, "events": string(evs), "record": string(recJSON), "serial log": serialAll.String(), "artifacts": arts.String()} {
		if strings.Contains(s, secret) {
			t.Errorf("the secret's value appears in the %s", what)
		}
	}
	if !strings.Contains(out, "token ****") {
		t.Errorf("the test's output lacks the masked secret:\n%s", tail(out, 2000))
	}
	// Nothing of the job is left in the run directory.
	entries, _ := os.ReadDir(runDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), reply.JobID) {
			t.Errorf("run directory %s left behind", e.Name())
		}
	}
}

// tarGz builds an archive of raw entries, for archives no honest packer
// makes.
func tarGz(t *testing.T, entries []tar.Header, content map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, h := range entries {
		body := content[h.Name]
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if len(body) > 0 {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// storeRaw stores data as job id's attachment archive, as a submitter
// that bypasses `flinger submit` could, and returns its reference.
func storeRaw(t *testing.T, c *broker.Client, id string, data []byte) *events.ObjectRef {
	t.Helper()
	store, err := c.Attachments(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The client library's own Put: another NATS client's object reads
	// the same as Flinger's.
	if _, err := store.Put(t.Context(), jetstream.ObjectMeta{Name: id}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return &events.ObjectRef{Name: id, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
}

// TestAttachmentsRefused: every bad archive or attachment is a clear job
// failure naming the file, before anything runs on the device, and
// nothing lands outside the job's run directory.
func TestAttachmentsRefused(t *testing.T) {
	t.Parallel()
	runDir := t.TempDir()
	host := hostFile(t, "refuse-host", "ref-1:refq")
	o := labOptions(t, host, workers.Config{RunDir: runDir}, "")
	o.Orchestrator = orchestrator.Config{MaxAttachmentBytes: 64 << 10}
	l := startLabWith(t.Context(), t, o)
	c := connect(t, l, "refuse-test")
	const job = "job_queue: refq\ntest_data:\n  attachments:\n    - agent: run.sh\n  test_cmds: echo RAN-ON-DEVICE\n"

	// submitRaw submits job, which then waits for its archive.
	submitRaw := func(t *testing.T) string {
		reply, err := client.Submit(t.Context(), c, []byte(job), events.FormatYAML)
		if err != nil {
			t.Fatal(err)
		}
		if reply.AttachmentsStatus != events.AttachmentsWaiting {
			t.Fatalf("attachments_status %q, want waiting", reply.AttachmentsStatus)
		}
		return reply.JobID
	}
	// deviceFailure runs an archive through to the device and checks
	// that setup fails naming want, and that the test never ran.
	deviceFailure := func(t *testing.T, archive []byte, want string) {
		id := submitRaw(t)
		ref := storeRaw(t, c, id, archive)
		if _, err := client.Control(t.Context(), c, "attachments", &events.CtlRequest{JobID: id, Object: ref}); err != nil {
			t.Fatalf("attachments: %v", err)
		}
		rec := waitEnd(t, c, id)
		out := output(t, c, id)
		if rec.Outcome != events.OutcomeFail || rec.EndReason != events.PhaseFail(events.PhaseSetup) {
			t.Errorf("outcome %s (%s), want a setup failure", rec.Outcome, rec.EndReason)
		}
		if !strings.Contains(out, want) {
			t.Errorf("output does not name %q:\n%s", want, tail(out, 2000))
		}
		if strings.Contains(out, "RAN-ON-DEVICE") {
			t.Error("the test ran despite the bad archive")
		}
	}
	ok := map[string][]byte{"test/run.sh": []byte("echo hi\n")}

	unsafe := []struct {
		name  string
		entry tar.Header
		want  string
	}{
		{"parent", tar.Header{Name: "test/../../escaped.txt", Typeflag: tar.TypeReg}, "test/../../escaped.txt"},
		{"absolute", tar.Header{Name: "/tmp/flinger-escaped.txt", Typeflag: tar.TypeReg}, "/tmp/flinger-escaped.txt"},
		{"symlink out", tar.Header{Name: "test/link", Typeflag: tar.TypeSymlink, Linkname: "../../../../etc"}, "test/link"},
		{"hard link", tar.Header{Name: "test/hard", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}, "test/hard"},
		{"other phase", tar.Header{Name: "setup/x", Typeflag: tar.TypeReg}, "setup/x"},
	}
	for _, tc := range unsafe {
		t.Run("unsafe "+tc.name, func(t *testing.T) {
			archive := tarGz(t, []tar.Header{{Name: "test/run.sh", Typeflag: tar.TypeReg}, tc.entry}, ok)
			deviceFailure(t, archive, tc.want)
		})
	}
	t.Run("missing attachment", func(t *testing.T) {
		archive := tarGz(t, []tar.Header{{Name: "test/other.sh", Typeflag: tar.TypeReg}}, map[string][]byte{"test/other.sh": []byte("x")})
		deviceFailure(t, archive, "test_data.attachments[0]: run.sh is not in the job's attachment archive")
	})
	t.Run("corrupt archive", func(t *testing.T) {
		deviceFailure(t, []byte("this is not a tar.gz archive at all, just bytes"), "attachments")
	})

	t.Run("bytes changed in the store", func(t *testing.T) {
		// The archive's chunks are rewritten under its recorded digest,
		// as a damaged disk or a meddler could: the worker's read fails
		// the digest check, naming it, and the test never runs.
		id := submitRaw(t)
		archive := tarGz(t, []tar.Header{{Name: "test/run.sh", Typeflag: tar.TypeReg}}, ok)
		ref := storeRaw(t, c, id, archive)
		info, err := mustStore(t, c).GetInfo(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.JS.Stream(t.Context(), "OBJ_"+c.Subj.AttachmentBucket())
		if err != nil {
			t.Fatal(err)
		}
		chunks := "$O." + c.Subj.AttachmentBucket() + ".C." + info.NUID
		if err := st.Purge(t.Context(), jetstream.WithPurgeSubject(chunks)); err != nil {
			t.Fatal(err)
		}
		damaged := bytes.Clone(archive)
		damaged[len(damaged)/2] ^= 0xff
		if _, err := c.JS.Publish(t.Context(), chunks, damaged); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Control(t.Context(), c, "attachments", &events.CtlRequest{JobID: id, Object: ref}); err != nil {
			t.Fatalf("attachments: %v", err)
		}
		rec := waitEnd(t, c, id)
		out := output(t, c, id)
		if rec.EndReason != events.PhaseFail(events.PhaseSetup) || (!strings.Contains(out, "checksum mismatch") && !strings.Contains(out, "corrupt")) {
			t.Errorf("damaged archive: %s (%s), output:\n%s", rec.Outcome, rec.EndReason, tail(out, 2000))
		}
		if strings.Contains(out, "RAN-ON-DEVICE") {
			t.Error("the test ran despite the damaged archive")
		}
	})
	t.Run("checksum mismatch", func(t *testing.T) {
		id := submitRaw(t)
		ref := storeRaw(t, c, id, tarGz(t, []tar.Header{{Name: "test/run.sh", Typeflag: tar.TypeReg}}, ok))
		bad := *ref
		bad.SHA256 = strings.Repeat("0", 64)
		_, err := client.Control(t.Context(), c, "attachments", &events.CtlRequest{JobID: id, Object: &bad})
		if err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("attachments with a wrong sha256: %v, want a checksum mismatch", err)
		}
		rec := waitEnd(t, c, id)
		if rec.Outcome != events.OutcomeFail || !strings.Contains(rec.EndReason, "checksum mismatch") {
			t.Errorf("job ended %s (%s), want a failure for the checksum", rec.Outcome, rec.EndReason)
		}
		if _, err := broker.StatObject(t.Context(), mustStore(t, c), id); !errors.Is(err, broker.ErrNoObject) {
			t.Errorf("refused archive still stored: %v", err)
		}
	})
	t.Run("over the limit at the orchestrator", func(t *testing.T) {
		id := submitRaw(t)
		big := make([]byte, 100<<10)
		_, _ = rand.Read(big)
		ref := storeRaw(t, c, id, big)
		_, err := client.Control(t.Context(), c, "attachments", &events.CtlRequest{JobID: id, Object: ref})
		if err == nil || !strings.Contains(err.Error(), "over the lab's limit of 65536 bytes") {
			t.Fatalf("archive over the limit: %v", err)
		}
		rec := waitEnd(t, c, id)
		if rec.Outcome != events.OutcomeFail || !strings.Contains(rec.EndReason, "limit") {
			t.Errorf("job ended %s (%s)", rec.Outcome, rec.EndReason)
		}
	})
	t.Run("over the limit at the submitter", func(t *testing.T) {
		big := make([]byte, 200<<10)
		_, _ = rand.Read(big)
		reply, err := submitFile(t, c, "job_queue: refq\ntest_data:\n  attachments: [{local: big.bin}]\n  test_cmds: echo RAN-ON-DEVICE\n", map[string][]byte{"big.bin": big})
		if !errors.Is(err, client.ErrAttachmentLimit) {
			t.Fatalf("submit over the limit: %v, want ErrAttachmentLimit", err)
		}
		rec := waitEnd(t, c, reply.JobID)
		if rec.State != events.JobCancelled {
			t.Errorf("job state %s, want cancelled", rec.State)
		}
	})
	t.Run("not stored", func(t *testing.T) {
		id := submitRaw(t)
		_, err := client.Control(t.Context(), c, "attachments", &events.CtlRequest{JobID: id, Object: &events.ObjectRef{Name: id, Size: 1, SHA256: "x"}})
		if err == nil || !strings.Contains(err.Error(), "no archive is stored") {
			t.Fatalf("attachments with nothing stored: %v", err)
		}
		rec, _, _ := c.GetJob(t.Context(), id)
		if rec.State != events.JobWaiting || rec.AttachmentsStatus != events.AttachmentsWaiting {
			t.Errorf("job %s/%s, want still waiting for its attachments", rec.State, rec.AttachmentsStatus)
		}
		if _, err := client.Cancel(t.Context(), c, id, "test"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("local file missing", func(t *testing.T) {
		_, err := submitFile(t, c, "job_queue: refq\ntest_data:\n  attachments: [{local: nowhere.bin}]\n", nil)
		if err == nil || !strings.Contains(err.Error(), "test_data.attachments[0]: local: nowhere.bin") {
			t.Fatalf("missing local file: %v", err)
		}
	})
	t.Run("agent path escapes", func(t *testing.T) {
		_, err := submitFile(t, c, "job_queue: refq\ntest_data:\n  attachments: [{local: a.txt, agent: ../../a.txt}]\n", map[string][]byte{"a.txt": []byte("a")})
		if err == nil || !strings.Contains(err.Error(), "test_data.attachments[0]: agent") {
			t.Fatalf("agent path with ..: %v", err)
		}
	})

	// Nothing was written outside the job run directories.
	for _, p := range []string{filepath.Join(filepath.Dir(runDir), "escaped.txt"), "/tmp/flinger-escaped.txt"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was written outside the run directory", p)
		}
	}
}

func mustStore(t *testing.T, c *broker.Client) jetstream.ObjectStore {
	t.Helper()
	store, err := c.Attachments(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// TestSerialCapture points a device's serial_host/serial_port at a console
// server the test runs, which prints during provisioning, drops the
// connection, refuses a while, and prints again during the test phase: the
// job's serial logs hold both sides, per phase and whole, with the drop and
// the reconnect marked and the job's secret masked.
func TestSerialCapture(t *testing.T) {
	t.Parallel()
	const secret = "serial-Secret-55aa"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	secrets := filepath.Join(t.TempDir(), "secrets.yaml")
	if err := os.WriteFile(secrets, []byte("lab/s: "+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	host, err := drivers.ParseHost(fmt.Appendf(nil, `host: serial-host
secrets_file: %s
devices:
  - agent_name: ser-1
    provision_type: fake_connector
    device_ip: 127.0.0.1
    serial_host: 127.0.0.1
    serial_port: %d
    job_queues: [serq]
`, secrets, port), "serial-host.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := startLab(t, host, workers.Config{})
	c := connect(t, l, "serial-test")
	marker := filepath.Join(t.TempDir(), "test-may-end")
	id := submit(t, c, fmt.Sprintf(`job_queue: serq
provision_data: {delay: 2s}
test_data:
  secrets: {S: lab/s}
  test_cmds: |
    while [ ! -e %s ]; do sleep 0.1; done
`, marker))

	// The capture connects when provisioning starts.
	var first net.Conn
	select {
	case first = <-conns:
	case <-time.After(waitLong):
		t.Fatal("the serial console was never connected")
	}
	fmt.Fprintf(first, "provision line one\r\nsecret on the console: %s\r\n", secret)
	eventually(t, "provision serial chunk", func() bool {
		ch, _ := client.StreamSoFar(t.Context(), c, id, events.PhaseProvision, client.StreamSerial)
		return len(ch) > 0
	})
	_ = first.Close() // the console server drops the line
	var second net.Conn
	select {
	case second = <-conns:
	case <-time.After(waitLong):
		t.Fatal("the serial console was not reconnected")
	}
	defer second.Close()
	waitEvent(t, c, id, events.PhaseStart(events.PhaseTest))
	fmt.Fprintf(second, "test line two\r\n")
	eventually(t, "test serial chunk", func() bool {
		ch, _ := client.StreamSoFar(t.Context(), c, id, events.PhaseTest, client.StreamSerial)
		return len(ch) > 0
	})
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rec := waitEnd(t, c, id)
	if rec.Outcome != events.OutcomePass {
		t.Fatalf("outcome %s (%s)", rec.Outcome, rec.EndReason)
	}

	phaseLog := func(p events.Phase) string {
		var b strings.Builder
		chunks, err := client.StreamSoFar(t.Context(), c, id, p, client.StreamSerial)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chunks {
			b.Write(ch.Data)
		}
		return b.String()
	}
	prov, test := phaseLog(events.PhaseProvision), phaseLog(events.PhaseTest)
	if !strings.Contains(prov, "provision line one") || strings.Contains(prov, "test line two") {
		t.Errorf("provision's serial log:\n%s", prov)
	}
	if !strings.Contains(test, "test line two") || strings.Contains(test, "provision line one") {
		t.Errorf("test's serial log:\n%s", test)
	}
	dest := t.TempDir()
	if _, _, err := client.DownloadArtifacts(t.Context(), c, id, dest, 0); err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(filepath.Join(dest, "serial-console.log"))
	if err != nil {
		t.Fatal(err)
	}
	w := string(whole)
	for _, want := range []string{"provision line one", "secret on the console: ****", "lost", "test line two"} {
		if !strings.Contains(w, want) {
			t.Errorf("serial-console.log lacks %q:\n%s", want, w)
		}
	}
	if n := strings.Count(w, "connected"); n < 2 {
		t.Errorf("serial-console.log marks %d connections, want 2:\n%s", n, w)
	}
	for what, s := range map[string]string{"whole log": w, "provision log": prov, "test log": test} {
		if strings.Contains(s, secret) {
			t.Errorf("the secret appears in the serial %s", what)
		}
	}
}

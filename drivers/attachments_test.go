package drivers_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/drivertest"
	"github.com/flingerlab/flinger/drivers/sshx/sshtest"
	"github.com/flingerlab/flinger/events"
)

// srcFile is a file of the job's test attachments, under attachments/test.
type srcFile struct {
	data []byte
	perm os.FileMode
}

// devFile is a file expected on the device: its path ({dst} and {home}
// replaced) and the source (under attachments/test) it must equal.
type devFile struct {
	path string
	src  string
	perm os.FileMode
}

// attachmentDevice is a noprovision device reached at srv as srv.User.
func attachmentDevice(t *testing.T, srv *sshtest.Server) *drivers.DeviceConfig {
	t.Helper()
	host, port, err := net.SplitHostPort(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return &drivers.DeviceConfig{Name: "dut-1", Type: "noprovision", Queues: []string{"q"}, DeviceIP: host, SSHPort: p,
		SSH: &drivers.SSHSettings{HostKeys: srv.KnownHostsFile(), KeyFile: srv.KeyFile}}
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return p
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeSources writes files (and dirs, with their modes) under
// <runDir>/attachments/test, and symlinks (name → target, {run} replaced
// by the run directory).
func writeSources(t *testing.T, runDir string, dirs map[string]os.FileMode, files map[string]srcFile, links map[string]string) string {
	t.Helper()
	root := filepath.Join(runDir, "attachments", "test")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, f := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.perm); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range links {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(strings.ReplaceAll(target, "{run}", runDir), p); err != nil {
			t.Fatal(err)
		}
	}
	for name, perm := range dirs {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCopyDeviceAttachments(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	script := []byte("#!/bin/sh\necho from the device\n")
	blob := randomBytes(t, 300<<10+7)
	evil := "it's $(touch PWNED) `touch PWNED2`; x.sh"

	for _, tc := range []struct {
		name    string
		atts    []events.Attachment // {dst}: the device directory; {rel}: the same, relative to the home
		dirs    map[string]os.FileMode
		files   map[string]srcFile
		links   map[string]string
		before  map[string]srcFile // files on the device before the copy, by path under {dst}
		device  func(d *drivers.DeviceConfig)
		want    []devFile
		wantDir map[string]os.FileMode // directory modes on the device, by path under {dst}
		out     []string               // output lines, in order
		wantErr string
		absent  []string // paths under {dst} that must not exist
	}{
		{
			name:  "file to an absolute path",
			atts:  []events.Attachment{{Agent: "x.sh", Device: "{dst}/x.sh"}},
			files: map[string]srcFile{"x.sh": {script, 0o755}},
			want:  []devFile{{"{dst}/x.sh", "x.sh", 0o755}},
			out:   []string{"copied attachments/test/x.sh to {dst}/x.sh on 127.0.0.1 (" + strconv.Itoa(len(script)) + " bytes)"},
		},
		{
			name:  "file to a path relative to the home",
			atts:  []events.Attachment{{Agent: "/notes.txt", Device: "{rel}/notes.txt"}},
			files: map[string]srcFile{"notes.txt": {[]byte("notes\n"), 0o640}},
			want:  []devFile{{"{dst}/notes.txt", "notes.txt", 0o640}},
			out:   []string{"copied attachments/test/notes.txt to {dst}/notes.txt on 127.0.0.1 (6 bytes)"},
		},
		{
			name:  "file to a path under ~/",
			atts:  []events.Attachment{{Agent: "t.txt", Device: "~/{rel}/t.txt"}},
			files: map[string]srcFile{"t.txt": {[]byte("tilde"), 0o600}},
			want:  []devFile{{"{dst}/t.txt", "t.txt", 0o600}},
			out:   []string{"copied attachments/test/t.txt to {dst}/t.txt on 127.0.0.1 (5 bytes)"},
		},
		{
			name: "file into a directory: trailing slash, existing directory",
			atts: []events.Attachment{
				{Agent: "sub/x.sh", Device: "{dst}/made/"},
				{Agent: "y.txt", Device: "{dst}"},
			},
			files: map[string]srcFile{"sub/x.sh": {script, 0o700}, "y.txt": {[]byte("y"), 0o644}},
			want:  []devFile{{"{dst}/made/x.sh", "sub/x.sh", 0o700}, {"{dst}/y.txt", "y.txt", 0o644}},
			out: []string{
				"copied attachments/test/sub/x.sh to {dst}/made/x.sh on 127.0.0.1",
				"copied attachments/test/y.txt to {dst}/y.txt on 127.0.0.1 (1 bytes)",
			},
		},
		{
			name:  "missing parent directories are created",
			atts:  []events.Attachment{{Agent: "x.sh", Device: "{dst}/a/b/c/x.sh"}},
			files: map[string]srcFile{"x.sh": {script, 0o755}},
			want:  []devFile{{"{dst}/a/b/c/x.sh", "x.sh", 0o755}},
		},
		{
			name:   "an existing file is replaced, mode included",
			atts:   []events.Attachment{{Agent: "x.sh", Device: "{dst}/x.sh"}},
			files:  map[string]srcFile{"x.sh": {[]byte("short"), 0o600}},
			before: map[string]srcFile{"x.sh": {bytes.Repeat([]byte("old content "), 100), 0o666}},
			want:   []devFile{{"{dst}/x.sh", "x.sh", 0o600}},
		},
		{
			name: "a directory, recursively, with modes",
			atts: []events.Attachment{{Agent: "suite", Device: "{dst}/suite-on-dut"}},
			dirs: map[string]os.FileMode{"suite": 0o750, "suite/data": 0o700, "suite/data/deep": 0o755, "suite/empty": 0o711},
			files: map[string]srcFile{
				"suite/run.sh":           {script, 0o755},
				"suite/data/blob.bin":    {blob, 0o600},
				"suite/data/deep/b.txt":  {[]byte("deep\n"), 0o644},
				"suite/data/deep/ro.txt": {[]byte("read only\n"), 0o444},
			},
			want: []devFile{
				{"{dst}/suite-on-dut/run.sh", "suite/run.sh", 0o755},
				{"{dst}/suite-on-dut/data/blob.bin", "suite/data/blob.bin", 0o600},
				{"{dst}/suite-on-dut/data/deep/b.txt", "suite/data/deep/b.txt", 0o644},
				{"{dst}/suite-on-dut/data/deep/ro.txt", "suite/data/deep/ro.txt", 0o444},
			},
			wantDir: map[string]os.FileMode{"suite-on-dut": 0o750, "suite-on-dut/data": 0o700, "suite-on-dut/data/deep": 0o755, "suite-on-dut/empty": 0o711},
			out: []string{
				"copied attachments/test/suite/data/blob.bin to {dst}/suite-on-dut/data/blob.bin on 127.0.0.1 (" + strconv.Itoa(len(blob)) + " bytes)",
				"copied attachments/test/suite/data/deep/b.txt to {dst}/suite-on-dut/data/deep/b.txt on 127.0.0.1 (5 bytes)",
				"copied attachments/test/suite/data/deep/ro.txt to {dst}/suite-on-dut/data/deep/ro.txt on 127.0.0.1 (10 bytes)",
				"copied attachments/test/suite/run.sh to {dst}/suite-on-dut/run.sh on 127.0.0.1",
			},
		},
		{
			name:  "a read-only directory still receives its content",
			atts:  []events.Attachment{{Agent: "ro", Device: "{dst}/ro"}},
			dirs:  map[string]os.FileMode{"ro": 0o555},
			files: map[string]srcFile{"ro/f": {[]byte("f"), 0o644}},
			want:  []devFile{{"{dst}/ro/f", "ro/f", 0o644}},
			// Left writable again by the test's cleanup below.
			wantDir: map[string]os.FileMode{"ro": 0o555},
		},
		{
			name:  "symbolic links inside attachments/test are followed",
			atts:  []events.Attachment{{Agent: "link.sh", Device: "{dst}/via-link.sh"}, {Agent: "d", Device: "{dst}/d"}},
			files: map[string]srcFile{"x.sh": {script, 0o755}, "d/real.txt": {[]byte("real"), 0o644}},
			links: map[string]string{"link.sh": "x.sh", "d/alias.txt": "real.txt"},
			want:  []devFile{{"{dst}/via-link.sh", "x.sh", 0o755}, {"{dst}/d/alias.txt", "d/real.txt", 0o644}, {"{dst}/d/real.txt", "d/real.txt", 0o644}},
		},
		{
			name:   "a device path full of shell metacharacters is only a name",
			atts:   []events.Attachment{{Agent: "x.sh", Device: "{dst}/" + evil}},
			files:  map[string]srcFile{"x.sh": {script, 0o755}},
			want:   []devFile{{"{dst}/" + evil, "x.sh", 0o755}},
			absent: []string{"PWNED", "PWNED2"},
		},
		{
			name:  "attachments without a device path are left alone",
			atts:  []events.Attachment{{Agent: "x.sh"}, {Local: "y", Agent: "missing.sh"}},
			files: map[string]srcFile{"x.sh": {script, 0o755}},
			// Nowhere to connect to: the device must not be contacted.
			device: func(d *drivers.DeviceConfig) { d.DeviceIP = "" },
			absent: []string{"x.sh"},
		},
		{
			name:    "missing source",
			atts:    []events.Attachment{{Agent: "ok.sh", Device: "{dst}/ok.sh"}, {Agent: "x.sh", Device: "{dst}/x.sh"}},
			files:   map[string]srcFile{"ok.sh": {script, 0o755}},
			wantErr: "test_data.attachments[1]: x.sh was not sent with the job",
			absent:  []string{"ok.sh", "x.sh"},
		},
		{
			name:    "missing source in a job with no attachments directory",
			atts:    []events.Attachment{{Agent: "x.sh", Device: "{dst}/x.sh"}},
			wantErr: "test_data.attachments[0]: x.sh was not sent with the job",
		},
		{
			name:    "no agent path",
			atts:    []events.Attachment{{Local: "x.sh", Device: "{dst}/x.sh"}},
			files:   map[string]srcFile{"x.sh": {script, 0o755}},
			wantErr: "test_data.attachments[0]: no agent path",
		},
		{
			name:    "agent path with ..",
			atts:    []events.Attachment{{Agent: "x.sh", Device: "{dst}/x.sh"}, {Agent: "../../secret.txt", Device: "{dst}/secret.txt"}},
			files:   map[string]srcFile{"x.sh": {script, 0o755}},
			wantErr: "test_data.attachments[1]: agent: ../../secret.txt leads outside attachments/test",
			absent:  []string{"x.sh", "secret.txt"},
		},
		{
			name:    "agent path with .. in its middle",
			atts:    []events.Attachment{{Agent: "sub/../../../secret.txt", Device: "{dst}/secret.txt"}},
			wantErr: "test_data.attachments[0]: agent: sub/../../../secret.txt leads outside attachments/test",
		},
		{
			name:    "symbolic link leading out",
			atts:    []events.Attachment{{Agent: "link.txt", Device: "{dst}/secret.txt"}},
			links:   map[string]string{"link.txt": "{run}/secret.txt"},
			wantErr: "test_data.attachments[0]: link.txt leads outside attachments/test",
			absent:  []string{"secret.txt"},
		},
		{
			name:    "relative symbolic link leading out, inside a directory",
			atts:    []events.Attachment{{Agent: "d", Device: "{dst}/d"}},
			files:   map[string]srcFile{"d/a.txt": {[]byte("a"), 0o644}},
			links:   map[string]string{"d/z-evil": "../../../secret.txt"},
			wantErr: "test_data.attachments[0]: d/z-evil leads outside attachments/test",
			absent:  []string{"d"},
		},
		{
			name:    "a directory that holds itself",
			atts:    []events.Attachment{{Agent: "d", Device: "{dst}/d"}},
			files:   map[string]srcFile{"d/a.txt": {[]byte("a"), 0o644}},
			links:   map[string]string{"d/loop": "."},
			wantErr: "test_data.attachments[0]: d/loop: a symbolic link makes the directory hold itself",
		},
		{
			name:    "no device_ip",
			atts:    []events.Attachment{{Agent: "x.sh", Device: "/home/ubuntu/x.sh"}},
			files:   map[string]srcFile{"x.sh": {script, 0o755}},
			device:  func(d *drivers.DeviceConfig) { d.DeviceIP = "" },
			wantErr: "test_data.attachments[0]: device: /home/ubuntu/x.sh: device dut-1 has no device_ip to copy it to",
		},
		{
			name:   "the fake connector has no device",
			atts:   []events.Attachment{{Agent: "x.sh", Device: "{dst}/x.sh"}, {Agent: "not-sent.sh", Device: "{dst}/y.sh"}},
			files:  map[string]srcFile{"x.sh": {script, 0o755}},
			device: func(d *drivers.DeviceConfig) { d.Type = "fake_connector" }, // reachable: it must not be used
			out:    []string{"Not copying 2 test attachments to a device: the fake_connector connector has no device"},
			absent: []string{"x.sh", "y.sh"},
		},
		{
			name:    "the device does not answer",
			atts:    []events.Attachment{{Agent: "x.sh", Device: "{dst}/x.sh"}},
			files:   map[string]srcFile{"x.sh": {script, 0o755}},
			device:  func(d *drivers.DeviceConfig) { d.SSHPort = closedPort(t) },
			wantErr: "copying test attachments: connecting to device dut-1 (" + u.Username + "@127.0.0.1:",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			t.Cleanup(func() { makeWritable(dst) })
			rel, err := filepath.Rel(u.HomeDir, dst)
			if err != nil {
				t.Fatal(err)
			}
			fill := func(s string) string {
				return strings.NewReplacer("{dst}", dst, "{rel}", filepath.ToSlash(rel)).Replace(s)
			}
			for name, f := range tc.before {
				if err := os.WriteFile(filepath.Join(dst, name), f.data, f.perm); err != nil {
					t.Fatal(err)
				}
			}
			dev := attachmentDevice(t, srv)
			if tc.device != nil {
				tc.device(dev)
			}
			atts := make([]events.Attachment, len(tc.atts))
			for i, a := range tc.atts {
				a.Device = fill(a.Device)
				atts[i] = a
			}
			job := &events.Job{JobQueue: "q", TestData: &events.TestData{Attachments: atts, TestUsername: srv.User}}
			run, out := drivertest.NewRun(t, dev, job)
			if err := os.WriteFile(filepath.Join(run.Dir, "secret.txt"), []byte("secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			var srcRoot string
			if tc.files != nil || tc.links != nil || tc.dirs != nil {
				srcRoot = writeSources(t, run.Dir, tc.dirs, tc.files, tc.links)
				t.Cleanup(func() { makeWritable(srcRoot) })
			}
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()

			err = drivers.CopyDeviceAttachments(ctx, run)
			t.Logf("CopyDeviceAttachments: %v", err)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("CopyDeviceAttachments: %v\noutput:\n%s", err, out)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("CopyDeviceAttachments = %v; want an error with %q\noutput:\n%s", err, tc.wantErr, out)
			}
			for _, f := range tc.want {
				p := fill(f.path)
				got, err := os.ReadFile(p)
				if err != nil {
					t.Errorf("on the device: %v", err)
					continue
				}
				src, err := os.ReadFile(filepath.Join(srcRoot, filepath.FromSlash(f.src)))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, src) {
					t.Errorf("%s on the device: %d bytes differing from the %d of %s", p, len(got), len(src), f.src)
				}
				if st, err := os.Stat(p); err != nil || st.Mode().Perm() != f.perm {
					t.Errorf("%s on the device: mode %v (%v), want %v", p, st.Mode().Perm(), err, f.perm)
				}
			}
			for name, perm := range tc.wantDir {
				st, err := os.Stat(filepath.Join(dst, name))
				if err != nil || !st.IsDir() || st.Mode().Perm() != perm {
					t.Errorf("directory %s on the device: %v (%v), want a directory of mode %v", name, st, err, perm)
				}
			}
			cwd, err := os.Getwd()
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range tc.absent {
				for _, dir := range []string{dst, u.HomeDir, cwd} {
					if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("%s exists in %s (%v); it must not", name, dir, err)
					}
				}
			}
			rest := out.String()
			for _, line := range tc.out {
				line = fill(line)
				i := strings.Index(rest, line)
				if i < 0 {
					t.Errorf("output lacks (in order) %q:\n%s", line, out)
					break
				}
				rest = rest[i+len(line):]
			}
			if n := strings.Count(out.String(), "copied "); tc.out == nil && tc.wantErr == "" && n != len(tc.want) {
				t.Errorf("output has %d copied lines, want %d:\n%s", n, len(tc.want), out)
			}
			if tc.wantErr != "" && strings.Contains(out.String(), "copied ") {
				t.Errorf("a failed copy printed a copied line (every source is checked first):\n%s", out)
			}
		})
	}
}

// makeWritable gives the owner write access to every directory under
// dir, so that the test's temporary directories can be removed.
func makeWritable(dir string) {
	_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
}

func TestRunTestCmdsCopiesAttachmentsFirst(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	for _, tc := range []struct {
		name    string
		agent   string
		rc      int
		wantErr string
		out     []string
	}{
		{name: "copied, then test_cmds run", agent: "x.sh", rc: 0, out: []string{
			"copied attachments/test/x.sh to {dst}/x.sh on 127.0.0.1",
			"Running: cat {dst}/x.sh",
			"echo from the device",
		}},
		{name: "a failed copy runs no test_cmds", agent: "absent.sh", rc: drivers.ExitFailed,
			wantErr: "test_data.attachments[0]: absent.sh was not sent with the job"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			job := &events.Job{JobQueue: "q", TestData: &events.TestData{
				TestCmds:     events.ListCmds("cat " + dst + "/x.sh"),
				Attachments:  []events.Attachment{{Agent: tc.agent, Device: dst + "/x.sh"}},
				TestUsername: srv.User,
			}}
			run, out := drivertest.NewRun(t, attachmentDevice(t, srv), job)
			writeSources(t, run.Dir, nil, map[string]srcFile{"x.sh": {[]byte("echo from the device\n"), 0o755}}, nil)
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			rc, err := drivers.RunTestCmds(ctx, run)
			if rc != tc.rc || (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("RunTestCmds = %d, %v; want %d, %q\noutput:\n%s", rc, err, tc.rc, tc.wantErr, out)
			}
			rest := out.String()
			for _, line := range tc.out {
				line = strings.ReplaceAll(line, "{dst}", dst)
				i := strings.Index(rest, line)
				if i < 0 {
					t.Fatalf("output lacks (in order) %q:\n%s", line, out)
				}
				rest = rest[i+len(line):]
			}
			if tc.wantErr != "" && strings.Contains(out.String(), "Running:") {
				t.Errorf("test_cmds ran after a failed copy:\n%s", out)
			}
		})
	}
}

func TestCopyDeviceAttachmentsCancelled(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	dst := t.TempDir()
	job := &events.Job{JobQueue: "q", TestData: &events.TestData{
		Attachments:  []events.Attachment{{Agent: "x.sh", Device: dst + "/x.sh"}},
		TestUsername: srv.User,
	}}
	run, _ := drivertest.NewRun(t, attachmentDevice(t, srv), job)
	writeSources(t, run.Dir, nil, map[string]srcFile{"x.sh": {[]byte("x"), 0o644}}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := drivers.CopyDeviceAttachments(ctx, run); !errors.Is(err, context.Canceled) {
		t.Errorf("CopyDeviceAttachments after cancellation = %v, want an error wrapping context.Canceled", err)
	}
	rc, err := drivers.RunTestCmds(ctx, run)
	if !errors.Is(err, context.Canceled) || rc == drivers.ExitOK {
		t.Errorf("RunTestCmds after cancellation = %d, %v; want a failure wrapping context.Canceled", rc, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "x.sh")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("x.sh copied after cancellation (%v)", err)
	}
}

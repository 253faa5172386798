package flash

import (
	"testing"

	"github.com/flingerlab/flinger/drivers/image"
)

// TestDDStderr reads what dd and the decompressors in front of it print:
// the bytes dd wrote (GNU, busybox and the simulator's summaries), whether
// dd failed, and the decompressor's message.
func TestDDStderr(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		stderr    string
		bytes     int64
		parsed    bool
		ddFailed  bool
		decompMsg string
	}{
		{"GNU dd", "0+16384 records in\n0+16384 records out\n1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.31 s, 465 MB/s\n",
			1073741824, true, false, "exited with status 1"},
		{"busybox dd", "0+16384 records in\n0+16384 records out\n1073741824 bytes (1.0GB) copied, 2.311 seconds, 443.1MB/s\n",
			1073741824, true, false, "exited with status 1"},
		{"simulator", "0+1 records in\n0+1 records out\n3145728 bytes copied, 0.043 s, 73.9 MB/s\n", 3145728, true, false, "exited with status 1"},
		{"old GNU dd", "2048+0 records in\n2048+0 records out\n1048576 bytes (1.0 MB) copied, 0.01 s, 100 MB/s\n", 1048576, true, false, "exited with status 1"},
		{"zstd corrupt", "zstd: /*stdin*\\: Data corruption detected \n0+5 records in\n0+5 records out\n327680 bytes (328 kB, 320 KiB) copied, 0.01 s, 32 MB/s\n",
			327680, true, false, `zstd: /*stdin*\: Data corruption detected`},
		{"gzip truncated", "\ngzip: stdin: unexpected end of file\n0+0 records in\n0+0 records out\n0 bytes copied, 0.001 s, 0.0 kB/s\n",
			0, true, false, "gzip: stdin: unexpected end of file"},
		{"dd I/O error", "dd: error writing '/dev/sda': Input/output error\n0+1 records in\n0+0 records out\n0 bytes copied\n", 0, true, true,
			"dd: error writing '/dev/sda': Input/output error"},
		{"dd cannot open", "dd: failed to open '/dev/sdz': No such file or directory\n", 0, false, true, "dd: failed to open '/dev/sdz': No such file or directory"},
		{"sudo", "sudo: a terminal is required to read the password\n", 0, false, true, "sudo: a terminal is required to read the password"},
		{"dd warning only", "dd: warning: partial read (65536 bytes); suggest iflag=fullblock\n10 bytes copied\n", 10, true, false,
			"dd: warning: partial read (65536 bytes); suggest iflag=fullblock"},
		{"nothing", "", 0, false, false, "exited with status 1"},
		{"two summaries, the last counts", "5 bytes copied\n7 bytes copied\n", 7, true, false, "exited with status 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n, ok := ddBytes(tc.stderr)
			if n != tc.bytes || ok != tc.parsed {
				t.Errorf("ddBytes = %d, %v; want %d, %v", n, ok, tc.bytes, tc.parsed)
			}
			if got := ddFailed(tc.stderr); got != tc.ddFailed {
				t.Errorf("ddFailed = %v, want %v", got, tc.ddFailed)
			}
			if got := decompressorMessage(tc.stderr, 1); got != tc.decompMsg {
				t.Errorf("decompressorMessage = %q, want %q", got, tc.decompMsg)
			}
		})
	}
}

// TestMissingCommand tells a far side without the decompressor, or
// without bash, from other failures with status 127.
func TestMissingCommand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		remote bool
		code   int
		stderr string
		want   string
	}{
		{"bash's message", true, 127, "bash: line 1: zstdcat: command not found\n0+0 records in\n0+0 records out\n0 bytes copied, 0 s, 0 kB/s\n", "zstdcat"},
		{"dash's message", true, 127, "sh: 1: zstdcat: not found\n", "zstdcat"},
		{"no bash", true, 127, "sh: 1: bash: not found\n", "bash"},
		{"no sudo", true, 127, "bash: line 1: sudo: command not found\n", ""},
		{"dd wrote something", true, 127, "bash: line 1: zstdcat: command not found\n1024 bytes copied\n", ""},
		{"another status", true, 1, "bash: line 1: zstdcat: command not found\n", ""},
		{"decompressed here", false, 127, "bash: line 1: zstdcat: command not found\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := &sink{stderr: &tailBuffer{}, format: image.Zstd, code: tc.code}
			s.remote.Store(tc.remote)
			_, _ = s.stderr.Write([]byte(tc.stderr))
			if got := s.missingCommand(); got != tc.want {
				t.Errorf("missingCommand = %q, want %q", got, tc.want)
			}
		})
	}
}

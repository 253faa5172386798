package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/flingerlab/flinger/drivers/flash"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

func init() {
	Register(Figure{Name: "provision", Title: "Provisioning throughput: a 1 GiB zstd image through the muxpi write path, against Testflinger's way and OpenSSH's ceiling", Order: 50, Run: runProvision})
}

// provisionParams size the provision figure.
type provisionParams struct {
	// size is the uncompressed image's size in bytes.
	size int64
	// devices is how many simulated control hosts provision at once in
	// the shared-cache measurement.
	devices int
	// trials is how many times every path is measured.
	trials int
	// profiles is where CPU profiles go ("": none are taken).
	profiles string
}

// program is a program a figure runs and the Debian package it comes from.
type program struct{ name, pkg string }

// provisionPrograms are the programs the provision figure runs. A missing
// one fails the figure with its package's name: `make test-deps` installs
// them.
var provisionPrograms = []program{
	{sshdPath, "openssh-server"},
	{"ssh", "openssh-client"},
	{"zstdcat", "zstd"},
	{"bash", "bash"},
	{"cat", "coreutils"},
	{"dd", "coreutils"},
}

// sshdPath is where Debian's openssh-server installs the server.
const sshdPath = "/usr/sbin/sshd"

// ddBlockSize is dd's block size on every path, as Testflinger's muxpi
// connector and drivers/flash use.
const ddBlockSize = flash.DefaultBlockSize

// fanOutDevices is how many control hosts share one image cache in the
// fan-out measurement.
const fanOutDevices = 10

// runProvision measures provisioning throughput, the way: a 1 GiB
// zstd image (64 MiB in a short run) written end to end by Flinger's
// muxpi write path (drivers/flash) beside, in the same run, Testflinger's
// way (download, then cat | ssh 'zstdcat | dd') and OpenSSH's raw
// ceiling (cat | ssh 'cat > /dev/null'), all against the same sshd; and
// ten simulated control hosts sharing one image cache, which must fetch
// the image once.
func runProvision(ctx context.Context, env *Env) (*Result, error) {
	profiles := env.Profiles
	if profiles == "" {
		profiles = filepath.Join(env.Dir, "profiles")
	}
	p := provisionParams{size: int64(env.scale(1<<30, 64<<20)), devices: fanOutDevices, trials: env.Trials, profiles: profiles}
	return provisionFigure(ctx, env, p)
}

// provisionFigure measures every path p.trials times and builds the
// figure's rows.
func provisionFigure(ctx context.Context, env *Env, p provisionParams) (*Result, error) {
	if err := requirePrograms(provisionPrograms); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	if p.trials < 1 {
		p.trials = 1
	}
	rig, err := newProvisionRig(ctx, filepath.Join(env.Dir, "provision"), p.size, env.Log)
	if err != nil {
		return nil, err
	}
	defer rig.close()
	if p.profiles != "" {
		if err := os.MkdirAll(p.profiles, 0o755); err != nil {
			return nil, fmt.Errorf("provision: profiles: %w", err)
		}
	}

	var (
		ceiling, tfWay, auto, other, simHost, fanRate, fanReqs []float64
		cpuCeiling, cpuTF, cpuAuto, cpuOther                   []float64
		autoMode, otherMode                                    string
		notes                                                  []string
	)
	mbps := func(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }
	for trial := range p.trials {
		b, err := rig.rawCeiling(ctx)
		if err != nil {
			return nil, fmt.Errorf("provision: raw OpenSSH ceiling: %w", err)
		}
		a, err := rig.testflingerWay(ctx)
		if err != nil {
			return nil, fmt.Errorf("provision: Testflinger's way: %w", err)
		}
		// The mode Auto picks is the headline; the other one is measured
		// explicitly beside it. The first trial profiles it and the
		// fan-out.
		if trial == 0 && p.profiles != "" {
			rig.profileNext = filepath.Join(p.profiles, "provision-flinger-openssh.pprof")
		}
		fa, err := rig.flingerOpenSSH(ctx, flash.Auto)
		if err != nil {
			return nil, fmt.Errorf("provision: Flinger into OpenSSH (auto): %w", err)
		}
		picked, otherM := flash.Local, flash.Remote
		if fa.remote {
			picked, otherM = flash.Remote, flash.Local
		}
		if autoMode != "" && autoMode != picked.String() {
			return nil, fmt.Errorf("provision: auto picked %s in trial %d but %s before", picked, trial+1, autoMode)
		}
		autoMode, otherMode = picked.String(), otherM.String()
		fo, err := rig.flingerOpenSSH(ctx, otherM)
		if err != nil {
			return nil, fmt.Errorf("provision: Flinger into OpenSSH (%s): %w", otherM, err)
		}
		fs, err := rig.flingerSim(ctx)
		if err != nil {
			return nil, fmt.Errorf("provision: Flinger into a simulated control host: %w", err)
		}
		if trial == 0 && p.profiles != "" {
			rig.profileNext = filepath.Join(p.profiles, "provision-fanout.pprof")
		}
		fan, err := rig.fanOut(ctx, p.devices)
		if err != nil {
			return nil, fmt.Errorf("provision: %d control hosts sharing one cache: %w", p.devices, err)
		}

		ceiling = append(ceiling, mbps(p.size, b.elapsed))
		tfWay = append(tfWay, mbps(p.size, a.elapsed))
		auto = append(auto, mbps(p.size, fa.elapsed))
		other = append(other, mbps(p.size, fo.elapsed))
		simHost = append(simHost, mbps(p.size, fs.elapsed))
		fanRate = append(fanRate, mbps(int64(p.devices)*p.size, fan.elapsed))
		fanReqs = append(fanReqs, float64(fan.requests))
		cpuCeiling, cpuTF = append(cpuCeiling, b.cpu), append(cpuTF, a.cpu)
		cpuAuto, cpuOther = append(cpuAuto, fa.cpu), append(cpuOther, fo.cpu)
		notes = append(notes, fmt.Sprintf("Trial %d (wall time, CPU time): ceiling %s, %s; Testflinger's way %s, %s (download %s, then cat | ssh %s); Flinger into OpenSSH, %s %s, %s; %s %s, %s (%s); into the simulated control host %s; %d control hosts %s for all, %d HTTP request(s).",
			trial+1, secs(b.elapsed), cpuSecs(b.cpu), secs(a.elapsed), cpuSecs(a.cpu), secs(a.download), secs(a.elapsed-a.download),
			autoMode, secs(fa.elapsed), cpuSecs(fa.cpu), otherMode, secs(fo.elapsed), cpuSecs(fo.cpu), fo.detail, secs(fs.elapsed), p.devices, secs(fan.elapsed), fan.requests))
		env.Log.Info("provision trial", "trial", trial+1, "ceiling_mb_s", ceiling[trial], "testflinger_mb_s", tfWay[trial],
			"flinger_"+autoMode+"_mb_s", auto[trial], "flinger_"+otherMode+"_mb_s", other[trial], "flinger_sim_mb_s", simHost[trial],
			"fanout_mb_s", fanRate[trial], "fanout_requests", fan.requests)
	}

	const tfName, ceilName = "Testflinger's way", "OpenSSH ceiling"
	res := &Result{Rows: []Row{
		row(fmt.Sprintf("Flinger into OpenSSH, auto (%s decompression), end to end", autoMode), "MB/s", auto, tfName, tfWay,
			"≥ 1.0× Testflinger's way", func(_, r float64) bool { return r >= 1.0 }),
		row(fmt.Sprintf("Flinger into OpenSSH, auto (%s decompression), against the ceiling", autoMode), "MB/s", auto, ceilName, ceiling,
			"≥ 0.8× the ceiling", func(_, r float64) bool { return r >= 0.8 }),
		row(fmt.Sprintf("Flinger into OpenSSH, %s decompression, end to end", otherMode), "MB/s", other, tfName, tfWay, "", nil),
		row("Flinger into a simulated control host (sim DUT), auto, end to end", "MB/s", simHost, "", nil, "", nil),
		row("Testflinger's way: download, then cat | ssh 'zstdcat | dd'", "MB/s", tfWay, "", nil, "", nil),
		row("OpenSSH ceiling: cat raw image | ssh 'cat > /dev/null'", "MB/s", ceiling, "", nil, "", nil),
		row(fmt.Sprintf("%d simulated control hosts, one image cache: HTTP requests for the image", p.devices), "requests", fanReqs, "", nil,
			"= 1", func(v, _ float64) bool { return v == 1 }),
		row(fmt.Sprintf("%d simulated control hosts, one image cache: aggregate write rate", p.devices), "MB/s", fanRate, "", nil, "", nil),
		row(fmt.Sprintf("CPU time of a write, all processes: Flinger, auto (%s)", autoMode), "s", cpuAuto, tfName, cpuTF, "", nil),
		row(fmt.Sprintf("CPU time of a write, all processes: Flinger, %s", otherMode), "s", cpuOther, tfName, cpuTF, "", nil),
		row("CPU time of the ceiling, all processes", "s", cpuCeiling, "", nil, "", nil),
	}}
	res.Notes = append(res.Notes, fmt.Sprintf("The image is a %s simulated OS image (drivers/sim: three blocks in four text, one random), compressed with zstd (klauspost/compress, default level) to %s (%.2f×), served over HTTP on loopback with Content-Length and Range (http.ServeContent). MB/s are of the uncompressed image (%d bytes ÷ seconds, 1 MB = 10⁶ bytes), end to end from the first request to dd's exit; every write is read back and its SHA-256 checked against the image after the clock stops.",
		sizeWords(p.size), sizeWords(rig.zstSize), float64(p.size)/float64(rig.zstSize), p.size))
	res.Notes = append(res.Notes, fmt.Sprintf("Flinger is drivers/flash.Write, the muxpi driver's write path, with a fresh image cache on disk each time (so the download is part of the time), dialling with drivers/sshx (x/crypto/ssh, which prefers aes128-gcm@openssh.com). \"Into OpenSSH\" is Debian's sshd on loopback running `dd of=FILE bs=%s` with FILE %s: the same server, user and target the baselines use. Auto picks %s decompression for this zstd image: %s. The simulated control host is drivers/sim's DUT (an x/crypto/ssh server in this process that hashes every byte written to its disk), so its rate is bounded by the simulator, not by Flinger.",
		ddBlockSize, rig.outWhere(), autoMode, autoWords(autoMode)))
	res.Notes = append(res.Notes, fmt.Sprintf("Testflinger's way, as its muxpi connector does it: download the URL to a local file (Go net/http standing in for Python requests), then `cat FILE | ssh HOST 'zstdcat | dd of=FILE bs=%s'` with the OpenSSH client (its default cipher, chacha20-poly1305@openssh.com), the cat and ssh processes joined by a pipe as a shell joins them. The ceiling is `cat RAW | ssh HOST 'cat > /dev/null'` with the %s uncompressed image: what OpenSSH alone carries on this machine.",
		ddBlockSize, sizeWords(p.size)))
	res.Notes = append(res.Notes, "Here the link is loopback, so every path is bound by CPU rather than by the link: decompressing on this side sends the uncompressed image through both ends of SSH, about four times the bytes that remote decompression sends.")
	res.Notes = append(res.Notes, "CPU time is user + system time of every process taking part (this one, cat, ssh, and sshd's session processes with the shell, zstdcat and dd under them, from /proc), from the first request to dd's exit: unlike the wall time it hardly moves when other work shares the machine, and on a machine whose cores are all busy it is what the wall time follows.")
	res.Notes = append(res.Notes, fmt.Sprintf("The fan-out starts %d simulated control hosts and writes the same URL into all of them at once through one shared image cache: the first write streams from the network while filling the cache, the others wait for that download and stream from the cached file. The aggregate rate is %d × the image ÷ the time until the last dd exited.", p.devices, p.devices))
	res.Notes = append(res.Notes, notes...)
	for _, f := range rig.profiled {
		what := "Flinger's write into OpenSSH (auto, first trial): this process (HTTP server, download, cache, decompression, SSH client); sshd and dd run in their own processes"
		if autoMode == flash.Remote.String() {
			what = "Flinger's write into OpenSSH (auto, first trial): this process (HTTP server, download, cache, SSH client); sshd, zstdcat and dd run in their own processes"
		}
		if strings.Contains(f, "fanout") {
			what = fmt.Sprintf("the %d-host fan-out (first trial): this process, simulated control hosts included", p.devices)
		}
		res.Notes = append(res.Notes, fmt.Sprintf("CPU profile of %s, top functions:\n\n```\n%s\n```", what, pprofTop(ctx, f, 15)))
	}
	return res, nil
}

// autoWords explains the mode Auto picks for the zstd image.
func autoWords(mode string) string {
	if mode == flash.Local.String() {
		return "the lab host decompresses and sends the raw image, so the SSH link carries the uncompressed bytes"
	}
	return "zstd and gzip images are sent as served and decompressed on the control host (`bash -o pipefail -c 'zstdcat | dd ...'`, started as soon as the first bytes show the format, while the same download fills the image cache and the SSH stream carries it: nothing waits for the whole download), since zstdcat and zcat are fast even on the small ARM boards control hosts are and four times fewer bytes cross SSH; xz and bzip2, slow on such boards, are decompressed here. The device key decompress (local or remote) overrides Auto; the other side is measured beside it"
}

// secs says a duration in seconds.
func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// cpuSecs says CPU seconds.
func cpuSecs(v float64) string { return fmt.Sprintf("%.2f s CPU", v) }

// sizeWords says a size in MiB or GiB.
func sizeWords(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// requirePrograms checks that progs are installed (an absolute name
// at that path, others on PATH), naming the Debian packages of those that
// are not.
func requirePrograms(progs []program) error {
	var missing, pkgs []string
	for _, p := range progs {
		var err error
		if filepath.IsAbs(p.name) {
			_, err = os.Stat(p.name)
		} else {
			_, err = exec.LookPath(p.name)
		}
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", p.name, p.pkg))
			if !slices.Contains(pkgs, p.pkg) {
				pkgs = append(pkgs, p.pkg)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: run `make test-deps`, or apt-get install %s", strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
	return nil
}

// provisionRig is what every path of a run shares: the image, its HTTP
// server, the OpenSSH server and the keys.
type provisionRig struct {
	log   *slog.Logger
	quiet *slog.Logger
	// dir is the scratch directory (on disk): the image files, downloads
	// and image caches.
	dir string
	// outDir receives the files dd writes through OpenSSH (tmpfs when the
	// machine has one, so that the figure measures the path rather than
	// the disk).
	outDir   string
	outTmpfs bool
	image    sim.Image
	size     int64
	sha      string // the uncompressed image's sha256
	rawPath  string // the uncompressed image
	zstPath  string // the zstd image the server serves
	zstSize  int64
	srv      *imageServer
	sshd     *opensshd
	signer   ssh.Signer // the key the simulated control hosts accept
	seq      atomic.Int64
	// profileNext, when set, is where the next measurement writes a CPU
	// profile of its timed part; profiled lists the profiles written.
	profileNext string
	profiled    []string
}

// meter times one measurement and the CPU time it costs every process
// taking part, and profiles this process meanwhile when profileNext
// asks for it.
type meter struct {
	r        *provisionRig
	start    time.Time
	self0    float64 // this process and its reaped children (cat, ssh)
	sshd0    float64 // sshd and its reaped session processes
	elapsed  time.Duration
	selfCPU  float64
	prof     *os.File
	profPath string
	stopped  bool
}

// startMeter starts a measurement.
func (r *provisionRig) startMeter() *meter {
	m := &meter{r: r, profPath: r.profileNext}
	r.profileNext = ""
	if m.profPath != "" {
		var err error
		if m.prof, err = os.Create(m.profPath); err != nil {
			r.log.Warn("provision: no CPU profile", "err", err)
		} else if err := pprof.StartCPUProfile(m.prof); err != nil {
			// Another profile of the whole process is being taken.
			r.log.Warn("provision: no CPU profile", "err", err)
			_ = m.prof.Close()
			_ = os.Remove(m.profPath)
			m.prof = nil
		}
	}
	m.self0, _ = procCPU("self")
	m.sshd0 = r.sshdCPU()
	m.start = time.Now()
	return m
}

// stop stops the clock (and the profile) and returns the time measured;
// calling it again (as deferred) returns the same.
func (m *meter) stop() time.Duration {
	if m.stopped {
		return m.elapsed
	}
	m.stopped = true
	m.elapsed = time.Since(m.start)
	self, _ := procCPU("self")
	m.selfCPU = self - m.self0
	if m.prof != nil {
		pprof.StopCPUProfile()
		if err := m.prof.Close(); err == nil {
			m.r.profiled = append(m.r.profiled, m.profPath)
		}
	}
	return m.elapsed
}

// cpu returns the CPU seconds the measurement cost: this process and its
// children until stop, plus the sshd sessions, once sshd has reaped them.
func (m *meter) cpu(ctx context.Context) float64 {
	m.stop()
	return m.selfCPU + m.r.sshdSettled(ctx) - m.sshd0
}

// clockTicks is the unit of the times in /proc/PID/stat (USER_HZ, 100 on
// every Linux architecture).
const clockTicks = 100

// procCPU returns the user and system CPU seconds of process pid ("self"
// for this one) and of its children it has waited for, from
// /proc/PID/stat (Linux).
func procCPU(pid string) (float64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	// After the command come state (field 3) ... utime (14), stime (15),
	// cutime (16), cstime (17).
	f := strings.Fields(s[i+2:])
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	var ticks float64
	for _, x := range f[11:15] {
		v, err := strconv.ParseFloat(x, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%s/stat: %w", pid, err)
		}
		ticks += v
	}
	return ticks / clockTicks, nil
}

// sshdCPU returns the CPU seconds of sshd and the sessions it has reaped.
func (r *provisionRig) sshdCPU() float64 {
	if r.sshd == nil || r.sshd.cmd == nil {
		return 0
	}
	v, _ := procCPU(strconv.Itoa(r.sshd.cmd.Process.Pid))
	return v
}

// sshdSettled waits (up to sshdReapTimeout) until sshd has no session
// processes left, so that their CPU time is in its children's, and
// returns sshdCPU.
func (r *provisionRig) sshdSettled(ctx context.Context) float64 {
	if r.sshd == nil || r.sshd.cmd == nil {
		return 0
	}
	pid := strconv.Itoa(r.sshd.cmd.Process.Pid)
	children := "/proc/" + pid + "/task/" + pid + "/children"
	deadline := time.Now().Add(sshdReapTimeout)
	for {
		b, err := os.ReadFile(children)
		if err != nil || len(strings.TrimSpace(string(b))) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			if err == nil && len(strings.TrimSpace(string(b))) > 0 {
				r.log.Warn("provision: sshd sessions still running; their CPU time is left out", "pids", strings.TrimSpace(string(b)))
			}
			return r.sshdCPU()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sshdReapTimeout bounds the wait for sshd's sessions to end after a
// measurement.
const sshdReapTimeout = 5 * time.Second

// newProvisionRig writes the image (size bytes uncompressed) and its zstd
// form into dir and starts the HTTP and OpenSSH servers.
func newProvisionRig(ctx context.Context, dir string, size int64, log *slog.Logger) (_ *provisionRig, err error) {
	r := &provisionRig{log: log, quiet: slog.New(slog.DiscardHandler), dir: dir, size: size}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	// Written files go to tmpfs when it has room for one (a container's
	// /dev/shm may be 64 MiB), next to the image otherwise.
	outParent := dir
	if free, err := freeBytes("/dev/shm"); err == nil && free > size+64<<20 {
		outParent, r.outTmpfs = "/dev/shm", true
	}
	if r.outDir, err = os.MkdirTemp(outParent, "flinger-bench-provision-"); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	start := time.Now()
	r.image = sim.Image{OSRelease: sim.UbuntuRelease("24.04", "noble"), Kind: "ubuntu", Size: size, Seed: 1}
	r.rawPath, r.zstPath = filepath.Join(dir, "image.img"), filepath.Join(dir, "image.img.zst")
	if r.sha, r.zstSize, err = writeImage(ctx, r.image, r.rawPath, r.zstPath); err != nil {
		return nil, fmt.Errorf("provision: making the image: %w", err)
	}
	log.Info("provision: image ready", "bytes", size, "zstd_bytes", r.zstSize, "took", time.Since(start).Round(time.Millisecond))
	if r.srv, err = startImageServer(r.zstPath); err != nil {
		return nil, fmt.Errorf("provision: image server: %w", err)
	}
	if r.sshd, err = startOpenSSHD(ctx); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("provision: key: %w", err)
	}
	if r.signer, err = ssh.NewSignerFromKey(priv); err != nil {
		return nil, fmt.Errorf("provision: key: %w", err)
	}
	return r, nil
}

// close stops the servers and removes every file the rig made.
func (r *provisionRig) close() {
	if r.sshd != nil {
		r.sshd.close()
	}
	if r.srv != nil {
		r.srv.close()
	}
	if r.outDir != "" {
		_ = os.RemoveAll(r.outDir)
	}
	_ = os.RemoveAll(r.dir)
}

// freeBytes returns the space left to unprivileged users on the file
// system holding path.
func freeBytes(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(uint64(st.Bavail) * uint64(st.Bsize)), nil
}

// writeImage writes im uncompressed to rawPath and zstd-compressed
// (klauspost/compress, default level) to zstPath, and returns the
// uncompressed sha256 and the compressed size.
func writeImage(ctx context.Context, im sim.Image, rawPath, zstPath string) (sum string, zsize int64, err error) {
	raw, err := os.Create(rawPath)
	if err != nil {
		return "", 0, err
	}
	defer raw.Close()
	zf, err := os.Create(zstPath)
	if err != nil {
		return "", 0, err
	}
	defer zf.Close()
	enc, err := zstd.NewWriter(zf)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(raw, h, enc), &ctxReader{ctx: ctx, r: im.Reader()}); err != nil {
		_ = enc.Close()
		return "", 0, err
	}
	if err := enc.Close(); err != nil {
		return "", 0, err
	}
	for _, f := range []*os.File{raw, zf} {
		if err := f.Close(); err != nil {
			return "", 0, err
		}
	}
	st, err := os.Stat(zstPath)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), st.Size(), nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// outWhere says where the files written through OpenSSH are.
func (r *provisionRig) outWhere() string {
	if r.outTmpfs {
		return "on tmpfs"
	}
	return "on the scratch disk (/dev/shm has no room for the image)"
}

// url is where the server serves the compressed image.
func (r *provisionRig) url() string { return r.srv.url }

// pathTimeout bounds one measurement of n bytes: generous (10 MiB/s),
// so that only a hung path trips it.
func pathTimeout(n int64) time.Duration { return 2*time.Minute + time.Duration(n/(10<<20))*time.Second }

// written is what a path wrote, as read back.
type written struct {
	bytes  int64
	sha256 string
}

// pathRun is one measurement of one path.
type pathRun struct {
	// elapsed is the time end to end.
	elapsed time.Duration
	// download is the part of it spent downloading, when that comes first.
	download time.Duration
	// cpu is the CPU seconds it cost, all processes taking part together.
	cpu float64
	// written is what reached the target (bytes only for the ceiling).
	written written
	// remote reports that the image was decompressed on the far side.
	remote bool
	// detail says what happened, in a few words.
	detail string
}

// check compares what a path wrote with the image.
func (r *provisionRig) check(what string, w written) error {
	if w.bytes != r.size || w.sha256 != r.sha {
		return fmt.Errorf("%s wrote %d bytes with sha256 %s; the image is %d bytes with sha256 %s", what, w.bytes, w.sha256, r.size, r.sha)
	}
	return nil
}

// outFile returns a new file name in the output directory.
func (r *provisionRig) outFile(what string) string {
	return filepath.Join(r.outDir, fmt.Sprintf("%s-%d.img", what, r.seq.Add(1)))
}

// scratch returns a new directory under the scratch directory.
func (r *provisionRig) scratch(what string) (string, error) {
	d := filepath.Join(r.dir, fmt.Sprintf("%s-%d", what, r.seq.Add(1)))
	return d, os.MkdirAll(d, 0o755)
}

// rawCeiling times `cat RAW | ssh HOST 'cat > /dev/null'`.
func (r *provisionRig) rawCeiling(ctx context.Context) (pathRun, error) {
	ctx, cancel := context.WithTimeout(ctx, pathTimeout(r.size))
	defer cancel()
	m := r.startMeter()
	defer m.stop()
	if err := catIntoSSH(ctx, r.rawPath, r.sshd.sshArgv("cat > /dev/null")); err != nil {
		return pathRun{}, err
	}
	return pathRun{elapsed: m.stop(), cpu: m.cpu(ctx), written: written{bytes: r.size}}, nil
}

// testflingerWay times Testflinger's muxpi write: the image downloaded to
// a local file, then `cat FILE | ssh HOST 'zstdcat | dd of=OUT bs=16M'`.
func (r *provisionRig) testflingerWay(ctx context.Context) (pathRun, error) {
	ctx, cancel := context.WithTimeout(ctx, pathTimeout(r.size))
	defer cancel()
	dir, err := r.scratch("testflinger")
	if err != nil {
		return pathRun{}, err
	}
	defer os.RemoveAll(dir)
	local, out := filepath.Join(dir, "image.img.zst"), r.outFile("testflinger")
	defer os.Remove(out)
	remote, err := sshx.Command([]string{"dd", "of=" + out, "bs=" + ddBlockSize})
	if err != nil {
		return pathRun{}, err
	}
	m := r.startMeter()
	defer m.stop()
	start := time.Now()
	if err := download(ctx, r.url(), local); err != nil {
		return pathRun{}, err
	}
	dl := time.Since(start)
	if err := catIntoSSH(ctx, local, r.sshd.sshArgv("zstdcat | "+remote)); err != nil {
		return pathRun{}, err
	}
	run := pathRun{elapsed: m.stop(), cpu: m.cpu(ctx), download: dl}
	if run.written, err = hashFile(out); err != nil {
		return pathRun{}, err
	}
	return run, r.check("Testflinger's way", run.written)
}

// download fetches url into path, as Testflinger does before writing.
func download(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("downloading the image: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("downloading the image: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return fmt.Errorf("downloading the image: %w", err)
	}
	return f.Close()
}

// catIntoSSH runs `cat file | ssh ...` as a shell would: two processes
// joined by a pipe.
func catIntoSSH(ctx context.Context, file string, sshArgv []string) error {
	if len(sshArgv) == 0 {
		return errors.New("no ssh command")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cat := exec.CommandContext(ctx, "cat", file)
	cat.Stdout = pw
	catErr := &tail{}
	cat.Stderr = catErr
	cl := exec.CommandContext(ctx, sshArgv[0], sshArgv[1:]...)
	cl.Stdin = pr
	sshErr := &tail{}
	cl.Stderr = sshErr
	if err := cat.Start(); err != nil {
		_, _ = pr.Close(), pw.Close()
		return fmt.Errorf("starting cat: %w", err)
	}
	if err := cl.Start(); err != nil {
		_, _ = pr.Close(), pw.Close()
		_ = cat.Wait()
		return fmt.Errorf("starting ssh: %w", err)
	}
	// The children hold their ends now.
	_, _ = pr.Close(), pw.Close()
	sshRes, catRes := cl.Wait(), cat.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if sshRes != nil {
		return fmt.Errorf("ssh: %w: %s", sshRes, strings.TrimSpace(sshErr.String()))
	}
	if catRes != nil {
		return fmt.Errorf("cat: %w: %s", catRes, strings.TrimSpace(catErr.String()))
	}
	return nil
}

// tail keeps the last 4 KiB written to it.
type tail struct {
	mu sync.Mutex
	b  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// hashFile returns a file's size and sha256.
func hashFile(path string) (written, error) {
	f, err := os.Open(path)
	if err != nil {
		return written{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return written{}, err
	}
	return written{bytes: n, sha256: hex.EncodeToString(h.Sum(nil))}, nil
}

// newCache opens a fresh image cache under the scratch directory; the
// returned function closes and removes it.
func (r *provisionRig) newCache() (*image.Cache, func(), error) {
	dir, err := r.scratch("cache")
	if err != nil {
		return nil, nil, err
	}
	c, err := image.NewCache(dir, 0, nil, r.quiet)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, err
	}
	return c, func() { _ = c.Close(); _ = os.RemoveAll(dir) }, nil
}

// flingerOpenSSH times drivers/flash.Write from the URL, through a fresh
// cache, into dd on the OpenSSH server, decompressing as mode says.
func (r *provisionRig) flingerOpenSSH(ctx context.Context, mode flash.Mode) (pathRun, error) {
	ctx, cancel := context.WithTimeout(ctx, pathTimeout(r.size))
	defer cancel()
	cache, done, err := r.newCache()
	if err != nil {
		return pathRun{}, err
	}
	defer done()
	out := r.outFile("flinger-" + mode.String())
	defer os.Remove(out)
	m := r.startMeter()
	defer m.stop()
	c, err := sshx.Dial(ctx, r.sshd.config(), "openssh-host")
	if err != nil {
		return pathRun{}, err
	}
	defer c.Close()
	res, err := flash.Write(ctx, c, image.Source{URL: r.url()}, flash.Options{Device: out, Decompress: mode, Cache: cache, Log: r.quiet})
	if err != nil {
		return pathRun{}, err
	}
	run := pathRun{elapsed: m.stop(), remote: res.Remote}
	// The session must end for sshd to account for it.
	_ = c.Close()
	run.cpu = m.cpu(ctx)
	run.detail = "decompressed here"
	if res.Remote {
		run.detail = fmt.Sprintf("%s streamed compressed while downloading, decompressed by zstdcat", sizeWords(res.BytesIn))
	}
	if run.written, err = hashFile(out); err != nil {
		return pathRun{}, err
	}
	return run, r.check("Flinger ("+mode.String()+")", run.written)
}

// controlHost is a simulated control host with a disk at /dev/sda.
type controlHost struct {
	dut  *sim.DUT
	disk *sim.Disk
	cfg  sshx.Config
}

// simDevice is the disk's device node on a simulated control host.
const simDevice = "/dev/sda"

// startControlHost starts a simulated control host (drivers/sim) that
// accepts the rig's key, with its host key recorded on first use in a
// directory of its own.
func (r *provisionRig) startControlHost(ctx context.Context, name string) (*controlHost, error) {
	disk := sim.NewDisk(simDevice, 0)
	dut, err := sim.StartDUT(ctx, sim.DUTOptions{Name: name, AuthorizedKeys: []ssh.PublicKey{r.signer.PublicKey()},
		Disks: map[string]*sim.Disk{simDevice: disk}, Log: r.quiet})
	if err != nil {
		return nil, err
	}
	tofu, err := r.scratch("known-" + name)
	if err != nil {
		dut.Close()
		return nil, err
	}
	return &controlHost{dut: dut, disk: disk, cfg: sshx.Config{Addr: dut.Addr(), User: "ubuntu", Signers: []ssh.Signer{r.signer},
		HostKeys: sshx.TOFU(tofu), DialTimeout: 15 * time.Second, Log: r.quiet}}, nil
}

// written returns what the host's disk holds.
func (h *controlHost) written() (written, error) {
	last := h.disk.Last()
	if !last.Complete {
		return written{}, fmt.Errorf("%s: the write did not complete: %v", h.disk.Name(), last.Err)
	}
	return written{bytes: last.Bytes, sha256: last.SHA256}, nil
}

// flashHost dials h and writes the image into its disk.
func (r *provisionRig) flashHost(ctx context.Context, h *controlHost, name string, cache *image.Cache) (flash.Result, error) {
	c, err := sshx.Dial(ctx, h.cfg, name)
	if err != nil {
		return flash.Result{}, err
	}
	defer c.Close()
	return flash.Write(ctx, c, image.Source{URL: r.url()}, flash.Options{Device: simDevice, Cache: cache, Log: r.quiet})
}

// flingerSim times drivers/flash.Write from the URL, through a fresh
// cache, into a simulated control host.
func (r *provisionRig) flingerSim(ctx context.Context) (pathRun, error) {
	ctx, cancel := context.WithTimeout(ctx, pathTimeout(r.size))
	defer cancel()
	cache, done, err := r.newCache()
	if err != nil {
		return pathRun{}, err
	}
	defer done()
	h, err := r.startControlHost(ctx, "control")
	if err != nil {
		return pathRun{}, err
	}
	defer h.dut.Close()
	m := r.startMeter()
	defer m.stop()
	res, err := r.flashHost(ctx, h, "control", cache)
	if err != nil {
		return pathRun{}, err
	}
	run := pathRun{elapsed: m.stop(), cpu: m.cpu(ctx), remote: res.Remote}
	if run.written, err = h.written(); err != nil {
		return pathRun{}, err
	}
	return run, r.check("Flinger (simulated control host)", run.written)
}

// fanRun is one fan-out measurement.
type fanRun struct {
	elapsed  time.Duration
	requests int64
	written  []written
}

// fanOut times n concurrent writes of the URL into n simulated control
// hosts through one fresh cache, and counts the server's requests.
func (r *provisionRig) fanOut(ctx context.Context, n int) (fanRun, error) {
	ctx, cancel := context.WithTimeout(ctx, pathTimeout(int64(n)*r.size))
	defer cancel()
	cache, done, err := r.newCache()
	if err != nil {
		return fanRun{}, err
	}
	defer done()
	hosts := make([]*controlHost, n)
	for i := range hosts {
		if hosts[i], err = r.startControlHost(ctx, fmt.Sprintf("control-%02d", i)); err != nil {
			return fanRun{}, err
		}
		defer hosts[i].dut.Close()
	}
	before := r.srv.requests.Load()
	errs := make([]error, n)
	var wg sync.WaitGroup
	m := r.startMeter()
	defer m.stop()
	for i, h := range hosts {
		wg.Go(func() {
			_, errs[i] = r.flashHost(ctx, h, fmt.Sprintf("control-%02d", i), cache)
		})
	}
	wg.Wait()
	run := fanRun{elapsed: m.stop(), requests: r.srv.requests.Load() - before}
	if err := errors.Join(errs...); err != nil {
		return fanRun{}, err
	}
	for i, h := range hosts {
		w, err := h.written()
		if err == nil {
			err = r.check(fmt.Sprintf("Flinger (control host %d of %d)", i+1, n), w)
		}
		if err != nil {
			return fanRun{}, err
		}
		run.written = append(run.written, w)
	}
	return run, nil
}

// imageServer serves one file over HTTP on loopback and counts the
// requests for it.
type imageServer struct {
	srv      *http.Server
	url      string
	requests atomic.Int64
}

// imagePath is the URL path of the served image.
const imagePath = "/image.img.zst"

// startImageServer serves the file at path as imagePath on a loopback
// port.
func startImageServer(path string) (*imageServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &imageServer{url: "http://" + ln.Addr().String() + imagePath}
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != imagePath {
			http.NotFound(w, req)
			return
		}
		s.requests.Add(1)
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		http.ServeContent(w, req, filepath.Base(imagePath), st.ModTime(), f)
	})}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// close stops the server, giving requests in flight a few seconds.
func (s *imageServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
}

// opensshd is Debian's OpenSSH server on a loopback port, letting in only
// the user running the benchmark, with a key of its own; its host key is
// pinned for both clients (sshx and the ssh program). It reads none of
// the user's or the system's SSH files.
type opensshd struct {
	dir        string
	addr       string
	port       int
	user       string
	keyFile    string
	signer     ssh.Signer
	knownHosts string
	logPath    string
	cmd        *exec.Cmd
	done       chan struct{}
}

// How long sshd is given to start and to stop.
const (
	sshdStartTimeout = 20 * time.Second
	sshdStopTimeout  = 10 * time.Second
)

// startOpenSSHD starts sshd, as the user running the benchmark, on a free
// loopback port, with keys of its own in a new temporary directory.
func startOpenSSHD(ctx context.Context) (_ *opensshd, err error) {
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("sshd: current user: %w", err)
	}
	if os.Geteuid() == 0 {
		// sshd running as root needs its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("sshd: %w", err)
		}
	}
	// A short path of its own: it goes in sshd_config.
	dir, err := os.MkdirTemp("", "flinger-bench-sshd-")
	if err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	s := &opensshd{dir: dir, user: u.Username, keyFile: filepath.Join(dir, "user_key"), knownHosts: filepath.Join(dir, "known_hosts"), logPath: filepath.Join(dir, "sshd.log")}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	var userPub ssh.PublicKey
	if s.signer, userPub, err = writeSSHKey(s.keyFile); err != nil {
		return nil, fmt.Errorf("sshd: user key: %w", err)
	}
	authKeys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authKeys, ssh.MarshalAuthorizedKey(userPub), 0o600); err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	hostKey := filepath.Join(dir, "host_ed25519_key")
	_, hostPub, err := writeSSHKey(hostKey)
	if err != nil {
		return nil, fmt.Errorf("sshd: host key: %w", err)
	}
	// A free port may be taken between finding and binding it (even by
	// another SSH server): try again unless this server answers with its
	// own host key.
	for try := 1; ; try++ {
		if err = s.listen(ctx, hostKey, hostPub, authKeys); err == nil {
			return s, nil
		}
		if try == 3 || ctx.Err() != nil {
			return nil, fmt.Errorf("starting %s: %w\n%s", sshdPath, err, s.logTail())
		}
	}
}

// listen starts sshd on a free port and checks that it is this server
// that answers there.
func (s *opensshd) listen(ctx context.Context, hostKey string, hostPub ssh.PublicKey, authKeys string) error {
	var err error
	if s.port, err = freeLoopbackPort(); err != nil {
		return err
	}
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	line := knownhosts.Line([]string{s.addr}, hostPub) + "\n"
	if err := os.WriteFile(s.knownHosts, []byte(line), 0o600); err != nil {
		return err
	}
	if err := s.start(ctx, hostKey, authKeys); err != nil {
		return err
	}
	c, err := sshx.Dial(ctx, s.config(), "openssh-host")
	if err != nil {
		s.stop()
		return err
	}
	return c.Close()
}

// writeSSHKey generates an ed25519 key, writes it to path in OpenSSH's
// format, and returns it.
func writeSSHKey(path string) (ssh.Signer, ssh.PublicKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "flinger-bench")
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return signer, signer.PublicKey(), nil
}

// freeLoopbackPort returns a loopback TCP port that was free a moment ago.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start writes sshd_config, runs sshd and waits until it answers.
func (s *opensshd) start(ctx context.Context, hostKey, authKeys string) error {
	var b strings.Builder
	for _, l := range []string{
		"Port " + strconv.Itoa(s.port),
		"ListenAddress 127.0.0.1",
		"HostKey " + strconv.Quote(hostKey),
		"PidFile none",
		"AuthorizedKeysFile " + strconv.Quote(authKeys),
		"AllowUsers " + s.user,
		"StrictModes no",
		"UsePAM no",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"PermitUserEnvironment no",
		"UseDNS no",
		"PrintMotd no",
		"PrintLastLog no",
		"X11Forwarding no",
		"MaxStartups 100",
		"MaxSessions 100",
	} {
		b.WriteString(l + "\n")
	}
	cfg := filepath.Join(s.dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Not CommandContext: close stops it, after every connection is done.
	cmd := exec.Command(sshdPath, "-D", "-e", "-f", cfg)
	// A file, not a pipe, so that Wait does not wait for the connection
	// processes, which inherit it.
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(sshdStartTimeout)
	for {
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("sshd exited at start: %v", cmd.ProcessState)
		case <-ctx.Done():
			s.stop()
			return ctx.Err()
		default:
		}
		if sshx.Answers(context.Background(), s.addr, 2*time.Second) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("sshd did not answer on %s within %v", s.addr, sshdStartTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the sshd process: SIGTERM, then SIGKILL.
func (s *opensshd) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(sshdStopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// close stops sshd and removes its directory.
func (s *opensshd) close() {
	s.stop()
	_ = os.RemoveAll(s.dir)
}

// logTail returns the end of sshd's log.
func (s *opensshd) logTail() string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return ""
	}
	if len(data) > 2048 {
		data = data[len(data)-2048:]
	}
	return "sshd log:\n" + string(data)
}

// config is how sshx reaches the server.
func (s *opensshd) config() sshx.Config {
	return sshx.Config{Addr: s.addr, User: s.user, Signers: []ssh.Signer{s.signer},
		HostKeys: sshx.PinnedKnownHosts(s.knownHosts), DialTimeout: 15 * time.Second}
}

// sshArgv is the OpenSSH client's command running remote on the server,
// with its compiled-in defaults (no configuration file, no agent).
func (s *opensshd) sshArgv(remote string) []string {
	return []string{"ssh", "-F", "/dev/null",
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + s.knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
		"-i", s.keyFile, "-p", strconv.Itoa(s.port), "-l", s.user, "127.0.0.1", remote}
}

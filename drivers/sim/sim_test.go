package sim_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sim"
	"github.com/flingerlab/flinger/drivers/sshx"
)

const (
	bootTime  = 300 * time.Millisecond
	osRelease = "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\n"
)

func start(t *testing.T, f sim.Faults) *sim.DUT {
	t.Helper()
	return startBooting(t, f, bootTime)
}

// startBooting starts a DUT that takes boot to boot.
func startBooting(t *testing.T, f sim.Faults, boot time.Duration) *sim.DUT {
	t.Helper()
	d, err := sim.StartDUT(t.Context(), sim.DUTOptions{
		Name: "sim-1", BootTime: boot, Users: map[string]string{"ubuntu": "ubuntu"},
		OSRelease: osRelease, Model: "ubuntu-core-24-amd64", Faults: f,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func config(d *sim.DUT, store sshx.HostKeyPolicy) sshx.Config {
	return sshx.Config{Addr: d.Addr(), User: "ubuntu", Password: "ubuntu", HostKeys: store, DialTimeout: 3 * time.Second, KeepAlive: -1}
}

func dial(t *testing.T, d *sim.DUT, store sshx.HostKeyPolicy) (*sshx.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := sshx.Dial(ctx, config(d, store), "sim-1")
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

func mustDial(t *testing.T, d *sim.DUT, store sshx.HostKeyPolicy) *sshx.Client {
	t.Helper()
	c, err := dial(t, d, store)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return c
}

func run(t *testing.T, c *sshx.Client, argv ...string) (string, string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code, err := c.Run(ctx, argv, &out, &errb)
	return out.String(), errb.String(), code, err
}

// raw runs a command line as sent, without sshx quoting it.
func raw(t *testing.T, c *sshx.Client, line string) (string, string, int) {
	t.Helper()
	s, err := c.SSH().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr = &out, &errb
	err = s.Run(line)
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitStatus()
	}
	t.Fatalf("%s: %v", line, err)
	return "", "", -1
}

func TestCommands(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	dir := t.TempDir()
	pwned := filepath.Join(dir, "PWNED")
	for _, tc := range []struct {
		argv        []string
		out, errSub string
		code        int
	}{
		{[]string{"true"}, "", "", 0},
		{[]string{"/bin/true"}, "", "", 0},
		{[]string{"false"}, "", "", 1},
		{[]string{"echo", "hello", "two words"}, "hello two words\n", "", 0},
		{[]string{"echo", "$(touch " + pwned + ")", "`touch " + pwned + "`", "; touch " + pwned, "it's"}, "$(touch " + pwned + ") `touch " + pwned + "` ; touch " + pwned + " it's\n", "", 0},
		{[]string{"cat", "/etc/os-release"}, osRelease, "", 0},
		{[]string{"cat", "/etc/shadow"}, "", "No such file", 1},
		{[]string{"snap", "model"}, "brand-id: canonical\nmodel: ubuntu-core-24-amd64\nserial: sim-1\n", "", 0},
		{[]string{"uname", "-s"}, "Linux\n", "", 0},
		{[]string{"uname", "-a"}, "Linux sim-1 6.8.0-sim #1 SMP PREEMPT_DYNAMIC x86_64 x86_64 x86_64 GNU/Linux\n", "", 0},
		{[]string{"hostname"}, "sim-1\n", "", 0},
		{[]string{"sleep", "0.05"}, "", "", 0},
		{[]string{"sleep", "soon"}, "", "invalid time interval", 1},
		{[]string{"exit", "3"}, "", "", 3},
		{[]string{"sudo", "exit", "7"}, "", "", 7},
		{[]string{"wget", "http://example.invalid/x"}, "", "wget: command not found", 127},
		{[]string{"touch " + pwned}, "", "command not found", 127},
	} {
		t.Run(strings.Join(tc.argv, " "), func(t *testing.T) {
			out, errs, code, err := run(t, c, tc.argv...)
			if code != tc.code || out != tc.out || !strings.Contains(errs, tc.errSub) {
				t.Errorf("got %q, stderr %q, exit %d (%v); want %q, stderr with %q, exit %d", out, errs, code, err, tc.out, tc.errSub, tc.code)
			}
			if (err == nil) != (tc.code == 0) {
				t.Errorf("err = %v with exit %d", err, code)
			}
		})
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("an argument was interpreted: %s exists", pwned)
	}
	if got := d.Commands(); !slices.Contains(got, "hostname") || slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "flinger-pgid") }) {
		t.Errorf("Commands() = %q", got)
	}

	d.WriteImage("ID=debian\n", "")
	if out, _, code, _ := run(t, c, "cat", "/etc/os-release"); out != "ID=debian\n" || code != 0 {
		t.Errorf("after WriteImage: os-release %q", out)
	}
	if _, errs, code, _ := run(t, c, "snap", "model"); code != 1 || !strings.Contains(errs, "no assertions") {
		t.Errorf("snap model with no model: exit %d, %q", code, errs)
	}
}

func TestRawQuoting(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	for _, tc := range []struct {
		line, out string
		code      int
	}{
		{`echo "a  b" 'c d' e\ f "q\"x"`, "a  b c d e f q\"x\n", 0},
		{`echo '$(id)' "\$HOME"`, "$(id) $HOME\n", 0},
		{`echo $(id)`, "", 2},
		{`echo "$HOME"`, "", 2},
		{`true; touch x`, "", 2},
		{`true && false`, "", 2},
		{`echo 'open`, "", 2},
		{`shutdown -r later`, "", 1},
		{``, "", 0},
	} {
		out, _, code := raw(t, c, tc.line)
		if out != tc.out || code != tc.code {
			t.Errorf("%s: %q, exit %d; want %q, exit %d", tc.line, out, code, tc.out, tc.code)
		}
	}
	if d.State() != sim.Up {
		t.Errorf("state %s after harmless commands", d.State())
	}
}

func TestReboot(t *testing.T) {
	t.Parallel()
	for _, cmd := range [][]string{{"reboot"}, {"sudo", "reboot"}, {"shutdown", "-r", "now"}} {
		t.Run(strings.Join(cmd, " "), func(t *testing.T) {
			t.Parallel()
			// A boot long enough that a loaded machine still sees the
			// device booting right after the reboot command returns.
			const slowBoot = 3 * time.Second
			d := startBooting(t, sim.Faults{}, slowBoot)
			store := sshx.TOFU(t.TempDir())
			c := mustDial(t, d, store)
			began := time.Now()
			if _, _, code, err := run(t, c, cmd...); code != 0 || err != nil {
				t.Fatalf("%s: exit %d, %v", cmd, code, err)
			}
			if s := d.State(); s != sim.Booting {
				t.Errorf("state %s after reboot, want booting", s)
			}
			if _, err := dial(t, d, store); err == nil {
				t.Error("the device answers while booting")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			nc, err := sshx.WaitForSSH(ctx, config(d, store), "sim-1", 50*time.Millisecond)
			if err != nil {
				t.Fatalf("after reboot: %v", err)
			}
			defer nc.Close()
			if took := time.Since(began); took < slowBoot {
				t.Errorf("back after %s, before the boot time %s", took, slowBoot)
			}
			if out, _, _, err := run(t, nc, "hostname"); out != "sim-1\n" || err != nil {
				t.Errorf("after reboot: %q, %v", out, err)
			}
			if _, _, _, err := run(t, c, "true"); err == nil {
				t.Error("the connection from before the reboot still works")
			}
		})
	}
}

func TestPowerOffOn(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	store := sshx.TOFU(t.TempDir())
	c := mustDial(t, d, store)
	addr := d.Addr()
	d.PowerOff()
	if _, _, _, err := run(t, c, "true"); err == nil {
		t.Error("a session survived the power-off")
	}
	if _, err := dial(t, d, store); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("dial while off: %v, want the connection reset", err)
	}
	time.Sleep(bootTime + 100*time.Millisecond)
	if s := d.State(); s != sim.Off {
		t.Fatalf("state %s, want off", s)
	}
	d.PowerOn()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := d.WaitState(ctx, sim.Up); err != nil {
		t.Fatal(err)
	}
	if d.Addr() != addr {
		t.Errorf("address changed from %s to %s", addr, d.Addr())
	}
	mustDial(t, d, store)
}

func TestNeverBoots(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{NeverBoots: true})
	store := sshx.TOFU(t.TempDir())
	mustDial(t, d, store) // the fault bites at the next boot
	d.PowerCycle()
	time.Sleep(3 * bootTime)
	if s := d.State(); s != sim.Booting {
		t.Errorf("state %s, want booting forever", s)
	}
	if _, err := dial(t, d, store); err == nil {
		t.Error("a device that never boots answers")
	}
	d.SetFaults(sim.Faults{})
	d.PowerCycle()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := d.WaitState(ctx, sim.Up); err != nil {
		t.Fatal(err)
	}
	mustDial(t, d, store)
}

func TestHostKeyChangesOnBoot(t *testing.T) {
	t.Parallel()
	for _, changes := range []bool{false, true} {
		d := start(t, sim.Faults{HostKeyChangesOnBoot: changes})
		store := sshx.TOFU(t.TempDir())
		mustDial(t, d, store)
		before := d.HostKey()
		d.PowerCycle()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		err := d.WaitState(ctx, sim.Up)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		_, err = dial(t, d, store)
		var hk *sshx.HostKeyChangedError
		if changes != errors.As(err, &hk) {
			t.Errorf("HostKeyChangesOnBoot %v: dial after a power cycle: %v", changes, err)
		}
		if changes == bytes.Equal(before.Marshal(), d.HostKey().Marshal()) {
			t.Errorf("HostKeyChangesOnBoot %v: HostKey() changed: %v", changes, !changes)
		}
	}
}

func TestSleepCancelled(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{})
	c := mustDial(t, d, sshx.TOFU(t.TempDir()))
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := c.Run(ctx, []string{"sleep", "30"}, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(began) > 3*time.Second {
		t.Errorf("cancelled sleep: %v after %s", err, time.Since(began))
	}
	if out, _, _, err := run(t, c, "echo", "still here"); out != "still here\n" {
		t.Errorf("after a cancelled sleep: %q, %v", out, err)
	}
}

func TestLinkFaults(t *testing.T) {
	t.Parallel()
	d := start(t, sim.Faults{DropAfter: 500 * time.Millisecond})
	store := sshx.TOFU(t.TempDir())
	c := mustDial(t, d, store)
	began := time.Now()
	if _, _, _, err := run(t, c, "sleep", "10"); err == nil || time.Since(began) > 3*time.Second {
		t.Errorf("sleep on a dropping link: %v after %s", err, time.Since(began))
	}

	d.SetFaults(sim.Faults{SlowLink: 30 * time.Millisecond})
	c = mustDial(t, d, store)
	began = time.Now()
	if out, _, _, err := run(t, c, "echo", "slow"); out != "slow\n" || err != nil {
		t.Errorf("slow link: %q, %v", out, err)
	}
	if took := time.Since(began); took < 30*time.Millisecond {
		t.Errorf("a command on a slow link took %s", took)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := ssh.NewSignerFromKey(priv)
	key, _ := ssh.NewPublicKey(pub)
	d, err := sim.StartDUT(t.Context(), sim.DUTOptions{AuthorizedKeys: []ssh.PublicKey{key}, Users: map[string]string{"ubuntu": "ubuntu"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	store := sshx.TOFU(t.TempDir())
	cfg := config(d, store)
	cfg.Password = "wrong"
	if _, err := sshx.Dial(t.Context(), cfg, "sim-1"); !errors.Is(err, sshx.ErrAuth) {
		t.Errorf("wrong password: %v, want ErrAuth", err)
	}
	cfg.Password, cfg.User, cfg.Signers = "", "root", []ssh.Signer{signer}
	c, err := sshx.Dial(t.Context(), cfg, "sim-1")
	if err != nil {
		t.Fatalf("key login: %v", err)
	}
	c.Close()
	if _, err := sim.StartDUT(t.Context(), sim.DUTOptions{}); err == nil {
		t.Error("a DUT nobody can log in to started")
	}
}

package drivers

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers/display"
	"github.com/flingerlab/flinger/drivers/sshkeys"
	"github.com/flingerlab/flinger/drivers/sshx"
	"github.com/flingerlab/flinger/events"
)

// DefaultTestPassword is the password tests and reservations log in to the
// device with when test_data.test_password is not given (Testflinger's
// default, with DefaultTestUsername).
const DefaultTestPassword = "ubuntu"

// HostKeysTOFU is the value of ssh.host_keys that records each device's
// host key the first time it is seen (trust on first use).
const HostKeysTOFU = "tofu"

// sshKeys are the keys of a host file's ssh section.
var sshKeys = []string{"host_keys", "key_file", "key_servers"}

// SSHSettings are a host's settings for reaching its devices over SSH:
// the ssh section of a host file. Every device of the host shares them
// (DeviceConfig.SSH). Use a pointer: the value must not be copied once used.
type SSHSettings struct {
	// HostKeys is ssh.host_keys: HostKeysTOFU (the default) or the path of
	// an OpenSSH known_hosts file pinning the devices' host keys.
	HostKeys string
	// HostKeyDir is where TOFU records host keys: <run_dir>/hostkeys, or
	// hostkeys in the state directory (StateDir) when run_dir is not given.
	HostKeyDir string
	// KeyFile is ssh.key_file: the worker's private key, offered to the
	// devices (default: ~/.ssh/id_ed25519, else ~/.ssh/id_rsa, if present;
	// "": only the password is offered).
	KeyFile string
	// LaunchpadURL is ssh.key_servers.lp: the URL template lp: ssh keys are
	// fetched from, "%s" standing for the user ("": sshkeys.DefaultLaunchpadURL).
	LaunchpadURL string
	// GitHubURL is ssh.key_servers.gh, for gh: keys ("": sshkeys.DefaultGitHubURL).
	GitHubURL string
	// AuthorizedKeysHome, when set, makes a reservation install keys into
	// <AuthorizedKeysHome>/.ssh/authorized_keys on the device instead of
	// the login user's home (see sshx.WithHome). Not read from host files:
	// for tests.
	AuthorizedKeysHome string

	once   sync.Once
	policy sshx.HostKeyPolicy
}

// StateDir returns the directory Flinger keeps state in when a host file
// gives no run_dir: $XDG_STATE_HOME/flinger, else ~/.local/state/flinger,
// else flinger-state in the temporary directory.
func StateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "flinger")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".local", "state", "flinger")
	}
	return filepath.Join(os.TempDir(), "flinger-state")
}

// defaultKeyFile returns ~/.ssh/id_ed25519, else ~/.ssh/id_rsa, when one
// exists, and "" otherwise.
func defaultKeyFile() string {
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return ""
	}
	for _, name := range []string{"id_ed25519", "id_rsa"} {
		p := filepath.Join(home, ".ssh", name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// DefaultSSHSettings returns the settings of a host file without an ssh
// section whose run_dir is runDir ("" for none): TOFU host keys, the
// default key file and the public key servers.
func DefaultSSHSettings(runDir string) *SSHSettings {
	dir := filepath.Join(StateDir(), "hostkeys")
	if runDir != "" {
		dir = filepath.Join(runDir, "hostkeys")
	}
	return &SSHSettings{HostKeys: HostKeysTOFU, HostKeyDir: dir, KeyFile: defaultKeyFile()}
}

var (
	fallbackOnce sync.Once
	fallback     *SSHSettings
)

// SSHSettings returns the device's SSH settings: c.SSH, or, for a
// configuration that did not come from a host file, DefaultSSHSettings("")
// (shared by all such devices).
func (c *DeviceConfig) SSHSettings() *SSHSettings {
	if c != nil && c.SSH != nil {
		return c.SSH
	}
	fallbackOnce.Do(func() { fallback = DefaultSSHSettings("") })
	return fallback
}

// Policy returns the host key policy of the settings: sshx.TOFU of
// HostKeyDir, or sshx.PinnedKnownHosts of HostKeys. It is built once.
func (s *SSHSettings) Policy() sshx.HostKeyPolicy {
	s.once.Do(func() {
		if s.HostKeys == "" || s.HostKeys == HostKeysTOFU {
			dir := s.HostKeyDir
			if dir == "" {
				dir = filepath.Join(StateDir(), "hostkeys")
			}
			s.policy = sshx.TOFU(dir)
			return
		}
		s.policy = sshx.PinnedKnownHosts(s.HostKeys)
	})
	return s.policy
}

// DeviceAddr returns the device's SSH address: device_ip, port ssh_port
// (default 22). A device without device_ip is an error.
func (c *DeviceConfig) DeviceAddr() (string, error) {
	if c.DeviceIP == "" {
		return "", fmt.Errorf("device %s: device_ip is not configured", display.Printable(c.Name))
	}
	port := c.SSHPort
	if port == 0 {
		port = 22
	}
	return net.JoinHostPort(c.DeviceIP, strconv.Itoa(port)), nil
}

// TestCredentials returns the user and password a job logs in to its
// device with: test_data.test_username and test_password, defaulting to
// Testflinger's ubuntu/ubuntu.
func TestCredentials(job *events.Job) (user, password string) {
	user, password = DefaultTestUsername, DefaultTestPassword
	if job != nil && job.TestData != nil {
		if job.TestData.TestUsername != "" {
			user = job.TestData.TestUsername
		}
		if job.TestData.TestPassword != "" {
			password = job.TestData.TestPassword
		}
	}
	return user, password
}

// DeviceConfig returns how to reach dev over SSH for job: its DeviceAddr,
// the job's TestCredentials, the key file and the host key policy. log
// receives the client's diagnostics (nil: discarded).
func (s *SSHSettings) DeviceConfig(dev *DeviceConfig, job *events.Job, log *slog.Logger) (sshx.Config, error) {
	addr, err := dev.DeviceAddr()
	if err != nil {
		return sshx.Config{}, err
	}
	user, password := TestCredentials(job)
	cfg := sshx.Config{
		Addr:     addr,
		User:     user,
		Password: password,
		HostKeys: s.Policy(),
		Log:      log,
	}
	if s.KeyFile != "" {
		cfg.KeyFiles = []string{s.KeyFile}
	}
	return cfg, nil
}

// Fetcher returns the fetcher of reserve_data.ssh_keys, with the
// settings' key servers. log receives its diagnostics (nil: discarded).
func (s *SSHSettings) Fetcher(log *slog.Logger) *sshkeys.Fetcher {
	return &sshkeys.Fetcher{LaunchpadURL: s.LaunchpadURL, GitHubURL: s.GitHubURL, Log: log}
}

// parseSSH reads a host file's ssh section; runDir is the file's run_dir.
// Each error names the field it concerns (ssh.<key>).
func parseSSH(n *yaml.Node, runDir string) (*SSHSettings, []error) {
	s := DefaultSSHSettings(runDir)
	if n == nil || n.Tag == "!!null" {
		return s, nil
	}
	if n.Kind != yaml.MappingNode {
		return s, []error{fmt.Errorf("ssh: must be a mapping with keys %s, got %s", strings.Join(sshKeys, ", "), nodeKind(n))}
	}
	kv, err := pairs(n)
	if err != nil {
		return s, []error{fmt.Errorf("ssh: %w", err)}
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, k := range sortedKeys(kv) {
		if !slices.Contains(sshKeys, k) {
			add("ssh.%s: unknown key (known: %s)", k, strings.Join(sshKeys, ", "))
		}
	}
	if v, ok := kv["host_keys"]; ok {
		hk, err := scalarString(v)
		switch {
		case err != nil:
			add("ssh.host_keys: %v", err)
		case hk == "" || hk == HostKeysTOFU:
		default:
			if err := checkFile(hk); err != nil {
				add("ssh.host_keys: %q is neither %q nor a readable known_hosts file: %v", hk, HostKeysTOFU, err)
			} else {
				s.HostKeys = hk
			}
		}
	}
	if v, ok := kv["key_file"]; ok {
		kf, err := scalarString(v)
		switch {
		case err != nil:
			add("ssh.key_file: %v", err)
		case kf == "":
		default:
			if err := checkFile(kf); err != nil {
				add("ssh.key_file: %v", err)
			} else {
				s.KeyFile = kf
			}
		}
	}
	if v, ok := kv["key_servers"]; ok && v.Tag != "!!null" {
		if v.Kind != yaml.MappingNode {
			add("ssh.key_servers: must be a mapping with keys lp, gh, got %s", nodeKind(v))
		} else if ks, err := pairs(v); err != nil {
			add("ssh.key_servers: %v", err)
		} else {
			for _, k := range sortedKeys(ks) {
				var dst *string
				switch k {
				case "lp":
					dst = &s.LaunchpadURL
				case "gh":
					dst = &s.GitHubURL
				default:
					add("ssh.key_servers.%s: unknown key server (known: lp, gh)", k)
					continue
				}
				t, err := scalarString(ks[k])
				if err == nil {
					err = checkURLTemplate(t)
				}
				if err != nil {
					add("ssh.key_servers.%s: %v", k, err)
					continue
				}
				*dst = t
			}
		}
	}
	return s, errs
}

// checkFile checks that path names a regular file this process can open.
func checkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// checkURLTemplate checks a key-server URL template: an http or https URL
// holding %s exactly once.
func checkURLTemplate(t string) error {
	if t == "" {
		return errors.New("must not be empty")
	}
	if strings.Count(t, "%s") != 1 {
		return fmt.Errorf("%q must contain %%s exactly once (where the user name goes)", t)
	}
	u, err := url.Parse(strings.Replace(t, "%s", "user", 1))
	if err != nil {
		return fmt.Errorf("%q is not a URL: %w", t, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q must be an http or https URL", t)
	}
	return nil
}

// DefaultControlUser is the user a device's control host is logged in to
// as when control_user is not given (Testflinger's default).
const DefaultControlUser = "ubuntu"

// ControlHostConfig returns how to reach dev's control host (control_host,
// which may carry a port as host:port; control_port overrides it) over
// SSH as control_user (default DefaultControlUser), with the settings'
// key file, the device key control_password if given, and the host key
// policy, recording the control host's key under "<device>-control".
// A device without control_host is an error naming the key.
func (s *SSHSettings) ControlHostConfig(dev *DeviceConfig, log *slog.Logger) (sshx.Config, string, error) {
	if dev.ControlHost == "" {
		return sshx.Config{}, "", fmt.Errorf("device %s: control_host is not configured", display.Printable(dev.Name))
	}
	addr := dev.ControlHost
	port, err := dev.Raw.Int("control_port", 0)
	if err != nil {
		return sshx.Config{}, "", fmt.Errorf("device %s: %w", display.Printable(dev.Name), err)
	}
	if port < 0 || port > 65535 {
		return sshx.Config{}, "", fmt.Errorf("device %s: control_port: %d out of range (1-65535)", display.Printable(dev.Name), port)
	}
	if port > 0 {
		host := addr
		if h, _, err := net.SplitHostPort(addr); err == nil {
			host = h
		}
		addr = net.JoinHostPort(host, strconv.Itoa(port))
	}
	user := dev.ControlUser
	if user == "" {
		user = DefaultControlUser
	}
	password, _ := dev.Raw["control_password"].(string)
	cfg := sshx.Config{Addr: addr, User: user, Password: password, HostKeys: s.Policy(), Log: log}
	if s.KeyFile != "" {
		cfg.KeyFiles = []string{s.KeyFile}
	}
	return cfg, dev.Name + "-control", nil
}

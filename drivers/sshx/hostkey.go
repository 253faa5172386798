package sshx

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyPolicy decides whether a server's host key is the device's.
// Implementations: PinnedKnownHosts and TOFU.
type HostKeyPolicy interface {
	// Callback returns the check for connections to the device named
	// deviceName. It returns nil to accept the key, an error to refuse it.
	Callback(deviceName string) ssh.HostKeyCallback
	// Reset forgets what the policy learnt about the device's host key;
	// drivers call it after re-provisioning a device, since a freshly
	// installed OS has new host keys.
	Reset(deviceName string) error
}

// HostKeyAlgorithmsPolicy is implemented by a HostKeyPolicy that knows
// which key types it holds for a device: Dial then asks the server for a
// key of those types, so that a server with several host keys presents the
// one that was recorded.
type HostKeyAlgorithmsPolicy interface {
	// HostKeyAlgorithms returns the host key algorithms to ask for when
	// connecting to the device at addr (host:port), or nil for the defaults.
	HostKeyAlgorithms(deviceName, addr string) []string
}

// ErrUnknownHost reports that a pinned host key policy has no key for the
// host. Test with errors.Is.
var ErrUnknownHost = errors.New("host key unknown")

// HostKeyChangedError reports that a server presented a host key other than
// the one recorded for the device: either the device was re-provisioned
// (then reset the policy for it) or someone is impersonating it.
type HostKeyChangedError struct {
	// Device is the device's name.
	Device string
	// Addr is the address connected to.
	Addr string
	// Want is the SHA256 fingerprint of the recorded key (several, comma
	// separated, when more than one is pinned).
	Want string
	// Got is the SHA256 fingerprint of the key the server presented.
	Got string
}

// Error says which device changed keys, from what to what, and what to do.
func (e *HostKeyChangedError) Error() string {
	return fmt.Sprintf("host key of device %s at %s has changed: recorded %s, server presented %s "+
		"(if the device was re-provisioned, reset its recorded host key; otherwise someone may be impersonating it)",
		e.Device, e.Addr, e.Want, e.Got)
}

// algorithmsFor returns the host key algorithms that make a server present
// a key of the given type.
func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	if keyType == ssh.CertAlgoRSAv01 {
		return []string{ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01, ssh.CertAlgoRSAv01}
	}
	return []string{keyType}
}

// KnownHosts is the policy of PinnedKnownHosts.
type KnownHosts struct {
	path string
}

// PinnedKnownHosts returns a policy that accepts only the host keys pinned
// for the address connected to in the OpenSSH known_hosts file at path
// (hashed entries, wildcards, @revoked and [host]:port included). The file
// is read at each connection, so it may be edited while the worker runs. A
// host without an entry is refused with ErrUnknownHost, a host with other
// keys with a *HostKeyChangedError.
func PinnedKnownHosts(path string) *KnownHosts {
	return &KnownHosts{path: path}
}

// Callback returns the check for the device named deviceName; the device
// name is only used in errors, keys are looked up by address.
func (k *KnownHosts) Callback(deviceName string) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		check, err := knownhosts.New(k.path)
		if err != nil {
			return fmt.Errorf("host key policy: reading known_hosts: %w", err)
		}
		err = check(hostname, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			if len(ke.Want) == 0 {
				return fmt.Errorf("%w: %s (%s) presented %s, which %s does not pin (add its key, e.g. with ssh-keyscan)",
					ErrUnknownHost, deviceName, hostname, ssh.FingerprintSHA256(key), k.path)
			}
			want := make([]string, len(ke.Want))
			for i, w := range ke.Want {
				want[i] = ssh.FingerprintSHA256(w.Key)
			}
			return &HostKeyChangedError{Device: deviceName, Addr: hostname,
				Want: strings.Join(want, ", "), Got: ssh.FingerprintSHA256(key)}
		}
		if err != nil {
			return fmt.Errorf("host key policy: %s: %w", k.path, err)
		}
		return nil
	}
}

// Reset does nothing and returns nil: the known_hosts file is the
// operator's. A device whose keys change when it is re-provisioned needs
// its new keys pinned by the operator, or the TOFU policy.
func (k *KnownHosts) Reset(string) error { return nil }

// probeKey is a key no known_hosts file holds, used to list the keys a file
// pins for an address.
var probeKey = sync.OnceValue(func() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil
	}
	return k
})

// stringAddr is a net.Addr made of a host:port string.
type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }

// HostKeyAlgorithms returns the algorithms of the keys pinned for addr, so
// that a server with several host keys presents a pinned one.
func (k *KnownHosts) HostKeyAlgorithms(_, addr string) []string {
	probe := probeKey()
	if probe == nil {
		return nil
	}
	check, err := knownhosts.New(k.path)
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if !errors.As(check(addr, stringAddr(addr), probe), &ke) {
		return nil
	}
	var algos []string
	for _, w := range ke.Want {
		for _, a := range algorithmsFor(w.Key.Type()) {
			if !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	return algos
}

// TOFUStore is the policy of TOFU: one file per device under its
// directory, holding the device's host key in authorized_keys format.
type TOFUStore struct {
	// Log receives a line when a key is recorded or forgotten (nil:
	// discarded). Set it before the store is used.
	Log *slog.Logger

	dir string
	// mu serializes the check-and-record of this process; records are
	// created with a hard link, so that processes sharing the directory
	// cannot overwrite each other's first record either.
	mu sync.Mutex
}

// TOFU returns a trust-on-first-use policy keeping its records in
// storeDir (created, mode 0700, when the first key is recorded): the first
// host key a device presents is recorded, and later connections accept
// only that key, refusing another with a *HostKeyChangedError until Reset
// forgets it. Records are per device, not per address, so a device that
// changes address keeps its key.
func TOFU(storeDir string) *TOFUStore {
	return &TOFUStore{dir: storeDir}
}

func (s *TOFUStore) logger() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Callback returns the check for the device named deviceName.
func (s *TOFUStore) Callback(deviceName string) ssh.HostKeyCallback {
	return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
		return s.check(deviceName, hostname, key)
	}
}

// Reset forgets the key recorded for the device: the next key it presents
// is recorded. Resetting a device with no record is not an error.
func (s *TOFUStore) Reset(deviceName string) error {
	path, err := s.path(deviceName)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("host key policy: forgetting the host key of %s: %w", deviceName, err)
	}
	s.logger().Info("ssh: forgot the recorded host key", "device", deviceName)
	return nil
}

// Recorded returns the key recorded for the device, or nil when there is
// none.
func (s *TOFUStore) Recorded(deviceName string) (ssh.PublicKey, error) {
	path, err := s.path(deviceName)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return load(path)
}

// HostKeyAlgorithms returns the algorithms of the key recorded for the
// device (nil when none is), so that a server with several host keys
// presents the recorded one.
func (s *TOFUStore) HostKeyAlgorithms(deviceName, _ string) []string {
	key, err := s.Recorded(deviceName)
	if err != nil || key == nil {
		return nil
	}
	return algorithmsFor(key.Type())
}

func (s *TOFUStore) check(device, addr string, key ssh.PublicKey) error {
	path, err := s.path(device)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, err := load(path)
	if err != nil {
		return err
	}
	if rec == nil {
		if rec, err = s.record(path, device, addr, key); err != nil {
			return err
		}
	}
	if !bytes.Equal(rec.Marshal(), key.Marshal()) {
		return &HostKeyChangedError{Device: device, Addr: addr,
			Want: ssh.FingerprintSHA256(rec), Got: ssh.FingerprintSHA256(key)}
	}
	return nil
}

// record writes key as the device's first key and returns the recorded
// key: key itself, or the key another process recorded first.
func (s *TOFUStore) record(path, device, addr string, key ssh.PublicKey) (ssh.PublicKey, error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("host key policy: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("host key policy: %w", err)
	}
	defer os.Remove(tmp.Name())
	content := fmt.Sprintf("# host key of device %q, first seen at %s on %s\n%s",
		device, addr, time.Now().UTC().Format(time.RFC3339), ssh.MarshalAuthorizedKey(key))
	_, err = tmp.WriteString(content)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("host key policy: writing %s: %w", tmp.Name(), err)
	}
	// A hard link creates the record only if there is none yet.
	switch err := os.Link(tmp.Name(), path); {
	case errors.Is(err, fs.ErrExist):
		rec, err := load(path)
		if err == nil && rec == nil {
			err = fmt.Errorf("host key policy: %s vanished while being recorded", path)
		}
		return rec, err
	case err != nil:
		// No hard links on this file system: rename, which is atomic too.
		if err := os.Rename(tmp.Name(), path); err != nil {
			return nil, fmt.Errorf("host key policy: recording the host key: %w", err)
		}
	}
	syncDir(s.dir)
	s.logger().Info("ssh: recorded the host key of a device seen for the first time",
		"device", device, "addr", addr, "fingerprint", ssh.FingerprintSHA256(key))
	return key, nil
}

// load reads a recorded key; it returns nil, nil when there is none.
func load(path string) (ssh.PublicKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("host key policy: %w", err)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("host key policy: %s is not a host key record (%v); reset the device's record", path, err)
	}
	return key, nil
}

// syncDir makes a new directory entry durable, as far as it can.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// path returns the record file of a device. Every byte of the name that is
// not a letter, digit, '-' or '_' (or a '.' not in first place) is escaped
// as %XX, so that any name maps to one file inside the directory.
func (s *TOFUStore) path(device string) (string, error) {
	if device == "" {
		return "", errors.New("host key policy: empty device name")
	}
	var b strings.Builder
	for i := 0; i < len(device); i++ {
		c := device[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.' && i > 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	b.WriteString(".hostkey")
	return filepath.Join(s.dir, b.String()), nil
}

package dragonboard

import (
	"fmt"
	"net"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/flingerlab/flinger/drivers/sshx"
)

// recorder is a host key policy that tells what it recorded (sshx.TOFUStore).
type recorder interface {
	Recorded(deviceName string) (ssh.PublicKey, error)
}

// seenKey is a host key accepted but not recorded yet.
type seenKey struct {
	host   string
	remote net.Addr
	key    ssh.PublicKey
}

// confirmingPolicy is the host key policy of a board whose two images
// answer at one address. A key is checked against the one recorded for
// the image, as the host's policy does; but when the policy records keys
// on first use and none is recorded yet for the image, the key is
// accepted without being recorded, and confirm records it once the image
// that presented it was identified. Otherwise whichever image answered
// first (the test image when the master image is looked for, the master
// image still shutting down when the test image is waited for) would have
// its key recorded as the other's.
type confirmingPolicy struct {
	inner sshx.HostKeyPolicy

	mu   sync.Mutex
	seen map[string]seenKey // by device name
}

var _ sshx.HostKeyAlgorithmsPolicy = (*confirmingPolicy)(nil)

func newConfirmingPolicy(inner sshx.HostKeyPolicy) *confirmingPolicy {
	return &confirmingPolicy{inner: inner, seen: map[string]seenKey{}}
}

// Callback returns the check for the image named deviceName.
func (p *confirmingPolicy) Callback(deviceName string) ssh.HostKeyCallback {
	check := p.inner.Callback(deviceName)
	rec, records := p.inner.(recorder)
	return func(host string, remote net.Addr, key ssh.PublicKey) error {
		if records {
			k, err := rec.Recorded(deviceName)
			if err != nil {
				return err
			}
			if k == nil {
				p.mu.Lock()
				p.seen[deviceName] = seenKey{host: host, remote: remote, key: key}
				p.mu.Unlock()
				return nil
			}
		}
		return check(host, remote, key)
	}
}

// Reset forgets the key recorded for the image.
func (p *confirmingPolicy) Reset(deviceName string) error {
	p.mu.Lock()
	delete(p.seen, deviceName)
	p.mu.Unlock()
	return p.inner.Reset(deviceName)
}

// HostKeyAlgorithms passes on the host policy's hint.
func (p *confirmingPolicy) HostKeyAlgorithms(deviceName, addr string) []string {
	if h, ok := p.inner.(sshx.HostKeyAlgorithmsPolicy); ok {
		return h.HostKeyAlgorithms(deviceName, addr)
	}
	return nil
}

// confirm records the key the image named deviceName last presented
// while none was recorded for it, now that the image was identified.
func (p *confirmingPolicy) confirm(deviceName string) error {
	p.mu.Lock()
	s, ok := p.seen[deviceName]
	delete(p.seen, deviceName)
	p.mu.Unlock()
	if !ok {
		return nil
	}
	if err := p.inner.Callback(deviceName)(s.host, s.remote, s.key); err != nil {
		return fmt.Errorf("recording the host key of %s: %w", deviceName, err)
	}
	return nil
}

package oemsim

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// NewKeyFile writes a new ed25519 key pair into dir, as ssh-keygen would
// (id_ed25519, mode 600, and id_ed25519.pub), for a lab host's
// ssh.key_file in tests, and returns the private key's path and the
// public key, for Options.AuthorizedKeys.
func NewKeyFile(dir string) (string, ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", nil, fmt.Errorf("oemsim: generating a key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "flinger-lab")
	if err != nil {
		return "", nil, fmt.Errorf("oemsim: encoding a key: %w", err)
	}
	spub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", nil, fmt.Errorf("oemsim: encoding a key: %w", err)
	}
	path := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", nil, fmt.Errorf("oemsim: %w", err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub))) + " flinger-lab\n"
	if err := os.WriteFile(path+".pub", []byte(line), 0o644); err != nil {
		return "", nil, fmt.Errorf("oemsim: %w", err)
	}
	return path, spub, nil
}

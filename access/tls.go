package access

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is a certificate authority, for a lab's test or private TLS: it
// signs the servers' certificates and a client certificate per user.
type PKI struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

// NewPKI makes a certificate authority named name, valid for a year.
func NewPKI(name string) (*PKI, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Flinger lab"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &PKI{cert: cert, key: key, der: der}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// WriteCA writes the authority's certificate to path (PEM).
func (p *PKI) WriteCA(path string) error {
	return writePEM(path, "CERTIFICATE", p.der, 0o644)
}

// Issue writes a certificate and key signed by the authority to
// certPath and keyPath: for a server when names (DNS names or IP
// addresses) are given, for a client named cn otherwise.
func (p *PKI) Issue(cn string, names []string, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Flinger lab"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(names) > 0 {
		// Servers also route to each other, as clients of one another.
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, n := range names {
			if ip := net.ParseIP(n); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, n)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		return fmt.Errorf("certificate for %s: %w", cn, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writePEM(keyPath, "EC PRIVATE KEY", kder, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// TLSConfig returns the nats-server configuration that requires TLS of
// clients, with a certificate signed by the lab's CA, from the files
// WriteLabTLS wrote to dir. A cluster's route block takes the same tls
// block.
func TLSConfig(dir string) string {
	return fmt.Sprintf("# TLS for clients: a certificate signed by the lab's CA is required.\ntls {\n  cert_file: %s\n  key_file: %s\n  ca_file: %s\n  verify: true\n  timeout: 5\n}\n",
		quote(filepath.Join(dir, "server.pem")), quote(filepath.Join(dir, "server-key.pem")), quote(filepath.Join(dir, "ca.pem")))
}

// WriteLabTLS writes a new CA (ca.pem), a server certificate for names
// (server.pem, server-key.pem) and a client certificate per user
// (<user>.pem, <user>-key.pem) to dir.
func WriteLabTLS(dir string, names []string, users []string) error {
	p, err := NewPKI("Flinger lab CA")
	if err != nil {
		return err
	}
	if err := p.WriteCA(filepath.Join(dir, "ca.pem")); err != nil {
		return err
	}
	if err := p.Issue("nats-server", names, filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")); err != nil {
		return err
	}
	for _, u := range users {
		if err := p.Issue(u, nil, filepath.Join(dir, u+".pem"), filepath.Join(dir, u+"-key.pem")); err != nil {
			return err
		}
	}
	return nil
}

// Package testutil holds helpers shared by meshca's tests: certificate authorities
// built at test time and an openssl verification that shells out to the real tool.
package testutil

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
)

// PEMCerts encodes certificates as concatenated PEM blocks.
func PEMCerts(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// PEMKey encodes a private key as PKCS #8 PEM.
func PEMKey(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// OpensslVerify runs `openssl verify` on the leaf with the roots as trust anchors
// and the intermediates as untrusted certificates, and fails the test if it refuses.
func OpensslVerify(t testing.TB, roots []*x509.Certificate, chain []*x509.Certificate) {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-CAfile", write("roots.pem", PEMCerts(roots...))}
	if len(chain) > 1 {
		args = append(args, "-untrusted", write("inter.pem", PEMCerts(chain[1:]...)))
	}
	args = append(args, write("leaf.pem", PEMCerts(chain[0])))
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl verify refused the chain: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte(": OK")) {
		t.Fatalf("openssl verify did not say OK:\n%s", out)
	}
}

// CACert creates a CA certificate for key, signed by parent (self-signed when
// parent is nil), valid from now-1h for ttl.
func CACert(t testing.TB, name string, key crypto.Signer, parent *x509.Certificate,
	parentKey crypto.Signer, ttl time.Duration) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(nil, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// MustKey generates a key of the given type or fails the test.
func MustKey(t testing.TB, kt ca.KeyType) crypto.Signer {
	t.Helper()
	k, err := ca.GenerateKey(kt)
	if err != nil {
		t.Fatalf("generate %s key: %v", kt, err)
	}
	return k
}

// ParsePEMCerts parses every CERTIFICATE block of a PEM bundle.
func ParsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

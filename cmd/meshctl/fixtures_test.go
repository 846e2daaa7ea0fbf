package main

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
)

var writeFixtures = flag.Bool("fixtures", false,
	"regenerate the certificates in testdata/inspect/ (then run with -update)")

// The fixed facts of testdata/inspect/: a leaf for fixtureID, signed by an
// intermediate, signed by a root. Keys are random, so signatures change when the
// fixtures are regenerated, but nothing the goldens show does.
var (
	fixtureNow    = time.Date(2025, 6, 1, 0, 20, 0, 0, time.UTC)
	fixtureID     = "spiffe://example.org/ns/shop/sa/orders"
	fixtureChain  = filepath.Join("testdata", "inspect", "chain.pem")
	fixtureBundle = filepath.Join("testdata", "inspect", "bundle.pem")
)

// TestWriteInspectFixtures regenerates the inspect fixtures when asked with -fixtures.
func TestWriteInspectFixtures(t *testing.T) {
	if !*writeFixtures {
		t.Skip("run with -fixtures to regenerate testdata/inspect/")
	}
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	rootKey, interKey := testutil.MustKey(t, ca.KeyECP256), testutil.MustKey(t, ca.KeyECP256)
	leafKey := testutil.MustKey(t, ca.KeyECP256)

	caTemplate := func(serial int64, name string, years int) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber:          big.NewInt(serial),
			Subject:               pkix.Name{Organization: []string{"example"}, CommonName: name},
			NotBefore:             start,
			NotAfter:              start.AddDate(years, 0, 0),
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
	}
	rootTmpl := caTemplate(1, "meshctl test root", 10)
	root := sign(t, rootTmpl, rootTmpl, rootKey, rootKey)
	inter := sign(t, caTemplate(2, "meshctl test intermediate", 5), root, interKey, rootKey)

	serial, ok := new(big.Int).SetString("4d2a7c19e0b35f68a1c4e2d90b7f3a15", 16)
	require.True(t, ok)
	leaf := sign(t, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"example"}},
		URIs:         []*url.URL{mustURL(t, fixtureID)},
		NotBefore:    time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2025, 6, 1, 1, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{
			x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth,
		},
		BasicConstraintsValid: true,
	}, inter, leafKey, interKey)

	require.NoError(t, os.MkdirAll(filepath.Dir(fixtureChain), 0o755))
	require.NoError(t, os.WriteFile(fixtureChain, testutil.PEMCerts(leaf, inter), 0o644))
	require.NoError(t, os.WriteFile(fixtureBundle, testutil.PEMCerts(root), 0o644))
}

// sign issues tmpl for key, signed by parent with parentKey.
func sign(t *testing.T, tmpl, parent *x509.Certificate, key, parentKey crypto.Signer) (
	cert *x509.Certificate) {
	t.Helper()
	der, err := x509.CreateCertificate(nil, tmpl, parent, key.Public(), parentKey)
	require.NoError(t, err)
	cert, err = x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
)

// benchParallelism makes RunParallel use this many goroutines per core, like a busy
// server with many concurrent callers.
const benchParallelism = 32

// subjectKeys pre-generates fresh P-256 public keys: key generation happens on the
// workload, not in the CA, so it stays out of the measured loop.
func subjectKeys(b *testing.B, n int) []crypto.PublicKey {
	b.Helper()
	keys := make([]crypto.PublicKey, n)
	for i := range keys {
		keys[i] = testutil.MustKey(b, ca.KeyECP256).Public()
	}
	return keys
}

// BenchmarkIssue measures the whole pipeline: template, sign (with the standard
// library's self-check), parse back, check, durable audit record with group commit.
func BenchmarkIssue(b *testing.B) {
	c, _ := newCA(b, ca.Config{})
	keys := subjectKeys(b, 1024)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/payments/sa/api")
	var next atomic.Uint64
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := keys[next.Add(1)%uint64(len(keys))]
			if _, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
				ID: id, PublicKey: k, Requester: "bench",
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkCreateCertificate is the yardstick: a bare x509.CreateCertificate of a
// similar leaf with a P-256 CA key, same parallelism.
func BenchmarkCreateCertificate(b *testing.B) {
	caKey := testutil.MustKey(b, ca.KeyECP256)
	root := testutil.CACert(b, "bench root", caKey, nil, nil, 24*time.Hour)
	keys := subjectKeys(b, 1024)
	u, _ := url.Parse("spiffe://cluster.local/ns/payments/sa/api")
	var next atomic.Uint64
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			tmpl := &x509.Certificate{
				SerialNumber: new(big.Int).SetUint64(n + 1),
				Subject:      pkix.Name{Organization: []string{"meshca"}},
				NotBefore:    time.Now().Add(-time.Minute),
				NotAfter:     time.Now().Add(time.Hour),
				KeyUsage:     x509.KeyUsageDigitalSignature,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth,
					x509.ExtKeyUsageClientAuth},
				BasicConstraintsValid: true,
				URIs:                  []*url.URL{u},
			}
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, root, keys[n%1024],
				caKey); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

// BenchmarkECDSASign is the bare P-256 signature rate, the ceiling of any CA.
func BenchmarkECDSASign(b *testing.B) {
	key := testutil.MustKey(b, ca.KeyECP256).(*ecdsa.PrivateKey)
	digest := sha256.Sum256([]byte("meshca"))
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

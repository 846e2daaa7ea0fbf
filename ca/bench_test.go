package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/store"
)

// The benchmarks below answer one question: how close does the whole issuance
// pipeline come to the standard library's bare CreateCertificate with the same CA key
// and the same parallelism? Run them together, in one process, so that both see the
// same machine load:
//
//	go test -run '^$' -bench 'Issue|CreateCertificate|ECDSA' -benchtime 3s ./ca
//
// docs/performance.md has the figures and what they mean.

// benchParallelism makes RunParallel use this many goroutines per core, like a busy
// server with many concurrent callers.
const benchParallelism = 32

// benchKeys is the number of distinct subject keys each benchmark cycles through.
const benchKeys = 1024

// benchID is the identity every benchmark certifies.
const benchID = "spiffe://cluster.local/ns/payments/sa/api"

// subjectKeys pre-generates P-256 public keys: key generation happens on the
// workload, not in the CA, so it stays out of the measured loop. Nothing in the CA
// caches per key, so cycling through 1,024 keys costs the same as a new key each time.
func subjectKeys(b *testing.B) []crypto.PublicKey {
	b.Helper()
	keys := make([]crypto.PublicKey, benchKeys)
	for i := range keys {
		keys[i] = testutil.MustKey(b, ca.KeyECP256).Public()
	}
	return keys
}

// benchLogger formats the per-issuance audit line the way `meshca server` does by
// default (text, level info), but throws the bytes away.
func benchLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// runIssue issues SVIDs from c with many parallel callers and reports their rate.
func runIssue(b *testing.B, c *ca.CA) {
	keys := subjectKeys(b)
	id := spiffeid.RequireFromString(benchID)
	var next atomic.Uint64
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	cpu := startCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := keys[next.Add(1)%benchKeys]
			if _, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
				ID: id, PublicKey: k, Requester: "bench",
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
	cpu.report(b)
}

// BenchmarkIssue measures the whole pipeline as a server runs it: template, sign
// (with the standard library's self-check), parse back, check, the audit log line,
// and the durable audit record in the bbolt store (group commit, one fdatasync per
// batch) on the temporary directory's file system.
func BenchmarkIssue(b *testing.B) {
	c, _ := newCA(b, ca.Config{Logger: benchLogger()})
	runIssue(b, c)
}

// memoryStore keeps authorities in memory and drops audit records: it shows what
// the durable audit record costs when compared with BenchmarkIssue.
type memoryStore struct{ authorities []store.Authority }

var _ ca.Store = (*memoryStore)(nil)

func (m *memoryStore) Authorities(context.Context) ([]store.Authority, error) {
	return m.authorities, nil
}

func (m *memoryStore) CreateAuthority(_ context.Context, a store.Authority) error {
	m.authorities = append(m.authorities, a)
	return nil
}

func (m *memoryStore) RecordIssuance(context.Context, store.Issuance) error { return nil }

// BenchmarkIssueNoAudit is BenchmarkIssue without the durable audit record. It is a
// breakdown, not a configuration meshca offers.
func BenchmarkIssueNoAudit(b *testing.B) {
	c, err := ca.New(context.Background(), ca.Config{
		TrustDomain: td, Store: &memoryStore{}, Logger: benchLogger(),
	})
	if err != nil {
		b.Fatal(err)
	}
	runIssue(b, c)
}

// leafSigner signs leaves like the CA's with a bare x509.CreateCertificate and a P-256
// CA key of its own.
type leafSigner struct {
	caKey crypto.Signer
	root  *x509.Certificate
	keys  []crypto.PublicKey
	uri   *url.URL
}

func newLeafSigner(b *testing.B) *leafSigner {
	b.Helper()
	caKey := testutil.MustKey(b, ca.KeyECP256)
	u, err := url.Parse(benchID)
	if err != nil {
		b.Fatal(err)
	}
	return &leafSigner{
		caKey: caKey,
		root:  testutil.CACert(b, "bench root", caKey, nil, nil, 24*time.Hour),
		keys:  subjectKeys(b),
		uri:   u,
	}
}

// sign makes leaf number n, reading signature randomness from rnd (nil selects
// RFC 6979 deterministic ECDSA, as the CA does).
func (s *leafSigner) sign(rnd io.Reader, n uint64) error {
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetUint64(n + 1),
		Subject:      pkix.Name{Organization: []string{"meshca"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth,
			x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{s.uri},
	}
	_, err := x509.CreateCertificate(rnd, tmpl, s.root, s.keys[n%benchKeys], s.caKey)
	return err
}

// runCreateCertificate runs leafSigner.sign with many parallel callers and reports
// the rate.
func runCreateCertificate(b *testing.B, rnd io.Reader) {
	s := newLeafSigner(b)
	var next atomic.Uint64
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	cpu := startCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.sign(rnd, next.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	cpu.report(b)
}

// BenchmarkCreateCertificate is the yardstick: a bare x509.CreateCertificate of a
// similar leaf with a P-256 CA key, same parallelism, randomized ECDSA signatures.
// CreateCertificate verifies the signature it made; that check stays in both.
func BenchmarkCreateCertificate(b *testing.B) {
	runCreateCertificate(b, rand.Reader)
}

// BenchmarkCreateCertificateRFC6979 is the same with a nil rand, which makes the
// ECDSA key sign deterministically (RFC 6979). It shows why the CA does not do that.
func BenchmarkCreateCertificateRFC6979(b *testing.B) {
	runCreateCertificate(b, nil)
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

// BenchmarkECDSASignRFC6979 is the deterministic signature rate: what a nil rand
// passed to the key's Sign method selects.
func BenchmarkECDSASignRFC6979(b *testing.B) {
	key := testutil.MustKey(b, ca.KeyECP256).(*ecdsa.PrivateKey)
	digest := sha256.Sum256([]byte("meshca"))
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := key.Sign(nil, digest[:], crypto.SHA256); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

// BenchmarkECDSAVerify is the bare P-256 verification rate: CreateCertificate pays
// one verification per certificate for its self-check.
func BenchmarkECDSAVerify(b *testing.B) {
	key := testutil.MustKey(b, ca.KeyECP256).(*ecdsa.PrivateKey)
	digest := sha256.Sum256([]byte("meshca"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
				b.Error("signature does not verify")
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
}

// benchWindow is how long each side of BenchmarkIssueVsCreateCertificate runs
// before the other takes over.
const benchWindow = 500 * time.Millisecond

// BenchmarkIssueVsCreateCertificate is the ratio that the goal is about, measured so
// that a machine shared with other work does not skew it: it alternates windows of
// BenchmarkIssue's pipeline and of bare CreateCertificate (randomized signatures, the
// yardstick, then RFC 6979, the CA's signing mode), each with the same callers, and
// reports each side's rate over all its windows. "ratio" is Issue over the yardstick;
// "ratio-rfc6979" is Issue over CreateCertificate signing the way the CA does.
func BenchmarkIssueVsCreateCertificate(b *testing.B) {
	c, _ := newCA(b, ca.Config{Logger: benchLogger()})
	keys := subjectKeys(b)
	id := spiffeid.RequireFromString(benchID)
	s := newLeafSigner(b)
	issue := func(n uint64) error {
		_, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
			ID: id, PublicKey: keys[n%benchKeys], Requester: "bench",
		})
		return err
	}
	callers := benchParallelism * runtime.GOMAXPROCS(0)
	var issued, created, createdRFC6979 window
	for b.Loop() {
		issued.run(b, callers, issue)
		created.run(b, callers, func(n uint64) error { return s.sign(rand.Reader, n) })
		createdRFC6979.run(b, callers, func(n uint64) error { return s.sign(nil, n) })
	}
	b.ReportMetric(issued.rate(), "svids/s")
	b.ReportMetric(created.rate(), "certs/s")
	b.ReportMetric(createdRFC6979.rate(), "rfc6979-certs/s")
	b.ReportMetric(issued.rate()/created.rate(), "ratio")
	b.ReportMetric(issued.rate()/createdRFC6979.rate(), "ratio-rfc6979")
	b.ReportMetric(issued.cores(), "svid-cpu-cores")
	b.ReportMetric(created.cores(), "cert-cpu-cores")
}

// window accumulates the operations done in timed windows, the time they took and
// the CPU time the process used meanwhile.
type window struct {
	ops     uint64
	elapsed time.Duration
	cpu     time.Duration
}

// run calls op from the given number of goroutines until benchWindow has passed, and
// counts the calls; the window ends when the last call in flight returns.
func (w *window) run(b *testing.B, goroutines int, op func(n uint64) error) {
	var count atomic.Uint64
	cpu := processCPU()
	start := time.Now()
	deadline := start.Add(benchWindow)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if err := op(count.Add(1)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	w.ops += count.Load()
	w.elapsed += time.Since(start)
	w.cpu += processCPU() - cpu
}

func (w *window) rate() float64 { return float64(w.ops) / w.elapsed.Seconds() }

// cores is the average number of cores the process kept busy during the windows.
func (w *window) cores() float64 { return w.cpu.Seconds() / w.elapsed.Seconds() }

// cpuClock measures the CPU time the process uses during a benchmark, to show how
// much of the machine it kept busy: with 2 cores, 2.0 means no core was ever idle.
type cpuClock struct {
	cpu  time.Duration
	wall time.Time
}

func startCPU() cpuClock { return cpuClock{processCPU(), time.Now()} }

// report adds the cores the process used on average since startCPU ("cpu-cores").
func (c cpuClock) report(b *testing.B) {
	used := processCPU() - c.cpu
	b.ReportMetric(used.Seconds()/time.Since(c.wall).Seconds(), "cpu-cores")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

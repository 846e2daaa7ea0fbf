package e2e

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/server"
	"github.com/meshca/meshca/internal/testutil"
)

// Benchmarks of the certificate API against the real kube-apiserver, with meshca
// configured as `meshca server` is by default (token cache 10 s, Kubernetes client
// 500 QPS with a burst of 1000, text logs at level info, here thrown away). Client
// and server share the machine's cores, as they do on any loopback benchmark.
//
//	go test -run '^$' -bench CertificateAPI -benchtime 3s ./test/e2e
//	go test -run '^$' -bench TokenStorm -benchtime 1x ./test/e2e
//
// docs/performance.md has the figures and what they mean.

// benchParallelism matches ca's benchmarks: this many callers per core.
const benchParallelism = 32

// benchConns is the number of client connections the callers share, like the node
// agents of a small cluster.
const benchConns = 8

// benchServer is an in-process meshca for benchmarks. startMeshca takes a *testing.T,
// and its extras (admin client, data directory reuse) are not needed here.
type benchServer struct {
	certs   []meshcav1.CertificateServiceClient // one per connection
	reviews *atomic.Int64                       // TokenReviews seen at the HTTP transport
}

func startBenchServer(tb testing.TB, restCfg *rest.Config) *benchServer {
	tb.Helper()
	reviews := &atomic.Int64{}
	restCfg = rest.CopyConfig(restCfg)
	restCfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return countReviews{next: rt, n: reviews}
	}
	ready := make(chan server.Addrs, 1)
	srv, err := server.New(server.Config{
		DataDir:     tb.TempDir(),
		TrustDomain: td,
		GRPCAddr:    "127.0.0.1:0",
		HTTPAddr:    "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard,
			&slog.HandlerOptions{Level: slog.LevelInfo})),
		Kube: server.KubeConfig{
			RESTConfig: restCfg, Audience: "meshca", CacheTTL: 10 * time.Second,
			QPS: 500, Burst: 1000,
		},
		Ready: func(a server.Addrs) { ready <- a },
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("meshca: %v", err)
		}
	})
	var addrs server.Addrs
	select {
	case addrs = <-ready:
	case err := <-done:
		tb.Fatalf("meshca stopped before ready: %v", err)
	case <-time.After(20 * time.Second):
		tb.Fatal("meshca not ready after 20 s")
	}

	roots := benchRoots(tb, addrs.Admin)
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})
	s := &benchServer{reviews: reviews}
	for range benchConns {
		conn, err := grpc.NewClient(addrs.GRPC.String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = conn.Close() })
		s.certs = append(s.certs, meshcav1.NewCertificateServiceClient(conn))
	}
	return s
}

// benchRoots reads meshca's trust bundle from its admin socket.
func benchRoots(tb testing.TB, adminSocket string) *x509.CertPool {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+adminSocket,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	b, err := meshcav1.NewAdminServiceClient(conn).GetBundle(context.Background(),
		&meshcav1.GetBundleRequest{})
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, der := range b.X509Authorities {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatal(err)
		}
		pool.AddCert(c)
	}
	return pool
}

// benchCSRs makes CSRs for n distinct P-256 keys: the workload makes its key and CSR,
// so that work stays out of the measured loop.
func benchCSRs(tb testing.TB, n int) [][]byte {
	tb.Helper()
	out := make([][]byte, n)
	for i := range out {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{},
			testutil.MustKey(tb, ca.KeyECP256))
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = der
	}
	return out
}

// benchWindow is how long each side of BenchmarkCertificateAPI runs before the other
// takes over.
const benchWindow = 500 * time.Millisecond

// BenchmarkCertificateAPI signs SVIDs through meshca.v1.CertificateService over TLS
// on loopback with one pod's token, reviewed once and then cached. It alternates
// windows of API calls with windows of bare x509.CreateCertificate (randomized
// signatures, the yardstick, then RFC 6979, meshca's signing mode) from as many
// callers, so that both see the same machine, and reports each side's rate, their
// ratios and the latency of the API calls.
func BenchmarkCertificateAPI(b *testing.B) {
	b.Run("callers=64", func(b *testing.B) {
		benchCertificateAPI(b, benchParallelism*runtime.GOMAXPROCS(0))
	})
	b.Run("callers=1", func(b *testing.B) { benchCertificateAPI(b, 1) })
}

func benchCertificateAPI(b *testing.B, callers int) {
	kube := kubetest.Start(b)
	m := startBenchServer(b, kube.RESTConfig())
	ns := kube.NewNamespace(b)
	kube.CreateWorkload(b, ns, "payments", "payments-0")
	token := kube.PodToken(b, ns, "payments", "payments-0", "meshca", time.Hour)
	csrs := benchCSRs(b, 1024)
	ctx := withToken(context.Background(), token)
	// The first call reviews the token; the measured ones find it in the cache.
	if _, err := m.certs[0].SignX509SVID(ctx, &meshcav1.SignX509SVIDRequest{
		Csr: csrs[0]}); err != nil {
		b.Fatal(err)
	}
	yardstick := newLeafSigner(b)

	var mu sync.Mutex
	var lat []time.Duration
	call := func(n uint64) error {
		start := time.Now()
		_, err := m.certs[n%benchConns].SignX509SVID(ctx,
			&meshcav1.SignX509SVIDRequest{Csr: csrs[n%uint64(len(csrs))]})
		d := time.Since(start)
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
		return err
	}
	reviews := m.reviews.Load()
	var api, created, createdRFC6979 window
	for b.Loop() {
		api.run(b, callers, call)
		created.run(b, callers, func(n uint64) error { return yardstick.sign(rand.Reader, n) })
		createdRFC6979.run(b, callers, func(n uint64) error { return yardstick.sign(nil, n) })
	}

	slices.Sort(lat)
	b.ReportMetric(api.rate(), "svids/s")
	b.ReportMetric(created.rate(), "certs/s")
	b.ReportMetric(createdRFC6979.rate(), "rfc6979-certs/s")
	b.ReportMetric(api.rate()/created.rate(), "ratio")
	b.ReportMetric(api.rate()/createdRFC6979.rate(), "ratio-rfc6979")
	b.ReportMetric(api.cores(), "svid-cpu-cores")
	b.ReportMetric(created.cores(), "cert-cpu-cores")
	b.ReportMetric(msOf(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(msOf(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(float64(m.reviews.Load()-reviews), "reviews")
}

// leafSigner is the yardstick: bare x509.CreateCertificate of a leaf like meshca's
// with a P-256 CA key of its own, as in ca's benchmarks.
type leafSigner struct {
	caKey crypto.Signer
	root  *x509.Certificate
	keys  []crypto.PublicKey
	uri   *url.URL
}

func newLeafSigner(tb testing.TB) *leafSigner {
	tb.Helper()
	caKey := testutil.MustKey(tb, ca.KeyECP256)
	u, err := url.Parse("spiffe://cluster.local/ns/payments/sa/api")
	if err != nil {
		tb.Fatal(err)
	}
	s := &leafSigner{
		caKey: caKey,
		root:  testutil.CACert(tb, "bench root", caKey, nil, nil, 24*time.Hour),
		keys:  make([]crypto.PublicKey, 1024),
		uri:   u,
	}
	for i := range s.keys {
		s.keys[i] = testutil.MustKey(tb, ca.KeyECP256).Public()
	}
	return s
}

// sign makes leaf number n, reading signature randomness from rnd (nil selects
// RFC 6979 deterministic ECDSA, as meshca does).
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
	_, err := x509.CreateCertificate(rnd, tmpl, s.root, s.keys[n%uint64(len(s.keys))],
		s.caKey)
	return err
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

// stormTokens is the number of distinct pod tokens of a storm.
const stormTokens = 500

// BenchmarkTokenStorm sends stormTokens first calls, each with the token of a pod of
// its own, to the certificate API: spread evenly over 10 s ("over=10s", new pods of
// a node scale-up) and all at once ("over=0s"). Each iteration is one storm on a new
// meshca with new pods, so ns/op means nothing; the metrics are per storm: the
// TokenReviews sent (counted at meshca's HTTP transport), the slowest call and the
// failures. A failed call also fails the benchmark.
func BenchmarkTokenStorm(b *testing.B) {
	b.Run("over=10s", func(b *testing.B) { benchTokenStorm(b, 10*time.Second) })
	b.Run("over=0s", func(b *testing.B) { benchTokenStorm(b, 0) })
}

func benchTokenStorm(b *testing.B, over time.Duration) {
	kube := kubetest.Start(b)
	var storms, reviews, failures int
	var slowest time.Duration
	var all []time.Duration
	for b.Loop() {
		b.StopTimer()
		m := startBenchServer(b, kube.RESTConfig())
		tokens := stormPods(b, kube)
		csrs := benchCSRs(b, stormTokens)
		before := m.reviews.Load()
		b.StartTimer()

		lat, errs := storm(m, tokens, csrs, over)
		storms++
		reviews += int(m.reviews.Load() - before)
		failures += len(errs)
		for _, err := range errs {
			b.Error(err)
		}
		all = append(all, lat...)
		slowest = max(slowest, slices.Max(lat))
	}
	slices.Sort(all)
	b.ReportMetric(float64(reviews)/float64(storms), "reviews/storm")
	b.ReportMetric(float64(failures), "failures")
	b.ReportMetric(msOf(slowest), "slowest-ms")
	b.ReportMetric(msOf(percentile(all, 0.50)), "p50-ms")
	b.ReportMetric(msOf(percentile(all, 0.99)), "p99-ms")
}

// stormPods creates stormTokens pods in a new namespace and returns a meshca token
// bound to each, made by TokenRequest as the kubelet asks for them.
func stormPods(b *testing.B, kube *kubetest.Cluster) []string {
	b.Helper()
	ns := kube.NewNamespace(b)
	tokens := make([]string, stormTokens)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range tokens {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			pod := "storm-" + strconv.Itoa(i)
			kube.CreateWorkload(b, ns, "storm", pod)
			tokens[i] = kube.PodToken(b, ns, "storm", pod, "meshca", time.Hour)
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return tokens
}

// storm makes one call per token, started evenly over the given duration, and
// returns every call's latency and the errors.
func storm(m *benchServer, tokens []string, csrs [][]byte, over time.Duration) (
	[]time.Duration, []error) {
	lat := make([]time.Duration, len(tokens))
	errs := make([]error, len(tokens))
	step := over / time.Duration(len(tokens))
	start := time.Now()
	var wg sync.WaitGroup
	for i, token := range tokens {
		time.Sleep(time.Until(start.Add(time.Duration(i) * step)))
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(withToken(context.Background(), token),
				30*time.Second)
			defer cancel()
			t := time.Now()
			_, err := m.certs[i%benchConns].SignX509SVID(ctx,
				&meshcav1.SignX509SVIDRequest{Csr: csrs[i]})
			lat[i] = time.Since(t)
			if err != nil {
				errs[i] = fmt.Errorf("call %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	return lat, failed
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// processCPU is the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

package xds_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/store"
	"github.com/meshca/meshca/xds"
)

const (
	envStreams = "MESHCA_SDS_STREAMS"
	envPerConn = "MESHCA_SDS_PER_CONN"
	envSecrets = "MESHCA_SDS_SECRETS"
	// envClient, envAddr and envCAFile configure the child process.
	envClient = "MESHCA_SDS_BENCH_CLIENT"
	envAddr   = "MESHCA_SDS_BENCH_ADDR"
	envCAFile = "MESHCA_SDS_BENCH_CA"

	// clientLine prefixes the child's protocol lines on stdout.
	clientLine = "sdsbench:"
)

var benchTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// BenchmarkSDSBundlePush holds N open StreamSecrets streams on loopback TLS, each
// subscribed to ROOTCA and idle after ACKing its first response. Each iteration
// changes the trust bundle, alternately adding a second root and taking it out again
// (as the prepare and remove steps of a rotation do), and measures the time from that
// change until the server has received every stream's ACK of the new ROOTCA. It also
// reports the server's heap per idle stream.
//
// The change is made by rotatingIssuer, a thin wrapper around a real CA that owns the
// bundle the server watches: what is measured is the server's push path, from the
// bundle's change signal to the ACKs, whatever rotation step changed the bundle.
//
// The clients run in a child process (this test binary, re-executed as
// TestSDSBenchClient), so that the memory figures are the server's alone. They speak
// the real protocol: the node on the first request, every response ACKed with its
// version and nonce.
//
// Environment (docs/performance.md shows the commands):
//
//	MESHCA_SDS_STREAMS   number of streams (default 1000)
//	MESHCA_SDS_PER_CONN  streams per gRPC connection; unset runs two layouts:
//	                     100 (streams multiplexed) and 2 (a connection per sidecar,
//	                     which opens two SDS streams on it)
//	MESHCA_SDS_SECRETS   names each stream asks for (default ROOTCA; "default,ROOTCA"
//	                     also gives every stream its own certificate and key)
//
// -benchtime 5x makes five bundle changes; the metrics cover all of them.
func BenchmarkSDSBundlePush(b *testing.B) {
	n := envInt(b, envStreams, 1000)
	layouts := []int{100, 2}
	if os.Getenv(envPerConn) != "" {
		layouts = []int{envInt(b, envPerConn, 0)}
	}
	for _, perConn := range layouts {
		b.Run(fmt.Sprintf("streams=%d/per-conn=%d", n, perConn), func(b *testing.B) {
			benchSDSBundlePush(b, n, perConn)
		})
	}
}

func benchSDSBundlePush(b *testing.B, n, perConn int) {
	conns := (n + perConn - 1) / perConn
	raiseFileLimit(b, uint64(conns)+256)
	srv := startBenchServer(b)

	before := heapNow()
	srv.acks.begin(n)
	child := startBenchClients(b, srv, n, perConn)
	if err := srv.acks.wait(3 * time.Minute); err != nil {
		b.Fatalf("opening %d streams: %v", n, err)
	}
	idle := heapNow()

	var all []time.Duration
	var worst time.Duration
	changes := 0
	for b.Loop() {
		lat := srv.bundleChange(b, n)
		all = append(all, lat...)
		worst = max(worst, lat[len(lat)-1])
		changes++
	}
	slices.Sort(all)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(all, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
	b.ReportMetric(ms(worst), "max-ms")
	b.ReportMetric(float64(srv.acks.nacks.Load()), "nacks")
	// Reported after the loop: b.Loop clears metrics reported before it.
	perStream := func(v, base uint64) float64 {
		return (float64(v) - float64(base)) / float64(n) / 1024
	}
	b.ReportMetric(perStream(idle.heapInuse, before.heapInuse), "heap-KiB/stream")
	b.ReportMetric(perStream(idle.stackInuse, before.stackInuse), "stack-KiB/stream")
	b.ReportMetric(float64(idle.goroutines-before.goroutines)/float64(n), "goroutines/stream")

	// Every stream must hold the bundle of the last change: one root, plus the extra
	// one after an odd number of changes.
	counts := child.report(b)
	if want := fmt.Sprintf("%d:%d", 1+changes%2, n); counts != want {
		b.Fatalf("roots held by the streams (roots:streams) = %s, want %s", counts, want)
	}
}

// benchServer is the SDS server under test with what measures it.
type benchServer struct {
	issuer *rotatingIssuer
	addr   string
	caFile string
	acks   *ackRecorder
}

// startBenchServer runs the discovery server on loopback TLS with a real CA on a
// bbolt store, and a fake authenticator: the push path is measured, not TokenReview.
func startBenchServer(b *testing.B) *benchServer {
	b.Helper()
	dir := b.TempDir()
	st, err := store.OpenBolt(filepath.Join(dir, "meshca.db"), store.BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	authority, err := ca.New(context.Background(), ca.Config{TrustDomain: benchTD, Store: st})
	if err != nil {
		b.Fatal(err)
	}

	creds, caFile := servingCreds(b, authority, dir)
	acks := &ackRecorder{}
	gs := grpc.NewServer(append(xds.ServerOptions(), grpc.Creds(creds),
		grpc.ChainStreamInterceptor(acks.intercept))...)
	disc := xds.New(xds.Config{
		Auth: fakeAuth{expiry: time.Now().Add(24 * time.Hour)},
		Logger: slog.New(slog.NewTextHandler(io.Discard,
			&slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	issuer := newRotatingIssuer(b, authority)
	disc.SetIssuer(issuer)
	secretservice.RegisterSecretDiscoveryServiceServer(gs, disc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	b.Cleanup(gs.Stop)
	return &benchServer{issuer: issuer, addr: lis.Addr().String(), caFile: caFile,
		acks: acks}
}

// servingCreds issues the server's TLS certificate from the CA and writes the trust
// bundle where the child process reads it.
func servingCreds(b *testing.B, authority *ca.CA, dir string) (credentials.TransportCredentials,
	string) {
	b.Helper()
	key, err := ca.GenerateKey(ca.KeyECP256)
	if err != nil {
		b.Fatal(err)
	}
	svid, err := authority.IssueServing(context.Background(), ca.ServingParams{
		DNSNames: []string{"localhost"}, PublicKey: key.Public(), TTL: 24 * time.Hour,
	})
	if err != nil {
		b.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: svid.Leaf()}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	var bundle []byte
	for _, r := range authority.Bundle().X509Authorities() {
		block := &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw}
		bundle = append(bundle, pem.EncodeToMemory(block)...)
	}
	caFile := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(caFile, bundle, 0o600); err != nil {
		b.Fatal(err)
	}
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert},
	}), caFile
}

// bundleChange changes the bundle and returns, sorted, each stream's time from the
// change until the server received its ACK of the new ROOTCA.
func (s *benchServer) bundleChange(b *testing.B, n int) []time.Duration {
	b.Helper()
	s.acks.begin(n)
	t0 := s.issuer.rotate()
	if err := s.acks.wait(time.Minute); err != nil {
		b.Fatalf("after a bundle change: %v", err)
	}
	lat := s.acks.latencies(t0)
	slices.Sort(lat)
	return lat
}

// rotatingIssuer is the CA as the discovery server sees it, with a bundle that
// rotate changes: it adds an extra root, or takes it out again.
type rotatingIssuer struct {
	*ca.CA
	extra *x509.Certificate

	// mu guards withExtra and changed.
	mu        sync.Mutex
	withExtra bool
	changed   chan struct{}
}

var _ xds.Issuer = (*rotatingIssuer)(nil)

func newRotatingIssuer(b *testing.B, authority *ca.CA) *rotatingIssuer {
	b.Helper()
	key := testutil.MustKey(b, ca.KeyECP256)
	return &rotatingIssuer{
		CA:      authority,
		extra:   testutil.CACert(b, "next root", key, nil, nil, 24*time.Hour),
		changed: make(chan struct{}),
	}
}

// WatchBundle implements xds.Issuer.
func (r *rotatingIssuer) WatchBundle() (*x509bundle.Bundle, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	roots := r.CA.Bundle().X509Authorities()
	if r.withExtra {
		roots = append(roots, r.extra)
	}
	return x509bundle.FromX509Authorities(benchTD, roots), r.changed
}

// rotate changes the bundle and returns when it did.
func (r *rotatingIssuer) rotate() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.withExtra = !r.withExtra
	at := time.Now()
	close(r.changed)
	r.changed = make(chan struct{})
	return at
}

// fakeAuth accepts "bench-<i>" tokens as pod i of a service account of its own.
type fakeAuth struct{ expiry time.Time }

func (a fakeAuth) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	i, ok := strings.CutPrefix(token, "bench-")
	if !ok {
		return ca.Identity{}, ca.ErrInvalidToken
	}
	id, err := spiffeid.FromSegments(benchTD, "ns", "bench", "sa", "sa-"+i)
	if err != nil {
		return ca.Identity{}, err
	}
	return ca.Identity{
		ID: id, Namespace: "bench", ServiceAccount: "sa-" + i, PodName: "pod-" + i,
		PodUID: "uid-" + i, TokenExpiry: a.expiry,
	}, nil
}

// ackRecorder watches every stream through a gRPC interceptor and records, for the
// current generation, when each stream ACKed the first response sent to it in that
// generation.
type ackRecorder struct {
	// mu guards every field but nacks.
	mu    sync.Mutex
	gen   uint64
	want  int
	times []time.Time
	done  chan struct{} // closed when want ACKs are recorded
	nacks atomic.Int64
}

// streamState is what the recorder knows of one stream; guarded by its own mutex,
// since sends and receives run on different goroutines.
type streamState struct {
	mu       sync.Mutex
	nonce    string // of the last response sent
	sentGen  uint64 // generation in which it was sent
	ackedGen uint64 // last generation in which an ACK was recorded
}

// begin starts a generation in which want streams are expected to ACK.
func (r *ackRecorder) begin(want int) {
	r.mu.Lock()
	r.gen++
	r.want, r.times, r.done = want, r.times[:0], make(chan struct{})
	r.mu.Unlock()
}

func (r *ackRecorder) generation() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

func (r *ackRecorder) record(gen uint64, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen != r.gen {
		return
	}
	r.times = append(r.times, at)
	if len(r.times) == r.want {
		close(r.done)
	}
}

// wait blocks until every expected stream has ACKed in the current generation.
func (r *ackRecorder) wait(timeout time.Duration) error {
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		r.mu.Lock()
		defer r.mu.Unlock()
		return fmt.Errorf("%d of %d streams ACKed within %s (%d NACKs)", len(r.times),
			r.want, timeout, r.nacks.Load())
	}
}

func (r *ackRecorder) latencies(t0 time.Time) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]time.Duration, len(r.times))
	for i, t := range r.times {
		out[i] = t.Sub(t0)
	}
	return out
}

func (r *ackRecorder) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo,
	handler grpc.StreamHandler) error {
	return handler(srv, &recordedStream{ServerStream: ss, r: r, st: &streamState{}})
}

type recordedStream struct {
	grpc.ServerStream
	r  *ackRecorder
	st *streamState
}

func (s *recordedStream) SendMsg(m any) error {
	if resp, ok := m.(*discovery.DiscoveryResponse); ok {
		gen := s.r.generation()
		s.st.mu.Lock()
		s.st.nonce, s.st.sentGen = resp.GetNonce(), gen
		s.st.mu.Unlock()
	}
	return s.ServerStream.SendMsg(m)
}

func (s *recordedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	req, ok := m.(*discovery.DiscoveryRequest)
	if !ok || req.GetResponseNonce() == "" {
		return nil
	}
	if req.GetErrorDetail() != nil {
		s.r.nacks.Add(1)
		return nil
	}
	at := time.Now()
	s.st.mu.Lock()
	gen := s.st.sentGen
	fresh := req.GetResponseNonce() == s.st.nonce && s.st.ackedGen != gen
	if fresh {
		s.st.ackedGen = gen
	}
	s.st.mu.Unlock()
	if fresh {
		s.r.record(gen, at)
	}
	return nil
}

type heapFigures struct {
	heapInuse, stackInuse uint64
	goroutines            int
}

// heapNow collects garbage twice (finalizers may free more) and reads the heap.
func heapNow() heapFigures {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return heapFigures{ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()}
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func envInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q is not a positive number", name, v)
	}
	return n
}

// raiseFileLimit makes room for want open files, up to the hard limit.
func raiseFileLimit(tb testing.TB, want uint64) {
	tb.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		tb.Fatalf("need %d open files, the hard limit is %d", want, lim.Max)
	}
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
}

// benchClients is the child process that holds the client streams.
type benchClients struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startBenchClients(b *testing.B, srv *benchServer, n, perConn int) *benchClients {
	b.Helper()
	secrets := os.Getenv(envSecrets)
	if secrets == "" {
		secrets = xds.SecretRootCA
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSDSBenchClient$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), envClient+"=1", envAddr+"="+srv.addr,
		envCAFile+"="+srv.caFile, envStreams+"="+strconv.Itoa(n),
		envPerConn+"="+strconv.Itoa(perConn), envSecrets+"="+secrets)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &benchClients{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), clientLine); ok {
				c.lines <- line
			}
		}
		close(c.lines)
	}()
	b.Cleanup(func() {
		// Closing stdin tells the child to close its streams and exit.
		_ = stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("SDS client process: %v", err)
		}
	})
	return c
}

// report asks the child how many roots each stream last received, as
// "roots:streams" pairs.
func (c *benchClients) report(b *testing.B) string {
	b.Helper()
	if _, err := io.WriteString(c.stdin, "report\n"); err != nil {
		b.Fatal(err)
	}
	select {
	case line, ok := <-c.lines:
		if !ok {
			b.Fatal("SDS client process ended without a report")
		}
		return line
	case <-time.After(time.Minute):
		b.Fatal("no report from the SDS client process")
	}
	return ""
}

// TestSDSBenchClient is the child process of BenchmarkSDSBundlePush, not a test: it
// opens the streams and ACKs every response until its stdin closes.
func TestSDSBenchClient(t *testing.T) {
	if os.Getenv(envClient) == "" {
		t.Skip("the client process of BenchmarkSDSBundlePush")
	}
	n, perConn := envInt(t, envStreams, 1000), envInt(t, envPerConn, 100)
	raiseFileLimit(t, uint64(n/perConn)+256)
	pemCA, err := os.ReadFile(os.Getenv(envCAFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemCA)
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})
	names := strings.Split(os.Getenv(envSecrets), ",")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streams := make([]*clientStream, n)
	var conn *grpc.ClientConn
	for i := range streams {
		if i%perConn == 0 {
			conn, err = grpc.NewClient(os.Getenv(envAddr), grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
		}
		streams[i] = &clientStream{conn: conn, token: "bench-" + strconv.Itoa(i), names: names}
	}
	// Open the streams a few at a time, as sidecars start; each then lives on its own.
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for _, s := range streams {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := s.open(ctx); err != nil {
				errc <- err
				return
			}
			go func() {
				if err := s.serve(); err != nil && ctx.Err() == nil {
					errc <- err
				}
			}()
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "report" {
			continue
		}
		hist := map[int]int{}
		for _, s := range streams {
			hist[int(s.roots.Load())]++
		}
		var pairs []string
		for roots, count := range hist {
			pairs = append(pairs, fmt.Sprintf("%d:%d", roots, count))
		}
		slices.Sort(pairs)
		fmt.Printf("%s%s\n", clientLine, strings.Join(pairs, ","))
	}
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
}

// clientStream is one Envoy-like SDS stream.
type clientStream struct {
	conn   *grpc.ClientConn
	token  string
	names  []string
	stream grpc.BidiStreamingClient[discovery.DiscoveryRequest, discovery.DiscoveryResponse]
	// roots is how many roots the last ROOTCA received held.
	roots atomic.Int32
}

func (s *clientStream) open(ctx context.Context) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.token)
	stream, err := secretservice.NewSecretDiscoveryServiceClient(s.conn).StreamSecrets(ctx)
	if err != nil {
		return err
	}
	s.stream = stream
	return stream.Send(&discovery.DiscoveryRequest{
		Node:          &core.Node{Id: "sidecar~" + s.token, Cluster: "bench"},
		ResourceNames: s.names,
		TypeUrl:       resource.SecretType,
	})
}

// serve ACKs every response after decoding it, and NACKs one it cannot use.
func (s *clientStream) serve() error {
	for {
		resp, err := s.stream.Recv()
		if err != nil {
			return err
		}
		ack := &discovery.DiscoveryRequest{
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(),
			ResourceNames: s.names, TypeUrl: resource.SecretType,
		}
		if err := s.take(resp); err != nil {
			ack.VersionInfo = ""
			ack.ErrorDetail = &rpcstatus.Status{Code: 3, Message: err.Error()}
		}
		if err := s.stream.Send(ack); err != nil {
			return err
		}
	}
}

func (s *clientStream) take(resp *discovery.DiscoveryResponse) error {
	for _, a := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			return err
		}
		vc := sec.GetValidationContext()
		if vc == nil {
			continue
		}
		// Count the PEM blocks without parsing them: the clients share the cores with
		// the server, so they do as little as the protocol allows.
		pool := vc.GetTrustedCa().GetInlineBytes()
		count := 0
		for {
			var block *pem.Block
			if block, pool = pem.Decode(pool); block == nil {
				break
			}
			count++
		}
		if count == 0 {
			return fmt.Errorf("secret %q holds no root", sec.GetName())
		}
		s.roots.Store(int32(count))
	}
	return nil
}

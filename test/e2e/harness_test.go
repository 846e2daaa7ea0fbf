package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/server"
)

// meshca is a running in-process server for one test.
type meshca struct {
	addrs server.Addrs
	admin meshcav1.AdminServiceClient
	// policies is the policy admin API, the one meshctl policy uses.
	policies meshcav1.PolicyServiceClient
	certs    meshcav1.CertificateServiceClient
	roots    *x509.CertPool
	conn     *grpc.ClientConn // to the main gRPC port
	reviews  *atomic.Int64    // TokenReview requests seen at meshca's HTTP transport
	stop     func()           // stops the server and waits for it; idempotent
}

type serverOpts struct {
	rest     *rest.Config
	cacheTTL time.Duration
	leafTTL  time.Duration // workload certificate lifetime; default 1h
	dataDir  string        // default a new temp dir
	grpcAddr string        // default 127.0.0.1:0
	// defaultDeny denies requests to workloads no ALLOW policy selects.
	defaultDeny bool
}

// startMeshca runs a server on a temp dir with the Kubernetes API reached through
// opts.rest, counting TokenReview requests at the HTTP transport.
func startMeshca(t *testing.T, opts serverOpts) *meshca {
	t.Helper()
	reviews := &atomic.Int64{}
	restCfg := rest.CopyConfig(opts.rest)
	restCfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return countReviews{next: rt, n: reviews}
	}
	dir, grpcAddr := opts.dataDir, opts.grpcAddr
	if dir == "" {
		dir = t.TempDir()
	}
	if grpcAddr == "" {
		grpcAddr = "127.0.0.1:0"
	}
	ready := make(chan server.Addrs, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("MESHCA_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := server.New(server.Config{
		DataDir:     dir,
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		GRPCAddr:    grpcAddr,
		HTTPAddr:    "127.0.0.1:0",
		Logger:      log,
		Kube: server.KubeConfig{
			RESTConfig: restCfg, Audience: "meshca", CacheTTL: opts.cacheTTL,
			QPS: 1000, Burst: 1000,
		},
		DefaultDeny: opts.defaultDeny,
		Ready:       func(a server.Addrs) { ready <- a },
		CA:          ca.Config{DefaultTTL: opts.leafTTL},
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	m := &meshca{reviews: reviews}
	var once sync.Once
	m.stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(m.stop)

	select {
	case m.addrs = <-ready:
	case err := <-done:
		t.Fatalf("meshca stopped before ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("meshca not ready after 20 s")
	}

	adminConn, err := grpc.NewClient("unix://"+m.addrs.Admin,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = adminConn.Close() })
	m.admin = meshcav1.NewAdminServiceClient(adminConn)
	m.policies = meshcav1.NewPolicyServiceClient(adminConn)

	b, err := m.admin.GetBundle(ctx, &meshcav1.GetBundleRequest{})
	require.NoError(t, err)
	m.roots = x509.NewCertPool()
	for _, der := range b.X509Authorities {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		m.roots.AddCert(c)
	}
	m.conn = m.dial(t)
	m.certs = meshcav1.NewCertificateServiceClient(m.conn)
	return m
}

// dial opens a TLS connection to the main gRPC port, trusting meshca's roots.
func (m *meshca) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	return m.dialTrusting(t, m.roots)
}

// dialTrusting opens a TLS connection to the main gRPC port, trusting roots only.
func (m *meshca) dialTrusting(t *testing.T, roots *x509.CertPool) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(m.addrs.GRPC.String(), grpc.WithTransportCredentials(
		credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// withToken attaches a bearer token the way a workload does.
func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

type countReviews struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countReviews) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost &&
		r.URL.Path == "/apis/authentication.k8s.io/v1/tokenreviews" {
		c.n.Add(1)
	}
	return c.next.RoundTrip(r)
}

// readyz returns the status code and body of meshca's /readyz.
func (m *meshca) readyz(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + m.addrs.HTTP.String() + "/readyz")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

package xds

import (
	"context"
	"crypto/x509"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
)

// tokenIdentities authenticates a token naming "<namespace>/<service account>".
type tokenIdentities struct{}

func (tokenIdentities) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	for i := range token {
		if token[i] == '/' {
			ns, sa := token[:i], token[i+1:]
			id := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
			return ca.Identity{ID: id, Namespace: ns, ServiceAccount: sa}, nil
		}
	}
	return ca.Identity{}, ca.ErrInvalidToken
}

// bundleOnly is an Issuer for streams that never ask for a certificate.
type bundleOnly struct{ bundle *x509bundle.Bundle }

func (b bundleOnly) IssueX509SVID(context.Context, ca.X509SVIDParams) (*ca.X509SVID, error) {
	panic("no certificate is asked for in these tests")
}

func (b bundleOnly) WatchBundle() (*x509bundle.Bundle, <-chan struct{}) {
	return b.bundle, nil
}

// rejections counts NACKs.
type rejections struct {
	nopMetrics
	mu sync.Mutex
	n  int
}

func (r *rejections) Rejected(string) { r.mu.Lock(); r.n++; r.mu.Unlock() }

func (r *rejections) count() int { r.mu.Lock(); defer r.mu.Unlock(); return r.n }

// memStream is one state-of-the-world stream held in memory, served by serveSotW.
type memStream struct {
	ctx   context.Context
	reqs  chan *discovery.DiscoveryRequest
	resps chan *discovery.DiscoveryResponse
}

func (m *memStream) Context() context.Context { return m.ctx }

func (m *memStream) Send(r *discovery.DiscoveryResponse) error {
	m.resps <- r
	return nil
}

func (m *memStream) Recv() (*discovery.DiscoveryRequest, error) {
	select {
	case r := <-m.reqs:
		return r, nil
	case <-m.ctx.Done():
		return nil, io.EOF
	}
}

func newTestServer(t *testing.T, m Metrics) *Server {
	t.Helper()
	key := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "test root", key, nil, key, time.Hour)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	s := New(Config{Auth: tokenIdentities{}, Metrics: m})
	s.SetIssuer(bundleOnly{x509bundle.FromX509Authorities(td, []*x509.Certificate{root})})
	return s
}

// openADS starts an ADS stream of the identity ns/sa on s.
func openADS(t *testing.T, s *Server, ns, sa string) *memStream {
	t.Helper()
	ctx, cancel := context.WithCancel(metadata.NewIncomingContext(context.Background(),
		metadata.Pairs("authorization", "Bearer "+ns+"/"+sa)))
	m := &memStream{ctx: ctx, reqs: make(chan *discovery.DiscoveryRequest),
		resps: make(chan *discovery.DiscoveryResponse, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.serveSotW(m, "ads", adsTypes...)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

func (m *memStream) send(t *testing.T, r *discovery.DiscoveryRequest) {
	t.Helper()
	select {
	case m.reqs <- r:
	case <-time.After(10 * time.Second):
		t.Fatal("the server does not read requests")
	}
}

func (m *memStream) next(t *testing.T) *discovery.DiscoveryResponse {
	t.Helper()
	select {
	case r := <-m.resps:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no response")
	}
	return nil
}

func TestReorderedNamesAreNotANewSubscription(t *testing.T) {
	s := newTestServer(t, nil)
	m := openADS(t, s, "orders", "orders")
	names := []string{"outbound|a.x", "outbound|b.x", "outbound|c.x"}
	m.send(t, &discovery.DiscoveryRequest{Node: &core.Node{Id: "n"},
		TypeUrl: clusterTypeURL, ResourceNames: names})
	r := m.next(t)
	require.Len(t, r.Resources, 3)

	// grpc-go lists names in a different order on every request.
	m.send(t, &discovery.DiscoveryRequest{TypeUrl: clusterTypeURL, VersionInfo: r.VersionInfo,
		ResponseNonce: r.Nonce, ResourceNames: []string{names[2], names[0], names[1]}})
	// A real change of names is answered, with the very next nonce: the reordered ACK
	// caused no response in between.
	m.send(t, &discovery.DiscoveryRequest{TypeUrl: clusterTypeURL, VersionInfo: r.VersionInfo,
		ResponseNonce: r.Nonce, ResourceNames: names[:1]})
	r2 := m.next(t)
	require.Len(t, r2.Resources, 1)
	n1, _ := strconv.Atoi(r.Nonce)
	require.Equal(t, strconv.Itoa(n1+1), r2.Nonce)
}

func TestEndpointsFollowTheServerSubscription(t *testing.T) {
	s := newTestServer(t, nil)
	srv := openADS(t, s, "payments", "payments")
	name := ServerListenerPrefix + "127.0.0.1:8443"
	srv.send(t, &discovery.DiscoveryRequest{Node: &core.Node{Id: "server"},
		TypeUrl: listenerTypeURL, ResourceNames: []string{name}})
	r := srv.next(t)
	require.Len(t, r.Resources, 1)
	require.Len(t, s.watchConfig().endpoints["payments.payments"], 1)

	// A second stream at the same address replaces the first registration: clients
	// never see an address twice.
	again := openADS(t, s, "payments", "payments")
	again.send(t, &discovery.DiscoveryRequest{Node: &core.Node{Id: "server-2"},
		TypeUrl: listenerTypeURL, ResourceNames: []string{name}})
	again.next(t)
	eps := s.watchConfig().endpoints["payments.payments"]
	require.Len(t, eps, 1)
	cla := loadAssignment("outbound|payments.payments", eps)
	require.Len(t, cla.GetEndpoints()[0].GetLbEndpoints(), 1)

	// Unsubscribing (no names after a named subscription is not a wildcard) removes
	// the endpoint while the stream stays open.
	again.send(t, &discovery.DiscoveryRequest{TypeUrl: listenerTypeURL,
		VersionInfo: r.VersionInfo, ResponseNonce: "1"})
	empty := again.next(t)
	require.Empty(t, empty.Resources)
	require.Empty(t, s.watchConfig().endpoints["payments.payments"])
}

func TestStaleRejectionsAreCounted(t *testing.T) {
	metrics := &rejections{}
	s := newTestServer(t, metrics)
	m := openADS(t, s, "orders", "orders")
	m.send(t, &discovery.DiscoveryRequest{Node: &core.Node{Id: "n"},
		TypeUrl: clusterTypeURL, ResourceNames: []string{"outbound|a.x"}})
	r := m.next(t)
	m.send(t, &discovery.DiscoveryRequest{TypeUrl: clusterTypeURL,
		ResourceNames: []string{"outbound|a.x", "outbound|b.x"}, ResponseNonce: r.Nonce,
		VersionInfo: r.VersionInfo})
	r2 := m.next(t)
	// The client rejects the first response after the second went out.
	m.send(t, &discovery.DiscoveryRequest{TypeUrl: clusterTypeURL, ResponseNonce: r.Nonce,
		ResourceNames: []string{"outbound|a.x"}, ErrorDetail: &rpcstatus.Status{Message: "no"}})
	// A following request is handled only after the rejection was.
	m.send(t, &discovery.DiscoveryRequest{TypeUrl: clusterTypeURL, ResponseNonce: r2.Nonce,
		VersionInfo: r2.VersionInfo, ResourceNames: []string{"outbound|b.x"}})
	m.next(t)
	require.Equal(t, 1, metrics.count())
}

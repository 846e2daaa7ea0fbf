package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
	"github.com/meshca/meshca/xds"
)

// namedIdentities authenticates a token "<namespace>/<service account>" without a
// Kubernetes API: the benchmark measures what happens after authentication.
type namedIdentities struct{ td spiffeid.TrustDomain }

func (n namedIdentities) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	ns, sa, ok := strings.Cut(token, "/")
	if !ok {
		return ca.Identity{}, ca.ErrInvalidToken
	}
	id, err := spiffeid.FromSegments(n.td, "ns", ns, "sa", sa)
	if err != nil {
		return ca.Identity{}, err
	}
	return ca.Identity{ID: id, Namespace: ns, ServiceAccount: sa}, nil
}

// BenchmarkPolicyApplyToACK measures, for 1,000 proxyless gRPC servers (distinct
// service accounts of one namespace, each subscribed to its server listener over ADS
// on loopback), the time from the start of a policy apply (validation, the store
// transaction, the hand-over to xDS) until each server has ACKed its new listener.
// Reported: p50, p99 and max over every node of every apply. Plain-text gRPC: TLS is
// per connection and not on this path.
func BenchmarkPolicyApplyToACK(b *testing.B) {
	const nodes, conns = 1000, 10
	ctx := b.Context()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	log := slog.New(slog.DiscardHandler)
	st, err := store.OpenBolt(filepath.Join(b.TempDir(), StoreFileName), store.BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	authority, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	disc := xds.New(xds.Config{Auth: namedIdentities{td}, Logger: log})
	disc.SetIssuer(authority)
	ps := newPolicySync(st, disc, td, log)
	svc := api.NewPolicies(api.PolicyConfig{Store: st, TrustDomain: td, Changed: ps.changed,
		Logger: log})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, disc)
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(srv.Stop)

	var clients []*grpc.ClientConn
	for range conns {
		c, err := grpc.NewClient(lis.Addr().String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		clients = append(clients, c)
	}
	rec := &ackTimes{}
	for i := range nodes {
		n := &benchNode{rec: rec, name: xds.ServerListenerPrefix + "127.0.0.1:" +
			strconv.Itoa(20000+i)}
		if err := n.open(ctx, clients[i%conns], fmt.Sprintf("payments/sa-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	if err := rec.wait(nodes, 60*time.Second); err != nil {
		b.Fatalf("initial listeners: %v", err)
	}

	var all []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		rec.reset()
		doc := fmt.Sprintf("apiVersion: meshca.io/v1alpha1\nkind: AuthorizationPolicy\n"+
			"metadata: {name: allow-orders, namespace: payments}\n"+
			"spec:\n  action: ALLOW\n  rules:\n  - from: [{serviceAccount: orders/orders}]\n"+
			"    to: [{paths: [/v%d/*]}]\n", i)
		rec.start()
		_, err := svc.ApplyPolicies(ctx, &meshcav1.ApplyPoliciesRequest{
			Sources: []*meshcav1.PolicySource{{Name: "p.yaml", Content: []byte(doc)}},
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := rec.wait(nodes, 60*time.Second); err != nil {
			b.Fatal(err)
		}
		all = append(all, rec.latencies()...)
	}
	b.StopTimer()
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(nodes), "nodes")
}

// ackTimes collects, per round, when each node ACKed a listener.
type ackTimes struct {
	mu    sync.Mutex
	t0    time.Time
	times []time.Duration
	done  chan struct{}
	want  int
}

func (r *ackTimes) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.times = r.times[:0]
}

func (r *ackTimes) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t0 = time.Now()
}

func (r *ackTimes) acked() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.times = append(r.times, time.Since(r.t0))
	if r.done != nil && len(r.times) >= r.want {
		close(r.done)
		r.done = nil
	}
}

// wait returns once n ACKs of the round arrived.
func (r *ackTimes) wait(n int, timeout time.Duration) error {
	r.mu.Lock()
	if len(r.times) >= n {
		r.mu.Unlock()
		return nil
	}
	done := make(chan struct{})
	r.done, r.want = done, n
	r.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		r.mu.Lock()
		defer r.mu.Unlock()
		return fmt.Errorf("%d of %d nodes ACKed within %v", len(r.times), n, timeout)
	}
}

func (r *ackTimes) latencies() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.times)
}

// benchNode is a proxyless gRPC server's xDS client: it subscribes to its server
// listener and ACKs every response.
type benchNode struct {
	rec  *ackTimes
	name string
}

func (n *benchNode) open(ctx context.Context, conn *grpc.ClientConn, token string) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).
		StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	req := &discovery.DiscoveryRequest{Node: &core.Node{Id: token},
		TypeUrl: resource.ListenerType, ResourceNames: []string{n.name}}
	if err := stream.Send(req); err != nil {
		return err
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			err = stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType,
				ResourceNames: []string{n.name}, VersionInfo: resp.VersionInfo,
				ResponseNonce: resp.Nonce})
			if err != nil {
				return
			}
			n.rec.acked()
		}
	}()
	return nil
}

package xds

import (
	"context"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
)

// staticAuth accepts any token as one pod of one service account.
type staticAuth struct{}

func (staticAuth) Authenticate(context.Context, string) (ca.Identity, error) {
	return ca.Identity{
		ID:        spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"),
		Namespace: "a", ServiceAccount: "b", PodName: "p", PodUID: "u",
		TokenExpiry: time.Now().Add(time.Hour),
	}, nil
}

// TestBundleAcks runs real SDS streams against a real CA and checks what BundleAcks
// counts: only streams subscribed to the bundle, and only once they ACKed a response
// carrying the new root; a NACK does not count, a closed stream leaves.
func TestBundleAcks(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	authority, err := ca.New(context.Background(), ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: st,
	})
	require.NoError(t, err)
	srv := New(Config{Auth: staticAuth{}})
	srv.SetIssuer(authority)
	gs := grpc.NewServer()
	secretservice.RegisterSecretDiscoveryServiceServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	client := secretservice.NewSecretDiscoveryServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer x")

	open := func(names ...string) grpc.BidiStreamingClient[discovery.DiscoveryRequest,
		discovery.DiscoveryResponse] {
		s, err := client.StreamSecrets(ctx)
		require.NoError(t, err)
		require.NoError(t, s.Send(&discovery.DiscoveryRequest{
			Node: &core.Node{Id: "n"}, ResourceNames: names,
		}))
		return s
	}
	reply := func(s grpc.BidiStreamingClient[discovery.DiscoveryRequest,
		discovery.DiscoveryResponse], names []string, nack bool) {
		r, err := s.Recv()
		require.NoError(t, err)
		req := &discovery.DiscoveryRequest{ResponseNonce: r.Nonce, ResourceNames: names,
			VersionInfo: r.VersionInfo}
		if nack {
			req.VersionInfo = ""
			req.ErrorDetail = &rpcstatus.Status{Code: 3, Message: "no"}
		}
		require.NoError(t, s.Send(req))
	}
	root := authority.Bundle().X509Authorities()[0]
	waitAcks := func(r *x509.Certificate, acked, total int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			a, n := srv.BundleAcks(r)
			if a == acked && n == total {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("BundleAcks = %d of %d, want %d of %d", a, n, acked, total)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	bundleNames := []string{SecretRootCA}
	certNames := []string{SecretDefault}
	acking := open(bundleNames...)
	nacking := open(bundleNames...)
	certOnly := open(certNames...)
	reply(acking, bundleNames, false)
	reply(nacking, bundleNames, false)
	reply(certOnly, certNames, false)
	waitAcks(root, 2, 2) // the certificate-only stream is not counted

	prepared, err := authority.Prepare(context.Background())
	require.NoError(t, err)
	waitAcks(prepared.Certificate, 0, 2)
	reply(nacking, bundleNames, true)
	reply(acking, bundleNames, false)
	waitAcks(prepared.Certificate, 1, 2)
	waitAcks(root, 2, 2) // the old root is in both acknowledged bundles

	require.NoError(t, nacking.CloseSend())
	_, err = nacking.Recv()
	require.Error(t, err)
	waitAcks(prepared.Certificate, 1, 1)
}

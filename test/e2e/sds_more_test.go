package e2e

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	meshkube "github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/store"
	"github.com/meshca/meshca/xds"
)

// TestSDSAnswersWhenCABecomesReady runs the discovery server on its own, so that a
// request can arrive before the CA is loaded, as it may while meshca starts.
func TestSDSAnswersWhenCABecomesReady(t *testing.T) {
	kube := kubetest.Start(t)
	_, token := workload(t, kube, "payments")

	client, err := meshkube.NewForConfig(kube.RESTConfig())
	require.NoError(t, err)
	srv := xds.New(xds.Config{Auth: ca.NewTokenReviewer(ca.TokenReviewConfig{
		Reviews: client.TokenReviews(), TrustDomain: td,
	})})
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

	c := openSDS(t, conn, token, "default", "ROOTCA")
	select {
	case r := <-c.resps:
		t.Fatalf("answered before the CA was ready: version %s", r.VersionInfo)
	case err := <-c.errc:
		t.Fatalf("stream failed while the CA was not ready: %v", err)
	case <-time.After(1500 * time.Millisecond):
	}

	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	authority, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: st})
	require.NoError(t, err)
	readyAt := time.Now()
	srv.SetIssuer(authority)

	r := c.next(time.Second)
	require.Less(t, time.Since(readyAt), time.Second)
	got := secrets(t, r)
	roots := rootsOf(t, got["ROOTCA"])
	certOf(t, got["default"])
	require.Equal(t, authority.Bundle().X509Authorities(), roots)
}

func TestDeltaSDS(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	_, token := workload(t, kube, "payments")

	ctx, cancel := context.WithCancel(withToken(context.Background(), token))
	defer cancel()
	stream, err := secretservice.NewSecretDiscoveryServiceClient(m.conn).DeltaSecrets(ctx)
	require.NoError(t, err)
	resps := make(chan *discovery.DeltaDiscoveryResponse, 8)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(resps)
				return
			}
			resps <- r
		}
	}()
	next := func() *discovery.DeltaDiscoveryResponse {
		t.Helper()
		select {
		case r, ok := <-resps:
			require.True(t, ok, "stream ended")
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no delta response")
		}
		return nil
	}

	require.NoError(t, stream.Send(&discovery.DeltaDiscoveryRequest{
		TypeUrl:                resource.SecretType,
		ResourceNamesSubscribe: []string{"default", "ROOTCA"},
	}))
	first := next()
	names := map[string]string{}
	for _, r := range first.Resources {
		names[r.Name] = r.Version
	}
	require.Len(t, names, 2)
	require.NoError(t, stream.Send(&discovery.DeltaDiscoveryRequest{
		TypeUrl: resource.SecretType, ResponseNonce: first.Nonce,
	}))

	// A new root: only ROOTCA changes, so only ROOTCA is sent.
	_, err = m.admin.PrepareAuthority(t.Context(), &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)
	update := next()
	require.Len(t, update.Resources, 1)
	require.Equal(t, "ROOTCA", update.Resources[0].Name)
	require.NotEqual(t, names["ROOTCA"], update.Resources[0].Version)

	// Rejected: not sent again.
	require.NoError(t, stream.Send(&discovery.DeltaDiscoveryRequest{
		TypeUrl: resource.SecretType, ResponseNonce: update.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: "bad bundle"},
	}))
	select {
	case r, ok := <-resps:
		require.False(t, ok, "unexpected response after a NACK: %v", r)
	case <-time.After(2 * time.Second):
	}
}

func TestSDSStreamEndsWhenTokenExpires(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	ns, _ := workload(t, kube, "payments")
	claims := kube.PodClaims(t, ns, "payments", "payments-0", "meshca", time.Hour)
	expiry := time.Now().Add(4 * time.Second)
	claims.Expiry = expiry.Unix()
	token := kube.SignToken(t, claims)

	c := openSDS(t, m.conn, token, "default")
	c.ack(c.next(10 * time.Second))
	err := c.err(15 * time.Second)
	requireCode(t, err, codes.Unauthenticated, "token expired")
	require.False(t, time.Now().Before(expiry.Truncate(time.Second)),
		"the stream ended before the token expired")
}

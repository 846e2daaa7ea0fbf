package e2e

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/testutil"
)

// workload creates a pod and returns its namespace and a meshca token bound to it.
func workload(t *testing.T, kube *kubetest.Cluster, sa string) (string, string) {
	t.Helper()
	ns := kube.NewNamespace(t)
	kube.CreateWorkload(t, ns, sa, sa+"-0")
	return ns, kube.PodToken(t, ns, sa, sa+"-0", "meshca", time.Hour)
}

// checkSVIDSecret verifies a tls_certificate secret against a bundle with go-spiffe
// (both parsers) and openssl, and returns the leaf.
func checkSVIDSecret(t *testing.T, cert tlsSecret, roots []*x509.Certificate,
	wantID string) *x509.Certificate {
	t.Helper()
	svid, err := x509svid.Parse(cert.chainPEM, cert.keyPEM)
	require.NoError(t, err)
	require.Equal(t, wantID, svid.ID.String())
	raw := make([][]byte, len(cert.chain))
	for i, c := range cert.chain {
		raw[i] = c.Raw
	}
	id, _, err := x509svid.ParseAndVerify(raw, x509bundle.FromX509Authorities(td, roots))
	require.NoError(t, err)
	require.Equal(t, wantID, id.String())
	testutil.OpensslVerify(t, roots, cert.chain)
	return cert.chain[0]
}

func TestSDSDeliversCertificateAndBundle(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	ns, token := workload(t, kube, "payments")
	wantID := "spiffe://cluster.local/ns/" + ns + "/sa/payments"

	// Envoy opens one stream per secret name.
	certStream := openSDS(t, m.conn, token, "default")
	rootStream := openSDS(t, m.conn, token, "ROOTCA")
	certResp, rootResp := certStream.next(10*time.Second), rootStream.next(10*time.Second)
	certStream.ack(certResp)
	rootStream.ack(rootResp)

	got := secrets(t, certResp)
	require.Len(t, got, 1, "a response holds exactly the secrets asked for")
	roots := rootsOf(t, secrets(t, rootResp)["ROOTCA"])
	require.Len(t, secrets(t, rootResp), 1)
	leaf := checkSVIDSecret(t, certOf(t, got["default"]), roots, wantID)

	// SPIRE's names work on one stream, and the pod's streams share one certificate.
	both := openSDS(t, m.conn, token, wantID, "spiffe://cluster.local")
	r := both.next(10 * time.Second)
	got = secrets(t, r)
	require.Len(t, got, 2)
	same := certOf(t, got[wantID])
	require.Equal(t, leaf.SerialNumber, same.chain[0].SerialNumber,
		"one key and certificate per pod identity")
	require.Equal(t, roots, rootsOf(t, got["spiffe://cluster.local"]))

	// FetchSecrets answers the same.
	fetched, err := secretservice.NewSecretDiscoveryServiceClient(m.conn).FetchSecrets(
		withToken(t.Context(), token), &discovery.DiscoveryRequest{
			ResourceNames: []string{"ROOTCA"}, TypeUrl: resource.SecretType,
		})
	require.NoError(t, err)
	require.Equal(t, roots, rootsOf(t, secrets(t, fetched)["ROOTCA"]))
}

func TestSDSRefusesWrongNamesAndTokens(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	ns, token := workload(t, kube, "orders")
	otherAudience := kube.PodToken(t, ns, "orders", "orders-0", "vault", time.Hour)

	for _, tc := range []struct {
		name  string
		token string
		names []string
		code  codes.Code
		msg   string
	}{
		{"another identity's certificate", token,
			[]string{"spiffe://cluster.local/ns/" + ns + "/sa/payments"},
			codes.PermissionDenied, "belongs to another identity"},
		{"an unknown name", token, []string{"payments-cert"}, codes.InvalidArgument,
			`unknown secret "payments-cert"`},
		{"another trust domain's bundle", token, []string{"spiffe://example.org"},
			codes.InvalidArgument, "no federated trust domain"},
		{"no token", "", []string{"default"}, codes.Unauthenticated, "authentication failed"},
		{"a bad token", "not-a-token", []string{"default"}, codes.Unauthenticated,
			"authentication failed"},
		{"a token for another audience", otherAudience, []string{"default"},
			codes.Unauthenticated, "authentication failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openSDS(t, m.conn, tc.token, tc.names...)
			requireCode(t, c.err(10*time.Second), tc.code, tc.msg)
		})
	}
}

func TestSDSPushesRenewalsAndBundleChanges(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), leafTTL: 6 * time.Second})
	_, token := workload(t, kube, "payments")

	certStream := openSDS(t, m.conn, token, "default")
	first := certStream.next(10 * time.Second)
	certStream.ack(first)
	old := certOf(t, secrets(t, first)["default"]).chain[0]

	// The renewal comes without asking, before the old certificate expires.
	renewed := certStream.next(10 * time.Second)
	certStream.ack(renewed)
	received := time.Now()
	fresh := certOf(t, secrets(t, renewed)["default"]).chain[0]
	require.NotEqual(t, old.SerialNumber, fresh.SerialNumber)
	require.True(t, received.Before(old.NotAfter), "renewal %s after NotAfter %s",
		received, old.NotAfter)
	require.NotEqual(t, first.VersionInfo, renewed.VersionInfo)

	// A new root reaches every open stream at once.
	var streams []*sdsClient
	for range 3 {
		s := openSDS(t, m.conn, token, "ROOTCA")
		s.ack(s.next(10 * time.Second))
		streams = append(streams, s)
	}
	prepared, err := m.admin.PrepareAuthority(t.Context(), &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)
	for _, s := range streams {
		r := s.next(5 * time.Second)
		roots := rootsOf(t, secrets(t, r)["ROOTCA"])
		require.Len(t, roots, 2)
		var fps []string
		for _, c := range roots {
			fps = append(fps, fingerprint(c))
		}
		require.Contains(t, fps, prepared.Authority.FingerprintSha256)
		s.ack(r)
	}
}

func TestSDSDoesNotResendRejectedSecrets(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	_, token := workload(t, kube, "payments")

	c := openSDS(t, m.conn, token, "default")
	r := c.next(10 * time.Second)
	c.nack(r, "Failed to load certificate chain")

	deadline := time.After(2 * time.Second)
	responses := 0
	for done := false; !done; {
		select {
		case <-c.resps:
			responses++
		case err := <-c.errc:
			t.Fatalf("stream ended after the NACK: %v", err)
		case <-deadline:
			done = true
		}
	}
	require.LessOrEqual(t, responses, 1, "responses in the two seconds after a NACK")
	require.Zero(t, responses, "nothing changed, so nothing is sent again")
}

func TestSDSReconnectAfterRestartGetsNewVersion(t *testing.T) {
	kube := kubetest.Start(t)
	dir := t.TempDir()
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), dataDir: dir})
	_, token := workload(t, kube, "payments")

	seen := map[string]bool{}
	c := openSDS(t, m.conn, token, "default", "ROOTCA")
	r := c.next(10 * time.Second)
	seen[r.VersionInfo] = true
	c.ack(r)

	addr := m.addrs.GRPC.String()
	m.stop()
	require.Error(t, c.err(10*time.Second), "the stream ends when meshca stops")

	m2 := startMeshca(t, serverOpts{rest: kube.RESTConfig(), dataDir: dir, grpcAddr: addr})
	// The client reconnects on its old connection, as Envoy does.
	var r2 *discovery.DiscoveryResponse
	require.Eventually(t, func() bool {
		c2 := openSDS(t, m.conn, token, "default", "ROOTCA")
		select {
		case r2 = <-c2.resps:
			return true
		case <-c2.errc:
			return false
		case <-time.After(5 * time.Second):
			return false
		}
	}, 30*time.Second, 200*time.Millisecond)
	require.False(t, seen[r2.VersionInfo], "version %q repeats one seen before the restart",
		r2.VersionInfo)
	require.Equal(t, rootsOf(t, secrets(t, r)["ROOTCA"]), rootsOf(t, secrets(t, r2)["ROOTCA"]),
		"the restarted meshca serves the same root")
	_ = m2
}

func TestADSWildcardWithGoControlPlaneClient(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	ns, token := workload(t, kube, "payments")

	ctx, cancel := context.WithCancel(withToken(context.Background(), token))
	defer cancel()
	client := sotw.NewADSClient(ctx, &core.Node{Id: "sidecar-" + ns}, resource.SecretType)
	require.NoError(t, client.InitConnect(m.conn))
	resp, err := client.Fetch()
	require.NoError(t, err)
	require.NoError(t, client.Ack())
	require.Len(t, resp.Resources, 2, "a wildcard subscription gets default and ROOTCA")
	names := map[string]bool{}
	for _, a := range resp.Resources {
		require.Equal(t, resource.SecretType, a.TypeUrl)
		names[secretName(t, a)] = true
	}
	require.Equal(t, map[string]bool{"default": true, "ROOTCA": true}, names)
}

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/testutil"
)

// TestOldRootClientsReachMeshcaAfterRotation is an Envoy sidecar that read the bundle
// once when it started, before a root rotation (the channel credentials of its xDS
// cluster): after activation, after the old root is removed, and after meshca
// restarts, a client that trusts only the old root still completes the TLS handshake
// with meshca and calls it, with crypto/tls, grpc-go and OpenSSL's s_client.
func TestOldRootClientsReachMeshcaAfterRotation(t *testing.T) {
	kube := kubetest.Start(t)
	dir := t.TempDir()
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), dataDir: dir})
	ctx := context.Background()
	oldRoot := rootsNow(t, m)[0]

	_, err := m.admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)
	newRoot := rootsNow(t, m)[1]
	_, err = m.admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{})
	require.NoError(t, err)
	eventually(t, "meshca serves a certificate of the new root", func() bool {
		chain := servedChain(t, m.addrs.GRPC.String())
		return chain[0].CheckSignatureFrom(newRoot) == nil
	})
	requireReachable(t, m, oldRoot, "after activation")
	requireReachable(t, m, newRoot, "after activation")

	_, err = m.admin.RemoveAuthority(ctx, &meshcav1.RemoveAuthorityRequest{})
	require.NoError(t, err)
	require.Equal(t, []*x509.Certificate{newRoot}, rootsNow(t, m))
	requireReachable(t, m, oldRoot, "after removal")

	m.stop()
	m = startMeshca(t, serverOpts{rest: kube.RESTConfig(), dataDir: dir})
	requireReachable(t, m, oldRoot, "after a restart")
	requireReachable(t, m, newRoot, "after a restart")
}

// servedChain returns the certificates meshca sends in its TLS handshake.
func servedChain(t *testing.T, addr string) []*x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		InsecureSkipVerify: true, // only reads the chain; requireReachable verifies
		NextProtos:         []string{"h2"},
	})
	require.NoError(t, err)
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

// requireReachable checks that a client trusting only root verifies meshca's main
// port and calls its health service, and that OpenSSL verifies the handshake.
func requireReachable(t *testing.T, m *meshca, root *x509.Certificate, when string) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(root)
	conn := m.dialTrusting(t, pool)
	resp, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	require.NoError(t, err, "%s, trusting only %s", when, root.Subject)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)

	caFile := filepath.Join(t.TempDir(), "root.pem")
	require.NoError(t, os.WriteFile(caFile, testutil.PEMCerts(root), 0o600))
	cmd := exec.Command("openssl", "s_client", "-connect", m.addrs.GRPC.String(),
		"-servername", "localhost", "-alpn", "h2", "-CAfile", caFile,
		"-verify_return_error", "-verify_hostname", "localhost")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s: openssl s_client trusting only %s:\n%s", when, root.Subject, out)
	require.Contains(t, string(out), "Verify return code: 0 (ok)", "%s", when)
}

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
)

// sdsClient speaks SDS as Envoy does: the node on the first request only, and every
// response ACKed (or NACKed) with its version and nonce.
type sdsClient struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discovery.DiscoveryRequest, discovery.DiscoveryResponse]
	names  []string
	resps  chan *discovery.DiscoveryResponse
	errc   chan error
	cancel context.CancelFunc
}

func openSDS(t *testing.T, conn *grpc.ClientConn, token string, names ...string) *sdsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(withToken(context.Background(), token))
	t.Cleanup(cancel)
	stream, err := secretservice.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	require.NoError(t, err)
	c := &sdsClient{t: t, stream: stream, names: names, cancel: cancel,
		resps: make(chan *discovery.DiscoveryResponse, 16), errc: make(chan error, 1)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				c.errc <- err
				return
			}
			c.resps <- r
		}
	}()
	require.NoError(t, stream.Send(&discovery.DiscoveryRequest{
		Node:          &core.Node{Id: "sidecar~10.0.0.1~" + t.Name(), Cluster: "test"},
		ResourceNames: names,
		TypeUrl:       resource.SecretType,
	}))
	return c
}

// next waits for the next response and fails the test on a stream error.
func (c *sdsClient) next(timeout time.Duration) *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errc:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(timeout):
		c.t.Fatalf("no response within %s", timeout)
	}
	return nil
}

// err waits for the stream to end and returns why.
func (c *sdsClient) err(timeout time.Duration) error {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("want the stream to fail, got a response of version %s", r.VersionInfo)
	case err := <-c.errc:
		return err
	case <-time.After(timeout):
		c.t.Fatalf("stream did not end within %s", timeout)
	}
	return nil
}

func (c *sdsClient) ack(r *discovery.DiscoveryResponse) {
	c.t.Helper()
	require.NoError(c.t, c.stream.Send(&discovery.DiscoveryRequest{
		VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: c.names,
		TypeUrl: resource.SecretType,
	}))
}

func (c *sdsClient) nack(r *discovery.DiscoveryResponse, msg string) {
	c.t.Helper()
	require.NoError(c.t, c.stream.Send(&discovery.DiscoveryRequest{
		ResponseNonce: r.Nonce, ResourceNames: c.names, TypeUrl: resource.SecretType,
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: msg},
	}))
}

// secrets decodes a response's secrets by name, checking the type URL.
func secrets(t *testing.T, r *discovery.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	require.Equal(t, resource.SecretType, r.TypeUrl)
	out := map[string]*tlsv3.Secret{}
	for _, a := range r.Resources {
		var s tlsv3.Secret
		require.NoError(t, a.UnmarshalTo(&s))
		out[s.Name] = &s
	}
	return out
}

// tlsSecret is a decoded tls_certificate secret.
type tlsSecret struct {
	chainPEM, keyPEM []byte
	chain            []*x509.Certificate
}

func certOf(t *testing.T, s *tlsv3.Secret) tlsSecret {
	t.Helper()
	require.NotNil(t, s, "secret missing")
	tc := s.GetTlsCertificate()
	require.NotNil(t, tc, "secret %q is not a tls_certificate", s.Name)
	chainPEM := tc.GetCertificateChain().GetInlineBytes()
	keyPEM := tc.GetPrivateKey().GetInlineBytes()
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	require.NoError(t, err, "the key matches the certificate")
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		chain = append(chain, c)
	}
	return tlsSecret{chainPEM: chainPEM, keyPEM: keyPEM, chain: chain}
}

func rootsOf(t *testing.T, s *tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	require.NotNil(t, s, "secret missing")
	vc := s.GetValidationContext()
	require.NotNil(t, vc, "secret %q is not a validation_context", s.Name)
	roots, err := testutil.ParsePEMCerts(vc.GetTrustedCa().GetInlineBytes())
	require.NoError(t, err)
	return roots
}

func secretName(t *testing.T, a *anypb.Any) string {
	t.Helper()
	var s tlsv3.Secret
	require.NoError(t, a.UnmarshalTo(&s))
	return s.Name
}

func fingerprint(c *x509.Certificate) string {
	return ca.Fingerprint(c.Raw)
}

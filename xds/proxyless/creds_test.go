package proxyless

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
)

// leaf signs a serving certificate for the given names under root.
func leaf(t *testing.T, root *x509.Certificate, rootKey any,
	tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key := testutil.MustKey(t, ca.KeyECP256)
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.Subject = pkix.Name{CommonName: "test"}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// handshake runs a TLS server with cert and the meshca credentials against it.
func handshake(t *testing.T, caFile, serverName string, cert tls.Certificate) error {
	t.Helper()
	cfg, err := json.Marshal(CredentialsConfig{CAFile: caFile, TokenFile: "unused",
		ServerName: serverName})
	require.NoError(t, err)
	b, _, err := builder{}.Build(cfg)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	go func() {
		server, err := lis.Accept()
		if err != nil {
			return
		}
		defer server.Close()
		_ = tls.Server(server, &tls.Config{Certificates: []tls.Certificate{cert},
			NextProtos: []string{"h2"}}).Handshake()
	}()
	client, err := net.Dial("tcp", lis.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err = b.TransportCredentials().ClientHandshake(ctx, serverName, client)
	return err
}

func TestCredentialsVerifyMeshca(t *testing.T) {
	key := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "test root", key, nil, key, time.Hour)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, testutil.PEMCerts(root), 0o600))

	meshca := leaf(t, root, key, &x509.Certificate{
		DNSNames: []string{"meshca.meshca.svc"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	require.NoError(t, handshake(t, caFile, "meshca.meshca.svc", meshca))
	require.NoError(t, handshake(t, caFile, "127.0.0.1", meshca))
	require.Error(t, handshake(t, caFile, "other.example", meshca), "wrong name accepted")

	// A workload's SVID, issued by the same root, must not pass for meshca even where
	// the name would not be checked.
	u, err := url.Parse("spiffe://cluster.local/ns/a/sa/b")
	require.NoError(t, err)
	svid := leaf(t, root, key, &x509.Certificate{URIs: []*url.URL{u},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	err = handshake(t, caFile, "127.0.0.1", svid)
	require.ErrorContains(t, err, "workload certificate")

	// Without a server name there is nothing to check: refused at build time.
	_, _, err = builder{}.Build(json.RawMessage(`{"ca_certificate_file":"` + caFile +
		`","token_file":"t"}`))
	require.ErrorContains(t, err, "server_name")
}

func TestTokenIsReadForEveryStream(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte("first\n"), 0o600))
	md, err := tokenFile(path).GetRequestMetadata(context.Background())
	require.NoError(t, err)
	require.Equal(t, "Bearer first", md["authorization"])
	require.NoError(t, os.WriteFile(path, []byte("second"), 0o600))
	md, err = tokenFile(path).GetRequestMetadata(context.Background())
	require.NoError(t, err)
	require.Equal(t, "Bearer second", md["authorization"])
}

package e2e

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/testutil"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func csrDER(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	require.NoError(t, err)
	return der
}

func sign(ctx context.Context, m *meshca, token string, csr []byte) (
	*meshcav1.SignX509SVIDResponse, error) {
	return m.certs.SignX509SVID(withToken(ctx, token), &meshcav1.SignX509SVIDRequest{Csr: csr})
}

func requireCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	require.Error(t, err)
	st, ok := status.FromError(err)
	require.True(t, ok, "not a gRPC status: %v", err)
	require.Equal(t, code, st.Code(), "message: %s", st.Message())
	require.Contains(t, st.Message(), msg)
}

func TestPodTokenGetsItsSVID(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	ns := kube.NewNamespace(t)
	kube.CreateWorkload(t, ns, "payments", "payments-0")
	token := kube.PodToken(t, ns, "payments", "payments-0", "meshca", time.Hour)

	key := testutil.MustKey(t, ca.KeyECP256)
	resp, err := sign(t.Context(), m, token, csrDER(t, key, nil))
	require.NoError(t, err)

	want := "spiffe://cluster.local/ns/" + ns + "/sa/payments"
	require.Equal(t, want, resp.SpiffeId)
	bundle, err := x509bundle.ParseRaw(td, concat(resp.Bundle))
	require.NoError(t, err)
	id, _, err := x509svid.ParseAndVerify(resp.CertChain, bundle)
	require.NoError(t, err)
	require.Equal(t, want, id.String())

	leaf, err := x509.ParseCertificate(resp.CertChain[0])
	require.NoError(t, err)
	require.True(t, key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey))
	require.Equal(t, resp.NotAfter.AsTime(), leaf.NotAfter)
	testutil.OpensslVerify(t, bundle.X509Authorities(), []*x509.Certificate{leaf})

	// A CSR that names exactly the caller's own ID is fine too.
	own := &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, want)}}
	_, err = sign(t.Context(), m, token, csrDER(t, key, own))
	require.NoError(t, err)

	recs, err := m.admin.ListIssuances(t.Context(), &meshcav1.ListIssuancesRequest{SpiffeId: want})
	require.NoError(t, err)
	require.Len(t, recs.Issuances, 2)
	require.Contains(t, recs.Issuances[0].Requester, "pod=payments-0")
}

func TestBadTokensAreUnauthenticated(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	ns := kube.NewNamespace(t)
	kube.CreateWorkload(t, ns, "orders", "orders-0")
	csr := csrDER(t, testutil.MustKey(t, ca.KeyECP256), nil)

	unknownKey := testutil.MustKey(t, ca.KeyECP256)
	for _, tc := range []struct {
		name  string
		token func(t *testing.T) string
	}{
		{"token for another audience", func(t *testing.T) string {
			return kube.PodToken(t, ns, "orders", "orders-0", "vault", time.Hour)
		}},
		{"token for the apiserver's default audience", func(t *testing.T) string {
			return kube.PodToken(t, ns, "orders", "orders-0", kube.Audiences[0], time.Hour)
		}},
		{"token signed by an unknown key", func(t *testing.T) string {
			claims := kube.PodClaims(t, ns, "orders", "orders-0", "meshca", time.Hour)
			good := kube.SignToken(t, claims)
			other := *kube
			other.SigningKey = unknownKey
			forged := other.SignToken(t, claims)
			require.NotEqual(t, good, forged)
			return forged
		}},
		{"expired token", func(t *testing.T) string {
			claims := kube.PodClaims(t, ns, "orders", "orders-0", "meshca", time.Hour)
			claims.IssuedAt = time.Now().Add(-3 * time.Hour).Unix()
			claims.NotBefore = claims.IssuedAt
			claims.Expiry = time.Now().Add(-2 * time.Hour).Unix()
			return kube.SignToken(t, claims)
		}},
		{"token without expiry", func(t *testing.T) string {
			claims := kube.PodClaims(t, ns, "orders", "orders-0", "meshca", time.Hour)
			claims.Expiry = 0
			return kube.SignToken(t, claims)
		}},
		{"self-signed token bound to no pod", func(t *testing.T) string {
			claims := kube.PodClaims(t, ns, "orders", "orders-0", "meshca", time.Hour)
			claims.Kubernetes.Pod = nil
			return kube.SignToken(t, claims)
		}},
		{"token bound to no pod", func(t *testing.T) string {
			seconds := int64(3600)
			resp, err := kube.Client.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(),
				"orders", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
					Audiences: []string{"meshca"}, ExpirationSeconds: &seconds,
				}}, metav1.CreateOptions{})
			require.NoError(t, err)
			return resp.Status.Token
		}},
		{"not a token", func(*testing.T) string { return "garbage" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sign(t.Context(), m, tc.token(t), csr)
			requireCode(t, err, codes.Unauthenticated, "authentication failed")
		})
	}

	t.Run("no token", func(t *testing.T) {
		_, err := m.certs.SignX509SVID(t.Context(), &meshcav1.SignX509SVIDRequest{Csr: csr})
		requireCode(t, err, codes.Unauthenticated, "authentication failed")
	})
}

func TestDeletedObjectsInvalidateTokens(t *testing.T) {
	kube := kubetest.Start(t)
	// No caching in meshca, so what is measured is the apiserver's own answer.
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), cacheTTL: time.Nanosecond})
	ns := kube.NewNamespace(t)
	csr := csrDER(t, testutil.MustKey(t, ca.KeyECP256), nil)

	t.Run("service account deleted", func(t *testing.T) {
		kube.CreateWorkload(t, ns, "gone-sa", "gone-sa-0")
		token := kube.PodToken(t, ns, "gone-sa", "gone-sa-0", "meshca", time.Hour)
		_, err := sign(t.Context(), m, token, csr)
		require.NoError(t, err, "the token works before the deletion")
		require.NoError(t, kube.Client.CoreV1().ServiceAccounts(ns).Delete(t.Context(),
			"gone-sa", metav1.DeleteOptions{}))
		eventuallyUnauthenticated(t, m, token, csr)
	})
	t.Run("pod deleted", func(t *testing.T) {
		kube.CreateWorkload(t, ns, "gone-pod", "gone-pod-0")
		token := kube.PodToken(t, ns, "gone-pod", "gone-pod-0", "meshca", time.Hour)
		_, err := sign(t.Context(), m, token, csr)
		require.NoError(t, err, "the token works before the deletion")
		zero := int64(0)
		require.NoError(t, kube.Client.CoreV1().Pods(ns).Delete(t.Context(), "gone-pod-0",
			metav1.DeleteOptions{GracePeriodSeconds: &zero}))
		eventuallyUnauthenticated(t, m, token, csr)
	})
}

// eventuallyUnauthenticated polls until meshca refuses the token: kube-apiserver
// caches a good review for about ten seconds.
func eventuallyUnauthenticated(t *testing.T, m *meshca, token string, csr []byte) {
	t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	for {
		_, err := sign(t.Context(), m, token, csr)
		if status.Code(err) == codes.Unauthenticated {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("token still accepted 40 s after the deletion (last error: %v)", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func TestWithoutAuthDelegatorMeshcaIsNotReady(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.NoAuthRESTConfig()})
	ns := kube.NewNamespace(t)
	kube.CreateWorkload(t, ns, "orders", "orders-0")
	token := kube.PodToken(t, ns, "orders", "orders-0", "meshca", time.Hour)

	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := m.readyz(t)
		if code == http.StatusServiceUnavailable && strings.Contains(body, "system:auth-delegator") {
			require.Contains(t, body, "token authentication")
			break
		}
		require.False(t, time.Now().After(deadline), "readyz: %d %s", code, body)
		time.Sleep(100 * time.Millisecond)
	}

	_, err := sign(t.Context(), m, token, csrDER(t, testutil.MustKey(t, ca.KeyECP256), nil))
	requireCode(t, err, codes.Unavailable, "token authentication unavailable")
}

func TestCSRChecks(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	ns := kube.NewNamespace(t)
	kube.CreateWorkload(t, ns, "orders", "orders-0")
	token := kube.PodToken(t, ns, "orders", "orders-0", "meshca", time.Hour)
	key := testutil.MustKey(t, ca.KeyECP256)

	broken := csrDER(t, key, nil)
	broken[len(broken)-3] ^= 0xff
	for _, tc := range []struct {
		name string
		csr  []byte
		code codes.Code
		msg  string
	}{
		{"another SPIFFE ID", csrDER(t, key, &x509.CertificateRequest{URIs: []*url.URL{
			mustURL(t, "spiffe://cluster.local/ns/"+ns+"/sa/payments")}}),
			codes.PermissionDenied, "the caller may only have"},
		{"a DNS name", csrDER(t, key, &x509.CertificateRequest{DNSNames: []string{"payments"}}),
			codes.PermissionDenied, "only the caller's SPIFFE ID is allowed"},
		{"an IP", csrDER(t, key, &x509.CertificateRequest{IPAddresses: []net.IP{
			net.ParseIP("10.0.0.1")}}), codes.PermissionDenied, "only the caller's SPIFFE ID"},
		{"a broken signature", broken, codes.InvalidArgument, "CSR signature does not verify"},
		{"garbage", []byte("not a CSR"), codes.InvalidArgument, "malformed CSR"},
		{"nothing", nil, codes.InvalidArgument, "malformed CSR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sign(t.Context(), m, token, tc.csr)
			requireCode(t, err, tc.code, tc.msg)
		})
	}
	recs, err := m.admin.ListIssuances(t.Context(), &meshcav1.ListIssuancesRequest{})
	require.NoError(t, err)
	for _, r := range recs.Issuances {
		require.Empty(t, r.SpiffeId, "no workload certificate was issued, only meshca's own")
	}
}

func TestTokenReviewsAreCachedAndMerged(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), cacheTTL: time.Minute})
	ns := kube.NewNamespace(t)
	kube.CreateWorkload(t, ns, "orders", "orders-0")
	csr := csrDER(t, testutil.MustKey(t, ca.KeyECP256), nil)

	t.Run("100 calls in a row", func(t *testing.T) {
		token := kube.PodToken(t, ns, "orders", "orders-0", "meshca", time.Hour)
		before := m.reviews.Load()
		for range 100 {
			_, err := sign(t.Context(), m, token, csr)
			require.NoError(t, err)
		}
		require.Equal(t, int64(1), m.reviews.Load()-before, "TokenReviews sent")
	})
	t.Run("50 concurrent first calls", func(t *testing.T) {
		token := kube.PodToken(t, ns, "orders", "orders-0", "meshca", time.Hour)
		before := m.reviews.Load()
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		start := make(chan struct{})
		for range 50 {
			wg.Go(func() {
				<-start
				_, err := sign(t.Context(), m, token, csr)
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, int64(1), m.reviews.Load()-before, "TokenReviews sent")
	})
	t.Run("failures are not cached", func(t *testing.T) {
		token := kube.PodToken(t, ns, "orders", "orders-0", "vault", time.Hour)
		before := m.reviews.Load()
		for range 3 {
			_, err := sign(t.Context(), m, token, csr)
			requireCode(t, err, codes.Unauthenticated, "authentication failed")
		}
		require.Equal(t, int64(3), m.reviews.Load()-before, "TokenReviews sent")
	})
}

func concat(ders [][]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, d...)
	}
	return out
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

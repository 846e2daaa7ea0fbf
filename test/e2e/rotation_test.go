package e2e

import (
	"context"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/testutil"
)

// seen is one response a stream received, numbered in the order of arrival across
// every stream of the test.
type seen struct {
	seq   int64
	leaf  *x509.Certificate   // the default secret's leaf, if the response had one
	chain []*x509.Certificate // leaf first
	roots []*x509.Certificate // the ROOTCA secret's roots, if the response had one
}

// recorder reads a stream, ACKs every response at once (or holds ACKs while held),
// and keeps what it received.
type recorder struct {
	c    *sdsClient
	name string
	// mu guards got, hold and held.
	mu   sync.Mutex
	got  []seen
	hold bool
	held []*discovery.DiscoveryResponse
	err  atomic.Value // error that ended the stream
}

func record(t *testing.T, c *sdsClient, name string, seq *atomic.Int64) *recorder {
	r := &recorder{c: c, name: name}
	go func() {
		for {
			var resp *discovery.DiscoveryResponse
			select {
			case resp = <-c.resps:
			case err := <-c.errc:
				r.err.Store(err)
				return
			}
			s := seen{seq: seq.Add(1)}
			for _, a := range resp.Resources {
				var sec tlsv3.Secret
				if a.UnmarshalTo(&sec) != nil {
					continue
				}
				if tc := sec.GetTlsCertificate(); tc != nil {
					chain, err := testutil.ParsePEMCerts(tc.GetCertificateChain().GetInlineBytes())
					if err == nil {
						s.leaf, s.chain = chain[0], chain
					}
				}
				if vc := sec.GetValidationContext(); vc != nil {
					s.roots, _ = testutil.ParsePEMCerts(vc.GetTrustedCa().GetInlineBytes())
				}
			}
			r.mu.Lock()
			r.got = append(r.got, s)
			hold := r.hold
			if hold {
				r.held = append(r.held, resp)
			}
			r.mu.Unlock()
			if !hold {
				_ = c.stream.Send(ackOf(c, resp))
			}
		}
	}()
	return r
}

// release ACKs the held responses and stops holding.
func (r *recorder) release() {
	r.mu.Lock()
	held := r.held
	r.hold, r.held = false, nil
	r.mu.Unlock()
	for _, resp := range held {
		_ = r.c.stream.Send(ackOf(r.c, resp))
	}
}

func (r *recorder) snapshot() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.got...)
}

// firstSeq returns the sequence number of the first response matching f, or -1.
func (r *recorder) firstSeq(f func(seen) bool) int64 {
	for _, s := range r.snapshot() {
		if f(s) {
			return s.seq
		}
	}
	return -1
}

// TestRotationWithOpenStreams runs a full rotation while SDS streams are open, in
// both layouts Envoy uses (one stream per secret, and one for both): activation is
// refused until every stream acknowledged the two-root bundle; every stream gets that
// bundle before any leaf signed by the new root exists; leaves move to the new root by
// renewal; removal waits for the old leaves to expire and then every stream gets the
// one-root bundle.
func TestRotationWithOpenStreams(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), leafTTL: 20 * time.Second})
	ctx := context.Background()
	var seq atomic.Int64

	_, tokenA := workload(t, kube, "alpha")
	_, tokenB := workload(t, kube, "beta")
	both := record(t, openSDS(t, m.conn, tokenA, "default", "ROOTCA"), "alpha both", &seq)
	certB := record(t, openSDS(t, m.conn, tokenB, "default"), "beta default", &seq)
	rootB := record(t, openSDS(t, m.conn, tokenB, "ROOTCA"), "beta ROOTCA", &seq)
	all := []*recorder{both, certB, rootB}
	bundles := []*recorder{both, rootB}
	certs := []*recorder{both, certB}
	for _, r := range all {
		eventually(t, "first response on "+r.name, func() bool { return len(r.snapshot()) > 0 })
	}
	oldRoot := rootsNow(t, m)[0]

	// Hold beta's ROOTCA ACKs: activation must wait for that stream.
	rootB.mu.Lock()
	rootB.hold = true
	rootB.mu.Unlock()
	prep, err := m.admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)
	newRoot := rootsNow(t, m)[1]
	require.Equal(t, prep.Authority.FingerprintSha256, fingerprint(newRoot))
	hasNew := func(s seen) bool { return containsRoot(s.roots, newRoot) && len(s.roots) == 2 }
	for _, r := range bundles {
		eventually(t, r.name+" gets the two-root bundle", func() bool {
			return r.firstSeq(hasNew) > 0
		})
	}
	eventually(t, "alpha's ACK is counted", func() bool {
		st, err := m.admin.GetRotationStatus(ctx, &meshcav1.GetRotationStatusRequest{})
		require.NoError(t, err)
		return st.Authorities[1].StreamsAcked == 1 && st.Authorities[1].StreamsTotal == 2
	})
	_, err = m.admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "error: %v", err)
	require.Contains(t, status.Convert(err).Message(),
		"1 of 2 streams have not acknowledged a bundle containing authority "+prep.Authority.Id)

	rootB.release()
	eventually(t, "activation once every stream acknowledged", func() bool {
		_, err := m.admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{})
		if status.Code(err) == codes.FailedPrecondition {
			return false
		}
		require.NoError(t, err)
		return true
	})

	// Renewals move every certificate stream to the new root.
	signedByNew := func(s seen) bool {
		return s.leaf != nil && s.leaf.CheckSignatureFrom(newRoot) == nil
	}
	for _, r := range certs {
		eventually(t, r.name+" gets a leaf of the new root", func() bool {
			return r.firstSeq(signedByNew) > 0
		})
	}
	firstNewLeaf := min(both.firstSeq(signedByNew), certB.firstSeq(signedByNew))
	for _, r := range bundles {
		require.Less(t, r.firstSeq(hasNew), firstNewLeaf,
			"%s got the two-root bundle before the first leaf of the new root", r.name)
	}
	for _, r := range certs {
		for _, s := range r.snapshot() {
			if s.leaf != nil && signedByNew(s) {
				checkChain(t, s.chain, []*x509.Certificate{oldRoot, newRoot})
			}
		}
	}

	// Removal is refused until the old leaves expire, then goes through.
	var refusals int
	eventually(t, "removal once the old leaves expired", func() bool {
		_, err := m.admin.RemoveAuthority(ctx, &meshcav1.RemoveAuthorityRequest{})
		if status.Code(err) == codes.FailedPrecondition {
			require.Contains(t, status.Convert(err).Message(), "cannot be removed yet")
			refusals++
			return false
		}
		require.NoError(t, err)
		return true
	})
	require.Positive(t, refusals, "the old leaves held removal back at first")
	onlyNew := func(s seen) bool { return len(s.roots) == 1 && s.roots[0].Equal(newRoot) }
	for _, r := range bundles {
		eventually(t, r.name+" gets the one-root bundle", func() bool {
			return r.firstSeq(onlyNew) > 0
		})
	}
	for _, r := range all {
		require.Nil(t, r.err.Load(), "%s ended", r.name)
	}
}

// ackOf is the request that accepts resp, as Envoy sends it.
func ackOf(c *sdsClient, resp *discovery.DiscoveryResponse) *discovery.DiscoveryRequest {
	return &discovery.DiscoveryRequest{
		VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: c.names,
		TypeUrl: resource.SecretType,
	}
}

// eventually polls cond until it holds, failing the test after a deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rootsNow returns the bundle meshca serves now, oldest root first.
func rootsNow(t *testing.T, m *meshca) []*x509.Certificate {
	t.Helper()
	b, err := m.admin.GetBundle(context.Background(), &meshcav1.GetBundleRequest{})
	require.NoError(t, err)
	var out []*x509.Certificate
	for _, der := range b.X509Authorities {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		out = append(out, c)
	}
	return out
}

func containsRoot(roots []*x509.Certificate, root *x509.Certificate) bool {
	for _, r := range roots {
		if r.Equal(root) {
			return true
		}
	}
	return false
}

// checkChain verifies a chain against roots with openssl.
func checkChain(t *testing.T, chain, roots []*x509.Certificate) {
	t.Helper()
	testutil.OpensslVerify(t, roots, chain)
}

// TestRotationReissueMovesLeavesAtOnce activates with reissue while SDS streams hold
// hour-long certificates, whose normal renewal is at least 24 minutes away: every
// stream gets a leaf of the new root within the re-issue window instead, after the
// two-root bundle, and the leaf chains to the new root.
func TestRotationReissueMovesLeavesAtOnce(t *testing.T) {
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), leafTTL: time.Hour})
	ctx := context.Background()
	var seq atomic.Int64

	_, tokenA := workload(t, kube, "alpha")
	_, tokenB := workload(t, kube, "beta")
	both := record(t, openSDS(t, m.conn, tokenA, "default", "ROOTCA"), "alpha both", &seq)
	certB := record(t, openSDS(t, m.conn, tokenB, "default"), "beta default", &seq)
	certs := []*recorder{both, certB}
	for _, r := range certs {
		eventually(t, "first response on "+r.name, func() bool { return len(r.snapshot()) > 0 })
	}
	oldRoot := rootsNow(t, m)[0]

	_, err := m.admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)
	newRoot := rootsNow(t, m)[1]
	hasNew := func(s seen) bool { return containsRoot(s.roots, newRoot) }
	eventually(t, "alpha gets the two-root bundle", func() bool {
		return both.firstSeq(hasNew) > 0
	})
	var resp *meshcav1.ActivateAuthorityResponse
	eventually(t, "activation once every stream acknowledged", func() bool {
		resp, err = m.admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{
			Reissue: true, ReissueWindow: durationpb.New(2 * time.Second),
		})
		if status.Code(err) == codes.FailedPrecondition {
			return false
		}
		require.NoError(t, err)
		return true
	})
	require.EqualValues(t, 2, resp.Reissued, "one certificate per pod identity")

	signedByNew := func(s seen) bool {
		return s.leaf != nil && s.leaf.CheckSignatureFrom(newRoot) == nil
	}
	for _, r := range certs {
		eventually(t, r.name+" gets a leaf of the new root", func() bool {
			return r.firstSeq(signedByNew) > 0
		})
		var first *seen
		for _, s := range r.snapshot() {
			if s.leaf != nil && first == nil {
				first = &s
			}
		}
		require.Less(t, time.Now(), first.leaf.NotBefore.Add(24*time.Minute),
			"%s moved long before its normal renewal", r.name)
		for _, s := range r.snapshot() {
			if signedByNew(s) {
				checkChain(t, s.chain, []*x509.Certificate{oldRoot, newRoot})
			}
		}
		require.Nil(t, r.err.Load(), "%s ended", r.name)
	}
	require.Less(t, both.firstSeq(hasNew), both.firstSeq(signedByNew),
		"the two-root bundle came before the first leaf of the new root")
}

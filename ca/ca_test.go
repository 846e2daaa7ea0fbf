package ca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/store"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func openStore(t testing.TB, dir string) *store.Bolt {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(dir, "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	return st
}

func newCA(t testing.TB, cfg ca.Config) (*ca.CA, *store.Bolt) {
	t.Helper()
	st := openStore(t, t.TempDir())
	t.Cleanup(func() { _ = st.Close() })
	cfg.TrustDomain = td
	cfg.Store = st
	c, err := ca.New(context.Background(), cfg)
	require.NoError(t, err)
	return c, st
}

// verifySVID checks an issued SVID with both go-spiffe parsers and with openssl.
func verifySVID(t *testing.T, c *ca.CA, svid *ca.X509SVID) {
	t.Helper()
	raw := make([][]byte, len(svid.Certificates))
	for i, cert := range svid.Certificates {
		raw[i] = cert.Raw
	}
	id, chains, err := x509svid.ParseAndVerify(raw, c.Bundle())
	require.NoError(t, err)
	require.Equal(t, svid.ID, id)
	require.NotEmpty(t, chains)
	testutil.OpensslVerify(t, c.Bundle().X509Authorities(), svid.Certificates)
}

func TestIssueX509SVID(t *testing.T) {
	c, st := newCA(t, ca.Config{})
	key := testutil.MustKey(t, ca.KeyECP256)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/payments/sa/api")

	before := time.Now()
	svid, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
		ID: id, PublicKey: key.Public(), TTL: 30 * time.Minute, Requester: "test",
	})
	require.NoError(t, err)
	verifySVID(t, c, svid)

	require.Len(t, svid.Certificates, 1, "a root-signed leaf is served alone")
	leaf := svid.Leaf()
	require.Len(t, leaf.URIs, 1)
	require.Equal(t, id.String(), leaf.URIs[0].String())
	require.Empty(t, leaf.DNSNames)
	require.Empty(t, leaf.IPAddresses)
	require.Empty(t, leaf.EmailAddresses)
	require.False(t, leaf.IsCA)
	require.Equal(t, x509.KeyUsageDigitalSignature, leaf.KeyUsage)
	require.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		leaf.ExtKeyUsage)
	require.Positive(t, leaf.SerialNumber.Sign())
	require.GreaterOrEqual(t, leaf.SerialNumber.BitLen(), 64)
	require.False(t, leaf.NotBefore.After(before.Add(-60*time.Second)),
		"NotBefore %s must be back-dated by 60 s", leaf.NotBefore)
	require.WithinDuration(t, before.Add(30*time.Minute), leaf.NotAfter, 2*time.Second)
	require.Equal(t, x509.ECDSAWithSHA256, leaf.SignatureAlgorithm)

	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	parsed, err := x509svid.ParseRaw(leaf.Raw, keyDER)
	require.NoError(t, err)
	require.Equal(t, id, parsed.ID)

	recs, err := st.Issuances(context.Background(), store.IssuanceQuery{})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	cmd := exec.Command("openssl", "x509", "-noout", "-serial")
	cmd.Stdin = bytes.NewReader(testutil.PEMCerts(leaf))
	out, err := cmd.Output()
	require.NoError(t, err)
	require.Equal(t, strings.TrimSpace(string(out)), "serial="+strings.ToUpper(recs[0].Serial),
		"the audit log writes the serial as openssl prints it, in lower case")
	require.Equal(t, id.String(), recs[0].SPIFFEID)
	require.Equal(t, "test", recs[0].Requester)
	require.True(t, recs[0].NotAfter.Equal(leaf.NotAfter))
}

func TestParseSPIFFEIDRefusesNonCanonicalIDs(t *testing.T) {
	for _, tc := range []struct {
		name, id, wantMsg string
	}{
		{"percent-encoded segment", "spiffe://cluster.local/ns/p%61yments/sa/api",
			"path segment characters are limited"},
		{"empty segment", "spiffe://cluster.local/ns/a//sa/b", "path cannot contain empty segments"},
		{"trailing slash", "spiffe://cluster.local/ns/a/sa/b/", "path cannot have a trailing slash"},
		{"dot segment", "spiffe://cluster.local/ns/a/./sa/b", "path cannot contain dot segments"},
		{"uppercase trust domain", "spiffe://TD.example/ns/a/sa/b",
			"trust domain characters are limited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.ParseSPIFFEID(tc.id)
			require.ErrorIs(t, err, ca.ErrInvalidRequest)
			require.ErrorContains(t, err, tc.wantMsg)
			require.ErrorContains(t, err, tc.id, "the error quotes the refused ID")
		})
	}
	id, err := ca.ParseSPIFFEID("spiffe://cluster.local/ns/a/sa/b")
	require.NoError(t, err)
	require.Equal(t, "/ns/a/sa/b", id.Path())
}

func TestIssueRefusesBadRequests(t *testing.T) {
	c, _ := newCA(t, ca.Config{})
	good := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	p256 := testutil.MustKey(t, ca.KeyECP256).Public()
	for _, tc := range []struct {
		name    string
		params  ca.X509SVIDParams
		wantMsg string
	}{
		{"other trust domain", ca.X509SVIDParams{
			ID: spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b"), PublicKey: p256,
		}, `not in trust domain "cluster.local"`},
		{"trust domain ID without path", ca.X509SVIDParams{
			ID: td.ID(), PublicKey: p256,
		}, "has no path"},
		{"no ID", ca.X509SVIDParams{PublicKey: p256}, "SPIFFE ID is empty"},
		{"P-521 key", ca.X509SVIDParams{
			ID: good, PublicKey: mustECKey(t, "P-521"),
		}, "ECDSA curve P-521 is not supported"},
		{"RSA 1024 key", ca.X509SVIDParams{
			ID: good, PublicKey: mustRSAKey(t, 1024),
		}, "RSA key of 1024 bits is not supported"},
		{"no key", ca.X509SVIDParams{ID: good}, "public key type <nil> is not supported"},
		{"negative TTL", ca.X509SVIDParams{ID: good, PublicKey: p256, TTL: -time.Second},
			"is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.IssueX509SVID(context.Background(), tc.params)
			require.ErrorIs(t, err, ca.ErrInvalidRequest)
			require.ErrorContains(t, err, tc.wantMsg)
		})
	}
}

func TestSubjectKeyTypes(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	for _, tc := range []struct {
		name         string
		caKey        ca.KeyType
		subjectKey   ca.KeyType
		wantSigAlg   x509.SignatureAlgorithm
		wantKeyUsage x509.KeyUsage
	}{
		{"ECDSA CA signs RSA key", ca.KeyECP256, ca.KeyRSA2048, x509.ECDSAWithSHA256,
			x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{"RSA CA signs ECDSA key", ca.KeyRSA2048, ca.KeyECP256, x509.SHA256WithRSA,
			x509.KeyUsageDigitalSignature},
		{"ECDSA CA signs P-384 key", ca.KeyECP256, ca.KeyECP384, x509.ECDSAWithSHA256,
			x509.KeyUsageDigitalSignature},
		{"P-384 CA signs Ed25519 key", ca.KeyECP384, ca.KeyEd25519, x509.ECDSAWithSHA384,
			x509.KeyUsageDigitalSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newCA(t, ca.Config{KeyType: tc.caKey})
			key := testutil.MustKey(t, tc.subjectKey)
			svid, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
				ID: id, PublicKey: key.Public(),
			})
			require.NoError(t, err)
			require.Equal(t, tc.wantSigAlg, svid.Leaf().SignatureAlgorithm)
			require.Equal(t, tc.wantKeyUsage, svid.Leaf().KeyUsage)
			verifySVID(t, c, svid)
		})
	}
}

func TestLeafNeverOutlivesItsIntermediate(t *testing.T) {
	rootKey := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "corp root", rootKey, nil, nil, 30*24*time.Hour)
	interKey := testutil.MustKey(t, ca.KeyECP256)
	inter := testutil.CACert(t, "meshca intermediate", interKey, root, rootKey, 6*time.Hour)

	c, _ := newCA(t, ca.Config{
		MaxTTL: 48 * time.Hour,
		Import: &ca.Import{
			CertPEM:   testutil.PEMCerts(inter),
			KeyPEM:    testutil.PEMKey(t, interKey),
			BundlePEM: testutil.PEMCerts(root),
		},
	})
	key := testutil.MustKey(t, ca.KeyECP256)
	svid, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
		ID:        spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"),
		PublicKey: key.Public(), TTL: 24 * time.Hour,
	})
	require.NoError(t, err)
	require.False(t, svid.Leaf().NotAfter.After(inter.NotAfter),
		"leaf NotAfter %s passes intermediate NotAfter %s", svid.Leaf().NotAfter, inter.NotAfter)
	require.Equal(t, inter.NotAfter, svid.Leaf().NotAfter)
	require.Len(t, svid.Certificates, 2, "chain is leaf then intermediate")
	require.True(t, svid.Certificates[1].Equal(inter))
	require.Equal(t, []*x509.Certificate{root}, c.Bundle().X509Authorities())
	verifySVID(t, c, svid)
}

func TestImportRefusesMismatchedKey(t *testing.T) {
	rootKey := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "root", rootKey, nil, nil, time.Hour)
	st := openStore(t, t.TempDir())
	defer st.Close()
	_, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st,
		Import: &ca.Import{
			CertPEM: testutil.PEMCerts(root),
			KeyPEM:  testutil.PEMKey(t, testutil.MustKey(t, ca.KeyECP256)),
		}})
	require.ErrorContains(t, err, "private key does not match the authority certificate")
	auths, err := st.Authorities(context.Background())
	require.NoError(t, err)
	require.Empty(t, auths, "a refused import stores nothing")
}

func TestRestartKeepsRoot(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	first, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st})
	require.NoError(t, err)
	key := testutil.MustKey(t, ca.KeyECP256)
	svid, err := first.IssueX509SVID(context.Background(), ca.X509SVIDParams{
		ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), PublicKey: key.Public(),
	})
	require.NoError(t, err)
	require.NoError(t, st.Close())

	st = openStore(t, dir)
	defer st.Close()
	second, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st})
	require.NoError(t, err)
	require.Equal(t, first.Authorities(), second.Authorities())
	verifySVID(t, second, svid)
}

func TestUnloadableRootIsNeverReplaced(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	broken := store.Authority{ID: "broken", State: store.StateActive,
		Chain: [][]byte{[]byte("not DER")}, Roots: [][]byte{[]byte("not DER")}}
	require.NoError(t, st.CreateAuthority(context.Background(), broken))

	_, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st})
	require.ErrorContains(t, err, `failed to load stored authority "broken"`)
	auths, err := st.Authorities(context.Background())
	require.NoError(t, err)
	require.Len(t, auths, 1, "no new root was created")
}

func TestConcurrentIssuanceHasUniqueSerials(t *testing.T) {
	c, st := newCA(t, ca.Config{})
	const workers, perWorker = 8, 2000
	keys := make([]any, 16)
	for i := range keys {
		keys[i] = testutil.MustKey(t, ca.KeyECP256).Public()
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")

	serials := make([][]string, workers)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				svid, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
					ID: id, PublicKey: keys[(w+i)%len(keys)],
				})
				if err != nil {
					errs <- err
					return
				}
				sn := svid.Leaf().SerialNumber
				if sn.Sign() <= 0 {
					errs <- errors.New("serial not positive: " + sn.String())
					return
				}
				serials[w] = append(serials[w], sn.Text(16))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	seen := make(map[string]bool, workers*perWorker)
	for _, ws := range serials {
		for _, s := range ws {
			require.False(t, seen[s], "duplicate serial %s", s)
			seen[s] = true
		}
	}
	require.Len(t, seen, workers*perWorker)

	recs, err := st.Issuances(context.Background(), store.IssuanceQuery{})
	require.NoError(t, err)
	require.Len(t, recs, workers*perWorker, "every issuance has its audit record")
}

func TestPrepareAddsRootToBundleAndWakesWatchers(t *testing.T) {
	c, _ := newCA(t, ca.Config{})
	before, changed := c.WatchBundle()
	require.Len(t, before.X509Authorities(), 1)

	prepared, err := c.Prepare(context.Background())
	require.NoError(t, err)
	require.Equal(t, store.StatePrepared, prepared.State)
	select {
	case <-changed:
	default:
		t.Fatal("bundle watchers were not woken")
	}
	after, _ := c.WatchBundle()
	require.Len(t, after.X509Authorities(), 2)

	// The active root still signs.
	key := testutil.MustKey(t, ca.KeyECP256)
	svid, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
		ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), PublicKey: key.Public(),
	})
	require.NoError(t, err)
	require.NotEqual(t, prepared.ID, svid.AuthorityID)
	verifySVID(t, c, svid)
}

package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/store"
)

// fakeClock is a settable clock for rotation tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Add(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

var workloadID = spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")

func issue(t *testing.T, c *ca.CA, ttl time.Duration) *ca.X509SVID {
	t.Helper()
	key := testutil.MustKey(t, ca.KeyECP256)
	svid, err := c.IssueX509SVID(context.Background(), ca.X509SVIDParams{
		ID: workloadID, PublicKey: key.Public(), TTL: ttl,
	})
	require.NoError(t, err)
	return svid
}

func stateOf(t *testing.T, c *ca.CA, id string) store.AuthorityState {
	t.Helper()
	for _, a := range c.Authorities() {
		if a.ID == id {
			return a.State
		}
	}
	t.Fatalf("authority %s not found", id)
	return ""
}

func pemBundle(c *ca.CA) []byte {
	return testutil.PEMCerts(c.Bundle().X509Authorities()...)
}

func TestFullRotation(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Now()}
	dir := t.TempDir()
	st := openStore(t, dir)
	c, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st, Clock: clock.Now})
	require.NoError(t, err)
	oldID := c.ActiveID()
	oldLeaf := issue(t, c, time.Hour)

	// prepare: two roots trusted, the old one still signs.
	_, changed := c.WatchBundle()
	prepared, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	require.Equal(t, store.StatePrepared, prepared.State)
	require.True(t, prepared.Root)
	requireClosed(t, changed)
	require.Len(t, c.Bundle().X509Authorities(), 2)
	require.Equal(t, oldID, issue(t, c, 0).AuthorityID)

	// activate: the new root signs; the old one is retired and still trusted.
	_, changed = c.WatchBundle()
	active, err := c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)
	require.Equal(t, store.StateActive, active.State)
	requireClosed(t, changed)
	require.Equal(t, prepared.ID, c.ActiveID())
	require.Equal(t, store.StateRetired, stateOf(t, c, oldID))
	newLeaf := issue(t, c, 0)
	require.Equal(t, prepared.ID, newLeaf.AuthorityID)
	verifySVID(t, c, newLeaf)
	verifySVID(t, c, oldLeaf)

	// remove is refused while the old leaf is valid, naming when it becomes safe.
	_, err = c.Remove(ctx, ca.RemoveParams{})
	require.ErrorIs(t, err, ca.ErrPrecondition)
	wantSafe := oldLeaf.Leaf().NotAfter.UTC().Format(time.RFC3339)
	require.ErrorContains(t, err, fmt.Sprintf("authority %s cannot be removed yet: "+
		"2 certificates that need it are valid until %s", oldID, wantSafe))
	check, err := c.CheckRemoval(ctx, "")
	require.NoError(t, err)
	require.Equal(t, 2, check.LiveLeaves)
	require.True(t, check.SafeAt.Equal(oldLeaf.Leaf().NotAfter))

	// Once the old leaf expired, remove succeeds and the old root leaves the bundle.
	clock.Add(time.Hour + time.Minute)
	removed, err := c.Remove(ctx, ca.RemoveParams{})
	require.NoError(t, err)
	require.Equal(t, store.StateRemoved, removed.State)
	require.Equal(t, []*x509.Certificate{active.Certificate}, c.Bundle().X509Authorities())
	roots := x509.NewCertPool()
	roots.AddCert(active.Certificate)
	_, err = issue(t, c, 0).Leaf().Verify(x509.VerifyOptions{Roots: roots,
		CurrentTime: clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	require.NoError(t, err)

	// The key of the removed authority is erased; the events say what happened.
	auths, err := st.Authorities(ctx)
	require.NoError(t, err)
	for _, a := range auths {
		if a.ID == oldID {
			require.Nil(t, a.Key, "a removed authority keeps no key")
		}
	}
	events, err := st.AuthorityEvents(ctx)
	require.NoError(t, err)
	var ops []string
	for _, ev := range events {
		ops = append(ops, ev.Op)
	}
	require.Equal(t, []string{"prepare", "activate", "remove"}, ops)
	require.Equal(t, []store.AuthorityChange{
		{ID: prepared.ID, From: store.StatePrepared, To: store.StateActive},
		{ID: oldID, From: store.StateActive, To: store.StateRetired},
	}, events[1].Changes)

	// A restart reloads the same state and serves a byte-identical bundle.
	before := pemBundle(c)
	require.NoError(t, st.Close())
	st = openStore(t, dir)
	defer st.Close()
	c2, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st, Clock: clock.Now})
	require.NoError(t, err)
	require.Equal(t, prepared.ID, c2.ActiveID())
	require.True(t, bytes.Equal(before, pemBundle(c2)))
	require.Equal(t, store.StateRemoved, stateOf(t, c2, oldID))
}

func requireClosed(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	default:
		t.Fatal("bundle watchers were not woken")
	}
}

func TestRotationRefusals(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		setup   func(t *testing.T, c *ca.CA)
		step    func(c *ca.CA) error
		wantIs  error
		wantMsg string
	}{{
		name: "activate with nothing prepared",
		step: func(c *ca.CA) error {
			_, err := c.Activate(ctx, ca.ActivateParams{})
			return err
		},
		wantIs:  ca.ErrPrecondition,
		wantMsg: "no prepared authority to activate",
	}, {
		name: "prepare while another is prepared",
		setup: func(t *testing.T, c *ca.CA) {
			_, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
			require.NoError(t, err)
		},
		step: func(c *ca.CA) error {
			_, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
			return err
		},
		wantIs:  ca.ErrPrecondition,
		wantMsg: "is already prepared; activate or retire it first",
	}, {
		name:    "retire with nothing prepared",
		step:    func(c *ca.CA) error { _, err := c.Retire(ctx, ""); return err },
		wantIs:  ca.ErrPrecondition,
		wantMsg: "no prepared authority to retire (activate already retired the authority",
	}, {
		name:    "retire the active authority",
		step:    func(c *ca.CA) error { _, err := c.Retire(ctx, c.ActiveID()); return err },
		wantIs:  ca.ErrPrecondition,
		wantMsg: "is active; only a prepared authority can be retired",
	}, {
		name: "remove the active authority",
		step: func(c *ca.CA) error {
			_, err := c.Remove(ctx, ca.RemoveParams{ID: c.ActiveID()})
			return err
		},
		wantIs:  ca.ErrPrecondition,
		wantMsg: "is active; only a retired authority can be removed",
	}, {
		name: "an unknown authority",
		step: func(c *ca.CA) error {
			_, err := c.Activate(ctx, ca.ActivateParams{ID: "nope"})
			return err
		},
		wantIs:  store.ErrNotFound,
		wantMsg: `authority "nope": not found`,
	}, {
		name: "import a certificate that is not a CA",
		step: func(c *ca.CA) error {
			_, err := c.PrepareAuthority(ctx, ca.PrepareParams{Import: &ca.Import{
				CertPEM: []byte("garbage"), KeyPEM: []byte("garbage"),
			}})
			return err
		},
		wantIs:  ca.ErrInvalidRequest,
		wantMsg: "failed to import authority: failed to parse CA certificate file",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, st := newCA(t, ca.Config{})
			if tt.setup != nil {
				tt.setup(t, c)
			}
			before := stateSnapshot(t, st)
			err := tt.step(c)
			require.ErrorIs(t, err, tt.wantIs)
			require.ErrorContains(t, err, tt.wantMsg)
			require.Equal(t, before, stateSnapshot(t, st), "a refused step changes nothing")
		})
	}
}

func stateSnapshot(t *testing.T, st *store.Bolt) string {
	t.Helper()
	auths, err := st.Authorities(context.Background())
	require.NoError(t, err)
	events, err := st.AuthorityEvents(context.Background())
	require.NoError(t, err)
	out := fmt.Sprintf("events=%d", len(events))
	for _, a := range auths {
		out += fmt.Sprintf(" %s=%s", a.ID, a.State)
	}
	return out
}

func TestRetirePreparedThenRemove(t *testing.T) {
	ctx := context.Background()
	c, _ := newCA(t, ca.Config{})
	prepared, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	retired, err := c.Retire(ctx, "")
	require.NoError(t, err)
	require.Equal(t, store.StateRetired, retired.State)
	require.Len(t, c.Bundle().X509Authorities(), 2, "a retired authority stays trusted")
	// It never signed: removing it is safe at once.
	_, err = c.Remove(ctx, ca.RemoveParams{ID: prepared.ID})
	require.NoError(t, err)
	require.Len(t, c.Bundle().X509Authorities(), 1)
}

func TestForcedRemoveIsRecorded(t *testing.T) {
	ctx := context.Background()
	c, st := newCA(t, ca.Config{})
	issue(t, c, time.Hour)
	_, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	_, err = c.Activate(ctx, ca.ActivateParams{Forced: true, Detail: "0 of 1 streams"})
	require.NoError(t, err)
	_, err = c.Remove(ctx, ca.RemoveParams{Force: true})
	require.NoError(t, err)
	events, err := st.AuthorityEvents(ctx)
	require.NoError(t, err)
	require.Len(t, events, 3)
	require.True(t, events[1].Forced)
	require.Equal(t, "0 of 1 streams", events[1].Detail)
	require.True(t, events[2].Forced)
	require.Contains(t, events[2].Detail, "1 certificate that needs it is valid until")
}

// TestIntermediateRotation prepares an intermediate under the active root: leaves
// then chain leaf → intermediate, the bundle keeps the one root, and the served chain
// never carries a superseded intermediate.
func TestIntermediateRotation(t *testing.T) {
	ctx := context.Background()
	c, _ := newCA(t, ca.Config{})
	rootID := c.ActiveID()
	root := c.Bundle().X509Authorities()[0]

	first, err := c.PrepareAuthority(ctx, ca.PrepareParams{Intermediate: true})
	require.NoError(t, err)
	require.False(t, first.Root)
	require.Len(t, c.Bundle().X509Authorities(), 1, "an intermediate adds no root")
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)
	leaf := issue(t, c, 0)
	require.Len(t, leaf.Certificates, 2)
	require.True(t, leaf.Certificates[1].Equal(first.Certificate))
	verifySVID(t, c, leaf)

	// The old root authority may go at once: the intermediate keeps its root trusted.
	check, err := c.CheckRemoval(ctx, rootID)
	require.NoError(t, err)
	require.Empty(t, check.DroppedRoots)
	_, err = c.Remove(ctx, ca.RemoveParams{ID: rootID})
	require.NoError(t, err)
	require.Equal(t, []*x509.Certificate{root}, c.Bundle().X509Authorities())
	verifySVID(t, c, issue(t, c, 0))

	// With the root key erased, a new intermediate cannot be made: import one instead.
	_, err = c.PrepareAuthority(ctx, ca.PrepareParams{Intermediate: true})
	require.ErrorIs(t, err, ca.ErrPrecondition)
	require.ErrorContains(t, err, "meshca holds no key of the active root")
}

// TestImportedIntermediateCapsLeaf is the rotation to an operator's intermediate
// that expires in 6 h: a leaf asked for 24 h ends when the intermediate does, and
// the chain carries only the new intermediate.
func TestImportedIntermediateCapsLeaf(t *testing.T) {
	ctx := context.Background()
	c, _ := newCA(t, ca.Config{MaxTTL: 48 * time.Hour})
	rootKey := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "corp root", rootKey, nil, nil, 30*24*time.Hour)
	interKey := testutil.MustKey(t, ca.KeyECP256)
	inter := testutil.CACert(t, "corp intermediate", interKey, root, rootKey, 6*time.Hour)

	prepared, err := c.PrepareAuthority(ctx, ca.PrepareParams{Import: &ca.Import{
		CertPEM: testutil.PEMCerts(inter), KeyPEM: testutil.PEMKey(t, interKey),
		BundlePEM: testutil.PEMCerts(root),
	}})
	require.NoError(t, err)
	require.False(t, prepared.Root)
	require.Len(t, c.Bundle().X509Authorities(), 2, "the corporate root is trusted")
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)

	svid := issue(t, c, 24*time.Hour)
	require.False(t, svid.Leaf().NotAfter.After(inter.NotAfter))
	require.Equal(t, inter.NotAfter, svid.Leaf().NotAfter)
	require.Len(t, svid.Certificates, 2)
	require.True(t, svid.Certificates[1].Equal(inter))
	verifySVID(t, c, svid)

	// Importing the same authority again is refused as a duplicate.
	_, err = c.PrepareAuthority(ctx, ca.PrepareParams{Import: &ca.Import{
		CertPEM: testutil.PEMCerts(inter), KeyPEM: testutil.PEMKey(t, interKey),
		BundlePEM: testutil.PEMCerts(root),
	}})
	require.True(t, errors.Is(err, store.ErrExists), "error: %v", err)
}

// Concurrent prepares (an operator and automatic rotation) leave exactly one prepared
// authority, and memory agrees with the store.
func TestConcurrentPreparesLeaveOne(t *testing.T) {
	c, st := newCA(t, ca.Config{})
	var wg sync.WaitGroup
	var ok atomic.Int32
	for range 8 {
		wg.Go(func() {
			if _, err := c.PrepareAuthority(t.Context(), ca.PrepareParams{}); err == nil {
				ok.Add(1)
			} else {
				require.ErrorIs(t, err, ca.ErrPrecondition)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int32(1), ok.Load())
	stored, err := st.Authorities(t.Context())
	require.NoError(t, err)
	prepared := 0
	for _, a := range stored {
		if a.State == store.StatePrepared {
			prepared++
		}
	}
	require.Equal(t, 1, prepared)
	require.Len(t, c.Authorities(), len(stored))
}

// TestServingChainCrossSignedForOldClients rotates the root and checks meshca's own
// serving chain: a client that still trusts only the old root (an Envoy that read
// the bundle when it started) verifies it through the new root's certificate from
// the old root, before and after the old root is removed, as does a client that
// trusts only the new root. Workload certificates carry no such certificate.
func TestServingChainCrossSignedForOldClients(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir)
	c, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st})
	require.NoError(t, err)
	oldID := c.ActiveID()
	oldRoot := c.Bundle().X509Authorities()[0]
	serving := func() []*x509.Certificate { return servingChain(t, c) }
	verifies := func(chain []*x509.Certificate, roots ...*x509.Certificate) error {
		pool, inter := x509.NewCertPool(), x509.NewCertPool()
		for _, r := range roots {
			pool.AddCert(r)
		}
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
			DNSName: "meshca.meshca.svc"})
		return err
	}
	require.Len(t, serving(), 1, "nothing to cross-sign before a rotation")

	prepared, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	newRoot := prepared.Certificate
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)

	chain := serving()
	require.Len(t, chain, 2)
	cross := chain[1]
	require.Equal(t, oldRoot.Subject.String(), cross.Issuer.String())
	require.Equal(t, newRoot.Subject.String(), cross.Subject.String())
	require.True(t, newRoot.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).
		Equal(cross.PublicKey), "the cross certificate carries the new root's key")
	require.NoError(t, cross.CheckSignatureFrom(oldRoot))
	require.False(t, cross.NotAfter.After(oldRoot.NotAfter))
	require.True(t, cross.IsCA)
	require.NoError(t, verifies(chain, oldRoot), "a client with the old root only")
	require.NoError(t, verifies(chain, newRoot), "a client with the new root only")
	testutil.OpensslVerify(t, []*x509.Certificate{oldRoot}, chain)
	testutil.OpensslVerify(t, []*x509.Certificate{newRoot}, chain)
	require.Error(t, verifies(chain[:1], oldRoot), "without it the old root cannot verify")

	require.Len(t, issue(t, c, 0).Certificates, 1, "workload chains carry no cross certificate")

	// The old root goes (its key is erased); the cross certificate stays in the
	// store and in the chain, after a restart too, until it expires.
	_, err = c.Remove(ctx, ca.RemoveParams{ID: oldID, Force: true})
	require.NoError(t, err)
	require.Equal(t, []*x509.Certificate{newRoot}, c.Bundle().X509Authorities())
	require.NoError(t, st.Close())
	st = openStore(t, dir)
	defer st.Close()
	c, err = ca.New(ctx, ca.Config{TrustDomain: td, Store: st})
	require.NoError(t, err)
	chain = serving()
	require.Len(t, chain, 2)
	require.True(t, chain[1].Equal(cross))
	require.NoError(t, verifies(chain, oldRoot), "a client with the old root only")
	require.NoError(t, verifies(chain, newRoot), "a client with the new root only")

	// An intermediate under the same root brings no cross certificate.
	_, err = c.PrepareAuthority(ctx, ca.PrepareParams{Intermediate: true})
	require.NoError(t, err)
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)
	chain = serving()
	require.Len(t, chain, 3, "leaf, intermediate, and the root's cross certificate")
	require.True(t, chain[2].Equal(cross))
	require.NoError(t, verifies(chain, oldRoot))
	require.NoError(t, verifies(chain, newRoot))
}

// TestCrossSignedImportedRoot rotates to a root made by OpenSSL, whose names are
// UTF8Strings (Go would write PrintableStrings) and carry an attribute Go does not
// model: a client that trusts only the old root verifies meshca's serving chain
// with Go and with OpenSSL, so the cross certificate names the root byte for byte.
func TestCrossSignedImportedRoot(t *testing.T) {
	ctx := context.Background()
	c, _ := newCA(t, ca.Config{})
	oldRoot := c.Bundle().X509Authorities()[0]

	certPEM, keyPEM := opensslRoot(t, "/DC=example/O=Example Corp/CN=Example Root CA",
		"basicConstraints=critical,CA:TRUE")
	prepared, err := c.PrepareAuthority(ctx, ca.PrepareParams{
		Import: &ca.Import{CertPEM: certPEM, KeyPEM: keyPEM},
	})
	require.NoError(t, err)
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)

	chain := servingChain(t, c)
	require.Len(t, chain, 2)
	require.Equal(t, prepared.Certificate.RawSubject, chain[1].RawSubject)
	require.Equal(t, chain[0].RawIssuer, chain[1].RawSubject)
	for _, root := range []*x509.Certificate{oldRoot, prepared.Certificate} {
		pool, inter := x509.NewCertPool(), x509.NewCertPool()
		pool.AddCert(root)
		inter.AddCert(chain[1])
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
			DNSName: "meshca.meshca.svc"})
		require.NoError(t, err, "trusting only %s", root.Subject)
		testutil.OpensslVerify(t, []*x509.Certificate{root}, chain)
	}
}

// opensslRoot makes a P-256 root with OpenSSL, with the given subject and basic
// constraints, and returns its certificate and key in PEM.
func opensslRoot(t *testing.T, subject, basicConstraints string) (certPEM, keyPEM []byte) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec",
		"-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", subject,
		"-addext", basicConstraints, "-addext", "keyUsage=critical,keyCertSign,cRLSign",
		"-keyout", keyFile, "-out", certFile).CombinedOutput()
	require.NoError(t, err, "%s", out)
	certPEM, err = os.ReadFile(certFile)
	require.NoError(t, err)
	keyPEM, err = os.ReadFile(keyFile)
	require.NoError(t, err)
	return certPEM, keyPEM
}

// TestNoCrossSignatureBeyondPathLength: an active root that may not have CA
// certificates below it (pathlen 0) cannot vouch for the next root; meshca does not
// make a certificate that verifiers would refuse, and says so in its log.
func TestNoCrossSignatureBeyondPathLength(t *testing.T) {
	ctx := context.Background()
	certPEM, keyPEM := opensslRoot(t, "/O=Example Corp/CN=Constrained Root",
		"basicConstraints=critical,CA:TRUE,pathlen:0")
	var logs bytes.Buffer
	c, _ := newCA(t, ca.Config{
		Import: &ca.Import{CertPEM: certPEM, KeyPEM: keyPEM},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	_, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)
	require.Len(t, servingChain(t, c), 1, "no cross certificate")
	require.Contains(t, logs.String(), "Not cross-signing the new root")
}

// servingChain issues a serving certificate for meshca.meshca.svc and returns its
// chain.
func servingChain(t *testing.T, c *ca.CA) []*x509.Certificate {
	t.Helper()
	key := testutil.MustKey(t, ca.KeyECP256)
	svid, err := c.IssueServing(context.Background(), ca.ServingParams{
		DNSNames: []string{"meshca.meshca.svc"}, PublicKey: key.Public(), TTL: time.Hour,
	})
	require.NoError(t, err)
	return svid.Certificates
}

// TestRemoveNamesTheRetiredWhenAmbiguous: with two retired authorities, remove
// without an ID is refused with both IDs and the flag to choose one.
func TestRemoveNamesTheRetiredWhenAmbiguous(t *testing.T) {
	ctx := context.Background()
	c, _ := newCA(t, ca.Config{})
	first := c.ActiveID()
	_, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)
	unwanted, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	_, err = c.Retire(ctx, unwanted.ID)
	require.NoError(t, err)

	_, err = c.Remove(ctx, ca.RemoveParams{Force: true})
	require.ErrorIs(t, err, ca.ErrInvalidRequest)
	require.ErrorContains(t, err, "2 authorities are retired")
	require.ErrorContains(t, err, first)
	require.ErrorContains(t, err, unwanted.ID)
	require.ErrorContains(t, err, "--id")
	_, err = c.Remove(ctx, ca.RemoveParams{ID: unwanted.ID})
	require.NoError(t, err, "no certificate needs the unwanted authority")
}

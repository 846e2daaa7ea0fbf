package api_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/store"
)

// fakeAcks reports a fixed count for every root but the trusted one, which every
// stream has.
type fakeAcks struct {
	trusted      *x509.Certificate
	acked, total int
}

func (f fakeAcks) BundleAcks(root *x509.Certificate) (int, int) {
	if root.Equal(f.trusted) {
		return f.total, f.total
	}
	return f.acked, f.total
}

func newRotationAdmin(t *testing.T, acks func(*ca.CA) api.BundleAcks) (*api.Admin, *ca.CA) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	c, err := ca.New(context.Background(), ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: st,
	})
	require.NoError(t, err)
	return api.NewAdmin(api.AdminConfig{CA: c, Audit: st, Acks: acks(c)}), c
}

func TestActivateWaitsForAcks(t *testing.T) {
	ctx := context.Background()
	admin, c := newRotationAdmin(t, func(c *ca.CA) api.BundleAcks {
		return fakeAcks{trusted: c.Bundle().X509Authorities()[0], acked: 3, total: 5}
	})
	prep, err := admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)

	st, err := admin.GetRotationStatus(ctx, &meshcav1.GetRotationStatusRequest{})
	require.NoError(t, err)
	require.Equal(t, "activate", st.NextStep)
	require.False(t, st.NextStepSafe)
	require.Equal(t, "2 of 5 streams to acknowledge the bundle with "+prep.Authority.Id,
		st.WaitingFor)

	_, err = admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{})
	requireCode(t, err, codes.FailedPrecondition, "2 of 5 streams have not acknowledged a "+
		"bundle containing authority "+prep.Authority.Id+"; wait for them (meshctl ca rotate "+
		"status), or use --force, which risks this: a workload whose bundle lacks the new root")
	require.NotEqual(t, prep.Authority.Id, c.ActiveID(), "a refused activation changes nothing")

	resp, err := admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{Force: true})
	require.NoError(t, err)
	require.Equal(t, "active", resp.Authority.State)
	require.Contains(t, resp.Warning, "forced: 2 of 5 streams have not acknowledged")
	require.Equal(t, prep.Authority.Id, c.ActiveID())
}

func TestRotationRequestErrors(t *testing.T) {
	ctx := context.Background()
	admin, _ := newRotationAdmin(t, func(*ca.CA) api.BundleAcks { return nil })
	rootKey := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "corp root", rootKey, nil, nil, 24*time.Hour)
	importReq := &meshcav1.PrepareAuthorityRequest{
		CertPem: testutil.PEMCerts(root), KeyPem: testutil.PEMKey(t, rootKey),
	}

	_, err := admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{
		CertPem: testutil.PEMCerts(root),
	})
	requireCode(t, err, codes.InvalidArgument,
		"importing an authority needs both its certificate and its key")
	_, err = admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{
		CertPem: testutil.PEMCerts(root), KeyPem: testutil.PEMKey(t, testutil.MustKey(t,
			ca.KeyECP256)),
	})
	requireCode(t, err, codes.InvalidArgument, "failed to import authority: private key "+
		"does not match the authority certificate")

	_, err = admin.PrepareAuthority(ctx, importReq)
	require.NoError(t, err)
	_, err = admin.RetireAuthority(ctx, &meshcav1.RetireAuthorityRequest{})
	require.NoError(t, err)
	_, err = admin.PrepareAuthority(ctx, importReq)
	requireCode(t, err, codes.AlreadyExists, "already exists")

	_, err = admin.RemoveAuthority(ctx, &meshcav1.RemoveAuthorityRequest{Id: "unknown"})
	requireCode(t, err, codes.NotFound, `authority "unknown": not found`)
	_, err = admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{})
	requireCode(t, err, codes.FailedPrecondition, "no prepared authority to activate")
	_, err = admin.RemoveAuthority(ctx, &meshcav1.RemoveAuthorityRequest{})
	require.NoError(t, err, "the imported root never signed: removing it is safe at once")
}

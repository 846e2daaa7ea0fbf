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
	"google.golang.org/protobuf/types/known/durationpb"

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

// fakeReissuer records the re-issue requests it gets and reports n certificates.
type fakeReissuer struct {
	n      int
	signer string
	window time.Duration
}

func (f *fakeReissuer) Reissue(signer string, window time.Duration) int {
	f.signer, f.window = signer, window
	return f.n
}

func newRotationAdmin(t *testing.T, acks func(*ca.CA) api.BundleAcks) (*api.Admin, *ca.CA) {
	t.Helper()
	return newRotationAdminWith(t, acks, nil)
}

func newRotationAdminWith(t *testing.T, acks func(*ca.CA) api.BundleAcks,
	reissuer api.Reissuer) (*api.Admin, *ca.CA) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	c, err := ca.New(context.Background(), ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: st,
	})
	require.NoError(t, err)
	return api.NewAdmin(api.AdminConfig{CA: c, Audit: st, Acks: acks(c), Reissuer: reissuer}), c
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

func TestActivateReissue(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		window     *durationpb.Duration
		wantWindow time.Duration
	}{{
		name:       "no window takes the default",
		wantWindow: api.DefaultReissueWindow,
	}, {
		name:       "a window of its own",
		window:     durationpb.New(90 * time.Second),
		wantWindow: 90 * time.Second,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reissuer := &fakeReissuer{n: 7}
			admin, c := newRotationAdminWith(t, func(*ca.CA) api.BundleAcks { return nil },
				reissuer)
			prep, err := admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{})
			require.NoError(t, err)
			before := time.Now()
			resp, err := admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{
				Reissue: true, ReissueWindow: tt.window,
			})
			require.NoError(t, err)
			require.Equal(t, prep.Authority.Id, c.ActiveID())
			require.Equal(t, prep.Authority.Id, reissuer.signer, "certificates move to it")
			require.Equal(t, tt.wantWindow, reissuer.window)
			require.EqualValues(t, 7, resp.Reissued)
			require.False(t, resp.ReissuedBy.AsTime().Before(before.Add(tt.wantWindow)))
		})
	}

	// Without --reissue nothing is asked; a negative window is refused before anything
	// changes.
	reissuer := &fakeReissuer{n: 7}
	admin, c := newRotationAdminWith(t, func(*ca.CA) api.BundleAcks { return nil }, reissuer)
	_, err := admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)
	oldID := c.ActiveID()
	_, err = admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{
		Reissue: true, ReissueWindow: durationpb.New(-time.Second),
	})
	requireCode(t, err, codes.InvalidArgument, "reissue window -1s must not be negative")
	require.Equal(t, oldID, c.ActiveID())
	resp, err := admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{})
	require.NoError(t, err)
	require.Zero(t, resp.Reissued)
	require.Nil(t, resp.ReissuedBy)
	require.Empty(t, reissuer.signer)
}

func TestRotationLog(t *testing.T) {
	ctx := context.Background()
	admin, c := newRotationAdmin(t, func(c *ca.CA) api.BundleAcks {
		return fakeAcks{trusted: c.Bundle().X509Authorities()[0], acked: 1, total: 2}
	})
	oldID := c.ActiveID()
	empty, err := admin.GetRotationLog(ctx, &meshcav1.GetRotationLogRequest{})
	require.NoError(t, err)
	require.Empty(t, empty.Events, "creating the first root is not a rotation step")

	prep, err := admin.PrepareAuthority(ctx, &meshcav1.PrepareAuthorityRequest{})
	require.NoError(t, err)
	newID := prep.Authority.Id
	_, err = admin.ActivateAuthority(ctx, &meshcav1.ActivateAuthorityRequest{Force: true})
	require.NoError(t, err)

	resp, err := admin.GetRotationLog(ctx, &meshcav1.GetRotationLogRequest{})
	require.NoError(t, err)
	require.Len(t, resp.Events, 2)
	prepEv, actEv := resp.Events[0], resp.Events[1]
	require.Equal(t, uint64(1), prepEv.Seq)
	require.Equal(t, "prepare", prepEv.Op)
	require.Equal(t, newID, prepEv.Created)
	require.False(t, prepEv.Forced)
	require.Equal(t, uint64(2), actEv.Seq)
	require.Equal(t, "activate", actEv.Op)
	require.True(t, actEv.Forced)
	require.Equal(t, "1 of 2 streams have not acknowledged a bundle containing authority "+
		newID, actEv.Detail)
	var changes []string
	for _, ch := range actEv.Changes {
		changes = append(changes, ch.Id+" "+ch.From+"->"+ch.To)
	}
	require.Equal(t, []string{newID + " prepared->active", oldID + " active->retired"}, changes)
	require.False(t, actEv.At.AsTime().Before(prepEv.At.AsTime()))
}

package ca_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	authnv1 "k8s.io/api/authentication/v1"

	"github.com/meshca/meshca/ca"
)

func TestIdentityFromReview(t *testing.T) {
	good := func() authnv1.TokenReviewStatus {
		return authnv1.TokenReviewStatus{
			Authenticated: true,
			Audiences:     []string{"meshca"},
			User: authnv1.UserInfo{
				Username: "system:serviceaccount:payments:api",
				Groups:   []string{"system:serviceaccounts", "system:authenticated"},
				Extra: map[string]authnv1.ExtraValue{
					"authentication.kubernetes.io/pod-name": {"api-0"},
					"authentication.kubernetes.io/pod-uid":  {"uid-1"},
				},
			},
		}
	}
	id, err := ca.IdentityFromReview(good(), "meshca", td)
	require.NoError(t, err)
	require.Equal(t, "spiffe://cluster.local/ns/payments/sa/api", id.ID.String())
	require.Equal(t, ca.Identity{ID: id.ID, Namespace: "payments", ServiceAccount: "api",
		PodName: "api-0", PodUID: "uid-1"}, id)

	for _, tc := range []struct {
		name    string
		mutate  func(*authnv1.TokenReviewStatus)
		wantMsg string
	}{
		{"not authenticated", func(s *authnv1.TokenReviewStatus) {
			s.Authenticated, s.Error = false, "token has expired"
		}, "token has expired"},
		{"other audience", func(s *authnv1.TokenReviewStatus) {
			s.Audiences = []string{"vault"}
		}, `do not include "meshca"`},
		{"no audiences", func(s *authnv1.TokenReviewStatus) { s.Audiences = nil },
			`do not include "meshca"`},
		{"a user, not a service account", func(s *authnv1.TokenReviewStatus) {
			s.User.Username = "alice"
		}, `user "alice" is not a service account`},
		{"service account name with a colon", func(s *authnv1.TokenReviewStatus) {
			s.User.Username = "system:serviceaccount:a:b:c"
		}, "is not a service account"},
		{"empty namespace", func(s *authnv1.TokenReviewStatus) {
			s.User.Username = "system:serviceaccount::b"
		}, "is not a service account"},
		{"not in the service accounts group", func(s *authnv1.TokenReviewStatus) {
			s.User.Groups = []string{"system:authenticated"}
		}, "is not in group system:serviceaccounts"},
		{"not bound to a pod", func(s *authnv1.TokenReviewStatus) {
			s.User.Extra = nil
		}, "is not bound to a pod"},
		{"pod UID missing", func(s *authnv1.TokenReviewStatus) {
			delete(s.User.Extra, "authentication.kubernetes.io/pod-uid")
		}, "is not bound to a pod"},
		{"namespace that is no SPIFFE path segment", func(s *authnv1.TokenReviewStatus) {
			s.User.Username = "system:serviceaccount:a b:c"
		}, "no SPIFFE ID for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := good()
			tc.mutate(&st)
			_, err := ca.IdentityFromReview(st, "meshca", td)
			require.ErrorIs(t, err, ca.ErrInvalidToken)
			require.ErrorContains(t, err, tc.wantMsg)
		})
	}
}

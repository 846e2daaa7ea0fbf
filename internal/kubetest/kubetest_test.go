package kubetest_test

import (
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// The extras kube-apiserver adds to the user of a token bound to a pod.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

func TestTokenReviewOfPodTokens(t *testing.T) {
	c := kubetest.Start(t)
	ns := c.NewNamespace(t)
	const sa, pod = "orders", "orders-0"
	podUID := c.CreateWorkload(t, ns, sa, pod)

	t.Run("TokenRequest", func(t *testing.T) {
		token := c.PodToken(t, ns, sa, pod, "meshca", 10*time.Minute)
		status := review(t, c.Client, token, "meshca")
		requireWorkload(t, status, ns, sa, pod, podUID)
	})

	t.Run("SignedValid", func(t *testing.T) {
		claims := c.PodClaims(t, ns, sa, pod, "meshca", 10*time.Minute)
		status := review(t, c.Client, c.SignToken(t, claims), "meshca")
		requireWorkload(t, status, ns, sa, pod, podUID)
	})

	t.Run("SignedExpired", func(t *testing.T) {
		claims := c.PodClaims(t, ns, sa, pod, "meshca", 10*time.Minute)
		now := time.Now()
		claims.IssuedAt = now.Add(-time.Hour).Unix()
		claims.NotBefore = claims.IssuedAt
		// Past the apiserver's leeway of about 60 s.
		claims.Expiry = now.Add(-5 * time.Minute).Unix()
		status := review(t, c.Client, c.SignToken(t, claims), "meshca")
		if status.Authenticated {
			t.Fatalf("expired token authenticated as %q", status.User.Username)
		}
		if status.Error == "" {
			t.Error("review of an expired token gave no error")
		}
	})

	t.Run("SignedOtherAudience", func(t *testing.T) {
		claims := c.PodClaims(t, ns, sa, pod, "someone-else", 10*time.Minute)
		status := review(t, c.Client, c.SignToken(t, claims), "meshca")
		if status.Authenticated {
			t.Fatalf("token for another audience authenticated as %q", status.User.Username)
		}
	})

	t.Run("NoAuthUserForbidden", func(t *testing.T) {
		client, err := kubernetes.NewForConfig(c.NoAuthRESTConfig())
		if err != nil {
			t.Fatal(err)
		}
		token := c.PodToken(t, ns, sa, pod, "meshca", 10*time.Minute)
		_, err = client.AuthenticationV1().TokenReviews().Create(t.Context(),
			newReview(token, "meshca"), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("TokenReview by meshca-noauth: got error %v, want Forbidden", err)
		}
	})
}

func newReview(token string, audiences ...string) *authenticationv1.TokenReview {
	return &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}
}

// review runs a TokenReview and returns its status.
func review(
	t *testing.T, client kubernetes.Interface, token string, audiences ...string,
) authenticationv1.TokenReviewStatus {
	t.Helper()
	resp, err := client.AuthenticationV1().TokenReviews().Create(t.Context(),
		newReview(token, audiences...), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return resp.Status
}

// requireWorkload checks that a review authenticated the service account of the
// pod, for the audience meshca.
func requireWorkload(
	t *testing.T, status authenticationv1.TokenReviewStatus,
	ns, sa, pod string, podUID types.UID,
) {
	t.Helper()
	if !status.Authenticated {
		t.Fatalf("not authenticated: %s", status.Error)
	}
	if want := "system:serviceaccount:" + ns + ":" + sa; status.User.Username != want {
		t.Errorf("username %q, want %q", status.User.Username, want)
	}
	if !slices.Contains(status.User.Groups, "system:serviceaccounts") {
		t.Errorf("groups %q lack system:serviceaccounts", status.User.Groups)
	}
	if !slices.Contains(status.Audiences, "meshca") {
		t.Errorf("audiences %q lack meshca", status.Audiences)
	}
	extra := status.User.Extra
	if got := extra[extraPodName]; !slices.Equal(got, authenticationv1.ExtraValue{pod}) {
		t.Errorf("extra %s = %q, want [%q]", extraPodName, got, pod)
	}
	want := authenticationv1.ExtraValue{string(podUID)}
	if got := extra[extraPodUID]; !slices.Equal(got, want) {
		t.Errorf("extra %s = %q, want [%q]", extraPodUID, got, podUID)
	}
}

package kube_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// TestClient makes every call meshca makes against the real kube-apiserver.
func TestClient(t *testing.T) {
	c := kubetest.Start(t)
	client, err := kube.NewForConfig(c.RESTConfig())
	require.NoError(t, err)
	ns := c.NewNamespace(t)
	uid := c.CreateWorkload(t, ns, "orders", "orders-0")

	t.Run("TokenReview", func(t *testing.T) {
		token := c.PodToken(t, ns, "orders", "orders-0", "meshca", time.Hour)
		review, err := client.TokenReviews().Create(t.Context(), &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{"meshca"}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		require.True(t, review.Status.Authenticated, "error: %s", review.Status.Error)
		require.Equal(t, "system:serviceaccount:"+ns+":orders", review.Status.User.Username)
		require.Equal(t, authnv1.ExtraValue{string(uid)},
			review.Status.User.Extra["authentication.kubernetes.io/pod-uid"])

		review, err = client.TokenReviews().Create(t.Context(), &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{"other"}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		require.False(t, review.Status.Authenticated, "a token for another audience")
	})

	t.Run("SelfSubjectAccessReview", func(t *testing.T) {
		review, err := client.SelfSubjectAccessReviews().Create(t.Context(),
			&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authzv1.ResourceAttributes{
					Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create",
				},
			}}, metav1.CreateOptions{})
		require.NoError(t, err)
		require.True(t, review.Status.Allowed, "the admin may create TokenReviews")

		// The API's Status errors decode into client-go's typed errors.
		_, err = client.SelfSubjectAccessReviews().Create(t.Context(),
			&authzv1.SelfSubjectAccessReview{}, metav1.CreateOptions{})
		require.True(t, apierrors.IsInvalid(err), "a review without attributes: %v", err)
	})

	t.Run("ConfigMaps", func(t *testing.T) {
		cms := client.ConfigMaps(ns)
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "meshca-root-cert"},
			Data:       map[string]string{"root-cert.pem": "one"},
		}
		created, err := cms.Create(t.Context(), cm, metav1.CreateOptions{FieldManager: "meshca"})
		require.NoError(t, err)
		require.Equal(t, ns, created.Namespace)
		require.Equal(t, "one", created.Data["root-cert.pem"])

		_, err = cms.Create(t.Context(), cm, metav1.CreateOptions{})
		require.True(t, apierrors.IsAlreadyExists(err), "create twice: %v", err)

		created.Data["root-cert.pem"] = "two"
		updated, err := cms.Update(t.Context(), created, metav1.UpdateOptions{})
		require.NoError(t, err)
		require.Equal(t, "two", updated.Data["root-cert.pem"])

		_, err = cms.Update(t.Context(), created, metav1.UpdateOptions{})
		require.True(t, apierrors.IsConflict(err), "update of a stale version: %v", err)

		list, err := client.ConfigMapsNamed("meshca-root-cert").List(metav1.ListOptions{})
		require.NoError(t, err)
		names := map[string]string{}
		for _, item := range list.(*corev1.ConfigMapList).Items {
			require.Equal(t, "meshca-root-cert", item.Name)
			names[item.Namespace] = item.Data["root-cert.pem"]
		}
		require.Equal(t, "two", names[ns])
	})

	t.Run("Namespaces", func(t *testing.T) {
		lw := client.Namespaces()
		list, err := lw.List(metav1.ListOptions{})
		require.NoError(t, err)
		nsList := list.(*corev1.NamespaceList)
		found := false
		for _, item := range nsList.Items {
			found = found || item.Name == ns
		}
		require.True(t, found, "namespace %s in the list", ns)

		w, err := lw.Watch(metav1.ListOptions{ResourceVersion: nsList.ResourceVersion})
		require.NoError(t, err)
		defer w.Stop()
		added := c.NewNamespace(t)
		deadline := time.After(5 * time.Second)
		for {
			select {
			case ev := <-w.ResultChan():
				if n, ok := ev.Object.(*corev1.Namespace); ok && ev.Type == watch.Added &&
					n.Name == added {
					return
				}
			case <-deadline:
				t.Fatalf("no watch event for the new namespace %s", added)
			}
		}
	})
}

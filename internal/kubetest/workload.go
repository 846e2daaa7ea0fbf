package kubetest

import (
	"crypto/rand"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// notDNSLabel matches what a namespace name may not contain.
var notDNSLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// NewNamespace creates a namespace with a name of its own for the test, made
// from the test's name, and returns the name. Tests share the cluster, so each
// should work in namespaces of its own.
func (c *Cluster) NewNamespace(t testing.TB) string {
	t.Helper()
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	base := notDNSLabel.ReplaceAllString(strings.ToLower(t.Name()), "-")
	// A label has at most 63 characters; keep room for "-" and the suffix.
	base = strings.Trim(base[:min(len(base), 50)], "-")
	name := base + "-" + hex.EncodeToString(suffix)
	c.createNamespace(t, name)
	return name
}

// CreateWorkload creates what a workload's token needs and returns the pod's
// UID: namespace ns and service account sa unless they exist, and the pod, which
// must not exist yet. No kubelet runs the pod: it stays Pending, which is enough
// to bind tokens to it. The pod does not mount a service-account token.
func (c *Cluster) CreateWorkload(t testing.TB, ns, sa, pod string) types.UID {
	t.Helper()
	ctx := t.Context()
	c.createNamespace(t, ns)
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}
	_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, account, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: create service account %s/%s: %v", ns, sa, err)
	}
	noMount := false
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod, Labels: map[string]string{"app": sa}},
		Spec: corev1.PodSpec{
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: &noMount,
			// Never pulled: no kubelet runs.
			Containers: []corev1.Container{{Name: "app", Image: "meshca-test-app"}},
		},
	}
	created, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create pod %s/%s: %v", ns, pod, err)
	}
	return created.UID
}

// createNamespace creates namespace ns unless it exists.
func (c *Cluster) createNamespace(t testing.TB, ns string) {
	t.Helper()
	obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	_, err := c.Client.CoreV1().Namespaces().Create(t.Context(), obj, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: create namespace %s: %v", ns, err)
	}
}

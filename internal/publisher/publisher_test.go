package publisher_test

import (
	"context"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/publisher"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/store"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// deadline bounds every wait for the publisher: the issue asks for a new namespace
// to get its ConfigMap within 5 s.
const deadline = 5 * time.Second

// meshcaUser is the user meshca's pod runs as in deploy/kustomize.
const meshcaUser = "system:serviceaccount:meshca:meshca"

// TestPublisher runs one publisher, with exactly the rights deploy/ grants meshca,
// through the life of the bundle ConfigMaps. The subtests share it and run in order.
func TestPublisher(t *testing.T) {
	c := kubetest.Start(t)
	authority := newCA(t)
	client, err := kube.NewForConfig(meshcaConfig(t, c))
	require.NoError(t, err)

	before := c.NewNamespace(t)
	p, err := publisher.New(publisher.Config{Client: client, Bundle: authority,
		Logger: testLogger(t)})
	require.NoError(t, err)
	stop := run(t, p)
	defer stop()

	bundle := bundlePEM(authority)
	t.Run("an existing namespace gets the ConfigMap", func(t *testing.T) {
		waitForBundle(t, c.Client, before, bundle)
	})

	var namespaces []string
	t.Run("a new namespace gets the ConfigMap", func(t *testing.T) {
		for range 3 {
			ns := c.NewNamespace(t)
			namespaces = append(namespaces, ns)
			cm := waitForBundle(t, c.Client, ns, bundle)
			require.Equal(t, publisher.ManagedBy, cm.Labels[publisher.ManagedByLabel])
		}
	})
	namespaces = append(namespaces, before)

	t.Run("a rotation updates every namespace", func(t *testing.T) {
		_, err := authority.Prepare(t.Context())
		require.NoError(t, err)
		rotated := bundlePEM(authority)
		require.Equal(t, 2, countCerts(t, rotated), "the prepared root joins the bundle")
		for _, ns := range namespaces {
			waitForBundle(t, c.Client, ns, rotated)
		}
		bundle = rotated
	})

	t.Run("an edited ConfigMap is repaired", func(t *testing.T) {
		ns := namespaces[0]
		cms := c.Client.CoreV1().ConfigMaps(ns)
		cm, err := cms.Get(t.Context(), publisher.ConfigMapName, metav1.GetOptions{})
		require.NoError(t, err)
		cm.Data = map[string]string{publisher.Key: "not a root", "extra.pem": "x"}
		delete(cm.Labels, publisher.ManagedByLabel)
		_, err = cms.Update(t.Context(), cm, metav1.UpdateOptions{})
		require.NoError(t, err)

		repaired := waitForBundle(t, c.Client, ns, bundle)
		require.Equal(t, publisher.ManagedBy, repaired.Labels[publisher.ManagedByLabel])
	})

	t.Run("a deleted ConfigMap is recreated", func(t *testing.T) {
		ns := namespaces[1]
		cms := c.Client.CoreV1().ConfigMaps(ns)
		cm, err := cms.Get(t.Context(), publisher.ConfigMapName, metav1.GetOptions{})
		require.NoError(t, err)
		require.NoError(t, cms.Delete(t.Context(), publisher.ConfigMapName,
			metav1.DeleteOptions{}))

		recreated := waitForBundle(t, c.Client, ns, bundle)
		require.NotEqual(t, cm.UID, recreated.UID, "the ConfigMap was not recreated")
	})

	t.Run("labels and annotations of others are kept", func(t *testing.T) {
		ns := namespaces[2]
		cms := c.Client.CoreV1().ConfigMaps(ns)
		patch := `{"metadata":{"labels":{"team":"payments"},` +
			`"annotations":{"note":"kept"}},"data":{"root-cert.pem":"edited"}}`
		_, err := cms.Patch(t.Context(), publisher.ConfigMapName, types.MergePatchType,
			[]byte(patch), metav1.PatchOptions{})
		require.NoError(t, err)

		cm := waitForBundle(t, c.Client, ns, bundle)
		require.Equal(t, "payments", cm.Labels["team"])
		require.Equal(t, "kept", cm.Annotations["note"])
	})

	require.NoError(t, stop(), "Run must end with nil or context.Canceled")
}

// TestMeshcaRightsAreNarrow checks that the ClusterRole of deploy/ lets meshca read
// and write its own ConfigMap only: creating is the one right Kubernetes cannot
// narrow to a name.
func TestMeshcaRightsAreNarrow(t *testing.T) {
	c := kubetest.Start(t)
	client, err := kubernetes.NewForConfig(meshcaConfig(t, c))
	require.NoError(t, err)
	ns := c.NewNamespace(t)
	other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "app-config"},
		Data: map[string]string{"k": "v"}}
	_, err = c.Client.CoreV1().ConfigMaps(ns).Create(t.Context(), other, metav1.CreateOptions{})
	require.NoError(t, err)

	cms := client.CoreV1().ConfigMaps(ns)
	_, err = cms.Get(t.Context(), other.Name, metav1.GetOptions{})
	require.True(t, apierrors.IsForbidden(err), "get another ConfigMap: %v", err)
	_, err = cms.Update(t.Context(), other, metav1.UpdateOptions{})
	require.True(t, apierrors.IsForbidden(err), "update another ConfigMap: %v", err)
	err = cms.Delete(t.Context(), other.Name, metav1.DeleteOptions{})
	require.True(t, apierrors.IsForbidden(err), "delete another ConfigMap: %v", err)
	_, err = cms.List(t.Context(), metav1.ListOptions{})
	require.True(t, apierrors.IsForbidden(err), "list every ConfigMap: %v", err)
	_, err = client.CoreV1().Secrets(ns).List(t.Context(), metav1.ListOptions{})
	require.True(t, apierrors.IsForbidden(err), "list Secrets: %v", err)
}

func TestNewRequiresClientAndBundle(t *testing.T) {
	_, err := publisher.New(publisher.Config{Bundle: newCA(t)})
	require.ErrorContains(t, err, "Kubernetes client is required")
	_, err = publisher.New(publisher.Config{Client: &kube.Client{}})
	require.ErrorContains(t, err, "bundle source is required")
}

// run starts p and returns a function that stops it and returns Run's error, with
// context.Canceled counted as a clean stop. Calling it again returns nil.
func run(t *testing.T, p *publisher.Publisher) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stopped := false
	return func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
}

// waitForBundle polls until the namespace's ConfigMap holds exactly want, then
// returns it; it fails the test after deadline.
func waitForBundle(t *testing.T, client kubernetes.Interface, ns, want string,
) *corev1.ConfigMap {
	t.Helper()
	var cm *corev1.ConfigMap
	var err error
	require.Eventually(t, func() bool {
		cm, err = client.CoreV1().ConfigMaps(ns).Get(t.Context(), publisher.ConfigMapName,
			metav1.GetOptions{})
		return err == nil && len(cm.Data) == 1 && cm.Data[publisher.Key] == want &&
			cm.Labels[publisher.ManagedByLabel] == publisher.ManagedBy
	}, deadline, 20*time.Millisecond, "ConfigMap in %s never held the bundle (last error: %v)",
		ns, err)
	return cm
}

// testLogger writes the publisher's log, Debug included, into the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newCA returns a CA on a store in a temporary directory.
func newCA(t *testing.T) *ca.CA {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	authority, err := ca.New(t.Context(), ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: st,
	})
	require.NoError(t, err)
	return authority
}

// bundlePEM is what the publisher must write: every root, oldest first.
func bundlePEM(authority *ca.CA) string {
	return string(testutil.PEMCerts(authority.Bundle().X509Authorities()...))
}

func countCerts(t *testing.T, data string) int {
	t.Helper()
	n := 0
	for rest := []byte(data); ; n++ {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return n
		}
	}
}

// meshcaConfig creates, for real, the ClusterRole of deploy/kustomize and binds it to
// meshcaUser, and returns a client configuration that impersonates that user: the
// publisher gets exactly the rights an installed meshca has.
func meshcaConfig(t *testing.T, c *kubetest.Cluster) *rest.Config {
	t.Helper()
	data, err := os.ReadFile("../../deploy/kustomize/base/clusterrole.yaml")
	require.NoError(t, err)
	var role rbacv1.ClusterRole
	require.NoError(t, yaml.UnmarshalStrict(data, &role))
	role.Name = "meshca-publisher-test"
	_, err = c.Client.RbacV1().ClusterRoles().Create(t.Context(), &role, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		require.NoError(t, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef: rbacv1.RoleRef{
			APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name,
		},
		Subjects: []rbacv1.Subject{{
			Kind: rbacv1.ServiceAccountKind, Name: "meshca", Namespace: "meshca",
		}},
	}
	_, err = c.Client.RbacV1().ClusterRoleBindings().Create(t.Context(), binding,
		metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		require.NoError(t, err)
	}

	cfg := c.RESTConfig()
	cfg.Impersonate.UserName = meshcaUser
	cfg.Impersonate.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:meshca",
		"system:authenticated"}
	return cfg
}

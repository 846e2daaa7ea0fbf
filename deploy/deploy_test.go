// Package deploy_test checks the manifests of deploy/: each kustomization renders
// to its golden file in testdata/ (rewrite them with -update), and every rendered
// object passes a server-side dry-run against a real kube-apiserver, with strict
// field validation and no warning (Pod Security "restricted" included).
package deploy_test

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/meshca/meshca/internal/kubetest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) { kubetest.Main(m) }

// kustomization is one directory of deploy/ that kustomize renders.
type kustomization struct {
	name string // of the golden file, testdata/<name>.golden.yaml
	dir  string
	// meshca is true for meshca's own install (namespace meshca), false for the
	// sidecar template, which goes into a namespace of the user's.
	meshca bool
}

var kustomizations = []kustomization{
	{name: "base", dir: "kustomize/base", meshca: true},
	{name: "dev", dir: "kustomize/overlays/dev", meshca: true},
	{name: "single-replica", dir: "kustomize/overlays/single-replica", meshca: true},
	{name: "sidecar", dir: "envoy"},
}

// build runs kustomize on dir as `kustomize build` does.
func build(t *testing.T, dir string) resmap.ResMap {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(t, err, "kustomize build %s", dir)
	return resources
}

// render returns the objects kustomize renders from dir.
func render(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for _, r := range build(t, dir).Resources() {
		data, err := r.MarshalJSON()
		require.NoError(t, err)
		var obj unstructured.Unstructured
		require.NoError(t, obj.UnmarshalJSON(data))
		objs = append(objs, &obj)
	}
	return objs
}

// renderYAML is what `kustomize build dir` prints.
func renderYAML(t *testing.T, dir string) []byte {
	t.Helper()
	out, err := build(t, dir).AsYaml()
	require.NoError(t, err)
	return out
}

func TestRenderedManifestsMatchGolden(t *testing.T) {
	for _, k := range kustomizations {
		t.Run(k.name, func(t *testing.T) {
			got := renderYAML(t, k.dir)
			golden := filepath.Join("testdata", k.name+".golden.yaml")
			if *update {
				require.NoError(t, os.WriteFile(golden, got, 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "run go test ./deploy/ -update to create it")
			require.Equal(t, string(want), string(got),
				"kustomize build %s changed; review, then go test ./deploy/ -update", k.dir)
		})
	}
}

// TestManifestsPassServerSideDryRun applies every rendered object with
// `kubectl apply --server-side --dry-run=server` semantics against the real
// apiserver. The meshca namespace is created for real first, since a dry-run of a
// namespaced object needs its namespace.
func TestManifestsPassServerSideDryRun(t *testing.T) {
	c := kubetest.Start(t)
	warnings := &warningRecorder{}
	cfg := c.RESTConfig()
	cfg.WarningHandler = warnings
	dyn, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	mapper := restMapper(t, cfg)

	for _, k := range kustomizations {
		t.Run(k.name, func(t *testing.T) {
			objs := render(t, k.dir)
			namespace := "meshca"
			if k.meshca {
				ns := objectOf(t, objs, "Namespace", "meshca")
				apply(t, dyn, mapper, ns, "", false)
			} else {
				namespace = restrictedNamespace(t, c)
			}
			for _, obj := range objs {
				warnings.reset()
				apply(t, dyn, mapper, obj, namespace, true)
				require.Empty(t, warnings.get(), "warnings for %s %s", obj.GetKind(),
					obj.GetName())
			}
		})
	}
}

// TestDryRunRefusesUnknownFields shows that the dry-run above is not vacuous: a
// misspelt field is refused.
func TestDryRunRefusesUnknownFields(t *testing.T) {
	c := kubetest.Start(t)
	cfg := c.RESTConfig()
	dyn, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	mapper := restMapper(t, cfg)

	obj := objectOf(t, render(t, "kustomize/overlays/dev"), "Deployment", "meshca")
	obj = obj.DeepCopy()
	require.NoError(t, unstructured.SetNestedField(obj.Object, int64(1), "spec", "replicaz"))
	ns := restrictedNamespace(t, c)
	err = applyErr(t, dyn, mapper, obj, ns, true)
	require.ErrorContains(t, err, "replicaz")
}

func TestMeshcaDeployment(t *testing.T) {
	for _, name := range []string{"dev", "single-replica"} {
		t.Run(name, func(t *testing.T) {
			var d appsv1.Deployment
			fromUnstructured(t, objectOf(t, render(t, "kustomize/overlays/"+name),
				"Deployment", "meshca"), &d)
			require.EqualValues(t, 1, *d.Spec.Replicas, "the embedded store has one writer")
			require.Equal(t, appsv1.RecreateDeploymentStrategyType, d.Spec.Strategy.Type)
			pod := d.Spec.Template.Spec
			require.Equal(t, "meshca", pod.ServiceAccountName)
			require.True(t, *pod.SecurityContext.RunAsNonRoot)
			require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault,
				pod.SecurityContext.SeccompProfile.Type)

			require.Len(t, pod.Containers, 1)
			ctr := pod.Containers[0]
			assertHardened(t, ctr)
			require.Contains(t, ctr.Args, "--http-addr=:15014", "probes need a pod-wide port")
			require.Contains(t, ctr.Args, "--grpc-addr=:15012")
			require.Contains(t, ctr.Args, "--data-dir=/var/lib/meshca")
			require.Equal(t, "/readyz", ctr.ReadinessProbe.HTTPGet.Path)
			require.Equal(t, "/healthz", ctr.LivenessProbe.HTTPGet.Path)
			for _, p := range []*corev1.Probe{ctr.ReadinessProbe, ctr.LivenessProbe} {
				require.Equal(t, "http", p.HTTPGet.Port.String())
			}
			require.Equal(t, []corev1.ContainerPort{
				{Name: "grpc", ContainerPort: 15012, Protocol: corev1.ProtocolTCP},
				{Name: "http", ContainerPort: 15014, Protocol: corev1.ProtocolTCP},
			}, withDefaultProtocol(ctr.Ports))
			require.Equal(t, []corev1.VolumeMount{{Name: "data", MountPath: "/var/lib/meshca"}},
				ctr.VolumeMounts)

			require.Len(t, pod.Volumes, 1)
			data := pod.Volumes[0].VolumeSource
			if name == "dev" {
				require.NotNil(t, data.EmptyDir)
			} else {
				require.Equal(t, "meshca-data", data.PersistentVolumeClaim.ClaimName)
			}
		})
	}
}

// The files bootstrap-xds.yaml reads; the sidecar template must put them there.
const (
	bootstrapDir = "/etc/envoy"
	tokenDir     = "/var/run/secrets/tokens"
	bundleDir    = "/var/run/meshca/bundle"
)

func TestSidecarTemplate(t *testing.T) {
	bootstrap, err := os.ReadFile("envoy/bootstrap-xds.yaml")
	require.NoError(t, err)
	for _, file := range []string{tokenDir + "/meshca-token", bundleDir + "/root-cert.pem"} {
		require.Contains(t, string(bootstrap), "filename: "+file)
	}

	objs := render(t, "envoy")
	var d appsv1.Deployment
	fromUnstructured(t, objectOf(t, objs, "Deployment", "example"), &d)
	pod := d.Spec.Template.Spec
	require.False(t, *pod.AutomountServiceAccountToken)
	i := slices.IndexFunc(pod.Containers, func(c corev1.Container) bool {
		return c.Name == "envoy"
	})
	require.GreaterOrEqual(t, i, 0, "no envoy container")
	envoy := pod.Containers[i]
	assertHardened(t, envoy)
	require.Equal(t, []string{"-c", bootstrapDir + "/bootstrap-xds.yaml"}, envoy.Args[:2])

	mounts := make(map[string]corev1.VolumeSource)
	for _, m := range envoy.VolumeMounts {
		require.True(t, m.ReadOnly, "mount %s", m.MountPath)
		v := pod.Volumes[slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool {
			return v.Name == m.Name
		})]
		mounts[m.MountPath] = v.VolumeSource
	}

	// The bootstrap comes from the generated ConfigMap, under its hashed name.
	cmName := mounts[bootstrapDir].ConfigMap.Name
	require.True(t, strings.HasPrefix(cmName, "envoy-bootstrap-"), cmName)
	var cm corev1.ConfigMap
	fromUnstructured(t, objectOf(t, objs, "ConfigMap", cmName), &cm)
	require.Equal(t, string(bootstrap), cm.Data["bootstrap-xds.yaml"])

	sources := mounts[tokenDir].Projected.Sources
	require.Len(t, sources, 1)
	token := sources[0].ServiceAccountToken
	require.Equal(t, "meshca", token.Audience)
	require.Equal(t, "meshca-token", token.Path)

	bundle := mounts[bundleDir].ConfigMap
	require.Equal(t, "meshca-root-cert", bundle.Name)
	require.Equal(t, []corev1.KeyToPath{{Key: "root-cert.pem", Path: "root-cert.pem"}},
		bundle.Items)
}

// assertHardened checks what Pod Security "restricted" does not: a read-only root
// filesystem and resource limits.
func assertHardened(t *testing.T, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	require.False(t, *sc.AllowPrivilegeEscalation, c.Name)
	require.True(t, *sc.ReadOnlyRootFilesystem, c.Name)
	require.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop, c.Name)
	require.False(t, c.Resources.Requests.Cpu().IsZero(), c.Name)
	require.False(t, c.Resources.Requests.Memory().IsZero(), c.Name)
	require.False(t, c.Resources.Limits.Cpu().IsZero(), c.Name)
	require.False(t, c.Resources.Limits.Memory().IsZero(), c.Name)
}

func withDefaultProtocol(ports []corev1.ContainerPort) []corev1.ContainerPort {
	out := slices.Clone(ports)
	for i := range out {
		if out[i].Protocol == "" {
			out[i].Protocol = corev1.ProtocolTCP
		}
	}
	return out
}

func objectOf(t *testing.T, objs []*unstructured.Unstructured, kind, name string,
) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the rendered manifests", kind, name)
	return nil
}

func fromUnstructured(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(
		u.Object, into, true))
}

// restrictedNamespace creates a namespace that warns about and enforces Pod Security
// "restricted", as meshca's own namespace does.
func restrictedNamespace(t *testing.T, c *kubetest.Cluster) string {
	t.Helper()
	name := c.NewNamespace(t)
	patch := `{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"restricted",` +
		`"pod-security.kubernetes.io/warn":"restricted"}}}`
	_, err := c.Client.CoreV1().Namespaces().Patch(t.Context(), name, types.MergePatchType,
		[]byte(patch), metav1.PatchOptions{})
	require.NoError(t, err)
	return name
}

func restMapper(t *testing.T, cfg *rest.Config) meta.RESTMapper {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	require.NoError(t, err)
	groups, err := restmapper.GetAPIGroupResources(dc)
	require.NoError(t, err)
	return restmapper.NewDiscoveryRESTMapper(groups)
}

// apply server-side applies obj, in namespace when the kind is namespaced, and fails
// the test on error.
func apply(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper,
	obj *unstructured.Unstructured, namespace string, dryRun bool,
) {
	t.Helper()
	require.NoError(t, applyErr(t, dyn, mapper, obj, namespace, dryRun),
		"%s %s", obj.GetKind(), obj.GetName())
}

func applyErr(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper,
	obj *unstructured.Unstructured, namespace string, dryRun bool,
) error {
	t.Helper()
	gvk := obj.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	require.NoError(t, err, "%s is not served", gvk)
	var client dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	obj = obj.DeepCopy()
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		obj.SetNamespace(namespace)
		client = dyn.Resource(mapping.Resource).Namespace(namespace)
	}
	data, err := obj.MarshalJSON()
	require.NoError(t, err)
	force := true
	opts := metav1.PatchOptions{FieldManager: "meshca-deploy-test", Force: &force,
		FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = client.Patch(t.Context(), obj.GetName(), types.ApplyPatchType, data, opts)
	return err
}

// warningRecorder keeps the warnings the apiserver sends back.
type warningRecorder struct {
	mu   sync.Mutex // guards msgs
	msgs []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warningRecorder) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = nil
}

func (w *warningRecorder) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs)
}

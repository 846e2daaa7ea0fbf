package envoyvalidate_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path"
	"path/filepath"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpccredentialv3 "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/internal/envoyvalidate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const (
	bootstrapFile  = "../../deploy/envoy/bootstrap-direct.yaml"
	podSnippetFile = "../../deploy/envoy/pod-token-snippet.yaml"
	goldenFile     = "testdata/bootstrap-direct.golden.json"

	// The files the sidecar reads; the pod snippet must put them there.
	tokenFile  = "/var/run/secrets/tokens/meshca-token"
	rootCAFile = "/var/run/meshca/bundle/root-cert.pem"

	fileBasedMetadata = "envoy.grpc_credentials.file_based_metadata"
)

// loadDirectBootstrap loads bootstrap-direct.yaml strictly and validates it recursively.
func loadDirectBootstrap(t testing.TB) *bootstrapv3.Bootstrap {
	t.Helper()
	data, err := os.ReadFile(bootstrapFile)
	require.NoError(t, err)
	bs, err := envoyvalidate.LoadBootstrap(data)
	require.NoError(t, err, "deploy/envoy/bootstrap-direct.yaml does not validate")
	return bs
}

// unpack decodes a typed config into want's type, failing on any other type.
func unpack[T proto.Message](t testing.TB, a *anypb.Any, want T) T {
	t.Helper()
	require.NoError(t, a.UnmarshalTo(want), "typed_config is %s", a.GetTypeUrl())
	return want
}

func TestDirectBootstrapInboundTLS(t *testing.T) {
	bs := loadDirectBootstrap(t)
	l := listenerNamed(t, bs, "inbound")
	require.Equal(t, "0.0.0.0", l.GetAddress().GetSocketAddress().GetAddress())
	require.EqualValues(t, 15006, l.GetAddress().GetSocketAddress().GetPortValue())
	require.Len(t, l.GetFilterChains(), 1)

	ts := l.GetFilterChains()[0].GetTransportSocket()
	require.Equal(t, "envoy.transport_sockets.tls", ts.GetName())
	dtls := unpack(t, ts.GetTypedConfig(), &tlsv3.DownstreamTlsContext{})
	require.True(t, dtls.GetRequireClientCertificate().GetValue(), "client certs not required")

	common := dtls.GetCommonTlsContext()
	require.Len(t, common.GetTlsCertificateSdsSecretConfigs(), 1)
	cert := common.GetTlsCertificateSdsSecretConfigs()[0]
	require.Equal(t, "default", cert.GetName())
	assertMeshcaSDS(t, cert.GetSdsConfig())

	combined := common.GetCombinedValidationContext()
	require.NotNil(t, combined, "no combined_validation_context")
	require.Equal(t, "ROOTCA", combined.GetValidationContextSdsSecretConfig().GetName())
	assertMeshcaSDS(t, combined.GetValidationContextSdsSecretConfig().GetSdsConfig())

	sans := combined.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	require.Len(t, sans, 1)
	require.Equal(t, tlsv3.SubjectAltNameMatcher_URI, sans[0].GetSanType())
	require.Equal(t, "spiffe://cluster.local/", sans[0].GetMatcher().GetPrefix())
}

// assertMeshcaSDS checks an SDS config source: gRPC straight to meshca over TLS, with
// the projected token attached by the file_based_metadata plugin.
func assertMeshcaSDS(t *testing.T, cs *corev3.ConfigSource) {
	t.Helper()
	require.Equal(t, corev3.ApiVersion_V3, cs.GetResourceApiVersion())
	api := cs.GetApiConfigSource()
	require.Equal(t, corev3.ApiConfigSource_GRPC, api.GetApiType())
	require.Equal(t, corev3.ApiVersion_V3, api.GetTransportApiVersion())
	require.Len(t, api.GetGrpcServices(), 1)

	g := api.GetGrpcServices()[0].GetGoogleGrpc()
	require.NotNil(t, g, "SDS must use google_grpc: envoy_grpc cannot attach call credentials")
	require.Equal(t, "meshca.meshca.svc:15012", g.GetTargetUri())
	require.Equal(t, fileBasedMetadata, g.GetCredentialsFactoryName())
	require.Equal(t, rootCAFile,
		g.GetChannelCredentials().GetSslCredentials().GetRootCerts().GetFilename())

	require.Len(t, g.GetCallCredentials(), 1)
	plugin := g.GetCallCredentials()[0].GetFromPlugin()
	require.Equal(t, fileBasedMetadata, plugin.GetName())
	md := unpack(t, plugin.GetTypedConfig(), &grpccredentialv3.FileBasedMetadataConfig{})
	require.Equal(t, tokenFile, md.GetSecretData().GetFilename())
	require.Equal(t, "authorization", md.GetHeaderKey())
	require.Equal(t, "Bearer ", md.GetHeaderPrefix())
}

func TestDirectBootstrapRoutesToApp(t *testing.T) {
	bs := loadDirectBootstrap(t)
	l := listenerNamed(t, bs, "inbound")
	filters := l.GetFilterChains()[0].GetFilters()
	require.Len(t, filters, 1)
	hcm := unpack(t, filters[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})

	httpFilters := hcm.GetHttpFilters()
	require.NotEmpty(t, httpFilters)
	unpack(t, httpFilters[len(httpFilters)-1].GetTypedConfig(), &routerv3.Router{})

	routes := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
	require.Len(t, routes, 1)
	require.Equal(t, "inbound-app", routes[0].GetRoute().GetCluster())

	app := clusterNamed(t, bs, "inbound-app")
	addr := app.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().
		GetAddress().GetSocketAddress()
	require.Equal(t, "127.0.0.1", addr.GetAddress())
	require.EqualValues(t, 8080, addr.GetPortValue())

	admin := bs.GetAdmin().GetAddress().GetSocketAddress()
	require.Equal(t, "127.0.0.1", admin.GetAddress())
	require.EqualValues(t, 15000, admin.GetPortValue())
}

func TestDirectBootstrapMeshcaCluster(t *testing.T) {
	c := clusterNamed(t, loadDirectBootstrap(t), "meshca")
	require.Contains(t, []clusterv3.Cluster_DiscoveryType{clusterv3.Cluster_STRICT_DNS,
		clusterv3.Cluster_LOGICAL_DNS}, c.GetType())
	addr := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().
		GetAddress().GetSocketAddress()
	require.Equal(t, "meshca.meshca.svc", addr.GetAddress())
	require.EqualValues(t, 15012, addr.GetPortValue())

	const httpOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	opts := c.GetTypedExtensionProtocolOptions()[httpOptions]
	require.NotNil(t, opts, "no HttpProtocolOptions")
	http := unpack(t, opts, &httpv3.HttpProtocolOptions{})
	require.NotNil(t, http.GetExplicitHttpConfig().GetHttp2ProtocolOptions(), "not HTTP/2")

	utls := unpack(t, c.GetTransportSocket().GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
	require.Equal(t, "meshca.meshca.svc", utls.GetSni())
	require.Equal(t, rootCAFile,
		utls.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename())
}

// TestDirectBootstrapGolden pins the bootstrap as Envoy will read it, anchors expanded,
// in canonical protojson.
func TestDirectBootstrapGolden(t *testing.T) {
	got := canonicalJSON(t, loadDirectBootstrap(t))
	if *update {
		require.NoError(t, os.WriteFile(goldenFile, got, 0o644))
		return
	}
	want, err := os.ReadFile(goldenFile)
	require.NoError(t, err, "missing golden file: run go test ./internal/envoyvalidate -update")
	require.Equal(t, string(want), string(got), "bootstrap differs from %s; if the change "+
		"is intended, run go test ./internal/envoyvalidate -update", goldenFile)
}

// canonicalJSON renders m in protojson and re-indents it with encoding/json, because
// protojson varies its whitespace on purpose and a golden file must not.
func canonicalJSON(t testing.TB, m proto.Message) []byte {
	t.Helper()
	raw, err := protojson.Marshal(m)
	require.NoError(t, err)
	var compact, out bytes.Buffer
	require.NoError(t, json.Compact(&compact, raw))
	require.NoError(t, json.Indent(&out, compact.Bytes(), "", "  "))
	out.WriteByte('\n')
	return out.Bytes()
}

func TestPodTokenSnippet(t *testing.T) {
	spec := loadPodSnippet(t)

	token := volumeNamed(t, spec, "meshca-token").Projected
	require.NotNil(t, token, "meshca-token is not a projected volume")
	require.Len(t, token.Sources, 1)
	sat := token.Sources[0].ServiceAccountToken
	require.NotNil(t, sat, "no serviceAccountToken source")
	require.Equal(t, "meshca", sat.Audience)
	require.NotNil(t, sat.ExpirationSeconds)
	require.EqualValues(t, 3600, *sat.ExpirationSeconds)

	bundle := volumeNamed(t, spec, "meshca-bundle").ConfigMap
	require.NotNil(t, bundle, "meshca-bundle is not a ConfigMap volume")
	require.Equal(t, "meshca-root-cert", bundle.Name)
	require.Equal(t, []corev1.KeyToPath{{Key: "root-cert.pem", Path: "root-cert.pem"}},
		bundle.Items)

	// The files land exactly where the bootstrap looks for them.
	envoy := containerNamed(t, spec, "envoy")
	require.Equal(t, tokenFile, path.Join(mountPath(t, envoy, "meshca-token"), sat.Path))
	require.Equal(t, rootCAFile, path.Join(mountPath(t, envoy, "meshca-bundle"),
		bundle.Items[0].Path))
	require.Contains(t, envoy.Args, "/etc/envoy/"+filepath.Base(bootstrapFile))
	require.Equal(t, "/etc/envoy", mountPath(t, envoy, "envoy-bootstrap"))
}

// loadPodSnippet parses pod-token-snippet.yaml strictly as a PodSpec.
func loadPodSnippet(t testing.TB) *corev1.PodSpec {
	t.Helper()
	data, err := os.ReadFile(podSnippetFile)
	require.NoError(t, err)
	var spec corev1.PodSpec
	require.NoError(t, yaml.UnmarshalStrict(data, &spec))
	return &spec
}

func listenerNamed(t testing.TB, bs *bootstrapv3.Bootstrap, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range bs.GetStaticResources().GetListeners() {
		if l.GetName() == name {
			return l
		}
	}
	require.FailNow(t, "no listener "+name)
	return nil
}

func clusterNamed(t testing.TB, bs *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	require.FailNow(t, "no cluster "+name)
	return nil
}

func volumeNamed(t testing.TB, spec *corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	require.FailNow(t, "no volume "+name)
	return corev1.Volume{}
}

func containerNamed(t testing.TB, spec *corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	require.FailNow(t, "no container "+name)
	return corev1.Container{}
}

func mountPath(t testing.TB, c corev1.Container, volume string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			require.True(t, m.ReadOnly, "mount of %s is writable", volume)
			return m.MountPath
		}
	}
	require.FailNow(t, "container "+c.Name+" does not mount "+volume)
	return ""
}

// BenchmarkValidateDirectBootstrap measures a full recursive validation of the direct
// bootstrap (five typed configs, two levels deep).
func BenchmarkValidateDirectBootstrap(b *testing.B) {
	bs := loadDirectBootstrap(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := envoyvalidate.Validate(bs); err != nil {
			b.Fatal(err)
		}
	}
}

func TestXDSBootstrap(t *testing.T) {
	data, err := os.ReadFile("../../deploy/envoy/bootstrap-xds.yaml")
	require.NoError(t, err)
	bs, err := envoyvalidate.LoadBootstrap(data)
	require.NoError(t, err, "deploy/envoy/bootstrap-xds.yaml does not validate")

	// meshca builds the inbound listener from these two ports.
	meta := bs.GetNode().GetMetadata().GetFields()
	require.Equal(t, "15006", meta["meshca.io/inbound-port"].GetStringValue())
	require.Equal(t, "8080", meta["meshca.io/app-port"].GetStringValue())

	dyn := bs.GetDynamicResources()
	require.NotNil(t, dyn.GetLdsConfig().GetAds(), "listeners come over ADS")
	require.NotNil(t, dyn.GetCdsConfig().GetAds(), "clusters come over ADS")
	ads := dyn.GetAdsConfig()
	require.Equal(t, corev3.ApiConfigSource_GRPC, ads.GetApiType())
	require.Len(t, ads.GetGrpcServices(), 1)
	g := ads.GetGrpcServices()[0].GetGoogleGrpc()
	require.NotNil(t, g, "only google_grpc attaches call credentials")
	require.Equal(t, rootCAFile, g.GetChannelCredentials().GetSslCredentials().
		GetRootCerts().GetFilename())
	require.Equal(t, fileBasedMetadata, g.GetCredentialsFactoryName())
	require.Len(t, g.GetCallCredentials(), 1)
	plugin := g.GetCallCredentials()[0].GetFromPlugin()
	require.Equal(t, fileBasedMetadata, plugin.GetName())
	cfg := unpack(t, plugin.GetTypedConfig(), &grpccredentialv3.FileBasedMetadataConfig{})
	require.Equal(t, tokenFile, cfg.GetSecretData().GetFilename())
	require.Equal(t, "authorization", cfg.GetHeaderKey())
	require.Equal(t, "Bearer ", cfg.GetHeaderPrefix())
}

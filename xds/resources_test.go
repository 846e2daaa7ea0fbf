package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/envoyvalidate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func examplePolicies(t *testing.T) []policy.Policy {
	t.Helper()
	data, err := os.ReadFile("authz/testdata/example.yaml")
	require.NoError(t, err)
	ps, err := policy.Parse(data, "example.yaml")
	require.NoError(t, err)
	return ps
}

func testSession(t *testing.T, ns, sa string, ps []policy.Policy) *session {
	t.Helper()
	s := New(Config{})
	s.SetPolicies(ps)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
	sess := &session{s: s, id: s.streamID.Add(1), ident: ca.Identity{
		ID: id, Namespace: ns, ServiceAccount: sa, PodName: sa + "-0",
	}}
	sess.refreshConfig()
	return sess
}

func node(meta map[string]any) *core.Node {
	st, err := structpb.NewStruct(meta)
	if err != nil {
		panic(err)
	}
	return &core.Node{Id: "test", Metadata: st}
}

// resolve returns the resources of a type by name, unpacked.
func resolveMessages(t *testing.T, sess *session, typeURL string, n *core.Node,
	names ...string) map[string]proto.Message {
	t.Helper()
	out := map[string]proto.Message{}
	log := slog.New(slog.DiscardHandler)
	for _, r := range sess.resolveConfig(typeURL, names, len(names) == 0, n, log) {
		m, err := r.any.UnmarshalNew()
		require.NoError(t, err)
		out[r.name] = m
	}
	return out
}

// render prints a message as stable, indented JSON (protojson varies its spacing).
func render(t *testing.T, m proto.Message) []byte {
	t.Helper()
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	require.NoError(t, err)
	var compact, buf bytes.Buffer
	require.NoError(t, json.Compact(&compact, js))
	require.NoError(t, json.Indent(&buf, compact.Bytes(), "", "  "))
	return append(buf.Bytes(), '\n')
}

func assertGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file: run go test ./xds -update")
	require.Equal(t, string(want), string(got), "output differs from %s; if the change "+
		"is intended, run go test ./xds -update", path)
}

func TestSidecarResources(t *testing.T) {
	sess := testSession(t, "payments", "payments", examplePolicies(t))
	n := node(map[string]any{MetaInboundPort: "15006", MetaAppPort: 8080.0})

	ls := resolveMessages(t, sess, listenerTypeURL, n)
	require.Len(t, ls, 1, "a sidecar's wildcard gets its inbound listener")
	l := ls["inbound|15006"].(*listenerv3.Listener)
	require.NoError(t, envoyvalidate.Validate(l))
	assertGolden(t, "sidecar-listener.golden.json", render(t, l))

	cs := resolveMessages(t, sess, clusterTypeURL, n)
	require.Len(t, cs, 1)
	c := cs["inbound|8080"].(*clusterv3.Cluster)
	require.NoError(t, envoyvalidate.Validate(c))
	require.Equal(t, uint32(8080), c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].
		GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())

	// Without the ports in its metadata a node gets no inbound listener.
	require.Empty(t, resolveMessages(t, sess, listenerTypeURL, node(nil)))
	require.Empty(t, resolveMessages(t, sess, clusterTypeURL, node(nil)))
}

func TestProxylessResources(t *testing.T) {
	ps := examplePolicies(t)
	server := testSession(t, "payments", "payments", ps)
	name := ServerListenerPrefix + "127.0.0.1:8443"
	ls := resolveMessages(t, server, listenerTypeURL, node(nil), name, "not a listener")
	require.Len(t, ls, 1, "unknown names are left out")
	l := ls[name].(*listenerv3.Listener)
	require.NoError(t, envoyvalidate.Validate(l))
	assertGolden(t, "server-listener.golden.json", render(t, l))

	// The server registered itself as an endpoint of payments.payments, so a client
	// (another session of the same server) finds it.
	client := &session{s: server.s, id: server.s.streamID.Add(1), ident: ca.Identity{
		ID:        spiffeid.RequireFromString("spiffe://cluster.local/ns/orders/sa/orders"),
		Namespace: "orders", ServiceAccount: "orders",
	}}
	client.refreshConfig()
	const svc = "payments.payments"
	for typeURL, names := range map[string][]string{
		listenerTypeURL: {svc}, routeTypeURL: {svc},
		clusterTypeURL: {"outbound|" + svc}, endpointTypeURL: {"outbound|" + svc},
	} {
		got := resolveMessages(t, client, typeURL, node(nil), names...)
		require.Len(t, got, 1, typeURL)
		for _, m := range got {
			validateForGRPC(t, m)
			assertGolden(t, "client-"+typeName(m)+".golden.json", render(t, m))
		}
	}
	cla := resolveMessages(t, client, endpointTypeURL, node(nil), "outbound|"+svc)
	eps := cla["outbound|"+svc].(*endpointv3.ClusterLoadAssignment).GetEndpoints()
	require.Len(t, eps, 1)
	require.Equal(t, uint32(1), eps[0].GetLoadBalancingWeight().GetValue(),
		"grpc-go ignores a locality without a weight")
	require.NotNil(t, eps[0].GetLocality(), "grpc-go rejects a locality without an ID")

	// When the server's stream ends, its endpoint goes.
	server.close()
	client.refreshConfig()
	cla = resolveMessages(t, client, endpointTypeURL, node(nil), "outbound|"+svc)
	require.Empty(t, cla["outbound|"+svc].(*endpointv3.ClusterLoadAssignment).GetEndpoints())
}

// validateForGRPC validates a resource meant for grpc-go. grpc-go reads SAN matchers
// only from match_subject_alt_names, which Envoy deprecated for
// match_typed_subject_alt_names: that one deprecation is expected, nothing else.
func validateForGRPC(t *testing.T, m proto.Message) {
	t.Helper()
	err := envoyvalidate.Validate(m)
	if err == nil {
		return
	}
	var verr *envoyvalidate.Error
	require.ErrorAs(t, err, &verr)
	for _, v := range verr.Violations {
		if v.Kind == envoyvalidate.ErrDeprecated &&
			strings.HasSuffix(v.Path, ".validation_context.match_subject_alt_names") {
			continue
		}
		t.Errorf("%T: %v", m, v)
	}
}

func typeName(m proto.Message) string {
	switch m.(type) {
	case *listenerv3.Listener:
		return "listener"
	case *clusterv3.Cluster:
		return "cluster"
	case *endpointv3.ClusterLoadAssignment:
		return "endpoints"
	default:
		return "route"
	}
}

func TestServerOnEveryAddressNeedsInstanceIP(t *testing.T) {
	sess := testSession(t, "payments", "payments", nil)
	name := ServerListenerPrefix + "0.0.0.0:8443"
	require.Len(t, resolveMessages(t, sess, listenerTypeURL, node(nil), name), 1)
	require.Empty(t, sess.s.watchConfig().endpoints, "no address to register")

	// Only a new subscription registers: ask for another listener in between.
	resolveMessages(t, sess, listenerTypeURL, node(nil), ServerListenerPrefix+"[::]:9000")
	meta := node(map[string]any{MetaInstanceIP: "10.1.2.3"})
	resolveMessages(t, sess, listenerTypeURL, meta, name)
	eps := sess.s.watchConfig().endpoints["payments.payments"]
	require.Len(t, eps, 1)
	require.Equal(t, "10.1.2.3:8443", eps[0].addr)
	require.Equal(t, sess.ident.ID, eps[0].id)
}

func TestPolicyChangeRecompiles(t *testing.T) {
	sess := testSession(t, "payments", "payments", nil)
	name := ServerListenerPrefix + "127.0.0.1:8443"
	before := sess.resolveConfig(listenerTypeURL, []string{name}, false, node(nil),
		slog.New(slog.DiscardHandler))
	sess.subscribed(listenerTypeURL)
	policies, endpoints := sess.configChanged()
	require.Nil(t, endpoints, "a stream of listeners only waits for policy changes")
	sess.s.SetPolicies(examplePolicies(t))
	select {
	case <-policies:
	default:
		t.Fatal("SetPolicies did not signal a change")
	}
	sess.refreshConfig()
	after := sess.resolveConfig(listenerTypeURL, []string{name}, false, node(nil),
		slog.New(slog.DiscardHandler))
	require.NotEqual(t, digest(before), digest(after))

	// A workload no policy selects keeps byte-identical listeners.
	other := testSession(t, "orders", "orders", nil)
	a := other.resolveConfig(listenerTypeURL, []string{name}, false, node(nil),
		slog.New(slog.DiscardHandler))
	other.s.SetPolicies(examplePolicies(t))
	other.refreshConfig()
	b := other.resolveConfig(listenerTypeURL, []string{name}, false, node(nil),
		slog.New(slog.DiscardHandler))
	require.Equal(t, digest(a), digest(b))
}

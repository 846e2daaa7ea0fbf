package authz_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/internal/envoyvalidate"
	"github.com/meshca/meshca/xds/authz"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	payments = authz.Workload{Namespace: "payments", ServiceAccount: "payments"}
	opts     = authz.Options{TrustDomain: td}
)

// The callers of the tests, by their SPIFFE IDs.
const (
	orders    = "spiffe://cluster.local/ns/orders/sa/orders"
	checkout  = "spiffe://cluster.local/ns/orders/sa/checkout"
	ordersX   = "spiffe://cluster.local/ns/orders-x/sa/a"
	other     = "spiffe://cluster.local/ns/other/sa/other"
	sandbox   = "spiffe://cluster.local/ns/sandbox/sa/orders"
	reports   = "spiffe://cluster.local/batch/reports"
	foreignTD = "spiffe://example.org/ns/orders/sa/orders"
)

// readPolicies parses and validates testdata files.
func readPolicies(t testing.TB, names ...string) []policy.Policy {
	t.Helper()
	var paths []string
	for _, n := range names {
		paths = append(paths, filepath.Join("testdata", n))
	}
	ps, err := policy.ReadFiles(paths)
	require.NoError(t, err)
	require.NoError(t, policy.ValidateSet(ps, td))
	return ps
}

// compile compiles for the payments workload and checks the output the way Envoy
// would load it: inside a connection manager, before the router, with the path
// normalization settings, validated recursively into every typed config.
func compile(t testing.TB, ps []policy.Policy, o authz.Options) *authz.CompiledRBAC {
	t.Helper()
	out, err := authz.Compile(ps, payments, o)
	require.NoError(t, err)

	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "inbound_http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{
			RouteConfig: &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{
				Name:    "app",
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match: &routev3.RouteMatch{
						PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
					},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "app"},
					}},
				}},
			}}},
		},
		HttpFilters: append(out.Filters, &hcmv3.HttpFilter{
			Name: "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{
				TypedConfig: mustAny(t, &routerv3.Router{}),
			},
		}),
	}
	proto.Merge(hcm, authz.HCMNormalization())
	require.NoError(t, envoyvalidate.Validate(hcm))
	return out
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	require.NoError(t, err)
	return a
}

// renderFilters renders filters as stable, indented JSON: protojson varies its
// spacing on purpose, so its output is compacted and indented again.
func renderFilters(t *testing.T, filters []*hcmv3.HttpFilter) []byte {
	t.Helper()
	list := make([]json.RawMessage, 0, len(filters))
	for _, f := range filters {
		js, err := protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}.Marshal(f)
		require.NoError(t, err)
		var buf bytes.Buffer
		require.NoError(t, json.Compact(&buf, js))
		list = append(list, buf.Bytes())
	}
	out, err := json.MarshalIndent(list, "", "  ")
	require.NoError(t, err)
	return append(out, '\n')
}

func assertGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file: run go test ./xds/authz -update")
	require.Equal(t, string(want), string(got), "output differs from %s; if the change "+
		"is intended, run go test ./xds/authz -update", path)
}

func TestCompileGolden(t *testing.T) {
	tests := []struct {
		name        string
		files       []string
		defaultDeny bool
		golden      string
		wantFilters []string
	}{
		{
			name:        "only orders may POST /charge: one ALLOW filter",
			files:       []string{"example.yaml"},
			golden:      "example.golden.json",
			wantFilters: []string{authz.AllowFilterName},
		},
		{
			name:        "DENY policies come in a first filter, before the ALLOW filter",
			files:       []string{"example.yaml", "deny.yaml"},
			golden:      "allow-and-deny.golden.json",
			wantFilters: []string{authz.DenyFilterName, authz.AllowFilterName},
		},
		{
			name:        "a namespace rule is a prefix ending in /sa/",
			files:       []string{"namespace.yaml"},
			golden:      "namespace.golden.json",
			wantFilters: []string{authz.AllowFilterName},
		},
		{
			name:        "default-deny without policies is an ALLOW filter that allows nothing",
			defaultDeny: true,
			golden:      "default-deny.golden.json",
			wantFilters: []string{authz.AllowFilterName},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := opts
			o.DefaultDeny = tt.defaultDeny
			out := compile(t, readPolicies(t, tt.files...), o)

			var names []string
			for _, f := range out.Filters {
				names = append(names, f.GetName())
			}
			require.Equal(t, tt.wantFilters, names)
			assertGolden(t, tt.golden, renderFilters(t, out.Filters))
		})
	}
}

// request is what the RBAC filters see of a request.
type request struct {
	principal string // the URI SAN of the client certificate; empty without one
	method    string
	path      string // as normalized by the connection manager, query included
}

func TestCompileSemantics(t *testing.T) {
	type check struct {
		req  request
		want bool
	}
	tests := []struct {
		name        string
		files       []string
		defaultDeny bool
		checks      []check
	}{
		{
			name:  "the ALLOW policy admits orders to POST /charge only",
			files: []string{"example.yaml"},
			checks: []check{
				{request{orders, "POST", "/charge"}, true},
				{request{orders, "POST", "/charge?amount=10"}, true},
				{request{other, "POST", "/charge"}, false},
				{request{checkout, "POST", "/charge"}, false},
				{request{orders, "GET", "/charge"}, false},
				{request{orders, "POST", "/charge/x"}, false},
				{request{orders, "POST", "/Charge"}, false},
				{request{foreignTD, "POST", "/charge"}, false},
				{request{"", "POST", "/charge"}, false},
			},
		},
		{
			name:  "DENY wins over ALLOW, and ALLOW still limits the rest",
			files: []string{"example.yaml", "deny.yaml"},
			checks: []check{
				{request{orders, "POST", "/charge"}, true},
				{request{sandbox, "POST", "/charge"}, false},
				{request{other, "POST", "/charge"}, false},
				{request{orders, "DELETE", "/admin/x"}, false},
			},
		},
		{
			name:  "DENY policies alone leave everything else allowed",
			files: []string{"deny.yaml"},
			checks: []check{
				{request{other, "GET", "/anything"}, true},
				{request{"", "GET", "/"}, true},
				{request{sandbox, "GET", "/anything"}, false},
				{request{other, "DELETE", "/admin/users"}, false},
				{request{other, "DELETE", "/admin"}, true},
				{request{other, "GET", "/admin/users"}, true},
			},
		},
		{
			name:        "with default-deny, DENY policies alone allow nothing",
			files:       []string{"deny.yaml"},
			defaultDeny: true,
			checks: []check{
				{request{other, "GET", "/anything"}, false},
			},
		},
		{
			name:  "a namespace rule admits every account of exactly that namespace",
			files: []string{"namespace.yaml"},
			checks: []check{
				{request{orders, "GET", "/v1/payments"}, true},
				{request{checkout, "POST", "/v1/payments/1"}, true},
				{request{checkout, "GET", "/healthz"}, true},
				{request{ordersX, "GET", "/v1/payments"}, false},
				{request{checkout, "GET", "/v1"}, false},
				{request{checkout, "GET", "/healthz/x"}, false},
				{request{checkout, "DELETE", "/v1/payments/1"}, false},
				{request{reports, "GET", "/anything"}, true},
				{request{reports, "POST", "/v1/x"}, false},
			},
		},
		{
			name: "no policy allows everything",
			checks: []check{
				{request{other, "DELETE", "/anything"}, true},
				{request{"", "GET", "/"}, true},
			},
		},
		{
			name:        "no policy with default-deny allows nothing",
			defaultDeny: true,
			checks: []check{
				{request{orders, "POST", "/charge"}, false},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := opts
			o.DefaultDeny = tt.defaultDeny
			var ps []policy.Policy
			if len(tt.files) > 0 {
				ps = readPolicies(t, tt.files...)
			}
			out := compile(t, ps, o)
			for _, c := range tt.checks {
				require.Equal(t, c.want, allowed(t, out.Filters, c.req), "%+v", c.req)
			}
		})
	}
}

// The rule, checked on the matcher itself: the prefix compiled for namespace
// orders matches its accounts and not those of orders-x.
func TestNamespaceRuleDoesNotMatchSimilarNamespace(t *testing.T) {
	out := compile(t, readPolicies(t, "namespace.yaml"), opts)
	rule := out.Allow.GetRules().GetPolicies()["payments/payments-v1/rule-0"]
	require.Len(t, rule.GetPrincipals(), 1)
	m := rule.GetPrincipals()[0].GetAuthenticated().GetPrincipalName()
	require.Equal(t, "spiffe://cluster.local/ns/orders/sa/", m.GetPrefix())

	require.True(t, stringMatches(t, m, "spiffe://cluster.local/ns/orders/sa/a"))
	require.False(t, stringMatches(t, m, "spiffe://cluster.local/ns/orders-x/sa/a"))
}

func TestCompileSelects(t *testing.T) {
	ps := readPolicies(t, "example.yaml", "deny.yaml", "namespace.yaml")
	otherNS := strings.Replace(string(mustRead(t, "namespace.yaml")),
		"namespace: payments", "namespace: billing", 1)
	more, err := policy.Parse([]byte(otherNS), "billing.yaml")
	require.NoError(t, err)
	ps = append(ps, more...)

	tests := []struct {
		name     string
		workload authz.Workload
		want     []string
	}{
		{
			name:     "the selected account gets its own and the namespace's policies",
			workload: payments,
			want: []string{"payments/deny-admin-delete", "payments/deny-sandbox",
				"payments/payments-charge", "payments/payments-v1"},
		},
		{
			name:     "another account of the namespace gets only the namespace's",
			workload: authz.Workload{Namespace: "payments", ServiceAccount: "refunds"},
			want: []string{"payments/deny-admin-delete", "payments/deny-sandbox",
				"payments/payments-v1"},
		},
		{
			name:     "a namespace's policies never apply in another",
			workload: authz.Workload{Namespace: "billing", ServiceAccount: "payments"},
			want:     []string{"billing/payments-v1"},
		},
		{
			name:     "a workload no policy selects gets no filter",
			workload: authz.Workload{Namespace: "orders", ServiceAccount: "orders"},
			want:     []string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := authz.Compile(ps, tt.workload, opts)
			require.NoError(t, err)
			require.Equal(t, tt.want, out.Policies)
			if len(tt.want) == 0 {
				require.Empty(t, out.Filters)
			}
		})
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

func TestCompileErrors(t *testing.T) {
	valid := readPolicies(t, "example.yaml")
	invalid := readPolicies(t, "example.yaml")
	invalid[0].Spec.Rules[0].To[0].Methods = []string{"post"}
	elsewhere := readPolicies(t, "example.yaml")
	elsewhere[0].Metadata.Namespace = "billing"
	elsewhere[0].Spec.Action = "MAYBE"

	tests := []struct {
		name     string
		policies []policy.Policy
		workload authz.Workload
		opts     authz.Options
		wantErr  error  // nil: compiles
		wantPath string // with a policy problem: its field
	}{
		{
			name:     "options without a trust domain are refused",
			policies: valid,
			workload: payments,
			wantErr:  authz.ErrNoTrustDomain,
		},
		{
			name:     "a workload without a service account is refused",
			policies: valid,
			workload: authz.Workload{Namespace: "payments"},
			opts:     opts,
			wantErr:  authz.ErrInvalidWorkload,
		},
		{
			name:     "an invalid policy that selects the workload fails the compilation",
			policies: invalid,
			workload: payments,
			opts:     opts,
			wantErr:  policy.ErrInvalid,
			wantPath: "spec.rules[0].to[0].methods[0]",
		},
		{
			name:     "a policy defined twice fails the compilation",
			policies: append(append([]policy.Policy{}, valid...), valid...),
			workload: payments,
			opts:     opts,
			wantErr:  policy.ErrConflict,
			wantPath: "metadata.name",
		},
		{
			name:     "an invalid policy of another namespace is none of this workload's business",
			policies: append(append([]policy.Policy{}, valid...), elsewhere...),
			workload: payments,
			opts:     opts,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := authz.Compile(tt.policies, tt.workload, tt.opts)
			if tt.wantErr == nil {
				require.NoError(t, err)
				require.NotNil(t, out)
				return
			}
			require.ErrorIs(t, err, tt.wantErr)
			require.Nil(t, out)
			if tt.wantPath != "" {
				fes := policy.FieldErrors(err)
				require.Len(t, fes, 1)
				require.Equal(t, tt.wantPath, fes[0].Path)
			}
		})
	}
}

// The same policies in any order compile to the same bytes, so xDS versions derived
// from them only change when the policies do.
func TestCompileDeterministic(t *testing.T) {
	ps := readPolicies(t, "example.yaml", "deny.yaml", "namespace.yaml")
	first := compile(t, ps, opts)
	for range 20 {
		rand.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
		again := compile(t, ps, opts)
		require.Equal(t, len(first.Filters), len(again.Filters))
		for i := range first.Filters {
			require.Equal(t, first.Filters[i].GetTypedConfig().GetValue(),
				again.Filters[i].GetTypedConfig().GetValue())
		}
	}
}

func TestHCMNormalization(t *testing.T) {
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "inbound_http"}
	proto.Merge(hcm, authz.HCMNormalization())

	require.Equal(t, "inbound_http", hcm.GetStatPrefix(), "merging keeps the rest")
	require.True(t, hcm.GetNormalizePath().GetValue())
	require.True(t, hcm.GetMergeSlashes())
	require.Equal(t, hcmv3.HttpConnectionManager_REJECT_REQUEST,
		hcm.GetPathWithEscapedSlashesAction())
}

// allowed runs a request through the filters as Envoy and grpc-go do: each RBAC
// filter in order, a DENY filter refusing what one of its policies matches, an ALLOW
// filter refusing what none matches. It fails the test on any matcher outside the
// small set meshca is allowed to emit (those grpc-go's xDS RBAC supports).
func allowed(t *testing.T, filters []*hcmv3.HttpFilter, r request) bool {
	t.Helper()
	for _, f := range filters {
		cfg := &rbacfilterv3.RBAC{}
		require.NoError(t, f.GetTypedConfig().UnmarshalTo(cfg))
		require.Nil(t, cfg.GetShadowRules())
		require.Nil(t, cfg.GetMatcher())

		matched := false
		for _, p := range cfg.GetRules().GetPolicies() {
			require.Nil(t, p.GetCondition(), "grpc-go NACKs CEL conditions")
			matched = matched || (anyPrincipal(t, p.GetPrincipals(), r) &&
				anyPermission(t, p.GetPermissions(), r))
		}
		switch cfg.GetRules().GetAction() {
		case rbacv3.RBAC_DENY:
			if matched {
				return false
			}
		case rbacv3.RBAC_ALLOW:
			if !matched {
				return false
			}
		default:
			t.Fatalf("unexpected action %v", cfg.GetRules().GetAction())
		}
	}
	return true
}

func anyPrincipal(t *testing.T, ps []*rbacv3.Principal, r request) bool {
	t.Helper()
	require.NotEmpty(t, ps)
	for _, p := range ps {
		switch id := p.GetIdentifier().(type) {
		case *rbacv3.Principal_Any:
			return true
		case *rbacv3.Principal_Authenticated_:
			if r.principal != "" &&
				stringMatches(t, id.Authenticated.GetPrincipalName(), r.principal) {
				return true
			}
		default:
			t.Fatalf("unexpected principal %T", id)
		}
	}
	return false
}

func anyPermission(t *testing.T, ps []*rbacv3.Permission, r request) bool {
	t.Helper()
	require.NotEmpty(t, ps)
	for _, p := range ps {
		if permissionMatches(t, p, r) {
			return true
		}
	}
	return false
}

func permissionMatches(t *testing.T, p *rbacv3.Permission, r request) bool {
	t.Helper()
	switch rule := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return true
	case *rbacv3.Permission_Header:
		require.Equal(t, ":method", rule.Header.GetName())
		require.False(t, rule.Header.GetInvertMatch())
		return stringMatches(t, rule.Header.GetStringMatch(), r.method)
	case *rbacv3.Permission_UrlPath:
		path, _, _ := strings.Cut(r.path, "?") // url_path excludes the query
		return stringMatches(t, rule.UrlPath.GetPath(), path)
	case *rbacv3.Permission_OrRules:
		return anyPermission(t, rule.OrRules.GetRules(), r)
	case *rbacv3.Permission_AndRules:
		require.NotEmpty(t, rule.AndRules.GetRules())
		for _, inner := range rule.AndRules.GetRules() {
			if !permissionMatches(t, inner, r) {
				return false
			}
		}
		return true
	default:
		t.Fatalf("unexpected permission %T", rule)
		return false
	}
}

// stringMatches evaluates the two StringMatcher patterns meshca emits, exact and
// prefix, always case-sensitive.
func stringMatches(t *testing.T, m *matcherv3.StringMatcher, s string) bool {
	t.Helper()
	require.False(t, m.GetIgnoreCase())
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return s == p.Exact
	case *matcherv3.StringMatcher_Prefix:
		require.NotEmpty(t, p.Prefix, "grpc-go refuses an empty prefix")
		return strings.HasPrefix(s, p.Prefix)
	default:
		t.Fatalf("unexpected string matcher %T", p)
		return false
	}
}

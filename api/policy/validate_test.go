package policy_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/api/policy"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want wantError
	}{
		{
			name: "a missing name is required, pointing at metadata",
			yaml: broken(t, "  name: payments-charge\n", ""),
			want: wantError{policy.ErrRequired, "metadata.name", 3},
		},
		{
			name: "a namespace that is not a DNS label is refused",
			yaml: broken(t, "namespace: payments", "namespace: Payments"),
			want: wantError{policy.ErrInvalid, "metadata.namespace", 5},
		},
		{
			name: "a selected service account that is not a DNS subdomain is refused",
			yaml: broken(t, "{serviceAccount: payments}", "{serviceAccount: pay_ments}"),
			want: wantError{policy.ErrInvalid, "spec.selector.serviceAccount", 7},
		},
		{
			name: "action MAYBE is refused",
			yaml: broken(t, "action: ALLOW", "action: MAYBE"),
			want: wantError{policy.ErrInvalid, "spec.action", 8},
		},
		{
			name: "a lower-case action is refused",
			yaml: broken(t, "action: ALLOW", "action: allow"),
			want: wantError{policy.ErrInvalid, "spec.action", 8},
		},
		{
			name: "a missing action is required",
			yaml: broken(t, "  action: ALLOW\n", ""),
			want: wantError{policy.ErrRequired, "spec.action", 6},
		},
		{
			name: "a policy without rules is refused",
			yaml: strings.Split(basePolicy, "  rules:")[0] + "  rules: []\n",
			want: wantError{policy.ErrRequired, "spec.rules", 9},
		},
		{
			name: "a lower-case method is refused",
			yaml: broken(t, "methods: [POST]", "methods: [post]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].methods[0]", 13},
		},
		{
			name: "an unknown method is refused",
			yaml: broken(t, "methods: [POST]", "methods: [POST, FETCH]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].methods[1]", 13},
		},
		{
			name: "a method listed twice is a conflict",
			yaml: broken(t, "methods: [POST]", "methods: [POST, GET, POST]"),
			want: wantError{policy.ErrConflict, "spec.rules[0].to[0].methods[2]", 13},
		},
		{
			name: "a star inside a path is refused",
			yaml: broken(t, "paths: [/charge]", "paths: [/a/*/b]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].paths[0]", 14},
		},
		{
			name: "a dot-dot segment is refused",
			yaml: broken(t, "paths: [/charge]", "paths: [/a/../b]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].paths[0]", 14},
		},
		{
			name: "a repeated slash is refused",
			yaml: broken(t, "paths: [/charge]", "paths: [//a]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].paths[0]", 14},
		},
		{
			name: "a percent-encoded slash is refused",
			yaml: broken(t, "paths: [/charge]", "paths: [/a%2Fb]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].paths[0]", 14},
		},
		{
			name: "a query is refused",
			yaml: broken(t, "paths: [/charge]", "paths: [\"/charge?id=1\"]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].paths[0]", 14},
		},
		{
			name: "a relative path is refused",
			yaml: broken(t, "paths: [/charge]", "paths: [charge]"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].to[0].paths[0]", 14},
		},
		{
			name: "an empty path is required to be something",
			yaml: broken(t, "paths: [/charge]", "paths: [/charge, \"\"]"),
			want: wantError{policy.ErrRequired, "spec.rules[0].to[0].paths[1]", 14},
		},
		{
			name: "a path listed twice is a conflict",
			yaml: broken(t, "paths: [/charge]", "paths: [/v1/*, /charge, /v1/*]"),
			want: wantError{policy.ErrConflict, "spec.rules[0].to[0].paths[2]", 14},
		},
		{
			name: "a to entry with neither methods nor paths is refused",
			yaml: broken(t, "    - methods: [POST]\n      paths: [/charge]", "    - {}"),
			want: wantError{policy.ErrRequired, "spec.rules[0].to[0]", 13},
		},
		{
			name: "a service account without a slash is refused",
			yaml: broken(t, "serviceAccount: orders/orders", "serviceAccount: orders"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].from[0].serviceAccount", 11},
		},
		{
			name: "a service account with a bad namespace is refused",
			yaml: broken(t, "serviceAccount: orders/orders", "serviceAccount: Orders/orders"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].from[0].serviceAccount", 11},
		},
		{
			name: "a SPIFFE ID in another trust domain is refused",
			yaml: broken(t, "serviceAccount: orders/orders",
				"spiffeID: spiffe://example.org/ns/orders/sa/orders"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].from[0].spiffeID", 11},
		},
		{
			name: "a malformed SPIFFE ID is refused",
			yaml: broken(t, "serviceAccount: orders/orders",
				"spiffeID: spiffe://cluster.local/ns/orders/sa/orders/"),
			want: wantError{policy.ErrInvalid, "spec.rules[0].from[0].spiffeID", 11},
		},
		{
			name: "two kinds of caller in one from entry are a conflict",
			yaml: broken(t, "    - serviceAccount: orders/orders",
				"    - serviceAccount: orders/orders\n      namespace: orders"),
			want: wantError{policy.ErrConflict, "spec.rules[0].from[0]", 11},
		},
		{
			name: "a from entry naming no caller is refused",
			yaml: broken(t, "    - serviceAccount: orders/orders",
				"    - serviceAccount: orders/orders\n    - {}"),
			want: wantError{policy.ErrRequired, "spec.rules[0].from[1]", 12},
		},
		{
			name: "the same caller twice in one rule is a conflict, however written",
			yaml: broken(t, "    - serviceAccount: orders/orders",
				"    - serviceAccount: orders/orders\n"+
					"    - spiffeID: spiffe://cluster.local/ns/orders/sa/orders"),
			want: wantError{policy.ErrConflict, "spec.rules[0].from[1]", 12},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := policy.Parse([]byte(tt.yaml), "policy.yaml")
			require.NoError(t, err)
			require.Len(t, ps, 1)
			requireOneError(t, policy.Validate(ps[0], td), tt.want)
		})
	}
}

// The rules a policy may hold, beyond the example.
func TestValidateAccepts(t *testing.T) {
	tests := []struct {
		name string
		old  string
		new  string
	}{
		{"a rule with neither from nor to matches every request",
			"  - from:\n    - serviceAccount: orders/orders\n    to:\n" +
				"    - methods: [POST]\n      paths: [/charge]\n", "  - {}\n"},
		{"a rule with only from matches every operation",
			"    to:\n    - methods: [POST]\n      paths: [/charge]\n", ""},
		{"no selector selects the whole namespace",
			"  selector: {serviceAccount: payments}\n", ""},
		{"a namespace caller", "serviceAccount: orders/orders", "namespace: orders"},
		{"a SPIFFE ID of the trust domain",
			"serviceAccount: orders/orders", "spiffeID: spiffe://cluster.local/batch/nightly"},
		{"a prefix path and an escape of a reserved character",
			"paths: [/charge]", "paths: [/v1/*, /a%3Ab, /*, /files/~me]"},
		{"overlapping but different callers are no conflict",
			"    - serviceAccount: orders/orders",
			"    - serviceAccount: orders/orders\n    - namespace: orders"},
		{"a DENY policy", "action: ALLOW", "action: DENY"},
		{"a service account name with dots", "orders/orders", "orders/orders.v2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := policy.Parse([]byte(broken(t, tt.old, tt.new)), "policy.yaml")
			require.NoError(t, err)
			require.NoError(t, policy.Validate(ps[0], td))
		})
	}
}

// Validate reports every problem of a policy at once, in order.
func TestValidateReportsEveryProblem(t *testing.T) {
	p := policy.Policy{
		APIVersion: policy.APIVersion,
		Kind:       policy.Kind,
		Metadata:   policy.Metadata{Name: "a", Namespace: "ns"},
		Spec: policy.Spec{Action: "MAYBE", Rules: []policy.Rule{{
			From: []policy.Source{{Namespace: "NS"}},
			To:   []policy.Operation{{Methods: []string{"get"}}},
		}}},
	}
	fes := policy.FieldErrors(policy.Validate(p, td))
	var paths []string
	for _, fe := range fes {
		paths = append(paths, fe.Path)
		require.Zero(t, fe.Line, "a policy not read from a file has no lines")
		require.Equal(t, "ns/a", fe.Policy)
	}
	require.Equal(t, []string{"spec.action", "spec.rules[0].from[0].namespace",
		"spec.rules[0].to[0].methods[0]"}, paths)
}

func TestValidateNeedsTrustDomain(t *testing.T) {
	require.Error(t, policy.Validate(policy.Policy{}, spiffeid.TrustDomain{}))
	require.Error(t, policy.ValidateSet(nil, spiffeid.TrustDomain{}))
}

func TestValidateSet(t *testing.T) {
	data := basePolicy + "---\n" + broken(t, "action: ALLOW", "action: DENY")
	ps, err := policy.Parse([]byte(data), "policy.yaml")
	require.NoError(t, err)

	fes := policy.FieldErrors(policy.ValidateSet(ps, td))
	require.Len(t, fes, 1)
	require.ErrorIs(t, fes[0], policy.ErrConflict)
	require.Equal(t, "metadata.name", fes[0].Path)
	require.Equal(t, 2, fes[0].Doc, "the second definition is the one refused")
	require.Equal(t, 15+4, fes[0].Line, "the name line of the second document")
	require.Contains(t, fes[0].Message, "policy.yaml:4 (document 1)",
		"the message points at the first definition")

	other := broken(t, "name: payments-charge", "name: payments-refund")
	ps, err = policy.Parse([]byte(basePolicy+"---\n"+other), "policy.yaml")
	require.NoError(t, err)
	require.NoError(t, policy.ValidateSet(ps, td))
}

func TestParsePath(t *testing.T) {
	tests := []struct {
		name string
		path string
		want policy.PathPattern // zero: refused
	}{
		{"an exact path", "/charge", policy.PathPattern{Path: "/charge"}},
		{"a gRPC method", "/pay.v1.Payments/Charge",
			policy.PathPattern{Path: "/pay.v1.Payments/Charge"}},
		{"a trailing slash is exact too", "/v1/", policy.PathPattern{Path: "/v1/"}},
		{"a trailing /* is a prefix ending in a slash", "/v1/*",
			policy.PathPattern{Path: "/v1/", Prefix: true}},
		{"/* is every path", "/*", policy.PathPattern{Path: "/", Prefix: true}},
		{"dots inside a segment are plain", "/a/..b/.c", policy.PathPattern{Path: "/a/..b/.c"}},
		{"an escaped space", "/a%20b", policy.PathPattern{Path: "/a%20b"}},
		{"a star not after a slash", "/v1*", policy.PathPattern{}},
		{"two stars", "/v1/**", policy.PathPattern{}},
		{"a dot segment", "/a/./b", policy.PathPattern{}},
		{"a trailing dot-dot", "/a/..", policy.PathPattern{}},
		{"a dot segment before the star", "/a/../*", policy.PathPattern{}},
		{"an escaped backslash", "/a%5cb", policy.PathPattern{}},
		{"an escaped lower-case slash", "/a%2fb", policy.PathPattern{}},
		{"an escaped dot", "/a/%2E%2E/b", policy.PathPattern{}},
		{"a lower-case escape", "/a%3ab", policy.PathPattern{}},
		{"a broken escape", "/a%2", policy.PathPattern{}},
		{"a fragment", "/a#b", policy.PathPattern{}},
		{"a backslash", "/a\\b", policy.PathPattern{}},
		{"a non-ASCII letter", "/café", policy.PathPattern{}},
		{"repeated slashes at the end", "/a//", policy.PathPattern{}},
		{"empty", "", policy.PathPattern{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := policy.ParsePath(tt.path)
			if tt.want == (policy.PathPattern{}) {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestSourcePrincipal(t *testing.T) {
	tests := []struct {
		name    string
		source  policy.Source
		want    policy.Principal
		matches []string
		refuses []string
	}{
		{
			name:    "a service account is its exact SPIFFE ID",
			source:  policy.Source{ServiceAccount: "orders/orders"},
			want:    policy.Principal{Match: "spiffe://cluster.local/ns/orders/sa/orders"},
			matches: []string{"spiffe://cluster.local/ns/orders/sa/orders"},
			refuses: []string{"spiffe://cluster.local/ns/orders/sa/orders-x",
				"spiffe://cluster.local/ns/orders/sa/orders/x"},
		},
		{
			name:   "a namespace is a prefix ending in a slash",
			source: policy.Source{Namespace: "orders"},
			want: policy.Principal{Match: "spiffe://cluster.local/ns/orders/sa/",
				Prefix: true},
			matches: []string{"spiffe://cluster.local/ns/orders/sa/a",
				"spiffe://cluster.local/ns/orders/sa/orders"},
			refuses: []string{"spiffe://cluster.local/ns/orders-x/sa/a",
				"spiffe://cluster.local/ns/orders", "spiffe://other.org/ns/orders/sa/a"},
		},
		{
			name:    "a SPIFFE ID is matched exactly",
			source:  policy.Source{SPIFFEID: "spiffe://cluster.local/batch"},
			want:    policy.Principal{Match: "spiffe://cluster.local/batch"},
			matches: []string{"spiffe://cluster.local/batch"},
			refuses: []string{"spiffe://cluster.local/batch/x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.source.Principal(td)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			for _, id := range tt.matches {
				require.True(t, got.Matches(id), id)
			}
			for _, id := range tt.refuses {
				require.False(t, got.Matches(id), id)
			}
		})
	}

	_, err := policy.Source{Namespace: "a", ServiceAccount: "a/b"}.Principal(td)
	require.Error(t, err, "two kinds of caller resolve to nothing")
}

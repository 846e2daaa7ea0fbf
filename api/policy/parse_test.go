package policy_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/api/policy"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// basePolicy is the example. The table tests break one line of it at a time,
// so the line numbers below are those of this text.
const basePolicy = `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: payments-charge
  namespace: payments
spec:
  selector: {serviceAccount: payments}
  action: ALLOW
  rules:
  - from:
    - serviceAccount: orders/orders
    to:
    - methods: [POST]
      paths: [/charge]
`

// broken returns basePolicy with old replaced by new, failing if old is not there.
func broken(t *testing.T, old, new string) string {
	t.Helper()
	require.Contains(t, basePolicy, old, "the test's replacement does not apply")
	return strings.Replace(basePolicy, old, new, 1)
}

// wantError is the one problem a table row expects.
type wantError struct {
	kind error
	path string
	line int
}

// requireOneError asserts that err holds exactly one FieldError, the one wanted, and
// that it names the source file and document.
func requireOneError(t *testing.T, err error, want wantError) *policy.FieldError {
	t.Helper()
	fes := policy.FieldErrors(err)
	require.Len(t, fes, 1, "want exactly one problem, got: %v", err)
	fe := fes[0]
	require.ErrorIs(t, fe, want.kind, "wrong kind of problem: %v", fe)
	require.Equal(t, want.path, fe.Path, "wrong field: %v", fe)
	require.Equal(t, want.line, fe.Line, "wrong line: %v", fe)
	require.Equal(t, "policy.yaml", fe.Source)
	require.Equal(t, 1, fe.Doc)
	return fe
}

func TestParseExample(t *testing.T) {
	ps, err := policy.Parse([]byte(basePolicy), "policy.yaml")
	require.NoError(t, err)
	require.Len(t, ps, 1)

	want := policy.Policy{
		APIVersion: policy.APIVersion,
		Kind:       policy.Kind,
		Metadata:   policy.Metadata{Name: "payments-charge", Namespace: "payments"},
		Spec: policy.Spec{
			Selector: &policy.Selector{ServiceAccount: "payments"},
			Action:   policy.ActionAllow,
			Rules: []policy.Rule{{
				From: []policy.Source{{ServiceAccount: "orders/orders"}},
				To:   []policy.Operation{{Methods: []string{"POST"}, Paths: []string{"/charge"}}},
			}},
		},
	}
	require.True(t, want.Equal(ps[0]), "got %+v", ps[0])
	require.Equal(t, "policy.yaml", ps[0].Origin.Source)
	require.Equal(t, 1, ps[0].Origin.Doc)
	require.Equal(t, 13, ps[0].Origin.Line("spec.rules[0].to[0].methods[0]"))
	require.Equal(t, 4, ps[0].Origin.Line("metadata.name"))
	require.Equal(t, 7, ps[0].Origin.Line("spec.selector.serviceAccount"),
		"a field of a flow mapping is on its own line")
	require.NoError(t, policy.Validate(ps[0], td))
}

// The JSON form of a policy is the document's: it round-trips through encoding/json
// and Parse reads it back, tab-indented as JSON tools write it (JSON is YAML).
func TestParseJSONRoundTrip(t *testing.T) {
	ps, err := policy.Parse([]byte(basePolicy), "policy.yaml")
	require.NoError(t, err)
	js, err := json.MarshalIndent(ps[0], "", "\t")
	require.NoError(t, err)
	require.NotContains(t, string(js), "Origin")

	again, err := policy.Parse(js, "policy.json")
	require.NoError(t, err)
	require.Len(t, again, 1)
	require.True(t, ps[0].Equal(again[0]))
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want wantError
	}{
		{
			name: "an unknown field is refused where it stands",
			yaml: broken(t, "      paths: [/charge]", "      paths: [/charge]\n      hosts: [x]"),
			want: wantError{policy.ErrUnknownField, "spec.rules[0].to[0].hosts", 15},
		},
		{
			name: "a field name in the wrong case is an unknown field",
			yaml: broken(t, "    - serviceAccount: orders", "    - serviceaccount: orders"),
			want: wantError{policy.ErrUnknownField, "spec.rules[0].from[0].serviceaccount", 11},
		},
		{
			name: "a wrong apiVersion is refused on its line",
			yaml: broken(t, "apiVersion: meshca.io/v1alpha1", "apiVersion: meshca.io/v1"),
			want: wantError{policy.ErrInvalid, "apiVersion", 1},
		},
		{
			name: "a wrong kind is refused on its line",
			yaml: broken(t, "kind: AuthorizationPolicy", "kind: NetworkPolicy"),
			want: wantError{policy.ErrInvalid, "kind", 2},
		},
		{
			name: "a missing kind is refused at the top of the document",
			yaml: broken(t, "kind: AuthorizationPolicy\n", ""),
			want: wantError{policy.ErrRequired, "kind", 1},
		},
		{
			name: "a key given twice is a conflict on the second",
			yaml: broken(t, "  action: ALLOW", "  action: ALLOW\n  action: DENY"),
			want: wantError{policy.ErrConflict, "spec.action", 9},
		},
		{
			name: "a string where a list belongs is a type error",
			yaml: broken(t, "methods: [POST]", "methods: POST"),
			want: wantError{policy.ErrType, "spec.rules[0].to[0].methods", 13},
		},
		{
			name: "a number where a string belongs is a type error",
			yaml: broken(t, "name: payments-charge", "name: 42"),
			want: wantError{policy.ErrType, "metadata.name", 4},
		},
		{
			name: "a list where a mapping belongs is a type error",
			yaml: broken(t, "  selector: {serviceAccount: payments}", "  selector: [payments]"),
			want: wantError{policy.ErrType, "spec.selector", 7},
		},
		{
			name: "an alias is refused",
			yaml: broken(t, "      paths: [/charge]", "      paths: [&p /charge, *p]"),
			want: wantError{policy.ErrSyntax, "spec.rules[0].to[0].paths[1]", 14},
		},
		{
			name: "a document that is not a mapping is refused",
			yaml: "- apiVersion: meshca.io/v1alpha1\n",
			want: wantError{policy.ErrSyntax, "", 1},
		},
		{
			name: "broken YAML is refused with the line the parser names",
			yaml: broken(t, "  namespace: payments", "  namespace: pay: ments"),
			want: wantError{policy.ErrSyntax, "", 5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := policy.Parse([]byte(tt.yaml), "policy.yaml")
			requireOneError(t, err, tt.want)
			// Whatever Parse hands back for Validate adds nothing to the same problem.
			for _, p := range ps {
				require.NoError(t, policy.Validate(p, td))
			}
		})
	}
}

func TestParseMultipleDocuments(t *testing.T) {
	data := "# policies of payments\n--- # first\n" + basePolicy + "---\n---\n" +
		broken(t, "  name: payments-charge", "  name: payments-refund") +
		"...\n" + broken(t, "methods: [POST]", "methods: [post]")

	ps, err := policy.Parse([]byte(data), "policy.yaml")
	require.NoError(t, err, "Parse does not check values")
	require.Len(t, ps, 3, "empty documents are skipped")
	for i, p := range ps {
		require.Equal(t, i+1, p.Origin.Doc)
	}

	// The third document starts after 2 + 14 + 2 + 14 + 1 lines.
	fe := requireOneErrorIn(t, policy.Validate(ps[2], td))
	require.Equal(t, 3, fe.Doc)
	require.Equal(t, 33+13, fe.Line)
	require.Equal(t, "spec.rules[0].to[0].methods[0]", fe.Path)
}

// A syntax error in one document does not hide the problems of the next, and lines
// stay those of the file in every document.
func TestParseContinuesAfterSyntaxError(t *testing.T) {
	syntax := broken(t, "  namespace: payments", "  namespace: pay: ments")
	data := syntax + "---\n" + broken(t, "kind: AuthorizationPolicy", "kind: Nope") +
		"---\n" + syntax

	_, err := policy.Parse([]byte(data), "policy.yaml")
	fes := policy.FieldErrors(err)
	require.Len(t, fes, 3, "got: %v", err)
	for i, want := range []wantError{
		{policy.ErrSyntax, "", 5},
		{policy.ErrInvalid, "kind", 15 + 2},
		{policy.ErrSyntax, "", 30 + 5},
	} {
		require.ErrorIs(t, fes[i], want.kind)
		require.Equal(t, want.path, fes[i].Path)
		require.Equal(t, want.line, fes[i].Line, "%v", fes[i])
		require.Equal(t, i+1, fes[i].Doc)
	}
}

func requireOneErrorIn(t *testing.T, err error) *policy.FieldError {
	t.Helper()
	fes := policy.FieldErrors(err)
	require.Len(t, fes, 1, "want exactly one problem, got: %v", err)
	return fes[0]
}

func TestFieldErrorString(t *testing.T) {
	tests := []struct {
		name string
		err  *policy.FieldError
		want string
	}{
		{
			name: "a problem in a file names the file, line, document and field",
			err: &policy.FieldError{Source: "p.yaml", Doc: 2, Line: 7, Policy: "ns/a",
				Path: "spec.action", Kind: policy.ErrInvalid, Message: "must be ALLOW"},
			want: "p.yaml:7: document 2: spec.action: must be ALLOW",
		},
		{
			name: "a problem of a policy not read from a file names the policy",
			err: &policy.FieldError{Policy: "ns/a", Path: "spec.action",
				Kind: policy.ErrInvalid, Message: "must be ALLOW"},
			want: "policy ns/a: spec.action: must be ALLOW",
		},
		{
			name: "a problem of a whole document has no field",
			err: &policy.FieldError{Source: "p.yaml", Doc: 1, Line: 3, Kind: policy.ErrSyntax,
				Message: "not valid YAML"},
			want: "p.yaml:3: document 1: not valid YAML",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tt.err.Error())
		})
	}
}

func TestFieldErrorsUnjoins(t *testing.T) {
	a := &policy.FieldError{Kind: policy.ErrInvalid, Message: "a"}
	b := &policy.FieldError{Kind: policy.ErrRequired, Message: "b"}
	err := errors.Join(a, errors.Join(errors.New("other"), b))
	require.Equal(t, []*policy.FieldError{a, b}, policy.FieldErrors(err))
	require.Nil(t, policy.FieldErrors(nil))
}

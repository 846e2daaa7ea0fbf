package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The document header every policy carries.
const (
	// APIVersion is the only apiVersion of an AuthorizationPolicy.
	APIVersion = "meshca.io/v1alpha1"
	// Kind is the kind of an AuthorizationPolicy.
	Kind = "AuthorizationPolicy"
)

// Action says what a policy does with the requests its rules match.
type Action string

// The actions of a policy.
const (
	// ActionAllow lets matching requests through. Once any ALLOW policy selects a
	// workload, requests that match no ALLOW policy of that workload are denied.
	ActionAllow Action = "ALLOW"
	// ActionDeny refuses matching requests. DENY policies are checked before ALLOW
	// policies and win over them.
	ActionDeny Action = "DENY"
)

// Policy is one AuthorizationPolicy document.
//
// Policies are plain values: encoding/json (and sigs.k8s.io/yaml) marshal them in the
// document's own form. Origin is not part of the document: compare policies with
// [Policy.Equal], not reflect.DeepEqual, when one of them may come from a file.
type Policy struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`

	// Origin says where the policy was read from, for error messages; nil when the
	// policy was not parsed from YAML by [Parse].
	Origin *Origin `json:"-"`
}

// Metadata names a policy. A policy is identified by namespace and name.
type Metadata struct {
	// Name is a DNS label (RFC 1123), unique within the namespace.
	Name string `json:"name"`
	// Namespace is the Kubernetes namespace of the workloads the policy protects.
	Namespace string `json:"namespace"`
}

// Spec is what a policy protects and how.
type Spec struct {
	// Selector picks the workloads of the namespace the policy applies to. Nil, or an
	// empty service account, selects every workload of the namespace.
	Selector *Selector `json:"selector,omitempty"`
	// Action is ALLOW or DENY.
	Action Action `json:"action"`
	// Rules match requests; a request matching any rule matches the policy. At least
	// one rule is required: a rule with neither from nor to matches every request.
	Rules []Rule `json:"rules"`
}

// Selector picks workloads by service account.
type Selector struct {
	// ServiceAccount is the name of the workloads' service account, in the policy's
	// namespace.
	ServiceAccount string `json:"serviceAccount,omitempty"`
}

// Rule matches a request when its caller matches one of From (any caller when From is
// empty) and its operation matches one of To (any operation when To is empty).
type Rule struct {
	From []Source    `json:"from,omitempty"`
	To   []Operation `json:"to,omitempty"`
}

// Source matches callers by the SPIFFE ID of their verified certificate. Exactly one
// field is set.
type Source struct {
	// ServiceAccount is "<namespace>/<name>": the workload identity
	// spiffe://<trust-domain>/ns/<namespace>/sa/<name>.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Namespace matches every service account of exactly this namespace.
	Namespace string `json:"namespace,omitempty"`
	// SPIFFEID is one SPIFFE ID of the server's trust domain, matched exactly.
	SPIFFEID string `json:"spiffeID,omitempty"`
}

// Operation matches a request by method and path. An empty Methods matches every
// method and an empty Paths every path, but not both: an operation sets at least one.
type Operation struct {
	// Methods are upper-case HTTP methods; a request matches if it uses any of them.
	Methods []string `json:"methods,omitempty"`
	// Paths are absolute paths, matched exactly, or as a prefix when they end in "/*"
	// ("/v1/*" matches every path under "/v1/"). A request matches if its normalized
	// path, without the query string, matches any of them.
	Paths []string `json:"paths,omitempty"`
}

// Key returns "<namespace>/<name>", which identifies the policy.
func (p Policy) Key() string {
	return p.Metadata.Namespace + "/" + p.Metadata.Name
}

// Equal reports whether p and q are the same document, ignoring Origin. Nil and empty
// lists are equal.
func (p Policy) Equal(q Policy) bool {
	if p.APIVersion != q.APIVersion || p.Kind != q.Kind || p.Metadata != q.Metadata ||
		p.Spec.Action != q.Spec.Action || p.Spec.SelectedServiceAccount() !=
		q.Spec.SelectedServiceAccount() || len(p.Spec.Rules) != len(q.Spec.Rules) {
		return false
	}
	for i, r := range p.Spec.Rules {
		if !r.equal(q.Spec.Rules[i]) {
			return false
		}
	}
	return true
}

func (r Rule) equal(o Rule) bool {
	if len(r.From) != len(o.From) || len(r.To) != len(o.To) {
		return false
	}
	for i, s := range r.From {
		if s != o.From[i] {
			return false
		}
	}
	for i, op := range r.To {
		if !slices.Equal(op.Methods, o.To[i].Methods) || !slices.Equal(op.Paths, o.To[i].Paths) {
			return false
		}
	}
	return true
}

// SelectedServiceAccount returns the service account the policy is limited to, or ""
// when it applies to the whole namespace.
func (s Spec) SelectedServiceAccount() string {
	if s.Selector == nil {
		return ""
	}
	return s.Selector.ServiceAccount
}

// Selects reports whether the policy applies to the workload running as service
// account sa in namespace ns.
func (p Policy) Selects(ns, sa string) bool {
	sel := p.Spec.SelectedServiceAccount()
	return p.Metadata.Namespace == ns && (sel == "" || sel == sa)
}

// Principal is what a [Source] matches in the caller's SPIFFE ID: the whole ID, or,
// when Prefix is set, its beginning.
type Principal struct {
	// Match is the SPIFFE ID, or the prefix "spiffe://<td>/ns/<namespace>/sa/" of a
	// namespace: it ends in a slash, so it never matches another namespace whose name
	// merely starts with the same letters.
	Match  string
	Prefix bool
}

// Matches reports whether the SPIFFE ID id matches the principal.
func (p Principal) Matches(id string) bool {
	if p.Prefix {
		return strings.HasPrefix(id, p.Match)
	}
	return id == p.Match
}

// errSourceKinds is returned by [Source.Principal] for a source that does not set
// exactly one of its fields.
var errSourceKinds = errors.New("exactly one of serviceAccount, namespace and spiffeID must be set")

// Principal resolves the source in trust domain td. Its errors are those [Validate]
// reports for the source's field.
func (s Source) Principal(td spiffeid.TrustDomain) (Principal, error) {
	switch {
	case s.kinds() != 1:
		return Principal{}, errSourceKinds
	case s.ServiceAccount != "":
		ns, name, err := splitServiceAccount(s.ServiceAccount)
		if err != nil {
			return Principal{}, err
		}
		id, err := spiffeid.FromSegments(td, "ns", ns, "sa", name)
		if err != nil {
			return Principal{}, fmt.Errorf("no SPIFFE ID for service account %q: %w",
				s.ServiceAccount, err)
		}
		return Principal{Match: id.String()}, nil
	case s.Namespace != "":
		if err := checkLabel(s.Namespace); err != nil {
			return Principal{}, err
		}
		id, err := spiffeid.FromSegments(td, "ns", s.Namespace, "sa")
		if err != nil {
			return Principal{}, fmt.Errorf("no SPIFFE ID for namespace %q: %w", s.Namespace, err)
		}
		return Principal{Match: id.String() + "/", Prefix: true}, nil
	default:
		id, err := spiffeid.FromString(s.SPIFFEID)
		if err != nil {
			return Principal{}, fmt.Errorf("%q is not a SPIFFE ID: %w", s.SPIFFEID, err)
		}
		if !id.MemberOf(td) {
			return Principal{}, fmt.Errorf("%q is in trust domain %q, not %q", s.SPIFFEID,
				id.TrustDomain().Name(), td.Name())
		}
		return Principal{Match: id.String()}, nil
	}
}

// kinds counts the fields the source sets.
func (s Source) kinds() int {
	n := 0
	for _, v := range []string{s.ServiceAccount, s.Namespace, s.SPIFFEID} {
		if v != "" {
			n++
		}
	}
	return n
}

// splitServiceAccount splits and checks "<namespace>/<name>".
func splitServiceAccount(s string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", fmt.Errorf("%q is not <namespace>/<name>: it has no slash", s)
	}
	if err := checkLabel(ns); err != nil {
		return "", "", fmt.Errorf("namespace of %q: %w", s, err)
	}
	if err := checkSubdomain(name); err != nil {
		return "", "", fmt.Errorf("service account of %q: %w", s, err)
	}
	return ns, name, nil
}

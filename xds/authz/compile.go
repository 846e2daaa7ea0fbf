package authz

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/api/policy"
)

// The names of the two RBAC filters. Envoy allows one action per RBAC filter, so DENY
// and ALLOW policies need one filter each, and grpc-go refuses two HTTP filters of the
// same name in one chain: the names differ by a suffix. Envoy and grpc-go pick a
// filter's implementation by the type of its typed_config, never by its name.
const (
	// DenyFilterName names the filter of DENY policies, which runs first.
	DenyFilterName = "envoy.filters.http.rbac.deny"
	// AllowFilterName names the filter of ALLOW policies, which runs second.
	AllowFilterName = "envoy.filters.http.rbac.allow"
)

// The stat prefixes of the two filters, so that Envoy's counters say which filter
// allowed or denied a request (rbac.deny.denied, rbac.allow.denied, ...).
const (
	denyStatPrefix  = "deny."
	allowStatPrefix = "allow."
)

// The errors of [Compile], besides the joined [*policy.FieldError]s of an invalid
// policy.
var (
	// ErrNoTrustDomain marks Options without a trust domain.
	ErrNoTrustDomain = errors.New("no trust domain")
	// ErrInvalidWorkload marks a workload without a namespace or service account.
	ErrInvalidWorkload = errors.New("invalid workload")
)

// Workload is the identity of the workload a listener is built for: the service
// account of its pod.
type Workload struct {
	Namespace      string
	ServiceAccount string
}

// Options are the server-wide settings of the compiler.
type Options struct {
	// TrustDomain is the server's trust domain: service account and namespace rules
	// become SPIFFE IDs in it. Required.
	TrustDomain spiffeid.TrustDomain
	// DefaultDeny denies every request to a workload that no ALLOW policy selects
	// (DENY policies alone do not change that). Without it such a workload allows
	// every request that no DENY policy matches.
	DefaultDeny bool
}

// CompiledRBAC is the authorization of one workload, ready for its listener.
type CompiledRBAC struct {
	// Policies are the keys ("<namespace>/<name>") of the policies that select the
	// workload, sorted.
	Policies []string
	// Deny is the configuration of the DENY filter, nil when no DENY policy selects
	// the workload.
	Deny *rbacfilterv3.RBAC
	// Allow is the configuration of the ALLOW filter, nil when the workload allows
	// every request that passes Deny. With no policy in it, it denies every request.
	Allow *rbacfilterv3.RBAC
	// Filters are the HTTP filters to put, in this order, right before the router:
	// the DENY filter then the ALLOW filter, each only when its configuration is
	// set. Empty means every request is allowed.
	Filters []*hcmv3.HttpFilter
}

// Compile turns the policies that select a workload into Envoy RBAC filters.
//
// A policy selects the workload when its namespace is the workload's and its selector
// is empty or names the workload's service account; the others are ignored. The
// selected policies are validated as a set ([policy.ValidateSet]) and any problem
// fails the compilation, returned as the joined [*policy.FieldError]s: an invalid
// policy is never compiled into something broader or narrower than it says.
//
// Each rule i of policy ns/name becomes the RBAC policy "ns/name/rule-i" of the
// filter of its action: principals are authenticated.principal_name matchers (exact
// SPIFFE IDs, or the "spiffe://td/ns/<ns>/sa/" prefix of a namespace; ORed),
// permissions are ":method" exact header matchers ORed, and url_path matchers
// (exact, or the prefix of "/x/*") ORed, the two ANDed within one to entry, to
// entries ORed; an empty from or to matches anything. Only matchers that both Envoy
// and grpc-go's xDS RBAC implement are used. The output is deterministic: equal
// inputs, in any order, give byte-identical filters.
//
// Paths are matched as the connection manager hands them over: put [HCMNormalization]
// into the listener's HttpConnectionManager, or dot segments, repeated and encoded
// slashes can bypass path rules.
func Compile(policies []policy.Policy, workload Workload, opts Options) (*CompiledRBAC, error) {
	if opts.TrustDomain.IsZero() {
		return nil, ErrNoTrustDomain
	}
	if workload.Namespace == "" || workload.ServiceAccount == "" {
		return nil, fmt.Errorf("%w: namespace %q, service account %q", ErrInvalidWorkload,
			workload.Namespace, workload.ServiceAccount)
	}

	var selected []policy.Policy
	for _, p := range policies {
		if p.Selects(workload.Namespace, workload.ServiceAccount) {
			selected = append(selected, p)
		}
	}
	slices.SortFunc(selected, func(a, b policy.Policy) int {
		return cmp.Or(cmp.Compare(a.Metadata.Namespace, b.Metadata.Namespace),
			cmp.Compare(a.Metadata.Name, b.Metadata.Name))
	})
	if err := policy.ValidateSet(selected, opts.TrustDomain); err != nil {
		return nil, fmt.Errorf("failed to compile the policies of %s/%s: %w",
			workload.Namespace, workload.ServiceAccount, err)
	}

	out := &CompiledRBAC{Policies: make([]string, 0, len(selected))}
	deny := map[string]*rbacv3.Policy{}
	allow := map[string]*rbacv3.Policy{}
	for _, p := range selected {
		out.Policies = append(out.Policies, p.Key())
		into := allow
		if p.Spec.Action == policy.ActionDeny {
			into = deny
		}
		for i, r := range p.Spec.Rules {
			// Validated above, so rules resolve.
			rp, err := compileRule(r, opts.TrustDomain)
			if err != nil {
				return nil, fmt.Errorf("failed to compile %s rule %d: %w", p.Key(), i, err)
			}
			into[p.Key()+"/rule-"+strconv.Itoa(i)] = rp
		}
	}

	if len(deny) > 0 {
		out.Deny = rbacConfig(rbacv3.RBAC_DENY, deny, denyStatPrefix)
	}
	if len(allow) > 0 || opts.DefaultDeny {
		out.Allow = rbacConfig(rbacv3.RBAC_ALLOW, allow, allowStatPrefix)
	}
	for _, f := range []struct {
		name string
		cfg  *rbacfilterv3.RBAC
	}{{DenyFilterName, out.Deny}, {AllowFilterName, out.Allow}} {
		if f.cfg == nil {
			continue
		}
		hf, err := httpFilter(f.name, f.cfg)
		if err != nil {
			return nil, err
		}
		out.Filters = append(out.Filters, hf)
	}
	return out, nil
}

func rbacConfig(action rbacv3.RBAC_Action, policies map[string]*rbacv3.Policy,
	statPrefix string) *rbacfilterv3.RBAC {
	return &rbacfilterv3.RBAC{
		Rules:           &rbacv3.RBAC{Action: action, Policies: policies},
		RulesStatPrefix: statPrefix,
	}
}

// httpFilter wraps an RBAC configuration into an HTTP filter. The typed config is
// marshalled deterministically (map entries sorted), so that equal configurations
// give equal bytes and xDS versions derived from them do not change needlessly.
func httpFilter(name string, cfg *rbacfilterv3.RBAC) (*hcmv3.HttpFilter, error) {
	typed := &anypb.Any{}
	if err := anypb.MarshalFrom(typed, cfg, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, fmt.Errorf("failed to marshal the RBAC filter config: %w", err)
	}
	return &hcmv3.HttpFilter{
		Name:       name,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed},
	}, nil
}

// compileRule builds the RBAC policy of one rule: it matches when one principal and
// one permission match.
func compileRule(r policy.Rule, td spiffeid.TrustDomain) (*rbacv3.Policy, error) {
	rp := &rbacv3.Policy{}
	for _, s := range r.From {
		pr, err := s.Principal(td)
		if err != nil {
			return nil, err
		}
		rp.Principals = append(rp.Principals, &rbacv3.Principal{
			Identifier: &rbacv3.Principal_Authenticated_{
				Authenticated: &rbacv3.Principal_Authenticated{
					PrincipalName: stringMatcher(pr.Match, pr.Prefix),
				},
			},
		})
	}
	if len(rp.Principals) == 0 {
		rp.Principals = []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}
	}

	for _, op := range r.To {
		perm, err := compileOperation(op)
		if err != nil {
			return nil, err
		}
		rp.Permissions = append(rp.Permissions, perm)
	}
	if len(rp.Permissions) == 0 {
		rp.Permissions = []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}
	}
	return rp, nil
}

// compileOperation builds the permission of one to entry: any of its methods and any
// of its paths.
func compileOperation(op policy.Operation) (*rbacv3.Permission, error) {
	var methods, paths []*rbacv3.Permission
	for _, m := range op.Methods {
		methods = append(methods, &rbacv3.Permission{Rule: &rbacv3.Permission_Header{
			Header: &routev3.HeaderMatcher{
				Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
					StringMatch: stringMatcher(m, false),
				},
			},
		}})
	}
	for _, s := range op.Paths {
		pat, err := policy.ParsePath(s)
		if err != nil {
			return nil, err
		}
		paths = append(paths, &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{
			UrlPath: &matcherv3.PathMatcher{
				Rule: &matcherv3.PathMatcher_Path{Path: stringMatcher(pat.Path, pat.Prefix)},
			},
		}})
	}

	var parts []*rbacv3.Permission
	for _, alternatives := range [][]*rbacv3.Permission{methods, paths} {
		switch len(alternatives) {
		case 0:
		case 1:
			parts = append(parts, alternatives[0])
		default:
			parts = append(parts, &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{
				OrRules: &rbacv3.Permission_Set{Rules: alternatives},
			}})
		}
	}
	if len(parts) == 1 {
		return parts[0], nil
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{
		AndRules: &rbacv3.Permission_Set{Rules: parts},
	}}, nil
}

// stringMatcher matches s exactly, or as a prefix; always case-sensitively.
func stringMatcher(s string, prefix bool) *matcherv3.StringMatcher {
	if prefix {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

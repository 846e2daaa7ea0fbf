package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// errNoTrustDomain is returned by the validators when given the zero trust domain.
var errNoTrustDomain = errors.New("policy: no trust domain to validate against")

// Validate checks the values of one policy, in the server's trust domain td, and
// returns nil or every problem found, each a [*FieldError], joined with errors.Join.
//
// It checks the document header, names (DNS labels; service accounts may be DNS
// subdomains), the action, that every rule's from entries set exactly one kind of
// caller and resolve to SPIFFE IDs of td, that methods are upper case and known, that
// paths pass [ParsePath], and it refuses conflicts inside the policy: two kinds of
// caller in one from entry, and a caller, method or path listed twice in one place.
// A policy needs at least one rule; a rule with neither from nor to matches every
// request. docs/policy.md lists every rule.
//
// A problem [Parse] already reported for the policy is not reported again.
func Validate(p Policy, td spiffeid.TrustDomain) error {
	if td.IsZero() {
		return errNoTrustDomain
	}
	v := &validator{p: &p, td: td}
	v.header()
	v.metadata()
	v.spec()
	return errors.Join(v.errs...)
}

// ValidateSet validates every policy with [Validate] and refuses a set that holds the
// same policy (namespace and name) twice, as one apply or one validate run must not.
// Problems come back in the order of the policies.
func ValidateSet(policies []Policy, td spiffeid.TrustDomain) error {
	if td.IsZero() {
		return errNoTrustDomain
	}
	var errs []error
	first := make(map[string]int, len(policies))
	for i, p := range policies {
		errs = append(errs, Validate(p, td))
		if p.Metadata.Namespace == "" || p.Metadata.Name == "" {
			continue
		}
		j, dup := first[p.Key()]
		if !dup {
			first[p.Key()] = i
			continue
		}
		errs = append(errs, newError(&policies[i], "metadata.name", ErrConflict, nil,
			"policy %s is defined twice: first %s", p.Key(), describeOrigin(policies[j], j)))
	}
	return errors.Join(errs...)
}

// describeOrigin says where a policy of a set came from, for a conflict message.
func describeOrigin(p Policy, i int) string {
	o := p.Origin
	if o == nil {
		return "at position " + strconv.Itoa(i+1) + " of the set"
	}
	return fmt.Sprintf("in %s:%d (document %d)", o.Source, o.Line("metadata.name"), o.Doc)
}

// validator collects the problems of one policy.
type validator struct {
	p    *Policy
	td   spiffeid.TrustDomain
	errs []error
}

// fail records a problem at path, unless Parse already reported one there.
func (v *validator) fail(path string, kind, err error, format string, args ...any) {
	if v.p.Origin.alreadyReported(path) {
		return
	}
	v.errs = append(v.errs, newError(v.p, path, kind, err, format, args...))
}

// invalid records err, one of this package's own messages, as the problem at path.
func (v *validator) invalid(path string, err error) {
	v.fail(path, ErrInvalid, err, "%s", err.Error())
}

func (v *validator) header() {
	for _, f := range []struct{ path, got, want string }{
		{"apiVersion", v.p.APIVersion, APIVersion}, {"kind", v.p.Kind, Kind},
	} {
		switch f.got {
		case f.want:
		case "":
			v.fail(f.path, ErrRequired, nil, "is required (%q)", f.want)
		default:
			v.fail(f.path, ErrInvalid, nil, "must be %q, not %q", f.want, f.got)
		}
	}
}

func (v *validator) metadata() {
	for _, f := range []struct{ path, value string }{
		{"metadata.name", v.p.Metadata.Name}, {"metadata.namespace", v.p.Metadata.Namespace},
	} {
		if f.value == "" {
			v.fail(f.path, ErrRequired, nil, "is required")
			continue
		}
		if err := checkLabel(f.value); err != nil {
			v.invalid(f.path, err)
		}
	}
}

func (v *validator) spec() {
	if sa := v.p.Spec.SelectedServiceAccount(); sa != "" {
		if err := checkSubdomain(sa); err != nil {
			v.invalid("spec.selector.serviceAccount", err)
		}
	}

	switch a := v.p.Spec.Action; a {
	case ActionAllow, ActionDeny:
	case "":
		v.fail("spec.action", ErrRequired, nil, "is required (ALLOW or DENY)")
	default:
		hint := ""
		if strings.EqualFold(string(a), string(ActionAllow)) ||
			strings.EqualFold(string(a), string(ActionDeny)) {
			hint = " (upper case)"
		}
		v.fail("spec.action", ErrInvalid, nil, "must be ALLOW or DENY%s, not %q", hint, a)
	}

	if len(v.p.Spec.Rules) == 0 {
		v.fail("spec.rules", ErrRequired, nil, "at least one rule is required "+
			"(a rule {} with neither from nor to matches every request)")
	}
	for i, r := range v.p.Spec.Rules {
		path := "spec.rules[" + strconv.Itoa(i) + "]"
		v.from(path+".from", r.From)
		v.to(path+".to", r.To)
	}
}

// from checks the callers of one rule.
func (v *validator) from(path string, sources []Source) {
	seen := make(map[Principal]int, len(sources))
	for j, s := range sources {
		at := path + "[" + strconv.Itoa(j) + "]"
		switch s.kinds() {
		case 0:
			v.fail(at, ErrRequired, nil, "set one of serviceAccount, namespace and spiffeID")
			continue
		case 1:
		default:
			v.fail(at, ErrConflict, nil, "sets %s: set exactly one", s.kindNames())
			continue
		}
		pr, err := s.Principal(v.td)
		if err != nil {
			v.invalid(at+"."+s.kindNames(), err)
			continue
		}
		if k, dup := seen[pr]; dup {
			v.fail(at, ErrConflict, nil, "the same callers as %s[%d]", path, k)
			continue
		}
		seen[pr] = j
	}
}

// kindNames lists the fields a source sets, as "serviceAccount and namespace".
func (s Source) kindNames() string {
	var names []string
	for _, f := range []struct{ name, value string }{
		{"serviceAccount", s.ServiceAccount}, {"namespace", s.Namespace},
		{"spiffeID", s.SPIFFEID},
	} {
		if f.value != "" {
			names = append(names, f.name)
		}
	}
	return strings.Join(names, " and ")
}

// to checks the operations of one rule.
func (v *validator) to(path string, ops []Operation) {
	for k, op := range ops {
		at := path + "[" + strconv.Itoa(k) + "]"
		if len(op.Methods) == 0 && len(op.Paths) == 0 {
			v.fail(at, ErrRequired, nil, "set methods, paths or both "+
				"(leave out to altogether to match every request)")
			continue
		}

		methods := make(map[string]int, len(op.Methods))
		for m, method := range op.Methods {
			mp := at + ".methods[" + strconv.Itoa(m) + "]"
			if err := checkMethod(method); err != nil {
				v.invalid(mp, err)
				continue
			}
			if first, dup := methods[method]; dup {
				v.fail(mp, ErrConflict, nil, "method %s is listed twice (first at "+
					"methods[%d])", method, first)
				continue
			}
			methods[method] = m
		}

		paths := make(map[PathPattern]int, len(op.Paths))
		for m, s := range op.Paths {
			pp := at + ".paths[" + strconv.Itoa(m) + "]"
			pat, err := ParsePath(s)
			switch {
			case errors.Is(err, errPathEmpty):
				v.fail(pp, ErrRequired, nil, "%s", err.Error())
				continue
			case err != nil:
				v.invalid(pp, err)
				continue
			}
			if first, dup := paths[pat]; dup {
				v.fail(pp, ErrConflict, nil, "path %q is listed twice (first at paths[%d])",
					s, first)
				continue
			}
			paths[pat] = m
		}
	}
}

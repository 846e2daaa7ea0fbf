package policy

import (
	"errors"
	"fmt"
	"strings"
)

// methods are the HTTP methods a policy may name. gRPC calls are all POST.
var methods = [...]string{
	"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
}

// checkMethod accepts one of methods, and says so when the case is the only fault.
func checkMethod(m string) error {
	for _, known := range methods {
		if m == known {
			return nil
		}
		if strings.EqualFold(m, known) {
			return fmt.Errorf("method %q must be upper case: %q", m, known)
		}
	}
	return fmt.Errorf("%q is not an HTTP method (one of %s)", m, strings.Join(methods[:], " "))
}

// maxLabel and maxSubdomain are the lengths RFC 1123 (and Kubernetes) allow.
const (
	maxLabel     = 63
	maxSubdomain = 253
)

// checkLabel accepts a DNS label as Kubernetes names namespaces: lower-case letters,
// digits and '-', starting and ending with a letter or digit, at most 63 characters.
func checkLabel(s string) error {
	if !isLabel(s) {
		return fmt.Errorf("%q is not a DNS label (at most %d lower-case letters, digits "+
			"and '-', starting and ending with a letter or digit)", s, maxLabel)
	}
	return nil
}

// checkSubdomain accepts a DNS subdomain, as Kubernetes names service accounts: DNS
// labels joined by dots, at most 253 characters.
func checkSubdomain(s string) error {
	ok := len(s) <= maxSubdomain
	for label := range strings.SplitSeq(s, ".") {
		ok = ok && isLabel(label)
	}
	if !ok {
		return fmt.Errorf("%q is not a DNS subdomain (DNS labels joined by dots, "+
			"at most %d characters)", s, maxSubdomain)
	}
	return nil
}

func isLabel(s string) bool {
	if len(s) == 0 || len(s) > maxLabel || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// PathPattern is a parsed policy path: an exact path, or with Prefix set, the
// beginning of every path it matches (always ending in a slash).
type PathPattern struct {
	Path   string
	Prefix bool
}

// Matches reports whether the normalized request path (without its query) matches.
func (p PathPattern) Matches(path string) bool {
	if p.Prefix {
		return strings.HasPrefix(path, p.Path)
	}
	return path == p.Path
}

// errPathEmpty is the error of [ParsePath] for an empty path.
var errPathEmpty = errors.New("a path must not be empty")

// ParsePath parses a policy path: "/charge" matches exactly that path, "/v1/*" every
// path that starts with "/v1/". Paths are matched against the request path after the
// proxy normalized it (docs/policy.md), so ParsePath refuses every path that no
// normalized path can equal, because a rule holding one would silently never match:
// a relative path, a query or fragment, '*' anywhere but in a trailing "/*", dot
// segments, repeated slashes, a percent-encoded slash or backslash, a percent-encoded
// unreserved character (normalization decodes it: write it plainly), lower-case hex
// in an escape, and characters a URL path cannot hold unescaped.
func ParsePath(s string) (PathPattern, error) {
	switch {
	case s == "":
		return PathPattern{}, errPathEmpty
	case s[0] != '/':
		return PathPattern{}, fmt.Errorf("path %q must be absolute (start with /)", s)
	case strings.Contains(s, "?"):
		return PathPattern{}, fmt.Errorf("path %q has a query: paths are matched "+
			"without the query string", s)
	case strings.Contains(s, "#"):
		return PathPattern{}, fmt.Errorf("path %q has a fragment: requests carry none", s)
	}

	pat := PathPattern{Path: s}
	if strings.HasSuffix(s, "/*") {
		pat = PathPattern{Path: strings.TrimSuffix(s, "*"), Prefix: true}
	}
	if strings.Contains(pat.Path, "*") {
		return PathPattern{}, fmt.Errorf("path %q has '*' where only a trailing /* "+
			"(a prefix) is allowed", s)
	}
	if strings.Contains(pat.Path, "//") {
		return PathPattern{}, fmt.Errorf("path %q has repeated slashes: normalized "+
			"paths never do", s)
	}
	for seg := range strings.SplitSeq(pat.Path[1:], "/") {
		if seg == "." || seg == ".." {
			return PathPattern{}, fmt.Errorf("path %q has a dot segment %q: normalized "+
				"paths never do", s, seg)
		}
	}
	if err := checkPathChars(pat.Path); err != nil {
		return PathPattern{}, fmt.Errorf("path %q: %w", s, err)
	}
	return pat, nil
}

// checkPathChars accepts the characters of a normalized path: RFC 3986 pchar and '/',
// with escapes only for what may not appear unescaped.
func checkPathChars(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return fmt.Errorf("'%%' at offset %d does not start an escape of two "+
					"hex digits", i)
			}
			esc := s[i : i+3]
			v := unhex(s[i+1])<<4 | unhex(s[i+2])
			switch {
			case v == '/' || v == '\\':
				return fmt.Errorf("percent-encoded slash %s: requests holding one "+
					"are rejected before authorization", esc)
			case isUnreserved(v):
				return fmt.Errorf("escape %s of %q: normalization decodes it, write %q",
					esc, v, v)
			case esc != strings.ToUpper(esc):
				return fmt.Errorf("escape %s must be written in upper case: %s", esc,
					strings.ToUpper(esc))
			}
			i += 2
		case c == '/' || isUnreserved(c) || strings.IndexByte("!$&'()+,;=:@", c) >= 0:
		default:
			return fmt.Errorf("character %q must be percent-encoded", c)
		}
	}
	return nil
}

func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

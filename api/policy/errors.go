package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The kinds of problem. Every [*FieldError] wraps exactly one, so callers and tests
// tell problems apart with errors.Is.
var (
	// ErrSyntax marks a document that is not YAML, or not a mapping.
	ErrSyntax = errors.New("syntax error")
	// ErrUnknownField marks a field the AuthorizationPolicy schema does not have.
	ErrUnknownField = errors.New("unknown field")
	// ErrType marks a value of the wrong YAML type: a list for a string, and so on.
	ErrType = errors.New("wrong type")
	// ErrRequired marks a field that is missing or empty.
	ErrRequired = errors.New("required")
	// ErrInvalid marks a value that is malformed or out of range.
	ErrInvalid = errors.New("invalid value")
	// ErrConflict marks a value that contradicts or repeats another: a key twice in a
	// mapping, two kinds of caller in one from entry, a principal, method or path
	// listed twice, or one policy twice in a set.
	ErrConflict = errors.New("conflict")
)

// FieldError is one problem in one policy. Parse, Validate, ValidateSet and
// ValidateFiles report each problem as its own FieldError, joined with errors.Join;
// [FieldErrors] takes them apart again.
type FieldError struct {
	// Source names where the policy came from, usually a file name; empty when it was
	// not read by [Parse].
	Source string
	// Doc is the position of the policy's document in Source, from 1, counting only
	// documents that are not empty; 0 when unknown.
	Doc int
	// Line is the line in Source of the field (or, for a missing field, of the
	// closest enclosing one), from 1; 0 when unknown.
	Line int
	// Policy is "<namespace>/<name>" when the policy got that far, else empty.
	Policy string
	// Path is the field, as in "spec.rules[0].from[1].serviceAccount"; empty for the
	// document as a whole.
	Path string
	// Kind is one of the Err* values of this package.
	Kind error
	// Message says what is wrong, in a sentence that stands on its own; it includes
	// the text of Err.
	Message string
	// Err is the underlying error, for instance go-spiffe's, or nil.
	Err error
}

// Error formats the problem as "source:line: document N: path: message", leaving out
// what is unknown. Without a source it names the policy instead.
func (e *FieldError) Error() string {
	var b strings.Builder
	switch {
	case e.Source != "":
		b.WriteString(e.Source)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
		if e.Doc > 0 {
			b.WriteString("document " + strconv.Itoa(e.Doc) + ": ")
		}
	case e.Policy != "":
		b.WriteString("policy " + e.Policy + ": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Unwrap returns the kind and the underlying error, for errors.Is and errors.As.
func (e *FieldError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// FieldErrors returns every [*FieldError] in err, in order: err may be one, a tree
// of errors.Join results, or wrap either with %w. Errors of other types are left out.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *FieldError:
			out = append(out, e)
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	walk(err)
	return out
}

// Origin records where a parsed policy came from: the file, the document, and the line
// of every field, so that [Validate] can point at the line of a bad value.
type Origin struct {
	// Source is the name given to [Parse].
	Source string
	// Doc is the position of the document, from 1, as in [FieldError].
	Doc int

	// lines maps field paths to the line of their key (or list item).
	lines map[string]int
	// reported holds the paths Parse already reported, so that Validate does not
	// report the same problem again in other words.
	reported map[string]bool
}

// Line returns the line of the field at path, or of its closest enclosing field when
// the field itself is absent; 0 when unknown.
func (o *Origin) Line(path string) int {
	if o == nil {
		return 0
	}
	for {
		if l, ok := o.lines[path]; ok {
			return l
		}
		if path == "" {
			return 0
		}
		path = parentPath(path)
	}
}

// alreadyReported reports whether Parse reported a problem at path, at a field inside
// it, or at a field enclosing it.
func (o *Origin) alreadyReported(path string) bool {
	if o == nil {
		return false
	}
	for p := range o.reported {
		if p == path || isUnder(path, p) || isUnder(p, path) {
			return true
		}
	}
	return false
}

// parentPath strips the last field or index from a path: "a.b[0]" → "a.b" → "a" → "".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// isUnder reports whether path names a field inside the field at parent.
func isUnder(path, parent string) bool {
	if parent == "" {
		return path != ""
	}
	return strings.HasPrefix(path, parent) && len(path) > len(parent) &&
		(path[len(parent)] == '.' || path[len(parent)] == '[')
}

// newError makes the FieldError of a problem at path in p.
func newError(p *Policy, path string, kind error, err error, format string,
	args ...any) *FieldError {
	fe := &FieldError{Path: path, Kind: kind, Message: fmt.Sprintf(format, args...), Err: err}
	if p.Metadata.Namespace != "" && p.Metadata.Name != "" {
		fe.Policy = p.Key()
	}
	if o := p.Origin; o != nil {
		fe.Source, fe.Doc, fe.Line = o.Source, o.Doc, o.Line(path)
	}
	return fe
}

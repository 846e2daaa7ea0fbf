package envoyvalidate

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protopath"
	"google.golang.org/protobuf/reflect/protorange"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The kinds of violation. Every [Violation] wraps exactly one of them, so callers and
// tests tell failures apart with errors.Is.
var (
	// ErrRule marks a rule of the Envoy API (protoc-gen-validate annotations) broken.
	ErrRule = errors.New("breaks an Envoy API rule")
	// ErrUnknownType marks a google.protobuf.Any whose type URL names no linked type.
	ErrUnknownType = errors.New("unknown type")
	// ErrBadAny marks a google.protobuf.Any whose bytes do not decode as its type.
	ErrBadAny = errors.New("undecodable Any")
	// ErrUnknownFields marks a message carrying fields its proto does not declare.
	ErrUnknownFields = errors.New("unknown fields")
	// ErrDeprecated marks a deprecated field or enum value in use.
	ErrDeprecated = errors.New("deprecated")
	// ErrUnsupported marks a value the API allows but Envoy refuses at load time.
	ErrUnsupported = errors.New("refused by Envoy")
	// ErrRegex marks a regular expression that does not compile.
	ErrRegex = errors.New("invalid regex")
	// ErrPEM marks inline certificate or key data that does not parse.
	ErrPEM = errors.New("invalid PEM")
	// ErrEmptySecret marks a secret or TLS certificate missing a part it needs.
	ErrEmptySecret = errors.New("incomplete secret")
)

// Violation is one problem found by [Validate].
type Violation struct {
	// Path locates the offending field relative to the validated message, in proto
	// field names: list indexes and map keys in brackets, and after a field holding a
	// google.protobuf.Any, the full name of the expanded type in parentheses, e.g.
	// "filter_chains[0].filters[0].typed_config(envoy.[...].HttpConnectionManager).stat_prefix"
	// (the type name shortened here). It is empty for the validated message itself.
	Path string
	// Kind is one of the Err* values of this package.
	Kind error
	// Reason says what is wrong. It never quotes secret material.
	Reason string
	// Err is the underlying error (from the regexp or x509 parsers, or protobuf), or nil.
	Err error
}

// Error formats the violation as "path: reason[: underlying error]".
func (v *Violation) Error() string {
	path := v.Path
	if path == "" {
		path = "<root>"
	}
	if v.Err != nil {
		return fmt.Sprintf("%s: %s: %v", path, v.Reason, v.Err)
	}
	return path + ": " + v.Reason
}

// Unwrap returns the kind and the underlying error, for errors.Is and errors.As.
func (v *Violation) Unwrap() []error {
	if v.Err == nil {
		return []error{v.Kind}
	}
	return []error{v.Kind, v.Err}
}

// Error is the error [Validate] returns: every violation found, in traversal order
// (fields by number, list elements by index, map entries by key).
type Error struct {
	Violations []*Violation
}

// Error lists the violations, separated by semicolons.
func (e *Error) Error() string {
	msgs := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		msgs[i] = v.Error()
	}
	return "envoyvalidate: " + strings.Join(msgs, "; ")
}

// Unwrap returns the violations, so errors.Is(err, ErrRegex) asks whether any of them
// is of that kind.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Violations))
	for i, v := range e.Violations {
		errs[i] = v
	}
	return errs
}

// Validate checks msg and everything it contains, and returns nil or an [*Error]
// listing every violation.
//
// It runs the message's generated ValidateAll, then walks the message and, for every
// google.protobuf.Any, resolves its type in protoregistry.GlobalTypes (the packages
// imported by this one are linked for that), decodes it and validates the result the
// same way, at any depth. Along the way it checks what the generated rules do not:
// unknown and deprecated fields, transport_api_version (Envoy accepts only V3), regexes
// (compiled with Go's regexp, whose syntax approximates RE2), inline PEM in
// TlsCertificate and CertificateValidationContext.trusted_ca, and empty secrets.
// Deprecated fields are refused although Envoy itself mostly only warns: meshca
// should never emit them.
//
// Validate does not modify msg and is safe to call concurrently on different messages,
// or on one message that nobody mutates meanwhile.
func Validate(msg proto.Message) error {
	if msg == nil || !msg.ProtoReflect().IsValid() {
		return nil
	}

	var w walker
	// Stable order makes the violation list, and so the error text, deterministic.
	opts := protorange.Options{Stable: true}
	if err := opts.Range(msg.ProtoReflect(), w.visit, nil); err != nil {
		// The visitor never fails; protorange fails only re-encoding an expanded Any.
		return fmt.Errorf("envoyvalidate: failed to walk message: %w", err)
	}
	if len(w.violations) > 0 {
		return &Error{Violations: w.violations}
	}
	return nil
}

// walker collects violations while protorange visits every populated value.
type walker struct {
	violations []*Violation
}

func (w *walker) add(path string, kind error, reason string, err error) {
	v := &Violation{Path: path, Kind: kind, Reason: reason, Err: err}
	w.violations = append(w.violations, v)
}

// visit is called before the children of each value. It never stops the walk: the
// goal is the full list of violations.
func (w *walker) visit(vs protopath.Values) error {
	last := vs.Index(-1)
	at := &location{vs: vs}

	switch last.Step.Kind() {
	case protopath.RootStep, protopath.AnyExpandStep:
		// The generated rules cover every message reachable without crossing an Any.
		w.generated(at, last.Value.Message())
	case protopath.FieldAccessStep:
		fd := last.Step.FieldDescriptor()
		w.checkDeprecatedField(at, fd)
		if !fd.IsList() && !fd.IsMap() {
			w.checkDeprecatedEnum(at, fd, last.Value)
		}
	case protopath.ListIndexStep:
		w.checkDeprecatedEnum(at, vs.Index(-2).Step.FieldDescriptor(), last.Value)
	case protopath.UnknownAccessStep:
		w.checkUnknownFields(at, last.Value.Bytes())
	}

	if m, ok := last.Value.Interface().(protoreflect.Message); ok {
		w.checkMessage(at, m)
	}
	return nil
}

// location is the path of the value being visited, formatted only when a violation
// needs it: formatting it for every value would double the cost of a clean walk.
type location struct {
	vs   protopath.Values
	path string
	done bool
}

// String returns the path in the form of [Violation.Path].
func (l *location) String() string {
	if !l.done {
		l.path, l.done = formatPath(l.vs.Path), true
	}
	return l.path
}

// field returns the path of a field of the message at l.
func (l *location) field(name string) string {
	return joinPath(l.String(), name)
}

// formatPath renders a protorange path in proto field names, leaving out the root.
func formatPath(p protopath.Path) string {
	var b strings.Builder
	for _, s := range p {
		switch s.Kind() {
		case protopath.FieldAccessStep:
			fd := s.FieldDescriptor()
			if fd.IsExtension() {
				fmt.Fprintf(&b, "[%s]", fd.FullName())
				continue
			}
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(string(fd.Name()))
		case protopath.ListIndexStep:
			fmt.Fprintf(&b, "[%d]", s.ListIndex())
		case protopath.MapIndexStep:
			fmt.Fprintf(&b, "[%v]", s.MapIndex().Interface())
		case protopath.AnyExpandStep:
			fmt.Fprintf(&b, "(%s)", s.MessageDescriptor().FullName())
		}
	}
	return b.String()
}

// joinPath appends a field (or an index) to a path.
func joinPath(path, field string) string {
	if path == "" || field == "" || strings.HasPrefix(field, "[") {
		return path + field
	}
	return path + "." + field
}

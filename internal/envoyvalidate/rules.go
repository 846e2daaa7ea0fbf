package envoyvalidate

import (
	"strings"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The generated protoc-gen-validate code returns a tree of errors: a MultiError per
// message (AllErrors) holding one ValidationError per broken field, whose Cause is the
// embedded message's own MultiError. The field names in it are Go names
// ("FilterChains[0]"); rule violations are reported with proto names instead, so that
// their paths read like the paths of every other violation.

// validateAller is the method protoc-gen-validate generates on every Envoy message.
type validateAller interface {
	ValidateAll() error
}

// multiError is the generated per-message error list.
type multiError interface {
	AllErrors() []error
}

// fieldError is the generated per-field error.
type fieldError interface {
	Field() string
	Reason() string
	Key() bool
	Cause() error
}

// generated runs m's generated rules, if it has any, and records what they report.
func (w *walker) generated(at *location, m protoreflect.Message) {
	v, ok := m.Interface().(validateAller)
	if !ok {
		return
	}
	if err := v.ValidateAll(); err != nil {
		w.addRuleErrors(at.String(), m.Descriptor(), err)
	}
}

// addRuleErrors flattens a generated error tree into violations. md describes the
// message the error is about, or is nil once the path has left known fields.
func (w *walker) addRuleErrors(path string, md protoreflect.MessageDescriptor, err error) {
	if err == nil {
		return
	}
	// The generated code returns these types directly, never wrapped, so plain type
	// assertions are right here; errors.As would also descend into causes.
	if multi, ok := err.(multiError); ok {
		for _, e := range multi.AllErrors() {
			w.addRuleErrors(path, md, e)
		}
		return
	}
	fe, ok := err.(fieldError)
	if !ok {
		w.add(path, ErrRule, err.Error(), nil)
		return
	}

	field, next := protoFieldPath(md, fe.Field())
	path = joinPath(path, field)
	if cause := fe.Cause(); cause != nil {
		if next != nil {
			w.addRuleErrors(path, next, cause)
			return
		}
		w.add(path, ErrRule, fe.Reason()+": "+cause.Error(), nil)
		return
	}
	reason := fe.Reason()
	if fe.Key() {
		reason = "map key: " + reason
	}
	w.add(path, ErrRule, reason, nil)
}

// protoFieldPath translates a generated field reference such as "FilterChains[0]" into
// proto naming ("filter_chains[0]") and returns the descriptor of the message that a
// cause under it is about, or nil when there is none or the field is not found.
func protoFieldPath(md protoreflect.MessageDescriptor, goField string) (
	string, protoreflect.MessageDescriptor) {
	name, index, _ := strings.Cut(goField, "[")
	if index != "" {
		index = "[" + index
	}
	if md == nil {
		return snakeCase(name) + index, nil
	}

	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !sameName(string(fd.Name()), name) {
			continue
		}
		var next protoreflect.MessageDescriptor
		switch {
		case fd.IsMap():
			if index != "" {
				next = fd.MapValue().Message()
			}
		case fd.IsList():
			if index != "" {
				next = fd.Message()
			}
		default:
			next = fd.Message()
		}
		return string(fd.Name()) + index, next
	}

	// Rules on a oneof as a whole ("value is required") name the oneof.
	oneofs := md.Oneofs()
	for i := range oneofs.Len() {
		if od := oneofs.Get(i); sameName(string(od.Name()), name) {
			return string(od.Name()) + index, nil
		}
	}
	return snakeCase(name) + index, nil
}

// sameName reports whether a proto name and a generated Go name denote the same field.
func sameName(protoName, goName string) bool {
	return strings.EqualFold(strings.ReplaceAll(protoName, "_", ""), goName)
}

// snakeCase approximates the proto name of a Go name that matched no field.
func snakeCase(goName string) string {
	var b strings.Builder
	for i, r := range goName {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

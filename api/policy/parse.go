package policy

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Parse reads the AuthorizationPolicy documents of a multi-document YAML (or JSON)
// file. source names the file in errors and in each policy's Origin.
//
// Decoding is strict: an unknown field, a duplicate key, a value of the wrong type, an
// alias, or an apiVersion or kind other than those of an AuthorizationPolicy is an
// error. Parse reports every such problem, each as a [*FieldError] with the source,
// document, field path and line, joined with errors.Join. It does not check values:
// that is [Validate]'s job.
//
// The policies come back in document order. When err is non-nil they are the
// documents Parse could read, with wrongly typed fields left empty; they are meant
// only for [Validate], to report the remaining problems too, which it does without
// repeating those already reported. A document that is not YAML, not a mapping, or
// not an AuthorizationPolicy is left out. Empty documents are skipped.
func Parse(data []byte, source string) ([]Policy, error) {
	var (
		policies []Policy
		errs     []error
		n        int
	)
	for _, doc := range splitDocuments(data) {
		root, err := doc.parse()
		if err != nil {
			n++
			errs = append(errs, doc.syntaxError(source, n, err))
			continue
		}
		if root == nil {
			continue
		}
		n++
		d := &decoder{
			origin: &Origin{Source: source, Doc: n, lines: map[string]int{},
				reported: map[string]bool{}},
			lineOffset: doc.firstLine - 1,
		}
		d.setLine("", root)
		p := Policy{Origin: d.origin}
		if d.checkHeader(root) {
			d.decode(root, reflect.ValueOf(&p).Elem(), "")
			policies = append(policies, p)
		}
		errs = append(errs, d.errs...)
	}
	return policies, errors.Join(errs...)
}

// document is one YAML document of a file.
type document struct {
	data      []byte
	firstLine int // the line of the file that data starts with, from 1
}

// splitDocuments cuts a file at its "---" and "..." marker lines, so that a syntax
// error in one document does not hide the problems of the others. A marker line is
// kept, blanked, at the start of the next document: anything after "---" on the same
// line (a comment, or an inline document) stays part of it.
func splitDocuments(data []byte) []document {
	var docs []document
	cur := document{firstLine: 1}
	for i, line := range bytes.SplitAfter(data, []byte("\n")) {
		if !isMarker(line, "---") && !isMarker(line, "...") {
			cur.data = append(cur.data, line...)
			continue
		}
		docs = append(docs, cur)
		cur = document{firstLine: i + 1, data: append([]byte("   "), line[3:]...)}
	}
	return append(docs, cur)
}

// isMarker reports whether a line is a document marker: the three characters alone,
// or followed by white space.
func isMarker(line []byte, marker string) bool {
	return bytes.HasPrefix(line, []byte(marker)) &&
		(len(line) == 3 || strings.IndexByte(" \t\r\n", line[3]) >= 0)
}

// parse returns the document's root node, or nil for an empty document.
func (doc document) parse() (*yaml.Node, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(doc.data, &n); err != nil {
		return nil, err
	}
	if n.Kind != yaml.DocumentNode || len(n.Content) == 0 {
		return nil, nil
	}
	root := n.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil
	}
	return root, nil
}

// yamlErrorLine finds the line number in a syntax error of the YAML parser, which has
// no typed error for it. It is used only to fill in FieldError.Line: when the message
// changes shape, the line is 0 and the message, which carries it, is still shown.
var yamlErrorLine = regexp.MustCompile(`^yaml: line (\d+):`)

// syntaxError reports a document the YAML parser refused. The document is parsed once
// more behind as many empty lines as precede it in the file, so that the line in the
// parser's message is the file's line too.
func (doc document) syntaxError(source string, n int, err error) *FieldError {
	padded := append(bytes.Repeat([]byte{'\n'}, doc.firstLine-1), doc.data...)
	var node yaml.Node
	if perr := yaml.Unmarshal(padded, &node); perr != nil {
		err = perr
	}
	line := 0
	if m := yamlErrorLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	return &FieldError{Source: source, Doc: n, Line: line, Kind: ErrSyntax,
		Message: "not valid YAML: " + err.Error(), Err: err}
}

// decoder fills a Policy from a YAML node tree, following the json tags of its types,
// and records the line of every field and every problem it finds.
type decoder struct {
	origin     *Origin
	lineOffset int // added to node lines: the document's lines before its own
	errs       []error
}

func (d *decoder) line(n *yaml.Node) int {
	return n.Line + d.lineOffset
}

func (d *decoder) setLine(path string, n *yaml.Node) {
	d.origin.lines[path] = d.line(n)
}

// fail records a problem at path, on the line of node n.
func (d *decoder) fail(n *yaml.Node, path string, kind error, format string, args ...any) {
	d.origin.reported[path] = true
	d.errs = append(d.errs, &FieldError{
		Source: d.origin.Source, Doc: d.origin.Doc, Line: d.line(n), Path: path,
		Kind: kind, Message: fmt.Sprintf(format, args...),
	})
}

// checkHeader checks that the root is a mapping with the apiVersion and kind of an
// AuthorizationPolicy. Without them the fields mean nothing: no other problem of the
// document is reported.
func (d *decoder) checkHeader(root *yaml.Node) bool {
	if root.Kind != yaml.MappingNode {
		d.fail(root, "", ErrSyntax, "a document must be a mapping (an %s), not %s", Kind,
			describe(root))
		return false
	}
	ok := true
	for _, want := range []struct{ field, value string }{
		{"apiVersion", APIVersion}, {"kind", Kind},
	} {
		v := mappingValue(root, want.field)
		switch {
		case v == nil:
			d.fail(root, want.field, ErrRequired, "is required (%q)", want.value)
			ok = false
		case v.Kind != yaml.ScalarNode || v.Value != want.value:
			d.fail(v, want.field, ErrInvalid, "must be %q, not %s", want.value, quoteNode(v))
			ok = false
		}
	}
	return ok
}

// mappingValue returns the value of key in a mapping node, or nil.
func mappingValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// decode sets v from node n. It handles exactly the kinds the policy types use:
// structs, pointers to structs, slices and strings.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		d.fail(n, path, ErrSyntax, "aliases (*%s) are not supported in policies", n.Value)
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an explicit null leaves the field empty, as omitting it does
	}
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, ErrType, "must be a list, not %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			d.setLine(p, item)
			d.decode(item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			hint := ""
			if n.Kind == yaml.ScalarNode {
				hint = " (quote it)"
			}
			d.fail(n, path, ErrType, "must be a string, not %s%s", describe(n), hint)
			return
		}
		v.SetString(n.Value)
	default:
		panic(fmt.Sprintf("policy: decoder cannot fill a %s", v.Type()))
	}
}

// decodeStruct sets the fields of struct v from mapping node n.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, ErrType, "must be a mapping, not %s", describe(n))
		return
	}
	names, index := jsonFields(v.Type())
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		p := joinPath(path, key.Value)
		if first, dup := seen[key.Value]; dup {
			d.fail(key, p, ErrConflict, "key %q appears twice (first at line %d)",
				key.Value, first)
			continue
		}
		seen[key.Value] = d.line(key)
		f, ok := index[key.Value]
		if !ok {
			d.fail(key, p, ErrUnknownField, "unknown field %q (fields here: %s)", key.Value,
				strings.Join(names, ", "))
			continue
		}
		d.setLine(p, key)
		d.decode(val, v.Field(f), p)
	}
}

// jsonFields returns the JSON names of a struct's fields in declaration order, and
// their field indexes by name. Fields tagged "-" are left out.
func jsonFields(t reflect.Type) ([]string, map[string]int) {
	var names []string
	index := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		names = append(names, name)
		index[name] = i
	}
	return names, index
}

// joinPath appends a field name to a path.
func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// describe names the YAML type of a node for an error message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!timestamp":
		return "a timestamp"
	case "!!binary":
		return "binary data"
	}
	return "a scalar of type " + strings.TrimPrefix(n.Tag, "!!")
}

// quoteNode renders a node's value for an error message.
func quoteNode(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return strconv.Quote(n.Value)
	}
	return describe(n)
}

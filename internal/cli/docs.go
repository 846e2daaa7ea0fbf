package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// The generated reference pages (make docs) render flags with these helpers, so that
// meshca's and meshctl's pages describe values the same way.

// FlagType names the kind of value a flag takes, in the words the reference pages
// use: "string", "duration", "bool", "integer", "number", "list of strings", or
// pflag's own type name for any other kind.
func FlagType(f *pflag.Flag) string {
	switch t := f.Value.Type(); t {
	case "stringSlice":
		return "list of strings"
	case "stringArray":
		return "string, repeatable"
	case "int", "int32", "int64", "uint", "uint32", "uint64":
		return "integer"
	case "float32", "float64":
		return "number"
	default:
		return t
	}
}

// FlagDefault renders a flag's default as Markdown: a code span, or "none" when the
// default is empty or a zero duration or number (their usage text says what zero
// means, as in `meshctl --help`).
func FlagDefault(f *pflag.Flag) string {
	v := f.DefValue
	switch FlagType(f) {
	case "duration":
		if d, err := time.ParseDuration(v); err == nil {
			v = ShortDuration(d)
		}
		if v == "0s" {
			v = ""
		}
	case "integer", "number":
		if v == "0" {
			v = ""
		}
	case "list of strings", "string, repeatable":
		v = strings.TrimSuffix(strings.TrimPrefix(v, "["), "]")
	}
	if v == "" {
		return "none"
	}
	return "`" + v + "`"
}

// FlagYAML renders a flag's default as a YAML value that the config file accepts:
// strings quoted, lists in flow style, durations as Go writes them, shortened.
func FlagYAML(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "duration":
		if d, err := time.ParseDuration(f.DefValue); err == nil {
			return ShortDuration(d)
		}
		return strconv.Quote(f.DefValue)
	case "bool", "int", "int32", "int64", "uint", "uint32", "uint64", "float32", "float64":
		return f.DefValue
	case "stringSlice", "stringArray":
		v := strings.TrimSuffix(strings.TrimPrefix(f.DefValue, "["), "]")
		if v == "" {
			return "[]"
		}
		parts := strings.Split(v, ",")
		for i, p := range parts {
			parts[i] = strconv.Quote(p)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	default:
		return strconv.Quote(f.DefValue)
	}
}

// ShortDuration writes d as time.Duration.String does, without trailing zero minutes
// and seconds: 1h instead of 1h0m0s, 1h30m instead of 1h30m0s. The result still
// parses with time.ParseDuration.
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// MarkdownText escapes prose for a Markdown paragraph: outside `code spans`, the
// characters that would start emphasis or an HTML tag. Underscores stay: inside words
// they start no emphasis.
func MarkdownText(s string) string {
	parts := strings.Split(s, "`")
	esc := strings.NewReplacer("*", `\*`, "<", "&lt;", ">", "&gt;")
	for i := 0; i < len(parts); i += 2 {
		parts[i] = esc.Replace(parts[i])
	}
	return strings.Join(parts, "`")
}

// MarkdownCell escapes text for a Markdown table cell as MarkdownText does, and
// also pipes, which would end the cell, and line breaks.
func MarkdownCell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(MarkdownText(s))
}

// CompareGenerated compares a generated page with the committed file name (a path
// relative to the repository root, for the message). It returns nil when they are
// equal, else an error that says to run `make docs` and shows the first line that
// differs.
func CompareGenerated(name string, committed, generated []byte) error {
	if string(committed) == string(generated) {
		return nil
	}
	c, g := strings.Split(string(committed), "\n"), strings.Split(string(generated), "\n")
	line := func(lines []string, i int) string {
		if i < len(lines) {
			return lines[i]
		}
		return "(end of file)"
	}
	i := 0
	for i < len(c) && i < len(g) && c[i] == g[i] {
		i++
	}
	return fmt.Errorf("%s is stale: run make docs\nfirst difference, line %d:\n"+
		"  file:      %s\n  generated: %s", name, i+1, line(c, i), line(g, i))
}

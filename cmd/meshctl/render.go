package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"
)

// format is the value of -o/--output. It implements pflag.Value, so a bad value is
// refused while the flags are parsed.
type format string

// The output formats. Table is for people; JSON and YAML render our own stable
// structs, whose field names are part of meshctl's interface.
const (
	formatTable format = "table"
	formatJSON  format = "json"
	formatYAML  format = "yaml"
)

var formatNames = []string{string(formatTable), string(formatJSON), string(formatYAML)}

// String implements pflag.Value.
func (f *format) String() string { return string(*f) }

// Set implements pflag.Value.
func (f *format) Set(s string) error {
	switch v := format(strings.ToLower(s)); v {
	case formatTable, formatJSON, formatYAML:
		*f = v
		return nil
	default:
		return fmt.Errorf("must be one of %s", strings.Join(formatNames, ", "))
	}
}

// Type implements pflag.Value.
func (f *format) Type() string { return "format" }

// render writes v as JSON or YAML, or calls table for the table format.
func render(w io.Writer, f format, v any, table func(io.Writer) error) error {
	switch f {
	case formatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case formatYAML:
		out, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("failed to encode YAML: %w", err)
		}
		_, err = w.Write(out)
		return err
	default:
		return table(w)
	}
}

// newTable returns a tabwriter for column output; the caller must Flush it.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

// row writes one tab-separated line.
func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// timestamp renders a time in UTC, RFC 3339, to the second.
func timestamp(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}

// timeLeft renders a remaining lifetime for people: days for long ones, hours and
// minutes for short ones, and "expired" once it is past.
func timeLeft(d time.Duration) string {
	switch {
	case d <= 0:
		return "expired"
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, (d%time.Hour)/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm", d/time.Minute)
	default:
		return fmt.Sprintf("%ds", d/time.Second)
	}
}

// orDash renders an empty cell as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// expiry renders a NotAfter with the time left: "2030-01-02T03:04:05Z (59m left)".
func expiry(notAfter, now time.Time) string {
	left := notAfter.Sub(now)
	if left <= 0 {
		return timestamp(notAfter) + " (expired)"
	}
	return fmt.Sprintf("%s (%s left)", timestamp(notAfter), timeLeft(left))
}

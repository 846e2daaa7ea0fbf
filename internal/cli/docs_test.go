package cli_test

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/internal/cli"
)

func TestFlagRendering(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.Duration("ttl", 90*time.Minute, "")
	fs.Duration("root", 87600*time.Hour, "")
	fs.Duration("short", 10*time.Second, "")
	fs.StringSlice("names", []string{"a", "b.c"}, "")
	fs.StringArray("files", nil, "")
	fs.String("empty", "", "")
	fs.String("addr", ":15012", "")
	fs.Float32("qps", 500, "")
	fs.Bool("on", true, "")
	fs.Duration("wait", 0, "")
	fs.Int("limit", 0, "")

	tests := []struct {
		name, typ, def, yaml string
	}{
		{name: "ttl", typ: "duration", def: "`1h30m`", yaml: "1h30m"},
		{name: "root", typ: "duration", def: "`87600h`", yaml: "87600h"},
		{name: "short", typ: "duration", def: "`10s`", yaml: "10s"},
		{name: "names", typ: "list of strings", def: "`a,b.c`", yaml: `["a", "b.c"]`},
		{name: "files", typ: "string, repeatable", def: "none", yaml: "[]"},
		{name: "empty", typ: "string", def: "none", yaml: `""`},
		{name: "addr", typ: "string", def: "`:15012`", yaml: `":15012"`},
		{name: "qps", typ: "number", def: "`500`", yaml: "500"},
		{name: "on", typ: "bool", def: "`true`", yaml: "true"},
		{name: "wait", typ: "duration", def: "none", yaml: "0s"},
		{name: "limit", typ: "integer", def: "none", yaml: "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fs.Lookup(tt.name)
			require.Equal(t, tt.typ, cli.FlagType(f))
			require.Equal(t, tt.def, cli.FlagDefault(f))
			require.Equal(t, tt.yaml, cli.FlagYAML(f))
		})
	}
}

func TestMarkdown(t *testing.T) {
	require.Equal(t, `a \| b &lt;data-dir&gt;/x y`, cli.MarkdownCell("a | b <data-dir>/x\ny"))
	require.Equal(t, "files \\*.yaml, `-f *.yml`, ENV_VAR",
		cli.MarkdownText("files *.yaml, `-f *.yml`, ENV_VAR"))
	require.Equal(t, "`a\\|b` \\*", cli.MarkdownCell("`a|b` *"))
}

func TestCompareGenerated(t *testing.T) {
	require.NoError(t, cli.CompareGenerated("docs/x.md", []byte("a\nb\n"), []byte("a\nb\n")))

	err := cli.CompareGenerated("docs/x.md", []byte("a\nb\n"), []byte("a\nc\n"))
	require.EqualError(t, err, "docs/x.md is stale: run make docs\n"+
		"first difference, line 2:\n  file:      b\n  generated: c")

	err = cli.CompareGenerated("docs/x.md", []byte("a\n"), []byte("a\nmore\n"))
	require.EqualError(t, err, "docs/x.md is stale: run make docs\n"+
		"first difference, line 2:\n  file:      \n  generated: more")
}

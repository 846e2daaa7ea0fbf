package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/internal/cli"
)

// TestConfigReferenceUpToDate regenerates docs/configuration.md in memory from the
// flags of `meshca server` and fails when the committed page differs: a flag added,
// renamed or given another default needs `make docs`.
func TestConfigReferenceUpToDate(t *testing.T) {
	got := configReference()
	want, err := os.ReadFile(filepath.Join("..", "..", configReferencePath))
	require.NoError(t, err, "docs/configuration.md is missing: run make docs")
	if err := cli.CompareGenerated(configReferencePath, want, got); err != nil {
		t.Fatal(err)
	}
}

// TestConfigReferenceListsEveryFlag checks the page against the command itself: one
// row per flag, and the config file keys exactly those ApplyConfigFile accepts.
func TestConfigReferenceListsEveryFlag(t *testing.T) {
	page := string(configReference())
	newServerCommand().Flags().VisitAll(func(f *pflag.Flag) {
		require.Contains(t, page, "| `--"+f.Name+"` |")
	})
	require.Contains(t, page, "| `--config` | flag only |")
}

// TestConfigReferenceExamples applies every YAML example of the page as a config
// file of `meshca server`: each must be accepted, every key known and every value valid
// for its flag.
func TestConfigReferenceExamples(t *testing.T) {
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(
		string(configReference()), -1)
	require.Len(t, blocks, 2)
	for i, b := range blocks {
		path := filepath.Join(t.TempDir(), "meshca.yaml")
		require.NoError(t, os.WriteFile(path, []byte(b[1]), 0o600))
		cmd := newServerCommand()
		require.NoError(t, cli.ApplyConfigFile(path, cmd.Flags(), configFlag),
			"example %d", i)
	}
}

// TestDocsConfigCommand runs the hidden command as `make docs` does.
func TestDocsConfigCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "configuration.md")
	root := newRootCommand()
	root.SetArgs([]string{"docs", "config", "--out", out})
	require.NoError(t, root.Execute())
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, string(configReference()), string(got))

	var help bytes.Buffer
	root = newRootCommand()
	root.SetOut(&help)
	root.SetArgs([]string{"--help"})
	require.NoError(t, root.Execute())
	require.NotContains(t, help.String(), "\n  docs ", "the docs command is hidden")
}

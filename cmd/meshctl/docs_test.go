package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/internal/cli"
)

// TestCommandReferenceUpToDate regenerates docs/meshctl.md in memory from the command
// tree and fails when the committed page differs: a command or flag added, renamed
// or described differently needs `make docs`.
func TestCommandReferenceUpToDate(t *testing.T) {
	// The page shows the built-in default socket, whatever the environment says.
	t.Setenv(adminSocketEnv, "/elsewhere/admin.sock")
	got := commandReference()
	want, err := os.ReadFile(filepath.Join("..", "..", commandReferencePath))
	require.NoError(t, err, "docs/meshctl.md is missing: run make docs")
	if err := cli.CompareGenerated(commandReferencePath, want, got); err != nil {
		t.Fatal(err)
	}
}

// TestDocsCommand runs the hidden command as `make docs` does, and checks that it
// stays out of the help and out of the page.
func TestDocsCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "meshctl.md")
	res := execute(t, time.Now(), "docs", "--out", out)
	require.NoError(t, res.err)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, string(commandReference()), string(got))
	require.NotContains(t, string(got), "meshctl docs`")

	res = execute(t, time.Now(), "--help")
	require.NoError(t, res.err)
	require.NotContains(t, res.stdout, "\n  docs ")
}

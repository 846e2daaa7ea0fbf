package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// runMainEnv makes the test binary run meshctl's main instead of the tests, so that
// tests can check the exit code of the real command.
const runMainEnv = "MESHCTL_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// result is what one in-process run of meshctl printed and returned.
type result struct {
	stdout, stderr string
	err            error
}

// execute runs the real command tree in-process with args, the clock fixed at now
// and an empty standard input.
func execute(t *testing.T, now time.Time, args ...string) result {
	t.Helper()
	return executeIn(t, now, "", args...)
}

// executeIn is execute with stdin as standard input.
func executeIn(t *testing.T, now time.Time, stdin string, args ...string) result {
	t.Helper()
	cmd := newRootCommand(func() time.Time { return now })
	var stdout, stderr bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(t.Context())
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// assertGolden compares got with testdata/name, or rewrites that file under -update.
func assertGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file: run go test ./cmd/meshctl -update")
	require.Equal(t, string(want), string(got), "output differs from %s; if the change "+
		"is intended, run go test ./cmd/meshctl -update", path)
}

package main

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDemo runs make demo's program as a user would, from the repository root, and
// checks it exits 0 having shown the allowed call, the denied calls and the rotation.
func TestDemo(t *testing.T) {
	cmd := exec.Command("go", "run", "./examples/demo")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	t.Logf("demo output:\n%s", out)
	require.NoError(t, err)
	for _, want := range []string{
		"orders -> Charge: OK (allowed)",
		"orders -> Refund: PermissionDenied (denied: not in the policy)",
		"other -> Charge: PermissionDenied (denied: not orders)",
		"$ meshctl ca rotate prepare",
		"$ meshctl ca rotate activate",
		"$ meshctl ca rotate remove",
		"rotation: prepare, activate, remove with orders calling: orders -> Charge:",
		" 0 failed",
		"Logs: ",
	} {
		require.True(t, strings.Contains(string(out), want), "output lacks %q", want)
	}

	// What stays is the logs and the policy: no binaries, no keys, no etcd data.
	m := regexp.MustCompile(`Logs: (\S+)`).FindSubmatch(out)
	require.NotNil(t, m)
	dir := string(m[1])
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var left []string
	require.NoError(t, filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err == nil && path != dir {
			left = append(left, filepath.Base(path))
		}
		return err
	}))
	for _, name := range left {
		require.Contains(t, []string{".log", ".yaml"}, filepath.Ext(name), "left behind: %v", left)
	}
	require.Contains(t, left, "meshca.log")
}

package main

import (
	"os/exec"
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
		"rotation: prepare, activate, remove with orders calling: orders -> Charge:",
		" 0 failed",
		"Logs and files: ",
	} {
		require.True(t, strings.Contains(string(out), want), "output lacks %q", want)
	}
}

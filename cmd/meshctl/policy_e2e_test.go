package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/api/policy"
)

// runPolicy runs meshctl policy against socket, with stdin as standard input.
func runPolicy(t *testing.T, socket, stdin string, args ...string) result {
	t.Helper()
	return executeIn(t, time.Now(), stdin, append([]string{"--admin-socket", socket, "policy"},
		args...)...)
}

// mustJSON runs meshctl policy with -o json and decodes its output into v.
func mustJSON(t *testing.T, socket string, v any, args ...string) string {
	t.Helper()
	out := mustRun(t, socket, append([]string{"-o", "json", "policy"}, args...)...)
	require.NoError(t, json.Unmarshal([]byte(out), v))
	return out
}

func actions(cs policyChanges) []string {
	var out []string
	for _, c := range cs.Changes {
		out = append(out, c.Namespace+"/"+c.Name+" "+c.Action)
	}
	return out
}

// Policies applied with meshctl are validated, versioned, diffed, rolled back, and
// survive a restart of the server on the same data directory with all revisions.
func TestE2EPolicyLifecycle(t *testing.T) {
	dataDir := t.TempDir()
	socket, stop := startServerAt(t, dataDir)
	dir := t.TempDir()
	file := filepath.Join(dir, "payments.yaml")
	require.NoError(t, os.WriteFile(file, []byte(policyYAML("charge", "/charge")+"---\n"+
		policyYAML("refund", "/refund")), 0o600))

	// diff before anything is stored shows two new policies, and stores nothing.
	diff := mustRun(t, socket, "policy", "diff", "-f", dir)
	require.Contains(t, diff, "--- payments/charge (none)\n+++ payments/charge (applied)\n")
	require.Contains(t, diff, "+  - from:\n")
	var list policyList
	mustJSON(t, socket, &list, "list", "-A")
	require.Empty(t, list.Policies)

	var changes policyChanges
	mustJSON(t, socket, &changes, "apply", "-f", dir)
	require.Equal(t, []string{"payments/charge created", "payments/refund created"},
		actions(changes))
	require.Equal(t, "no changes\n", mustRun(t, socket, "policy", "diff", "-f", file))

	// An update from stdin.
	res := runPolicy(t, socket, policyYAML("charge", "/v2/charge"), "diff", "-f", "-")
	require.NoError(t, res.err)
	require.Contains(t, res.stdout, "--- payments/charge (revision 1)\n"+
		"+++ payments/charge (applied)\n")
	require.Contains(t, res.stdout, "-      - /charge\n+      - /v2/charge\n")
	res = runPolicy(t, socket, policyYAML("charge", "/v2/charge"), "apply", "-f", "-")
	require.NoError(t, res.err)
	require.Contains(t, res.stdout, "payments/charge  updated  1 -> 2")

	// A broken file is refused with its line, and changes nothing.
	before := mustRun(t, socket, "-o", "json", "policy", "list")
	broken := filepath.Join(dir, "broken.yml")
	require.NoError(t, os.WriteFile(broken, []byte(strings.Replace(
		policyYAML("refund-v2", "/v2/refund"), "[POST]", "[post]", 1)), 0o600))
	res = runPolicy(t, socket, "", "apply", "-f", dir)
	require.Equal(t, codes.InvalidArgument, status.Code(res.err), "error: %v", res.err)
	require.EqualError(t, res.err, "failed to apply policies: invalid policy (1 problem):\n"+
		broken+":8: document 1: spec.rules[0].to[0].methods[0]: method \"post\" must be "+
		"upper case: \"POST\"")
	require.Equal(t, before, mustRun(t, socket, "-o", "json", "policy", "list"))
	require.NoError(t, os.Remove(broken))

	// A stale expectation is refused.
	res = runPolicy(t, socket, "", "apply", "-f", file, "--expect", "payments/charge=1")
	require.Equal(t, codes.Aborted, status.Code(res.err), "error: %v", res.err)
	require.EqualError(t, res.err, "failed to apply policies: policy payments/charge is at "+
		"revision 2, expected 1: changed concurrently; re-read it and retry")

	// get prints a document that applies back unchanged.
	got := mustRun(t, socket, "policy", "get", "charge", "-n", "payments")
	require.Contains(t, got, "Revision:  2\n")
	_, doc, ok := strings.Cut(got, "\n\n")
	require.True(t, ok, "get prints a blank line before the document:\n%s", got)
	ps, err := policy.Parse([]byte(doc), "get")
	require.NoError(t, err)
	require.Len(t, ps, 1)
	res = runPolicy(t, socket, doc, "apply", "-f", "-")
	require.NoError(t, res.err)
	require.Contains(t, res.stdout, "payments/charge  unchanged  2")

	// Delete, then roll back.
	require.Contains(t, mustRun(t, socket, "policy", "delete", "refund", "-n", "payments"),
		"payments/refund  deleted  1 -> 2")
	res = runPolicy(t, socket, "", "get", "refund", "-n", "payments")
	require.Equal(t, codes.NotFound, status.Code(res.err), "error: %v", res.err)
	require.EqualError(t, res.err, "failed to get policy: policy payments/refund: not found")
	mustJSON(t, socket, &changes, "rollback", "charge", "-n", "payments", "--to", "1")
	require.Equal(t, []policyChange{{Namespace: "payments", Name: "charge",
		Action: "updated", OldRevision: 2, NewRevision: 3}}, changes.Changes)

	var hist policyHistory
	mustJSON(t, socket, &hist, "history", "charge", "-n", "payments")
	require.Len(t, hist.Revisions, 3)
	require.Equal(t, hist.Revisions[0].Policy, hist.Revisions[2].Policy)
	require.Equal(t, "/v2/charge", hist.Revisions[1].Policy.Spec.Rules[0].To[0].Paths[0])
	wantList := mustRun(t, socket, "-o", "json", "policy", "list", "-n", "payments")
	wantCharge := mustRun(t, socket, "-o", "yaml", "policy", "history", "charge", "-n",
		"payments")
	wantRefund := mustRun(t, socket, "-o", "yaml", "policy", "history", "refund", "-n",
		"payments")

	// After a restart on the same data directory, everything is still there.
	stop()
	socket, _ = startServerAt(t, dataDir)
	require.Equal(t, wantList, mustRun(t, socket, "-o", "json", "policy", "list", "-n",
		"payments"))
	require.Equal(t, wantCharge, mustRun(t, socket, "-o", "yaml", "policy", "history",
		"charge", "-n", "payments"))
	require.Equal(t, wantRefund, mustRun(t, socket, "-o", "yaml", "policy", "history",
		"refund", "-n", "payments"))
	mustJSON(t, socket, &list, "list")
	require.Len(t, list.Policies, 1)
	require.Equal(t, int64(3), list.Policies[0].Revision)

	// Changes go on from the stored revisions.
	mustJSON(t, socket, &changes, "apply", "-f", file)
	require.Equal(t, []policyChange{{Namespace: "payments", Name: "charge",
		Action: "unchanged", OldRevision: 3, NewRevision: 3}, {Namespace: "payments",
		Name: "refund", Action: "created", NewRevision: 3}}, changes.Changes)
}

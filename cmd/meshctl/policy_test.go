package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/api/meshcav1"
)

// The documents of the policy goldens, as the server sends them.
const (
	chargeDoc = `{"apiVersion":"meshca.io/v1alpha1","kind":"AuthorizationPolicy",` +
		`"metadata":{"name":"payments-charge","namespace":"payments"},"spec":{"selector":` +
		`{"serviceAccount":"payments"},"action":"ALLOW","rules":[{"from":[{"serviceAccount":` +
		`"orders/orders"}],"to":[{"methods":["POST"],"paths":["/charge"]}]}]}}`
	chargeDocV2 = `{"apiVersion":"meshca.io/v1alpha1","kind":"AuthorizationPolicy",` +
		`"metadata":{"name":"payments-charge","namespace":"payments"},"spec":{"selector":` +
		`{"serviceAccount":"payments"},"action":"ALLOW","rules":[{"from":[{"serviceAccount":` +
		`"orders/orders"},{"namespace":"billing"}],"to":[{"methods":["POST"],` +
		`"paths":["/charge","/v2/charge"]}]}]}}`
	denyDoc = `{"apiVersion":"meshca.io/v1alpha1","kind":"AuthorizationPolicy",` +
		`"metadata":{"name":"deny-admin","namespace":"shop"},"spec":{"action":"DENY",` +
		`"rules":[{"to":[{"paths":["/admin/*"]}]},{"from":[{"namespace":"guests"}]}]}}`
)

// policyYAML is an ALLOW policy of namespace payments letting orders POST to path.
func policyYAML(name, path string) string {
	return "apiVersion: meshca.io/v1alpha1\n" +
		"kind: AuthorizationPolicy\n" +
		"metadata: {name: " + name + ", namespace: payments}\n" +
		"spec:\n" +
		"  action: ALLOW\n" +
		"  rules:\n" +
		"  - from: [{serviceAccount: orders/orders}]\n" +
		"    to: [{methods: [POST], paths: [" + path + "]}]\n"
}

func fixedPolicy(doc string, rev int64, updated string) *meshcav1.Policy {
	p := &meshcav1.Policy{Revision: rev, Document: doc, UpdatedAt: ts(updated), Author: "admin"}
	p.Namespace, p.Name = "payments", "payments-charge"
	if doc == denyDoc {
		p.Namespace, p.Name = "shop", "deny-admin"
	}
	return p
}

func fixedHistory() *meshcav1.PolicyHistoryResponse {
	deleted := fixedPolicy("", 3, "2026-02-20T08:00:00Z")
	deleted.Deleted = true
	return &meshcav1.PolicyHistoryResponse{Revisions: []*meshcav1.Policy{
		fixedPolicy(chargeDoc, 1, "2026-02-01T10:00:00Z"),
		fixedPolicy(chargeDocV2, 2, "2026-02-10T09:30:00Z"),
		deleted,
		fixedPolicy(chargeDoc, 4, "2026-03-01T11:00:00Z"),
	}}
}

func fixedChanges() []*meshcav1.PolicyChange {
	return []*meshcav1.PolicyChange{{
		Namespace: "payments", Name: "payments-charge", Action: "updated",
		OldRevision: 4, NewRevision: 5, OldDocument: chargeDoc, NewDocument: chargeDocV2,
	}, {
		Namespace: "shop", Name: "deny-admin", Action: "created",
		NewRevision: 1, NewDocument: denyDoc,
	}, {
		Namespace: "payments", Name: "payments-refund", Action: "unchanged",
		OldRevision: 2, NewRevision: 2, OldDocument: chargeDoc, NewDocument: chargeDoc,
	}}
}

// renderGolden renders v in every format and compares each with its golden file.
func renderGolden(t *testing.T, name string, v any, table func(io.Writer) error) {
	t.Helper()
	for _, f := range []format{formatTable, formatJSON, formatYAML} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, render(&buf, f, v, table))
			assertGolden(t, name+"."+string(f)+".golden", buf.Bytes())
		})
	}
}

func TestGoldenPolicyList(t *testing.T) {
	list, err := listFromProto(&meshcav1.ListPoliciesResponse{Policies: []*meshcav1.Policy{
		fixedPolicy(chargeDoc, 4, "2026-03-01T11:00:00Z"),
		fixedPolicy(denyDoc, 1, "2026-01-15T16:45:00Z"),
	}})
	require.NoError(t, err)
	renderGolden(t, "policy-list", list, list.table)
}

func TestGoldenPolicyGet(t *testing.T) {
	rev, err := revisionFromProto(fixedPolicy(chargeDoc, 4, "2026-03-01T11:00:00Z"))
	require.NoError(t, err)
	renderGolden(t, "policy-get", rev, rev.table)
}

func TestGoldenPolicyHistory(t *testing.T) {
	hist, err := historyFromProto(fixedHistory())
	require.NoError(t, err)
	renderGolden(t, "policy-history", hist, hist.table)
}

func TestGoldenPolicyApply(t *testing.T) {
	changes, err := changesFromProto(fixedChanges(), false)
	require.NoError(t, err)
	renderGolden(t, "policy-apply", changes, changes.table)
}

func TestGoldenPolicyDiff(t *testing.T) {
	changes, err := changesFromProto(fixedChanges(), true)
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, changes.diff(&buf))
	assertGolden(t, "policy-diff.table.golden", buf.Bytes())

	unchanged, err := changesFromProto(fixedChanges()[2:], true)
	require.NoError(t, err)
	buf.Reset()
	require.NoError(t, unchanged.diff(&buf))
	require.Equal(t, "no changes\n", buf.String())
}

// brokenDir holds api/policy's broken files: every problem is marked in them.
var brokenDir = filepath.Join("..", "..", "api", "policy", "testdata", "broken")

// validate needs no server: it prints one line per problem and fails.
func TestPolicyValidateBroken(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.sock")
	res := execute(t, time.Now(), "--admin-socket", absent, "policy", "validate",
		"-f", brokenDir)
	require.EqualError(t, res.err, "30 problems found")
	assertGolden(t, "policy-validate-broken.golden", []byte(res.stdout))

	// The lines are those of api/policy's own golden, which its test checks against
	// the problems marked in the files, one per problem.
	want, err := os.ReadFile(filepath.Join(brokenDir, "..", "broken.golden"))
	require.NoError(t, err)
	require.Equal(t, strings.ReplaceAll(string(want), filepath.Join("testdata", "broken"),
		brokenDir), res.stdout)

	res = execute(t, time.Now(), "policy", "validate", "-f", brokenDir, "-o", "json")
	require.Error(t, res.err)
	var out struct {
		Problems []validationProblem `json:"problems"`
	}
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Len(t, out.Problems, 30)
	first := out.Problems[0]
	require.Equal(t, validationProblem{
		File: filepath.Join(brokenDir, "action.yaml"), Line: 7, Document: 1,
		Policy: "payments/payments-maybe", Field: "spec.action", Kind: "invalid value",
		Message: `must be ALLOW or DENY, not "MAYBE"`,
		Error: filepath.Join(brokenDir, "action.yaml") +
			`:7: document 1: spec.action: must be ALLOW or DENY, not "MAYBE"`,
	}, first)
}

func TestPolicyValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	require.NoError(t, os.WriteFile(good, []byte(policyYAML("charge", "/charge")), 0o600))

	res := execute(t, time.Now(), "policy", "validate", "-f", good, "-f", dir)
	require.EqualError(t, res.err, "1 problem found")
	require.Equal(t, good+":3: document 1: metadata.name: policy payments/charge is defined "+
		"twice: first in "+good+":3 (document 1)\n", res.stdout)

	res = executeIn(t, time.Now(), policyYAML("refund", "/refund"), "policy", "validate",
		"-f", good, "-f", "-")
	require.NoError(t, res.err)
	require.Equal(t, "no problems in 2 files\n", res.stdout)
	res = executeIn(t, time.Now(), policyYAML("charge", "/x"), "policy", "validate",
		"-f", "-", "-f", good)
	require.EqualError(t, res.err, "1 problem found")
	require.Equal(t, good+":3: document 1: metadata.name: policy payments/charge is defined "+
		"twice: first in stdin:3 (document 1)\n", res.stdout)

	res = execute(t, time.Now(), "policy", "validate", "-f", good, "--trust-domain", "example.org",
		"-f", filepath.Join(dir, "absent.yaml"))
	require.EqualError(t, res.err, "1 problem found")
	require.Contains(t, res.stdout, "failed to read policy file: stat ")

	res = execute(t, time.Now(), "policy", "validate", "-f", good, "--trust-domain", "Bad")
	require.ErrorContains(t, res.err, `--trust-domain "Bad": `)
}

// The real binary exits with code 1 when validation finds problems, and 0 when not.
func TestPolicyValidateExitCode(t *testing.T) {
	run := func(args ...string) (string, int) {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), runMainEnv+"=1")
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		err := cmd.Run()
		if exitErr, ok := err.(*exec.ExitError); ok {
			return stdout.String(), exitErr.ExitCode()
		}
		require.NoError(t, err)
		return stdout.String(), 0
	}
	out, code := run("policy", "validate", "-f", brokenDir)
	require.Equal(t, 1, code)
	require.Len(t, strings.Split(strings.TrimSuffix(out, "\n"), "\n"), 30)

	good := filepath.Join(t.TempDir(), "good.yaml")
	require.NoError(t, os.WriteFile(good, []byte(policyYAML("charge", "/charge")), 0o600))
	out, code = run("policy", "validate", "-f", good)
	require.Equal(t, 0, code)
	require.Equal(t, "no problems in 1 file\n", out)
}

func TestPolicyFlagErrors(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.sock")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{{
		name:    "apply without files",
		args:    []string{"policy", "apply"},
		wantErr: `required flag(s) "filename" not set`,
	}, {
		name:    "get without a namespace",
		args:    []string{"policy", "get", "charge"},
		wantErr: `required flag(s) "namespace" not set`,
	}, {
		name: "list with a namespace and all namespaces",
		args: []string{"policy", "list", "-n", "a", "-A"},
		wantErr: "if any flags in the group [namespace all-namespaces] are set none of the " +
			"others can be; [all-namespaces namespace] were all set",
	}, {
		name:    "rollback to revision 0",
		args:    []string{"policy", "rollback", "charge", "-n", "payments", "--to", "0"},
		wantErr: "--to 0 must be a revision, from 1",
	}, {
		name:    "a malformed expectation",
		args:    []string{"policy", "apply", "-f", "x.yaml", "--expect", "payments/charge"},
		wantErr: `--expect "payments/charge" is not NAMESPACE/NAME=REVISION (a revision from 0)`,
	}, {
		name:    "stdin twice",
		args:    []string{"policy", "apply", "-f", "-", "-f", "-"},
		wantErr: "-f - is given twice: stdin is read once",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := execute(t, time.Now(), append([]string{"--admin-socket", absent},
				tt.args...)...)
			require.EqualError(t, res.err, tt.wantErr)
		})
	}
}

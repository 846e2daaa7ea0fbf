package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/api/policy"
)

// stdinName names standard input in errors, as in "stdin:12: document 1: ...".
const stdinName = "stdin"

func newPolicyCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Manage authorization policies",
		Long: "Apply, inspect and roll back AuthorizationPolicies (see docs/policy.md). Every\n" +
			"change is a new revision on the server; `validate` checks files offline.",
	}
	cmd.AddCommand(newPolicyApplyCommand(g), newPolicyDiffCommand(g),
		newPolicyValidateCommand(g), newPolicyGetCommand(g), newPolicyListCommand(g),
		newPolicyDeleteCommand(g), newPolicyHistoryCommand(g), newPolicyRollbackCommand(g))
	return cmd
}

func newPolicyApplyCommand(g *globals) *cobra.Command {
	var files, expects []string
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR|-",
		Short: "Create or update the policies of files, all or nothing",
		Long: "Send the policies of every file to meshca, which validates them and stores\n" +
			"them in one transaction: all of them, or none when any is invalid. A policy\n" +
			"equal to the stored one keeps its revision. A directory contributes its\n" +
			"*.yaml, *.yml and *.json files; - reads standard input.",
		Example: "  meshctl policy apply -f payments.yaml\n" +
			"  meshctl policy apply -f policies/ -f extra.yaml\n" +
			"  meshctl policy apply -f payments.yaml --expect payments/payments-charge=3",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			expect, err := parseExpectations(expects)
			if err != nil {
				return err
			}
			sources, err := readPolicyFiles(files, cmd.InOrStdin())
			if err != nil {
				return err
			}
			resp, err := policyCall(cmd.Context(), g, meshcav1.PolicyServiceClient.ApplyPolicies,
				&meshcav1.ApplyPoliciesRequest{Sources: sources, Expect: expect})
			if err != nil {
				return fmt.Errorf("failed to apply policies: %w", err)
			}
			out, err := changesFromProto(resp.GetChanges(), false)
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), g.output, out, out.table)
		},
	}
	addFileFlag(cmd, &files)
	cmd.Flags().StringArrayVar(&expects, "expect", nil, "NAMESPACE/NAME=REVISION: apply "+
		"only if the policy is at this revision (0: it must not exist); repeatable")
	return cmd
}

func newPolicyDiffCommand(g *globals) *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "diff -f FILE|DIR|-",
		Short: "Show what `apply` would change, without changing anything",
		Long: "Ask meshca what applying the files would change (a dry run: the files are\n" +
			"validated as for apply, nothing is stored) and print a unified diff of each\n" +
			"policy that would be created or updated, or \"no changes\". The exit code is 0\n" +
			"either way; invalid files are an error.",
		Example: "  meshctl policy diff -f payments.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sources, err := readPolicyFiles(files, cmd.InOrStdin())
			if err != nil {
				return err
			}
			resp, err := policyCall(cmd.Context(), g, meshcav1.PolicyServiceClient.ApplyPolicies,
				&meshcav1.ApplyPoliciesRequest{Sources: sources, DryRun: true})
			if err != nil {
				return fmt.Errorf("failed to compute the changes: %w", err)
			}
			out, err := changesFromProto(resp.GetChanges(), true)
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), g.output, out, out.diff)
		},
	}
	addFileFlag(cmd, &files)
	return cmd
}

func newPolicyValidateCommand(g *globals) *cobra.Command {
	var files []string
	var trustDomain string
	cmd := &cobra.Command{
		Use:   "validate -f FILE|DIR|-",
		Short: "Check policy files offline and print every problem",
		Long: "Check policy files without a server, as `apply` would: print one line per\n" +
			"problem with its file, line, document and field, and exit with code 1 when\n" +
			"there is any. SPIFFE IDs in policies must belong to --trust-domain, which\n" +
			"must be the server's.",
		Example: "  meshctl policy validate -f policies/\n" +
			"  meshctl policy validate -f payments.yaml --trust-domain prod.example.com",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := spiffeid.TrustDomainFromString(trustDomain)
			if err != nil {
				return fmt.Errorf("--trust-domain %q: %w", trustDomain, err)
			}
			res := validateFiles(files, cmd.InOrStdin(), td)
			if err := render(cmd.OutOrStdout(), g.output, res, res.table); err != nil {
				return err
			}
			switch n := len(res.Problems); n {
			case 0:
				return nil
			case 1:
				return errors.New("1 problem found")
			default:
				return fmt.Errorf("%d problems found", n)
			}
		},
	}
	addFileFlag(cmd, &files)
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "cluster.local",
		"the server's trust domain")
	return cmd
}

func newPolicyGetCommand(g *globals) *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:   "get NAME -n NAMESPACE",
		Short: "Show the current revision of a policy",
		Long: "Show the current revision of a policy. The table format prints the document\n" +
			"as YAML, ready to edit and apply; json and yaml wrap it with its revision.",
		Example: "  meshctl policy get payments-charge -n payments",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := policyCall(cmd.Context(), g, meshcav1.PolicyServiceClient.GetPolicy,
				&meshcav1.GetPolicyRequest{Namespace: ns, Name: args[0]})
			if err != nil {
				return fmt.Errorf("failed to get policy: %w", err)
			}
			rev, err := revisionFromProto(resp)
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), g.output, rev, rev.table)
		},
	}
	addNamespaceFlag(cmd, &ns)
	return cmd
}

func newPolicyListCommand(g *globals) *cobra.Command {
	var ns string
	var all bool
	cmd := &cobra.Command{
		Use:   "list [-n NAMESPACE | -A]",
		Short: "List the current policies of a namespace, or of all",
		Example: "  meshctl policy list -n payments\n" +
			"  meshctl policy list -A -o yaml",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := policyCall(cmd.Context(), g, meshcav1.PolicyServiceClient.ListPolicies,
				&meshcav1.ListPoliciesRequest{Namespace: ns})
			if err != nil {
				return fmt.Errorf("failed to list policies: %w", err)
			}
			list, err := listFromProto(resp)
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), g.output, list, list.table)
		},
	}
	cmd.Flags().StringVarP(&ns, "namespace", "n", "", "only this namespace (default: all)")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "every namespace (the default)")
	cmd.MarkFlagsMutuallyExclusive("namespace", "all-namespaces")
	return cmd
}

func newPolicyDeleteCommand(g *globals) *cobra.Command {
	var ns string
	var expect int64
	cmd := &cobra.Command{
		Use:   "delete NAME -n NAMESPACE",
		Short: "Delete a policy; the deletion is a revision too",
		Example: "  meshctl policy delete payments-charge -n payments\n" +
			"  meshctl policy rollback payments-charge -n payments --to 2  # undo it",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if expect < 0 {
				return fmt.Errorf("--expect-revision %d must not be negative", expect)
			}
			resp, err := policyCall(cmd.Context(), g, meshcav1.PolicyServiceClient.DeletePolicy,
				&meshcav1.DeletePolicyRequest{Namespace: ns, Name: args[0],
					ExpectedRevision: expect})
			if err != nil {
				return fmt.Errorf("failed to delete policy: %w", err)
			}
			return renderChange(cmd.OutOrStdout(), g.output, resp)
		},
	}
	addNamespaceFlag(cmd, &ns)
	addExpectRevisionFlag(cmd, &expect)
	return cmd
}

func newPolicyHistoryCommand(g *globals) *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:     "history NAME -n NAMESPACE",
		Short:   "List every revision of a policy, oldest first",
		Example: "  meshctl policy history payments-charge -n payments -o yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := policyCall(cmd.Context(), g, meshcav1.PolicyServiceClient.PolicyHistory,
				&meshcav1.PolicyHistoryRequest{Namespace: ns, Name: args[0]})
			if err != nil {
				return fmt.Errorf("failed to get policy history: %w", err)
			}
			hist, err := historyFromProto(resp)
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), g.output, hist, hist.table)
		},
	}
	addNamespaceFlag(cmd, &ns)
	return cmd
}

func newPolicyRollbackCommand(g *globals) *cobra.Command {
	var ns string
	var to, expect int64
	cmd := &cobra.Command{
		Use:   "rollback NAME -n NAMESPACE --to REVISION",
		Short: "Make the document of an earlier revision current, as a new revision",
		Long: "Apply the document of an earlier revision again, as a new revision; it is\n" +
			"validated as any apply. A deleted policy is re-created.",
		Example: "  meshctl policy history payments-charge -n payments\n" +
			"  meshctl policy rollback payments-charge -n payments --to 2",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to <= 0 {
				return fmt.Errorf("--to %d must be a revision, from 1", to)
			}
			if expect < 0 {
				return fmt.Errorf("--expect-revision %d must not be negative", expect)
			}
			resp, err := policyCall(cmd.Context(), g, meshcav1.PolicyServiceClient.RollbackPolicy,
				&meshcav1.RollbackPolicyRequest{Namespace: ns, Name: args[0], ToRevision: to,
					ExpectedRevision: expect})
			if err != nil {
				return fmt.Errorf("failed to roll back policy: %w", err)
			}
			return renderChange(cmd.OutOrStdout(), g.output, resp)
		},
	}
	addNamespaceFlag(cmd, &ns)
	addExpectRevisionFlag(cmd, &expect)
	cmd.Flags().Int64Var(&to, "to", 0, "the revision to roll back to (required)")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func addFileFlag(cmd *cobra.Command, files *[]string) {
	cmd.Flags().StringArrayVarP(files, "filename", "f", nil,
		"policy file, directory of *.yaml/*.yml/*.json files, or - for stdin; repeatable")
	_ = cmd.MarkFlagRequired("filename")
}

func addNamespaceFlag(cmd *cobra.Command, ns *string) {
	cmd.Flags().StringVarP(ns, "namespace", "n", "", "namespace of the policy (required)")
	_ = cmd.MarkFlagRequired("namespace")
}

func addExpectRevisionFlag(cmd *cobra.Command, expect *int64) {
	cmd.Flags().Int64Var(expect, "expect-revision", 0,
		"act only if the policy is at this revision (default: any)")
}

// policyCall runs one PolicyService call over a fresh admin connection.
func policyCall[Req, Resp any](ctx context.Context, g *globals,
	rpc func(meshcav1.PolicyServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error),
	req Req) (Resp, error) {
	c, err := g.dialAdmin()
	if err != nil {
		var zero Resp
		return zero, err
	}
	defer c.Close()
	bound := func(ctx context.Context, req Req, opts ...grpc.CallOption) (Resp, error) {
		return rpc(c.policy, ctx, req, opts...)
	}
	return call(ctx, c, bound, req)
}

// parseExpectations parses the --expect values NAMESPACE/NAME=REVISION.
func parseExpectations(values []string) ([]*meshcav1.Expectation, error) {
	var out []*meshcav1.Expectation
	for _, v := range values {
		key, revText, ok := strings.Cut(v, "=")
		ns, name, okKey := strings.Cut(key, "/")
		rev, err := strconv.ParseInt(revText, 10, 64)
		if !ok || !okKey || ns == "" || name == "" || err != nil || rev < 0 {
			return nil, fmt.Errorf("--expect %q is not NAMESPACE/NAME=REVISION "+
				"(a revision from 0)", v)
		}
		out = append(out, &meshcav1.Expectation{Namespace: ns, Name: name, Revision: rev})
	}
	return out, nil
}

// readPolicyFiles reads the -f arguments: files, directories (their *.yaml, *.yml and
// *.json files, as policy.ExpandPaths says) and "-" for stdin, at most once.
func readPolicyFiles(args []string, stdin io.Reader) ([]*meshcav1.PolicySource, error) {
	files, errs := readPolicyContents(args, stdin)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	out := make([]*meshcav1.PolicySource, len(files))
	for i, f := range files {
		out[i] = &meshcav1.PolicySource{Name: f.Name, Content: f.Data}
	}
	return out, nil
}

// readPolicyContents reads what readPolicyFiles reads and returns every read error.
func readPolicyContents(args []string, stdin io.Reader) ([]policy.File, []error) {
	var (
		files    []policy.File
		errs     []error
		sawStdin bool
	)
	for _, arg := range args {
		if arg == "-" {
			if sawStdin {
				errs = append(errs, errors.New("-f - is given twice: stdin is read once"))
				continue
			}
			sawStdin = true
			data, err := io.ReadAll(stdin)
			if err != nil {
				errs = append(errs, fmt.Errorf("failed to read stdin: %w", err))
				continue
			}
			files = append(files, policy.File{Name: stdinName, Data: data})
			continue
		}
		paths, err := policy.ExpandPaths([]string{arg})
		if err != nil {
			errs = append(errs, err)
		}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				errs = append(errs, fmt.Errorf("failed to read policy file: %w", err))
				continue
			}
			files = append(files, policy.File{Name: p, Data: data})
		}
	}
	return files, errs
}

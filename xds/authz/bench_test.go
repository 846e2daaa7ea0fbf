package authz_test

import (
	"fmt"
	"testing"

	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/xds/authz"
)

// benchPolicies makes n policies that all select the payments workload: a worst case,
// as every one is validated and compiled. Each has an ALLOW or DENY rule with a
// service account and a namespace caller, and a second rule with two methods and two
// paths.
func benchPolicies(n int) []policy.Policy {
	ps := make([]policy.Policy, n)
	for i := range ps {
		action := policy.ActionAllow
		if i%10 == 0 {
			action = policy.ActionDeny
		}
		ps[i] = policy.Policy{
			APIVersion: policy.APIVersion,
			Kind:       policy.Kind,
			Metadata:   policy.Metadata{Name: fmt.Sprintf("p-%04d", i), Namespace: "payments"},
			Spec: policy.Spec{
				Selector: &policy.Selector{ServiceAccount: "payments"},
				Action:   action,
				Rules: []policy.Rule{
					{
						From: []policy.Source{
							{ServiceAccount: fmt.Sprintf("orders/sa-%d", i)},
							{Namespace: fmt.Sprintf("team-%d", i)},
						},
						To: []policy.Operation{{Methods: []string{"POST"},
							Paths: []string{fmt.Sprintf("/v1/charge/%d", i)}}},
					},
					{
						To: []policy.Operation{{Methods: []string{"GET", "HEAD"},
							Paths: []string{fmt.Sprintf("/v1/items/%d/*", i), "/healthz"}}},
					},
				},
			},
		}
	}
	return ps
}

// BenchmarkCompile1000 compiles 1,000 policies selecting one workload: validation,
// the RBAC protos and their deterministic marshalling into the two filters.
func BenchmarkCompile1000(b *testing.B) {
	ps := benchPolicies(1000)
	b.ReportAllocs()
	for b.Loop() {
		out, err := authz.Compile(ps, payments, opts)
		if err != nil {
			b.Fatal(err)
		}
		if len(out.Filters) != 2 {
			b.Fatalf("got %d filters", len(out.Filters))
		}
	}
}

// BenchmarkCompile1000Others compiles for a workload that none of 1,000 policies of
// other namespaces selects: the cost of looking past them.
func BenchmarkCompile1000Others(b *testing.B) {
	ps := benchPolicies(1000)
	w := authz.Workload{Namespace: "orders", ServiceAccount: "orders"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := authz.Compile(ps, w, opts); err != nil {
			b.Fatal(err)
		}
	}
}

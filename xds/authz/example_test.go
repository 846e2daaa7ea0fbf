package authz_test

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/xds/authz"
)

// Compile the issue's policy for the payments workload: one ALLOW filter, to put
// before the router of a connection manager that also carries HCMNormalization.
func ExampleCompile() {
	const file = `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payments-charge, namespace: payments}
spec:
  selector: {serviceAccount: payments}
  action: ALLOW
  rules:
  - from: [{serviceAccount: orders/orders}]
    to: [{methods: [POST], paths: [/charge]}]
`
	policies, err := policy.Parse([]byte(file), "payments.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := authz.Compile(policies,
		authz.Workload{Namespace: "payments", ServiceAccount: "payments"},
		authz.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		fmt.Println(err)
		return
	}

	for _, f := range out.Filters {
		fmt.Println(f.GetName())
	}
	for name, p := range out.Allow.GetRules().GetPolicies() {
		fmt.Println(name, p.GetPrincipals()[0].GetAuthenticated().GetPrincipalName().GetExact())
	}
	// Output:
	// envoy.filters.http.rbac.allow
	// payments/payments-charge/rule-0 spiffe://cluster.local/ns/orders/sa/orders
}

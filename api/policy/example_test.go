package policy_test

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/api/policy"
)

// Parse refuses what is not part of the schema; Validate then checks the values. Each
// problem comes with its file, document, field and line.
func ExampleParse() {
	const file = `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payments-charge, namespace: payments}
spec:
  selector: {serviceAccount: payments}
  action: ALLOW
  rules:
  - from: [{serviceAccount: orders/orders}]
    to:
    - methods: [post]
      paths: [/charge]
      hosts: [payments]
`
	td := spiffeid.RequireTrustDomainFromString("cluster.local")

	policies, err := policy.Parse([]byte(file), "payments.yaml")
	problems := policy.FieldErrors(err)
	for _, p := range policies {
		problems = append(problems, policy.FieldErrors(policy.Validate(p, td))...)
	}
	for _, fe := range problems {
		fmt.Printf("%s:%d: %s: %v\n", fe.Source, fe.Line, fe.Path, fe.Kind)
	}
	fmt.Println(problems[1].Message)
	// Output:
	// payments.yaml:12: spec.rules[0].to[0].hosts: unknown field
	// payments.yaml:10: spec.rules[0].to[0].methods[0]: invalid value
	// method "post" must be upper case: "POST"
}

// A namespace caller matches every service account of exactly that namespace.
func ExampleSource_Principal() {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	pr, _ := policy.Source{Namespace: "orders"}.Principal(td)

	fmt.Println(pr.Match, pr.Prefix)
	fmt.Println(pr.Matches("spiffe://cluster.local/ns/orders/sa/checkout"))
	fmt.Println(pr.Matches("spiffe://cluster.local/ns/orders-x/sa/checkout"))
	// Output:
	// spiffe://cluster.local/ns/orders/sa/ true
	// true
	// false
}

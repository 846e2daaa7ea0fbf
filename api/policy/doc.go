// Package policy is meshca's authorization policy model: the AuthorizationPolicy
// document operators write in YAML, its strict parser, and its validation.
//
// A policy protects the workloads it selects in its namespace and says which callers
// (SPIFFE IDs of verified client certificates) may, or may not, call which methods and
// paths:
//
//	apiVersion: meshca.io/v1alpha1
//	kind: AuthorizationPolicy
//	metadata: {name: payments-charge, namespace: payments}
//	spec:
//	  selector: {serviceAccount: payments}
//	  action: ALLOW
//	  rules:
//	  - from: [{serviceAccount: orders/orders}]
//	    to: [{methods: [POST], paths: [/charge]}]
//
// [Parse] reads multi-document YAML and refuses unknown fields; [Validate] and
// [ValidateSet] check values and conflicts; [ValidateFiles] does both for files and
// directories, [ValidateContents] for contents already read. Every problem is
// reported as its own [*FieldError] naming the file, the document, the field path and
// the line, so a caller can print one precise error per problem. The semantics (DENY
// first, ALLOW as an allow-list, default allow) are those of docs/policy.md; package
// xds/authz compiles policies into Envoy RBAC.
package policy

// Package authz compiles authorization policies (package api/policy) into Envoy's
// RBAC HTTP filter, the one compiler behind both Envoy sidecars and grpc-go's
// proxyless xDS servers.
//
// [Compile] selects the policies of one workload and returns up to two filters to put,
// in order, before the router: DENY policies in a first RBAC filter, ALLOW policies in
// a second one. Together they implement the semantics of docs/policy.md: DENY first;
// once an ALLOW policy selects a workload, only what some ALLOW policy matches gets
// through; with no policy, everything does (or nothing, with Options.DefaultDeny).
// [HCMNormalization] gives the connection manager settings without which path rules
// could be bypassed.
package authz

// Package xds serves Envoy's discovery protocols on meshca's main gRPC port. In
// direct mode it is the secret discovery service (SDS): each stream is
// authenticated by the workload's projected service-account token, meshca makes the
// workload's key pair in memory, and serves its certificate ("default", or its
// SPIFFE ID) and the trust bundle ("ROOTCA", or "spiffe://<trust-domain>").
//
// Renewed certificates and new bundles are pushed on open streams without the
// client asking again. A rejected response (NACK) is logged and counted and never
// sent again until its content changes.
package xds

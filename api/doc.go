// Package api holds meshca's own gRPC services: the admin API on the local socket and
// the certificate signing API on the main TLS port, with their generated code in
// meshcav1. Handlers depend on the CA and the store through the small interfaces
// declared here, and every error reaches the caller through one mapping (status.go),
// which logs the cause once and returns a gRPC code with a short message.
package api

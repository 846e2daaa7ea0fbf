// Package envoyvalidate checks Envoy configuration protos the way Envoy would, as far as
// that is possible without an Envoy binary.
//
// The protoc-gen-validate methods generated into go-control-plane stop at every
// google.protobuf.Any: a listener whose HttpConnectionManager has no stat_prefix passes
// Listener.ValidateAll, yet Envoy refuses it. [Validate] runs the generated rules, then
// walks the whole message, expands every Any into its registered type and validates
// that too, recursively. It adds the checks the generated rules lack and that matter to
// meshca: regexes compile, inline PEM certificates and keys parse, secrets are not
// empty, transport_api_version is V3, no unknown or deprecated fields are set. Every
// violation is reported with the path of the offending field.
//
// [LoadBootstrap] reads a bootstrap file (YAML or JSON) strictly, refusing unknown
// fields and unknown extension types, and validates it.
//
//	bs, err := envoyvalidate.LoadBootstrap(data)
//	var verr *envoyvalidate.Error
//	if errors.As(err, &verr) {
//		for _, v := range verr.Violations {
//			fmt.Println(v.Path, v.Reason)
//		}
//	}
package envoyvalidate

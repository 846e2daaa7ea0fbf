package authz

import (
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// HCMNormalization returns the HttpConnectionManager settings that normalize the
// request path before any HTTP filter sees it, so that the RBAC filters and the
// application judge the same path. Merge them into the listener's connection manager
// with proto.Merge; only these three fields are set:
//
//   - normalize_path: RFC 3986 normalization: dot segments resolved ("/a/../b" is
//     "/b"), percent-encoded unreserved characters decoded ("/%61" is "/a"),
//     backslashes turned into slashes.
//   - merge_slashes: "//a///b" is "/a/b".
//   - path_with_escaped_slashes_action REJECT_REQUEST: a path holding %2F or %5C (in
//     either case) is refused with 400 before authorization.
//
// Escaped slashes are rejected rather than decoded and redirected
// (UNESCAPE_AND_REDIRECT) because the callers here are services, not browsers: a
// gRPC client never follows a redirect, an HTTP client may not follow one for a POST,
// and a redirect sends the request through the proxy twice. Decoding and forwarding
// (UNESCAPE_AND_FORWARD) would change what the application receives. Rejecting fails
// closed, the same way for every method, and the rejected path is one a policy cannot
// name anyway (policy.ParsePath refuses %2F).
//
// Envoy matches url_path against the path without its query string, so a query can
// neither satisfy nor dodge a path rule. grpc-go's xDS server does not normalize, and
// needs not: its RBAC matches the gRPC method name, which names a registered method
// exactly or the call fails.
func HCMNormalization() *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
	}
}

package envoyvalidate

// The blank imports below link the Go types of every Envoy extension that meshca's
// bootstraps and xDS resources carry inside google.protobuf.Any. A type is known to
// protojson and to Validate only once its package is linked into the binary and has
// registered itself in protoregistry.GlobalTypes; without these imports an Any naming a
// perfectly good extension is refused as an unknown type. Add a package here whenever
// meshca starts emitting a new extension.
import (
	// The google_grpc call credentials plugin that attaches the projected token.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	// HTTP filters: authorization compiled from policies, and the terminal router.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	// Network filters: the HTTP connection manager, and RBAC for plain TCP listeners.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	// The TLS transport socket (Upstream/DownstreamTlsContext) and SDS Secret.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	// Per-cluster HTTP protocol options (explicit HTTP/2 towards meshca).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

package envoyvalidate_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/internal/envoyvalidate"
)

// hcmTypeURL is the type URL of the HTTP connection manager.
const hcmTypeURL = "type.googleapis.com/envoy.extensions.filters.network" +
	".http_connection_manager.v3.HttpConnectionManager"

// minimalBootstrap is a small valid bootstrap: one listener with an HTTP connection
// manager (a typed config inside a typed config for the router) and one cluster.
const minimalBootstrap = `
node: {id: test, cluster: test}
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15006}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": ` + hcmTypeURL + `
          stat_prefix: inbound_http
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
`

const minimalBootstrapJSON = `{
  "node": {"id": "test", "cluster": "test"},
  "static_resources": {"clusters": [{"name": "app", "type": "STATIC",
    "load_assignment": {"cluster_name": "app"}}]}
}`

const bootstrapHCMPath = "static_resources.listeners[0].filter_chains[0].filters[0]" +
	".typed_config" + hcmType

func TestLoadBootstrap(t *testing.T) {
	tests := []struct {
		name        string
		data        string
		wantKind    error  // nil: loads
		wantPath    string // with a validation failure: the violation's path
		wantMention string // with a decoding failure: what the message must name
	}{
		{
			name: "a minimal YAML bootstrap loads",
			data: minimalBootstrap,
		},
		{
			name: "a JSON bootstrap loads",
			data: minimalBootstrapJSON,
		},
		{
			name: "an unknown field is refused",
			data: strings.Replace(minimalBootstrap, "node: {id: test,",
				"node: {bogus_field: 1, id: test,", 1),
			wantKind:    envoyvalidate.ErrDecode,
			wantMention: "bogus_field",
		},
		{
			name: "an unknown field inside a typed config is refused",
			data: strings.Replace(minimalBootstrap, "stat_prefix: inbound_http",
				"stat_prefix: inbound_http\n          bogus_option: true", 1),
			wantKind:    envoyvalidate.ErrDecode,
			wantMention: "bogus_option",
		},
		{
			name: "a typed config of an unknown type is refused, naming the type",
			data: strings.Replace(minimalBootstrap,
				"envoy.extensions.filters.http.router.v3.Router", "meshca.test.NoSuchFilter", 1),
			wantKind:    envoyvalidate.ErrDecode,
			wantMention: "type.googleapis.com/meshca.test.NoSuchFilter",
		},
		{
			name: "a duplicate key is refused",
			data: strings.Replace(minimalBootstrap, "node: {id: test, cluster: test}",
				"node: {id: test, cluster: test, id: other}", 1),
			wantKind: envoyvalidate.ErrDecode,
		},
		{
			name:     "a document that is neither YAML nor JSON is refused",
			data:     "node: [unclosed",
			wantKind: envoyvalidate.ErrDecode,
		},
		{
			name: "an HttpConnectionManager without stat_prefix is refused with its path",
			data: strings.Replace(minimalBootstrap, "stat_prefix: inbound_http",
				`stat_prefix: ""`, 1),
			wantKind: envoyvalidate.ErrRule,
			wantPath: bootstrapHCMPath + ".stat_prefix",
		},
		{
			name: "a route regex that does not compile is refused with its path",
			data: strings.Replace(minimalBootstrap, `match: {prefix: "/"}`,
				`match: {safe_regex: {regex: "/v1/(users"}}`, 1),
			wantKind: envoyvalidate.ErrRegex,
			wantPath: bootstrapHCMPath +
				".route_config.virtual_hosts[0].routes[0].match.safe_regex.regex",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs, err := envoyvalidate.LoadBootstrap([]byte(tt.data))
			if tt.wantKind == nil {
				require.NoError(t, err)
				require.Equal(t, "test", bs.GetNode().GetId())
				return
			}
			require.ErrorIs(t, err, tt.wantKind)
			require.Nil(t, bs)
			if tt.wantPath != "" {
				require.Equal(t, tt.wantPath, onlyViolation(t, err).Path)
			}
			if tt.wantMention != "" {
				require.ErrorContains(t, err, tt.wantMention)
			}
		})
	}
}

// TestLoadBootstrapJSONDuplicateKey checks that JSON, decoded as is, still refuses a
// duplicate key.
func TestLoadBootstrapJSONDuplicateKey(t *testing.T) {
	data := strings.Replace(minimalBootstrapJSON, `"id": "test"`, `"id": "test", "id": "x"`, 1)

	_, err := envoyvalidate.LoadBootstrap([]byte(data))

	require.ErrorIs(t, err, envoyvalidate.ErrDecode)
}

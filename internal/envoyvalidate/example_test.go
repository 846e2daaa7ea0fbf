package envoyvalidate_test

import (
	"errors"
	"fmt"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/envoyvalidate"
)

// The generated Listener.ValidateAll accepts this listener: both mistakes sit inside
// the HTTP connection manager, a typed config it does not open. Validate opens it.
func ExampleValidate() {
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: "", // required
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{
			RouteConfig: &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{
				Name:    "app",
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{
						SafeRegex: &matcherv3.RegexMatcher{Regex: "^/v1/(users$"}}},
					Action: &routev3.Route_DirectResponse{
						DirectResponse: &routev3.DirectResponseAction{Status: 200}},
				}},
			}}},
		},
	})
	l := &listenerv3.Listener{
		Name: "inbound",
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
		}}}},
	}

	fmt.Println("generated:", l.ValidateAll())
	var verr *envoyvalidate.Error
	if errors.As(envoyvalidate.Validate(l), &verr) {
		// Paths are long: show the expanded type on a line of its own.
		layout := strings.NewReplacer("(", "\n  in ", ").", "\n  at ")
		for _, v := range verr.Violations {
			fmt.Printf("%v\n%s\n", v.Kind, layout.Replace("  at "+v.Path))
		}
	}
	// Output:
	// generated: <nil>
	// breaks an Envoy API rule
	//   at filter_chains[0].filters[0].typed_config
	//   in envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
	//   at stat_prefix
	// invalid regex
	//   at filter_chains[0].filters[0].typed_config
	//   in envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
	//   at route_config.virtual_hosts[0].routes[0].match.safe_regex.regex
}

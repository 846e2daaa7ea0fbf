package xds

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshca/meshca/xds/authz"
)

// ServerListenerPrefix starts the name of the listener a proxyless gRPC server asks
// for; the address it listens on follows. Configure grpc-go's bootstrap with
// server_listener_resource_name_template ServerListenerPrefix+"%s".
const ServerListenerPrefix = "grpc/server?xds.resource.listening_address="

// CertProviderInstance is the certificate provider instance name that proxyless gRPC
// listeners and clusters refer to: grpc-go's bootstrap must define it (plugin
// file_watcher reading the workload's SVID, key and bundle). Its certificate names are
// SecretDefault for the identity and SecretRootCA for the roots.
const CertProviderInstance = "meshca"

// The name prefixes of the resources meshca builds for a service "<name>.<namespace>"
// and for a sidecar's local application.
const (
	outboundPrefix = "outbound|"
	inboundPrefix  = "inbound|"
)

// Node metadata keys meshca reads. Values are strings.
const (
	// MetaInstanceIP is the address clients dial when a server listens on an
	// unspecified address (0.0.0.0 or ::), normally the pod IP.
	MetaInstanceIP = "meshca.io/instance-ip"
	// MetaInboundPort is the port of an Envoy sidecar's inbound listener.
	MetaInboundPort = "meshca.io/inbound-port"
	// MetaAppPort is the local port of the application behind an Envoy sidecar.
	MetaAppPort = "meshca.io/app-port"
)

// The type names of Envoy's HTTP filters and transport sockets.
const (
	routerFilterName = "envoy.filters.http.router"
	hcmFilterName    = "envoy.filters.network.http_connection_manager"
	tlsSocketName    = "envoy.transport_sockets.tls"
)

// metaString returns a string value of the node's metadata, or "".
func metaString(node *core.Node, key string) string {
	return node.GetMetadata().GetFields()[key].GetStringValue()
}

// metaPort returns a port from the node's metadata (string or number), or 0.
func metaPort(node *core.Node, key string) uint32 {
	v := node.GetMetadata().GetFields()[key]
	if v == nil {
		return 0
	}
	s := v.GetStringValue()
	if s == "" {
		s = strconv.FormatFloat(v.GetNumberValue(), 'f', -1, 64)
	}
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0
	}
	return uint32(p)
}

// parseService checks a client's target "<service account>.<namespace>" (two DNS
// labels): a service is the workloads of one service account.
func parseService(target string) (string, bool) {
	name, ns, ok := strings.Cut(target, ".")
	if !ok || !isDNSLabel(name) || !isDNSLabel(ns) {
		return "", false
	}
	return target, true
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// marshalAny packs a message deterministically.
func marshalAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Only messages built here are packed; they always marshal.
		panic(fmt.Sprintf("xds: failed to encode %T: %v", m, err))
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(proto.MessageName(m)), Value: b}
}

func providerInstance(certName string) *tlsv3.CertificateProviderPluginInstance {
	return &tlsv3.CertificateProviderPluginInstance{
		InstanceName: CertProviderInstance, CertificateName: certName,
	}
}

func tlsSocket(m proto.Message) *core.TransportSocket {
	return &core.TransportSocket{
		Name:       tlsSocketName,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: marshalAny(m)},
	}
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{
		SocketAddress: &core.SocketAddress{
			Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
		},
	}}
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

func routerFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name:       routerFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: marshalAny(&routerv3.Router{})},
	}
}

func hcmFilter(hcm *hcmv3.HttpConnectionManager) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name:       hcmFilterName,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: marshalAny(hcm)},
	}
}

// inboundHCM is the connection manager of an inbound listener: one route for every
// request, the RBAC filters, then the router.
func inboundHCM(route *routev3.Route, rbac *authz.CompiledRBAC) *hcmv3.HttpConnectionManager {
	filters := append(append([]*hcmv3.HttpFilter{}, rbac.Filters...), routerFilter())
	return &hcmv3.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{
			RouteConfig: &routev3.RouteConfiguration{
				Name: "inbound",
				VirtualHosts: []*routev3.VirtualHost{{
					Name: "inbound", Domains: []string{"*"}, Routes: []*routev3.Route{route},
				}},
			},
		},
		HttpFilters: filters,
	}
}

// serverListener is the listener of a proxyless gRPC server listening on addr: mTLS
// with the workload's certificate from the certificate provider, the RBAC filters,
// and a route that hands every call to the server itself.
func serverListener(name, host string, port uint32, rbac *authz.CompiledRBAC) *listenerv3.Listener {
	hcm := inboundHCM(&routev3.Route{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_NonForwardingAction{
			NonForwardingAction: &routev3.NonForwardingAction{},
		},
	}, rbac)
	tls := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: providerInstance(SecretDefault),
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
				ValidationContext: &tlsv3.CertificateValidationContext{
					CaCertificateProviderInstance: providerInstance(SecretRootCA),
				},
			},
		},
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(host, port),
		FilterChains: []*listenerv3.FilterChain{{
			Name:            "inbound-mtls",
			Filters:         []*listenerv3.Filter{hcmFilter(hcm)},
			TransportSocket: tlsSocket(tls),
		}},
	}
}

// apiListener is what a proxyless gRPC client of service svc asks for: an API
// listener whose routes come over ADS.
func apiListener(svc string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "outbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: svc,
		}},
		HttpFilters: []*hcmv3.HttpFilter{routerFilter()},
	}
	return &listenerv3.Listener{
		Name:        svc,
		ApiListener: &listenerv3.ApiListener{ApiListener: marshalAny(hcm)},
	}
}

// outboundRoute sends every call to service svc to its cluster.
func outboundRoute(svc string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: svc,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    svc,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: outboundPrefix + svc},
				}},
			}},
		}},
	}
}

// outboundCluster is the EDS cluster of service svc: mTLS with the workload's
// certificate, and the server must present one of ids. With no server known, it
// requires an ID no CA issues (empty path segments are not valid SPIFFE IDs), so
// that a cluster never accepts whatever identity answers.
func outboundCluster(svc string, td spiffeid.TrustDomain, ids []spiffeid.ID) *clusterv3.Cluster {
	exact := func(s string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
	}
	var sans []*matcherv3.StringMatcher
	for _, id := range ids {
		sans = append(sans, exact(id.String()))
	}
	if len(sans) == 0 {
		sans = append(sans, exact(td.IDString()+"/ns//sa/"))
	}
	tls := &tlsv3.UpstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: providerInstance(SecretDefault),
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
				ValidationContext: &tlsv3.CertificateValidationContext{
					CaCertificateProviderInstance: providerInstance(SecretRootCA),
					MatchSubjectAltNames:          sans,
				},
			},
		},
	}
	return &clusterv3.Cluster{
		Name:                 outboundPrefix + svc,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: adsSource(), ServiceName: outboundPrefix + svc,
		},
		LbPolicy:        clusterv3.Cluster_ROUND_ROBIN,
		TransportSocket: tlsSocket(tls),
	}
}

// loadAssignment lists the endpoints of a service in one locality. The locality has an
// ID and a weight: grpc-go rejects a locality without an ID and never picks an
// endpoint of a locality without a weight.
func loadAssignment(name string, eps []endpoint) *endpointv3.ClusterLoadAssignment {
	la := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(eps) == 0 {
		return la
	}
	// TODO: endpoints carry no zone yet: every server is in one locality.
	loc := &endpointv3.LocalityLbEndpoints{
		Locality:            &core.Locality{Zone: "default"},
		LoadBalancingWeight: wrapperspb.UInt32(1),
	}
	for _, e := range eps {
		host, portStr, _ := net.SplitHostPort(e.addr)
		port, _ := strconv.ParseUint(portStr, 10, 16)
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HealthStatus: core.HealthStatus_HEALTHY,
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(host, uint32(port)),
			}},
		})
	}
	la.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}
	return la
}

// sidecarListener is an Envoy sidecar's inbound listener on port: mTLS with the
// workload's certificate and the roots over SDS, the path normalized, the RBAC
// filters, and a route to the application on appPort.
func sidecarListener(port, appPort uint32, td spiffeid.TrustDomain,
	rbac *authz.CompiledRBAC) *listenerv3.Listener {
	hcm := inboundHCM(&routev3.Route{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: localClusterName(appPort)},
		}},
	}, rbac)
	hcm.CodecType = hcmv3.HttpConnectionManager_AUTO
	// Tell the application who called: the caller's SPIFFE ID replaces any
	// x-forwarded-client-cert header the caller sent.
	hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
	hcm.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
		Uri: true,
	}
	proto.Merge(hcm, authz.HCMNormalization())
	sds := func(name string) *tlsv3.SdsSecretConfig {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
	}
	tls := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols: []string{"h2", "http/1.1"},
			TlsParams: &tlsv3.TlsParameters{
				TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
			},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds(SecretDefault)},
			// Callers are verified against the trust bundle and must carry a SPIFFE ID
			// of the trust domain; the RBAC filters then judge which one.
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext: &tlsv3.CertificateValidationContext{
						MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
							SanType: tlsv3.SubjectAltNameMatcher_URI,
							Matcher: &matcherv3.StringMatcher{
								MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: td.IDString() + "/"},
							},
						}},
					},
					ValidationContextSdsSecretConfig: sds(SecretRootCA),
				},
			},
		},
	}
	return &listenerv3.Listener{
		Name:    inboundPrefix + strconv.FormatUint(uint64(port), 10),
		Address: socketAddress("0.0.0.0", port),
		FilterChains: []*listenerv3.FilterChain{{
			Name:            "inbound-mtls",
			Filters:         []*listenerv3.Filter{hcmFilter(hcm)},
			TransportSocket: tlsSocket(tls),
		}},
	}
}

func localClusterName(appPort uint32) string {
	return inboundPrefix + strconv.FormatUint(uint64(appPort), 10)
}

// localCluster reaches a sidecar's application on the loopback interface.
func localCluster(appPort uint32) *clusterv3.Cluster {
	name := localClusterName(appPort)
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
						Endpoint: &endpointv3.Endpoint{Address: socketAddress("127.0.0.1", appPort)},
					},
				}},
			}},
		},
	}
}

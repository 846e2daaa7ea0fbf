package envoyvalidate_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/envoyvalidate"
)

// Full names of the expanded types, as they appear in violation paths.
const (
	hcmType  = "(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)"
	rbacType = "(envoy.extensions.filters.http.rbac.v3.RBAC)"
	dtlsType = "(envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext)"
	hcmPath  = "filter_chains[0].filters[0].typed_config" + hcmType
)

func TestValidate(t *testing.T) {
	certPEM, keyPEM := selfSigned(t)

	tests := []struct {
		name     string
		msg      func(t testing.TB) proto.Message
		wantKind error // nil: the message is valid
		wantPath string
	}{
		{
			name: "a listener with an HttpConnectionManager, RBAC and router filters is valid",
			msg:  func(t testing.TB) proto.Message { return newListener(t, newHCM(t)) },
		},
		{
			name: "an SDS secret with a certificate chain and key is valid",
			msg: func(t testing.TB) proto.Message {
				return &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{
					TlsCertificate: tlsCertificate(certPEM, keyPEM)}}
			},
		},
		{
			name: "an SDS trust bundle is valid",
			msg: func(t testing.TB) proto.Message {
				return &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{
					ValidationContext: &tlsv3.CertificateValidationContext{
						TrustedCa: inlineBytes(certPEM)}}}
			},
		},
		{
			name: "an HttpConnectionManager without stat_prefix inside a listener is refused",
			msg: func(t testing.TB) proto.Message {
				hcm := newHCM(t)
				hcm.StatPrefix = ""
				return newListener(t, hcm)
			},
			wantKind: envoyvalidate.ErrRule,
			wantPath: hcmPath + ".stat_prefix",
		},
		{
			name: "an RBAC filter two typed configs deep with a regex that does not compile",
			msg: func(t testing.TB) proto.Message {
				hcm := newHCM(t)
				hcm.HttpFilters[0] = rbacFilter(t, "/charge/(")
				return newListener(t, hcm)
			},
			wantKind: envoyvalidate.ErrRegex,
			wantPath: hcmPath + ".http_filters[0].typed_config" + rbacType +
				".rules.policies[orders-charge].permissions[0].url_path.path.safe_regex.regex",
		},
		{
			name: "an RBAC policy without principals, found through the policies map",
			msg: func(t testing.TB) proto.Message {
				rbac := &rbacfilterv3.RBAC{}
				require.NoError(t, rbacFilter(t, "^/$").GetTypedConfig().UnmarshalTo(rbac))
				rbac.GetRules().GetPolicies()["orders-charge"].Principals = nil
				return rbac
			},
			wantKind: envoyvalidate.ErrRule,
			wantPath: "rules.policies[orders-charge].principals",
		},
		{
			name: "an RBAC permission with none of its oneof set",
			msg: func(t testing.TB) proto.Message {
				rbac := &rbacfilterv3.RBAC{}
				require.NoError(t, rbacFilter(t, "^/$").GetTypedConfig().UnmarshalTo(rbac))
				rbac.GetRules().GetPolicies()["orders-charge"].Permissions[0].Rule = nil
				return rbac
			},
			wantKind: envoyvalidate.ErrRule,
			wantPath: "rules.policies[orders-charge].permissions[0].rule",
		},
		{
			name: "a route whose regex does not compile",
			msg: func(t testing.TB) proto.Message {
				rc := routeConfig()
				rc.VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{
					SafeRegex: &matcherv3.RegexMatcher{Regex: "[a-"}}
				return rc
			},
			wantKind: envoyvalidate.ErrRegex,
			wantPath: "virtual_hosts[0].routes[0].match.safe_regex.regex",
		},
		{
			name: "a filter whose typed_config names an unregistered type",
			msg: func(t testing.TB) proto.Message {
				l := newListener(t, newHCM(t))
				l.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl =
					"type.googleapis.com/meshca.test.NoSuchFilter"
				return l
			},
			wantKind: envoyvalidate.ErrUnknownType,
			wantPath: "filter_chains[0].filters[0].typed_config",
		},
		{
			name: "a filter whose typed_config bytes do not decode",
			msg: func(t testing.TB) proto.Message {
				l := newListener(t, newHCM(t))
				// Field 1, length-delimited, announcing 5 bytes that are not there.
				l.FilterChains[0].Filters[0].GetTypedConfig().Value = []byte{0x0a, 0x05}
				return l
			},
			wantKind: envoyvalidate.ErrBadAny,
			wantPath: "filter_chains[0].filters[0].typed_config",
		},
		{
			name: "an HttpConnectionManager carrying a field its proto does not declare",
			msg: func(t testing.TB) proto.Message {
				hcm := newHCM(t)
				unknown := protowire.AppendTag(nil, 9999, protowire.VarintType)
				hcm.ProtoReflect().SetUnknown(protowire.AppendVarint(unknown, 1))
				return newListener(t, hcm)
			},
			wantKind: envoyvalidate.ErrUnknownFields,
			wantPath: hcmPath,
		},
		{
			name: "a TLS certificate whose inline chain is not PEM",
			msg: func(t testing.TB) proto.Message {
				c := tlsCertificate(certPEM, keyPEM)
				c.CertificateChain = &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineString{InlineString: "not a certificate"}}
				return listenerWithTLS(t, &tlsv3.CommonTlsContext{
					TlsCertificates: []*tlsv3.TlsCertificate{c}})
			},
			wantKind: envoyvalidate.ErrPEM,
			wantPath: "filter_chains[0].transport_socket.typed_config" + dtlsType +
				".common_tls_context.tls_certificates[0].certificate_chain.inline_string",
		},
		{
			name: "a TLS certificate whose inline key does not parse",
			msg: func(t testing.TB) proto.Message {
				bad := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("junk")})
				return &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{
					TlsCertificate: tlsCertificate(certPEM, bad)}}
			},
			wantKind: envoyvalidate.ErrPEM,
			wantPath: "tls_certificate.private_key.inline_bytes",
		},
		{
			name: "a TLS certificate without a private key",
			msg: func(t testing.TB) proto.Message {
				c := tlsCertificate(certPEM, keyPEM)
				c.PrivateKey = nil
				return &tlsv3.Secret{Name: "default",
					Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: c}}
			},
			wantKind: envoyvalidate.ErrEmptySecret,
			wantPath: "tls_certificate.private_key",
		},
		{
			name: "a validation context whose inline trusted CA is empty",
			msg: func(t testing.TB) proto.Message {
				return listenerWithTLS(t, &tlsv3.CommonTlsContext{
					ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
						ValidationContext: &tlsv3.CertificateValidationContext{
							TrustedCa: inlineBytes(nil)}}})
			},
			wantKind: envoyvalidate.ErrPEM,
			wantPath: "filter_chains[0].transport_socket.typed_config" + dtlsType +
				".common_tls_context.validation_context.trusted_ca.inline_bytes",
		},
		{
			name: "an SDS secret without a name",
			msg: func(t testing.TB) proto.Message {
				return &tlsv3.Secret{Type: &tlsv3.Secret_ValidationContext{
					ValidationContext: &tlsv3.CertificateValidationContext{
						TrustedCa: inlineBytes(certPEM)}}}
			},
			wantKind: envoyvalidate.ErrEmptySecret,
			wantPath: "name",
		},
		{
			name:     "an SDS secret without content",
			msg:      func(t testing.TB) proto.Message { return &tlsv3.Secret{Name: "ROOTCA"} },
			wantKind: envoyvalidate.ErrEmptySecret,
			wantPath: "",
		},
		{
			name: "a gRPC config source without transport_api_version",
			msg: func(t testing.TB) proto.Message {
				cs := grpcConfigSource()
				cs.GetApiConfigSource().TransportApiVersion = corev3.ApiVersion_AUTO
				return cs
			},
			wantKind: envoyvalidate.ErrUnsupported,
			wantPath: "api_config_source.transport_api_version",
		},
		{
			name: "a deprecated field set inside a typed config",
			msg: func(t testing.TB) proto.Message {
				return listenerWithTLS(t, &tlsv3.CommonTlsContext{
					ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
						ValidationContext: &tlsv3.CertificateValidationContext{
							MatchSubjectAltNames: []*matcherv3.StringMatcher{{
								MatchPattern: &matcherv3.StringMatcher_Prefix{
									Prefix: "spiffe://cluster.local/"}}}}}})
			},
			wantKind: envoyvalidate.ErrDeprecated,
			wantPath: "filter_chains[0].transport_socket.typed_config" + dtlsType +
				".common_tls_context.validation_context.match_subject_alt_names",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := envoyvalidate.Validate(tt.msg(t))
			if tt.wantKind == nil {
				require.NoError(t, err)
				return
			}
			v := onlyViolation(t, err)
			require.ErrorIs(t, v, tt.wantKind)
			require.Equal(t, tt.wantPath, v.Path)
		})
	}
}

// TestGeneratedValidationStopsAtAny pins the gap this package exists for: the
// generated validator accepts what Validate refuses.
func TestGeneratedValidationStopsAtAny(t *testing.T) {
	hcm := newHCM(t)
	hcm.StatPrefix = ""
	l := newListener(t, hcm)

	require.NoError(t, l.ValidateAll(), "the generated validator now looks inside Any")
	require.ErrorIs(t, envoyvalidate.Validate(l), envoyvalidate.ErrRule)
}

func TestValidateErrorText(t *testing.T) {
	l := newListener(t, newHCM(t))
	l.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/meshca.Nope"

	err := envoyvalidate.Validate(l)

	require.EqualError(t, err, "envoyvalidate: filter_chains[0].filters[0].typed_config: "+
		`type URL "type.googleapis.com/meshca.Nope" names no known type`)
}

func TestValidateReportsEveryViolation(t *testing.T) {
	hcm := newHCM(t)
	hcm.StatPrefix = ""
	hcm.HttpFilters[0] = rbacFilter(t, "(")
	l := newListener(t, hcm)
	l.Address.GetSocketAddress().Address = ""
	l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{
		Filters: []*listenerv3.Filter{{Name: "bogus", ConfigType: &listenerv3.Filter_TypedConfig{
			TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/meshca.Nope"}}}}})

	err := envoyvalidate.Validate(l)

	var verr *envoyvalidate.Error
	require.ErrorAs(t, err, &verr)
	type found struct {
		kind error
		path string
	}
	var got []found
	for _, v := range verr.Violations {
		got = append(got, found{v.Kind, v.Path})
	}
	// The listener's own generated rules come first, then the walk in field order.
	require.Equal(t, []found{
		{envoyvalidate.ErrRule, "address.socket_address.address"},
		{envoyvalidate.ErrRule, hcmPath + ".stat_prefix"},
		{envoyvalidate.ErrRegex, hcmPath + ".http_filters[0].typed_config" + rbacType +
			".rules.policies[orders-charge].permissions[0].url_path.path.safe_regex.regex"},
		{envoyvalidate.ErrUnknownType, "filter_chains[1].filters[0].typed_config"},
	}, got)
}

// TestValidateConcurrently backs the doc's claim, under -race, that Validate only reads.
func TestValidateConcurrently(t *testing.T) {
	l := newListener(t, newHCM(t))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := envoyvalidate.Validate(l); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// onlyViolation requires err to be an *envoyvalidate.Error with exactly one violation.
func onlyViolation(t testing.TB, err error) *envoyvalidate.Violation {
	t.Helper()
	var verr *envoyvalidate.Error
	require.ErrorAs(t, err, &verr)
	require.Len(t, verr.Violations, 1, "violations: %v", err)
	return verr.Violations[0]
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	require.NoError(t, err)
	return a
}

// newHCM returns a valid HttpConnectionManager with an RBAC filter and the router.
func newHCM(t testing.TB) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix:     "inbound_http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig()},
		HttpFilters: []*hcmv3.HttpFilter{
			rbacFilter(t, "^/charge/[0-9]+$"),
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{
				TypedConfig: mustAny(t, &routerv3.Router{})}},
		},
	}
}

// rbacFilter allows orders to reach the paths matching pathRegex.
func rbacFilter(t testing.TB, pathRegex string) *hcmv3.HttpFilter {
	path := &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: &matcherv3.StringMatcher{
		MatchPattern: &matcherv3.StringMatcher_SafeRegex{
			SafeRegex: &matcherv3.RegexMatcher{Regex: pathRegex}}}}}
	orders := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{
		Exact: "spiffe://cluster.local/ns/shop/sa/orders"}}
	rbac := &rbacfilterv3.RBAC{Rules: &rbacv3.RBAC{
		Action: rbacv3.RBAC_ALLOW,
		Policies: map[string]*rbacv3.Policy{"orders-charge": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: path}}},
			Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Authenticated_{
				Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: orders}}}},
		}},
	}}
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.rbac",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, rbac)}}
}

func routeConfig() *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: "inbound",
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "app",
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "inbound-app"}}},
			}},
		}},
	}
}

// newListener returns an inbound listener whose only filter is hcm.
func newListener(t testing.TB, hcm *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name: "inbound",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0",
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15006}}}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
			}},
		}},
	}
}

// listenerWithTLS returns a valid listener whose filter chain terminates TLS with ctx.
func listenerWithTLS(t testing.TB, ctx *tlsv3.CommonTlsContext) *listenerv3.Listener {
	l := newListener(t, newHCM(t))
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t,
			&tlsv3.DownstreamTlsContext{CommonTlsContext: ctx})},
	}
	return l
}

func grpcConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{
			ApiConfigSource: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "meshca"}},
				}},
			}},
	}
}

func tlsCertificate(certPEM, keyPEM []byte) *tlsv3.TlsCertificate {
	return &tlsv3.TlsCertificate{CertificateChain: inlineBytes(certPEM),
		PrivateKey: inlineBytes(keyPEM)}
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// selfSigned returns a throwaway P-256 certificate and its PKCS #8 key, both PEM.
func selfSigned(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "envoyvalidate test"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
}

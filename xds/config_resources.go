package xds

import (
	"crypto/sha256"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/xds/authz"
)

// The resource types served over ADS besides secrets.
const (
	listenerTypeURL = resource.ListenerType
	routeTypeURL    = resource.RouteType
	clusterTypeURL  = resource.ClusterType
	endpointTypeURL = resource.EndpointType
)

// workload is the identity a session's listeners are compiled for.
func (sess *session) workload() authz.Workload {
	return authz.Workload{Namespace: sess.ident.Namespace, ServiceAccount: sess.ident.ServiceAccount}
}

// compiledRBAC compiles the authorization of the session's workload from the
// configuration in force, once per configuration. A compile error cannot come from
// policies that were validated when stored; should it happen anyway, the workload
// denies every request rather than allow more than the policies say.
func (sess *session) compiledRBAC(log *slog.Logger) *authz.CompiledRBAC {
	if sess.rbac != nil && sess.rbacFor == sess.config {
		return sess.rbac
	}
	opts := authz.Options{TrustDomain: sess.ident.ID.TrustDomain(),
		DefaultDeny: sess.s.cfg.DefaultDeny}
	rbac, err := authz.Compile(sess.config.policies, sess.workload(), opts)
	if err != nil {
		log.Error("Failed to compile authorization: denying every request", "error", err)
		rbac = denyAll()
	}
	sess.rbac, sess.rbacFor = rbac, sess.config
	return rbac
}

func denyAll() *authz.CompiledRBAC {
	cfg := &rbacfilterv3.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}}
	return &authz.CompiledRBAC{Allow: cfg, Filters: []*hcmv3.HttpFilter{{
		Name:       authz.AllowFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: marshalAny(cfg)},
	}}}
}

// resolveConfig builds the listeners, routes, clusters or endpoints named, in the
// order asked. No names is Envoy's wildcard subscription: a sidecar's inbound
// listener and local cluster. A name that does not exist is left out, which tells
// the client it does not exist.
func (sess *session) resolveConfig(typeURL string, names []string, node *core.Node,
	log *slog.Logger) []namedResource {
	var out []namedResource
	add := func(name string, m proto.Message) {
		a := marshalAny(m)
		out = append(out, namedResource{name: name, any: a, hash: sha256.Sum256(a.Value)})
	}
	inbound, app := metaPort(node, MetaInboundPort), metaPort(node, MetaAppPort)
	if len(names) == 0 {
		switch {
		case typeURL == listenerTypeURL && inbound != 0 && app != 0:
			l := sidecarListener(inbound, app, sess.ident.ID.TrustDomain(), sess.compiledRBAC(log))
			add(l.Name, l)
		case typeURL == clusterTypeURL && app != 0:
			add(localClusterName(app), localCluster(app))
		}
		return out
	}
	seen := make(map[string]bool, len(names))
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		switch typeURL {
		case listenerTypeURL:
			if addr, ok := strings.CutPrefix(name, ServerListenerPrefix); ok {
				host, port, ok := splitAddr(addr)
				if !ok {
					log.Warn("Unknown server listener address", "name", name)
					continue
				}
				sess.register(node, host, port, log)
				add(name, serverListener(name, host, port, sess.compiledRBAC(log)))
			} else if svc, ok := parseService(name); ok {
				add(name, apiListener(svc))
			}
		case routeTypeURL:
			if svc, ok := parseService(name); ok {
				add(name, outboundRoute(svc))
			}
		case clusterTypeURL:
			if svc, ok := outboundService(name); ok {
				add(name, outboundCluster(svc, sess.serverIDs(svc)))
			} else if name == localClusterName(app) && app != 0 {
				add(name, localCluster(app))
			}
		case endpointTypeURL:
			if svc, ok := outboundService(name); ok {
				add(name, loadAssignment(name, sess.config.endpoints[svc]))
			}
		}
	}
	return out
}

func outboundService(cluster string) (string, bool) {
	svc, ok := strings.CutPrefix(cluster, outboundPrefix)
	if !ok {
		return "", false
	}
	return parseService(svc)
}

// serverIDs are the distinct identities of the servers of svc.
func (sess *session) serverIDs(svc string) []spiffeid.ID {
	var ids []spiffeid.ID
	for _, e := range sess.config.endpoints[svc] {
		dup := false
		for _, id := range ids {
			dup = dup || id == e.id
		}
		if !dup {
			ids = append(ids, e.id)
		}
	}
	return ids
}

// splitAddr parses the host:port of a server listener name.
func splitAddr(addr string) (string, uint32, bool) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, false
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", 0, false
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return "", 0, false
	}
	return host, uint32(port), true
}

// register makes the session's workload an endpoint of its service at the address
// its server listens on, or at the node's instance IP when it listens on every
// address. A server whose address is unknown is not registered.
func (sess *session) register(node *core.Node, host string, port uint32, log *slog.Logger) {
	if ip, _ := netip.ParseAddr(host); ip.IsUnspecified() {
		host = metaString(node, MetaInstanceIP)
		if _, err := netip.ParseAddr(host); err != nil {
			log.Warn("Server listens on every address and its node metadata has no "+
				"valid "+MetaInstanceIP+": clients will not find it", "port", port)
			return
		}
	}
	svc := serviceName(node, sess.workload())
	sess.registered = true
	sess.s.registerEndpoint(svc, endpoint{
		addr: net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10)),
		id:   sess.ident.ID, owner: sess.id,
	})
}

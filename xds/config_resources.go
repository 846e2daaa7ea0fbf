package xds

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
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

// subscribed records that the stream asked for a resource type, and so which
// configuration changes concern it: listeners carry the policies, clusters and
// endpoints carry the servers of services; routes depend on neither.
func (sess *session) subscribed(typeURL string) {
	switch typeURL {
	case listenerTypeURL:
		sess.wantsPolicies = true
	case clusterTypeURL, endpointTypeURL:
		sess.wantsEndpoints = true
	}
}

// workload is the identity a session's listeners are compiled for.
func (sess *session) workload() authz.Workload {
	return authz.Workload{Namespace: sess.ident.Namespace, ServiceAccount: sess.ident.ServiceAccount}
}

// compiledRBAC compiles the authorization of the session's workload, once per
// generation of the policies. A compile error cannot come from policies that were
// validated when stored; should it happen anyway, the workload denies every request
// rather than allow more than the policies say.
func (sess *session) compiledRBAC(log *slog.Logger) *authz.CompiledRBAC {
	gen := sess.config.policyGen
	if sess.rbac != nil && sess.rbacGen == gen {
		return sess.rbac
	}
	opts := authz.Options{TrustDomain: sess.ident.ID.TrustDomain(),
		DefaultDeny: sess.s.cfg.DefaultDeny}
	rbac, err := authz.Compile(sess.config.policies, sess.workload(), opts)
	if err != nil {
		log.Error("Failed to compile authorization: denying every request", "error", err)
		opts.DefaultDeny = true
		if rbac, err = authz.Compile(nil, sess.workload(), opts); err != nil {
			// Only a broken identity gets here; it has no listener to protect.
			panic(fmt.Sprintf("xds: compiling deny-all for %s: %v", sess.ident.ID, err))
		}
	}
	sess.rbac, sess.rbacGen = rbac, gen
	return rbac
}

// warnOnce logs a warning about name the first time only.
func (sess *session) warnOnce(log *slog.Logger, name, msg string, args ...any) {
	if sess.warned[name] {
		return
	}
	if sess.warned == nil {
		sess.warned = map[string]bool{}
	}
	sess.warned[name] = true
	log.Warn(msg, append(args, "name", name)...)
}

// resolveConfig builds the listeners, routes, clusters or endpoints named, in the
// order asked. A wildcard subscription (Envoy's) adds a sidecar's inbound listener
// and local cluster. A name that does not exist is left out, which tells the client
// it does not exist.
func (sess *session) resolveConfig(typeURL string, names []string, wildcard bool,
	node *core.Node, log *slog.Logger) []namedResource {
	var out []namedResource
	add := func(name string, m proto.Message) {
		a := marshalAny(m)
		out = append(out, namedResource{name: name, any: a, hash: sha256.Sum256(a.Value)})
	}
	inbound, app := metaPort(node, MetaInboundPort), metaPort(node, MetaAppPort)
	if wildcard {
		switch {
		case typeURL == listenerTypeURL && inbound != 0 && app != 0:
			td := sess.ident.ID.TrustDomain()
			l := sidecarListener(inbound, app, td, sess.compiledRBAC(log))
			add(l.Name, l)
		case typeURL == clusterTypeURL && app != 0:
			add(localClusterName(app), localCluster(app))
		}
	}
	if typeURL == listenerTypeURL {
		sess.syncServing(names, node, log)
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
					sess.warnOnce(log, name, "Unknown server listener address")
					continue
				}
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
				td := sess.ident.ID.TrustDomain()
				add(name, outboundCluster(svc, td, sess.serverIDs(svc)))
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

// syncServing keeps the session's endpoints in step with the server listeners it
// asks for: a server listener asked for makes the workload an endpoint of its service,
// and one no longer asked for removes it.
func (sess *session) syncServing(names []string, node *core.Node, log *slog.Logger) {
	wanted := map[string]bool{}
	for _, name := range names {
		if _, ok := strings.CutPrefix(name, ServerListenerPrefix); ok {
			wanted[name] = true
		}
	}
	for name, reg := range sess.serving {
		if !wanted[name] {
			delete(sess.serving, name)
			if reg != nil {
				sess.s.unregisterEndpoint(reg.service, reg.ep)
			}
		}
	}
	for name := range wanted {
		if _, done := sess.serving[name]; done {
			continue
		}
		if sess.serving == nil {
			sess.serving = map[string]*registration{}
		}
		sess.serving[name] = sess.register(name, node, log)
	}
}

// registration is an endpoint a session registered for a service.
type registration struct {
	service string
	ep      endpoint
}

// register makes the session's workload an endpoint of its service, named by its
// service account ("<service account>.<namespace>": the verified identity, never
// what the node claims), at the address its server listens on, or at the node's
// instance IP when it listens on every address. A server whose address is unknown is
// not registered.
func (sess *session) register(name string, node *core.Node, log *slog.Logger) *registration {
	host, port, ok := splitAddr(strings.TrimPrefix(name, ServerListenerPrefix))
	if !ok {
		return nil
	}
	if ip, _ := netip.ParseAddr(host); ip.IsUnspecified() {
		host = metaString(node, MetaInstanceIP)
		if _, err := netip.ParseAddr(host); err != nil {
			sess.warnOnce(log, name, "Server listens on every address and its node metadata "+
				"has no valid "+MetaInstanceIP+": clients will not find it")
			return nil
		}
	}
	reg := &registration{
		service: sess.ident.ServiceAccount + "." + sess.ident.Namespace,
		ep: endpoint{
			addr: net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10)),
			id:   sess.ident.ID, owner: sess.id,
		},
	}
	sess.s.registerEndpoint(reg.service, reg.ep)
	return reg
}

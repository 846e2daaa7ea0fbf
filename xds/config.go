package xds

import (
	"maps"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/api/policy"
)

// configState is what listeners, routes, clusters and endpoints are built from: the
// authorization policies in force and the endpoints of every service. It is never
// modified: a change replaces it and closes the channel of what changed, so a stream
// holding one sees a consistent view.
type configState struct {
	policies []policy.Policy
	// policyGen counts the changes of policies, so that listeners are compiled again
	// only when the policies change, not when endpoints do.
	policyGen uint64
	// endpoints maps a service ("<name>.<namespace>") to the servers that registered
	// for it, in registration order.
	endpoints map[string][]endpoint
	// policiesChanged is closed when the policies change, endpointsChanged when the
	// endpoints do: a stream waits only for what its resources depend on.
	policiesChanged, endpointsChanged chan struct{}
}

// endpoint is one server of a service.
type endpoint struct {
	// addr is the address clients dial, host:port.
	addr string
	// id is the server's SPIFFE ID, which clients require of its certificate.
	id spiffeid.ID
	// owner is the stream that registered the endpoint, so it can remove it.
	owner uint64
}

// SetPolicies replaces the authorization policies every listener is compiled from, and
// every stream pushes the listeners whose authorization changed. The policies must be
// valid (see policy.ValidateSet); the caller keeps no reference to the slice.
func (s *Server) SetPolicies(ps []policy.Policy) {
	ps = slices.Clone(ps)
	s.updateConfig(policiesChanged, func(c *configState) {
		c.policies, c.policyGen = ps, c.policyGen+1
	})
}

// watchConfig returns the configuration in force; its channels are closed when it is
// replaced.
func (s *Server) watchConfig() *configState {
	s.configMu.RLock()
	defer s.configMu.RUnlock()
	return s.config
}

// configPart says what a configuration change changes.
type configPart int

const (
	policiesChanged configPart = iota
	endpointsChanged
)

// newConfigState returns an empty configuration.
func newConfigState() *configState {
	return &configState{policiesChanged: make(chan struct{}),
		endpointsChanged: make(chan struct{})}
}

// updateConfig replaces the configuration with a copy changed in one part.
func (s *Server) updateConfig(part configPart, change func(*configState)) {
	s.configMu.Lock()
	prev := s.config
	next := *prev
	change(&next)
	closing := prev.policiesChanged
	if part == policiesChanged {
		next.policiesChanged = make(chan struct{})
	} else {
		closing = prev.endpointsChanged
		next.endpointsChanged = make(chan struct{})
	}
	s.config = &next
	s.configMu.Unlock()
	close(closing)
}

// registerEndpoint makes e a server of service. An endpoint registered before at the
// same address is replaced: clients must never see one address twice (grpc-go rejects
// such an assignment), and the latest registration is the live one.
func (s *Server) registerEndpoint(service string, e endpoint) {
	if slices.Contains(s.watchConfig().endpoints[service], e) {
		return
	}
	s.updateConfig(endpointsChanged, func(c *configState) {
		eps := slices.DeleteFunc(slices.Clone(c.endpoints[service]), func(o endpoint) bool {
			return o.addr == e.addr
		})
		c.endpoints = maps.Clone(c.endpoints)
		if c.endpoints == nil {
			c.endpoints = map[string][]endpoint{}
		}
		c.endpoints[service] = append(eps, e)
	})
}

// unregisterEndpoint removes one endpoint, unless it is gone or was replaced.
func (s *Server) unregisterEndpoint(service string, e endpoint) {
	if !slices.Contains(s.watchConfig().endpoints[service], e) {
		return
	}
	s.updateConfig(endpointsChanged, func(c *configState) {
		eps := slices.DeleteFunc(slices.Clone(c.endpoints[service]), func(o endpoint) bool {
			return o == e
		})
		c.endpoints = maps.Clone(c.endpoints)
		if len(eps) == 0 {
			delete(c.endpoints, service)
		} else {
			c.endpoints[service] = eps
		}
	})
}

// unregisterEndpoints removes every endpoint the owner registered.
func (s *Server) unregisterEndpoints(owner uint64) {
	s.updateConfig(endpointsChanged, func(c *configState) {
		var next map[string][]endpoint
		for svc, eps := range c.endpoints {
			kept := slices.DeleteFunc(slices.Clone(eps), func(e endpoint) bool {
				return e.owner == owner
			})
			if len(kept) == 0 {
				continue
			}
			if next == nil {
				next = map[string][]endpoint{}
			}
			next[svc] = kept
		}
		c.endpoints = next
	})
}

package xds

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"slices"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/xds/authz"
)

// session is what one stream serves: its identity, its certificate (acquired the
// first time a certificate name is asked for) and the bundle it last saw.
type session struct {
	s     *Server
	ident ca.Identity
	// id numbers the session, to own the endpoints it registers.
	id uint64
	// serving maps the server listeners the session asked for to the endpoint each
	// registered, if it could.
	serving map[string]*registration
	// warned holds the names already warned about, so a warning is logged once.
	warned map[string]bool

	// wantsPolicies is set once the stream asked for listeners, wantsEndpoints once
	// it asked for clusters or endpoints: only then do changes of those concern it.
	wantsPolicies, wantsEndpoints bool
	config                        *configState
	// rbac is the workload's authorization compiled from the policies of
	// generation rbacGen.
	rbac    *authz.CompiledRBAC
	rbacGen uint64

	cert        *certEntry
	certCur     *workloadCert
	certChanged <-chan struct{} // nil until a certificate is served

	bundlePEM     []byte
	bundleRoots   []*x509.Certificate
	bundleChanged <-chan struct{}
}

// namedResource is one resolved secret.
type namedResource struct {
	name string
	any  *anypb.Any
	hash [sha256.Size]byte
	// bundle is true for a trust bundle secret.
	bundle bool
}

// wildcardNames is what a request with no names gets: every secret of the identity.
var wildcardNames = []string{SecretDefault, SecretRootCA}

func (s *Server) newSession(ident ca.Identity) *session {
	sess := &session{s: s, ident: ident, id: s.streamID.Add(1)}
	sess.refreshBundle()
	sess.refreshConfig()
	return sess
}

func (sess *session) close() {
	if sess.cert != nil {
		sess.s.workload.release(sess.cert)
	}
	if len(sess.serving) > 0 {
		sess.s.unregisterEndpoints(sess.id)
	}
	sess.s.acks.drop(sess.id)
}

// sentBundle tells the acknowledgement registry that the response with this nonce
// carried the session's bundle, if it did, and says whether it did.
func (sess *session) sentBundle(nonce uint64, res []namedResource) bool {
	if !slices.ContainsFunc(res, func(r namedResource) bool { return r.bundle }) {
		return false
	}
	sess.s.acks.sent(sess.id, nonce, sess.bundleRoots)
	return true
}

func (sess *session) refreshConfig() {
	sess.config = sess.s.watchConfig()
}

// configChanged returns the channels of the configuration changes the session's
// subscriptions depend on (nil for none).
func (sess *session) configChanged() (policies, endpoints <-chan struct{}) {
	if sess.wantsPolicies {
		policies = sess.config.policiesChanged
	}
	if sess.wantsEndpoints {
		endpoints = sess.config.endpointsChanged
	}
	return policies, endpoints
}

func (sess *session) refreshBundle() {
	v := sess.s.currentBundle()
	sess.bundleRoots, sess.bundlePEM, sess.bundleChanged = v.roots, v.pem, v.changed
}

// bundleView is the trust bundle in force, encoded once per change and shared by
// every stream: read-only.
type bundleView struct {
	changed <-chan struct{}
	roots   []*x509.Certificate
	pem     []byte
}

// currentBundle returns the bundle in force, encoding it only when it changed.
func (s *Server) currentBundle() *bundleView {
	b, ch := s.issuer.WatchBundle()
	s.bundleMu.Lock()
	defer s.bundleMu.Unlock()
	if s.bundle != nil && s.bundle.changed == ch {
		return s.bundle
	}
	roots := b.X509Authorities()
	s.bundle = &bundleView{changed: ch, roots: roots, pem: pemCerts(roots)}
	return s.bundle
}

func (sess *session) refreshCert() {
	sess.certCur, sess.certChanged = sess.cert.current()
}

// check validates names without issuing anything.
func (sess *session) check(names []string) error {
	for _, n := range names {
		if _, err := classifyName(n, sess.ident); err != nil {
			return err
		}
	}
	return nil
}

// resolve builds the secrets named, in the order asked; no names means wildcard.
func (sess *session) resolve(ctx context.Context, names []string) ([]namedResource, error) {
	if len(names) == 0 {
		names = wildcardNames
	}
	if err := sess.check(names); err != nil {
		return nil, err
	}
	out := make([]namedResource, 0, len(names))
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		kind, _ := classifyName(n, sess.ident)
		var r namedResource
		var err error
		switch kind {
		case kindCert:
			if err := sess.ensureCert(ctx); err != nil {
				return nil, err
			}
			r.any, r.hash, err = marshalSecret(certSecret(n, sess.certCur))
		case kindBundle:
			r.any, r.hash, err = marshalSecret(bundleSecret(n, sess.bundlePEM))
			r.bundle = true
		}
		if err != nil {
			return nil, err
		}
		r.name = n
		out = append(out, r)
	}
	return out, nil
}

func (sess *session) ensureCert(ctx context.Context) error {
	if sess.cert != nil {
		return nil
	}
	e, err := sess.s.workload.acquire(ctx, sess.ident)
	if err != nil {
		return err
	}
	sess.cert = e
	sess.refreshCert()
	return nil
}

func anys(rs []namedResource) []*anypb.Any {
	out := make([]*anypb.Any, len(rs))
	for i, r := range rs {
		out[i] = r.any
	}
	return out
}

// digest combines the hashes of a response's resources, in order.
func digest(rs []namedResource) [sha256.Size]byte {
	h := sha256.New()
	for _, r := range rs {
		h.Write([]byte(r.name))
		h.Write(r.hash[:])
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}

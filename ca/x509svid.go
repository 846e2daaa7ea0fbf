package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/store"
)

// leafExtKeyUsage is every leaf's EKU: workloads are both TLS servers and clients.
var leafExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}

// X509SVIDParams is a request for an X.509-SVID.
type X509SVIDParams struct {
	// ID is the identity to certify. It must belong to the CA's trust domain.
	ID spiffeid.ID
	// PublicKey is the subject key: ECDSA P-256/P-384, Ed25519 or RSA ≥ 2048 bits.
	PublicKey crypto.PublicKey
	// TTL is the requested lifetime; zero means the CA's default. It is capped by
	// the CA's maximum and by the issuing chain's earliest NotAfter.
	TTL time.Duration
	// Requester says who asked, for the audit log (never a token).
	Requester string
}

// ServingParams is a request for meshca's own TLS serving certificate.
type ServingParams struct {
	DNSNames  []string
	IPs       []net.IP
	PublicKey crypto.PublicKey
	TTL       time.Duration
}

// X509SVID is an issued certificate with the chain a peer needs to verify it.
type X509SVID struct {
	// ID is the SPIFFE ID certified; zero for a serving certificate.
	ID spiffeid.ID
	// Certificates is the leaf first, then intermediates; never a root.
	Certificates []*x509.Certificate
	// AuthorityID names the authority that signed the leaf.
	AuthorityID string
}

// Leaf returns the issued certificate.
func (s *X509SVID) Leaf() *x509.Certificate { return s.Certificates[0] }

// leafSpec is everything that differs between an SVID and a serving certificate.
type leafSpec struct {
	id        spiffeid.ID
	dnsNames  []string
	ips       []net.IP
	publicKey crypto.PublicKey
	ttl       time.Duration
	requester string
}

// IssueX509SVID signs an X.509-SVID for p.ID and p.PublicKey. It returns only after
// the issuance is recorded durably in the audit log.
func (c *CA) IssueX509SVID(ctx context.Context, p X509SVIDParams) (*X509SVID, error) {
	if err := c.checkID(p.ID); err != nil {
		return nil, err
	}
	return c.issue(ctx, leafSpec{
		id: p.ID, publicKey: p.PublicKey, ttl: p.TTL, requester: p.Requester,
	})
}

// IssueServing signs a TLS serving certificate for meshca itself, with DNS and IP
// SANs and no SPIFFE ID.
func (c *CA) IssueServing(ctx context.Context, p ServingParams) (*X509SVID, error) {
	if len(p.DNSNames) == 0 && len(p.IPs) == 0 {
		return nil, fmt.Errorf("serving certificate needs a DNS name or IP: %w",
			ErrInvalidRequest)
	}
	return c.issue(ctx, leafSpec{
		dnsNames: p.DNSNames, ips: p.IPs, publicKey: p.PublicKey, ttl: p.TTL,
		requester: "meshca-server",
	})
}

// checkID refuses identities outside the trust domain or without a path. The ID is
// already a parsed go-spiffe ID, so its characters and segments are valid.
func (c *CA) checkID(id spiffeid.ID) error {
	if id.IsZero() {
		return fmt.Errorf("SPIFFE ID is empty: %w", ErrInvalidRequest)
	}
	if id.TrustDomain() != c.cfg.TrustDomain {
		return fmt.Errorf("SPIFFE ID %q is not in trust domain %q: %w",
			id, c.cfg.TrustDomain.Name(), ErrInvalidRequest)
	}
	if id.Path() == "" {
		return fmt.Errorf("SPIFFE ID %q has no path; workload IDs need one: %w",
			id, ErrInvalidRequest)
	}
	return nil
}

func (c *CA) issue(ctx context.Context, spec leafSpec) (*X509SVID, error) {
	keyUsage, err := checkSubjectKey(spec.publicKey)
	if err != nil {
		return nil, err
	}
	ttl, err := c.ttl(spec.ttl)
	if err != nil {
		return nil, err
	}
	signer, err := c.signer()
	if err != nil {
		return nil, err
	}

	now := c.now()
	var cross []*x509.Certificate
	if spec.id.IsZero() {
		// meshca's own certificate: also the new root's certificates from the old
		// root, for clients that trust only the old one. The leaf ends with them.
		cross = c.crossSigned(signer, now)
		for _, x := range cross {
			ttl = min(ttl, x.NotAfter.Sub(now))
		}
	}
	tmpl, err := c.template(spec, signer, keyUsage, now, ttl)
	if err != nil {
		return nil, err
	}
	// CreateCertificate checks the signature it made against the CA key: keep that.
	// A nil rand makes an ECDSA CA key sign deterministically (RFC 6979), which is
	// faster than a randomized signature in Go 1.26: see docs/performance.md.
	der, err := x509.CreateCertificate(nil, tmpl, signer.cert, spec.publicKey, signer.key)
	if err != nil {
		return nil, fmt.Errorf("failed to sign certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("failed to parse issued certificate: %w", err)
	}
	if err := checkIssued(leaf, tmpl, spec.publicKey); err != nil {
		return nil, fmt.Errorf("issued certificate failed its check: %w", err)
	}

	rec := store.Issuance{
		Serial:      SerialHex(leaf.SerialNumber),
		SPIFFEID:    spec.id.String(),
		AuthorityID: signer.id,
		NotBefore:   leaf.NotBefore,
		NotAfter:    leaf.NotAfter,
		IssuedAt:    now,
		Requester:   spec.requester,
	}
	if err := c.cfg.Store.RecordIssuance(ctx, rec); err != nil {
		return nil, fmt.Errorf("failed to record issuance: %w", err)
	}
	c.log.Info("Issued certificate", "spiffe_id", rec.SPIFFEID, "serial", rec.Serial,
		"not_after", rec.NotAfter, "authority_id", signer.id, "requester", spec.requester)

	certs := make([]*x509.Certificate, 0, 1+len(signer.intermediates)+len(cross))
	certs = append(certs, leaf)
	certs = append(certs, signer.intermediates...)
	certs = append(certs, cross...)
	return &X509SVID{ID: spec.id, Certificates: certs, AuthorityID: signer.id}, nil
}

// crossSigned returns the certificates of signer's root issued by older roots (see
// store.Authority.CrossSigned) that are valid at now.
func (c *CA) crossSigned(signer *authority, now time.Time) []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*x509.Certificate
	for _, a := range c.all {
		if len(a.roots) == 0 || !containsCert(signer.roots[:1], a.roots[0]) {
			continue
		}
		for _, x := range a.crossSigned {
			if !now.Before(x.NotBefore) && now.Before(x.NotAfter) &&
				!containsCert(out, x) {
				out = append(out, x)
			}
		}
	}
	return out
}

func (c *CA) ttl(requested time.Duration) (time.Duration, error) {
	switch {
	case requested < 0:
		return 0, fmt.Errorf("TTL %s is negative: %w", requested, ErrInvalidRequest)
	case requested == 0:
		return min(c.cfg.DefaultTTL, c.cfg.MaxTTL), nil
	default:
		return min(requested, c.cfg.MaxTTL), nil
	}
}

func (c *CA) template(spec leafSpec, signer *authority, keyUsage x509.KeyUsage,
	now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(signer.notAfter) {
		notAfter = signer.notAfter
	}
	notBefore := now.Add(-c.cfg.Backdate)
	if !notAfter.After(now) {
		return nil, fmt.Errorf("authority %q expires at %s: %w", signer.id,
			signer.notAfter.Format(time.RFC3339), ErrNotReady)
	}

	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"meshca"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              keyUsage,
		ExtKeyUsage:           leafExtKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              spec.dnsNames,
		IPAddresses:           spec.ips,
	}
	if !spec.id.IsZero() {
		tmpl.URIs = []*url.URL{spec.id.URL()}
	}
	return tmpl, nil
}

// checkIssued verifies that the parsed certificate says exactly what the template
// asked for, before anyone sees it.
func checkIssued(leaf, tmpl *x509.Certificate, pub crypto.PublicKey) error {
	switch {
	case leaf.SerialNumber.Sign() <= 0:
		return errors.New("serial is not positive")
	case leaf.IsCA:
		return errors.New("leaf is a CA")
	case leaf.KeyUsage != tmpl.KeyUsage:
		return fmt.Errorf("key usage %v, want %v", leaf.KeyUsage, tmpl.KeyUsage)
	case !slices.Equal(leaf.ExtKeyUsage, tmpl.ExtKeyUsage):
		return fmt.Errorf("extended key usage %v, want %v", leaf.ExtKeyUsage, tmpl.ExtKeyUsage)
	case !leaf.NotAfter.Equal(tmpl.NotAfter.UTC().Truncate(time.Second)):
		return fmt.Errorf("NotAfter %s, want %s", leaf.NotAfter, tmpl.NotAfter)
	case len(leaf.URIs) != len(tmpl.URIs) ||
		len(leaf.URIs) == 1 && leaf.URIs[0].String() != tmpl.URIs[0].String():
		return fmt.Errorf("URI SANs %v, want %v", leaf.URIs, tmpl.URIs)
	case !slices.Equal(leaf.DNSNames, tmpl.DNSNames) || len(leaf.EmailAddresses) > 0 ||
		len(leaf.IPAddresses) != len(tmpl.IPAddresses):
		return errors.New("unexpected SANs")
	case !publicKeysEqual(pub, leaf.PublicKey):
		return errors.New("public key differs from the requested one")
	}
	return nil
}

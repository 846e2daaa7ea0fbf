package ca

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/pemutil"

	"github.com/meshca/meshca/store"
)

// authority is a loaded signing authority: certificates parsed, key usable.
// It is immutable once built, so it may be shared without locking.
type authority struct {
	id    string
	state store.AuthorityState
	// cert is the authority's own certificate; key is its private key.
	cert *x509.Certificate
	key  crypto.Signer
	// intermediates are the certificates served after a leaf: cert itself unless it
	// is a self-signed root, then the certificates that issued it, never a root.
	intermediates []*x509.Certificate
	// roots are the trust anchors this authority chains to.
	roots []*x509.Certificate
	// notAfter is the earliest NotAfter on the chain; no leaf may outlive it.
	notAfter time.Time
	// crossSigned are certificates of the root roots[0] issued by an older root; see
	// store.Authority.CrossSigned.
	crossSigned []*x509.Certificate
}

// loadAuthority parses a stored authority and checks that it is usable.
func loadAuthority(a store.Authority) (*authority, error) {
	if len(a.Chain) == 0 || len(a.Roots) == 0 {
		return nil, errors.New("authority has no certificate chain or no roots")
	}
	chain, err := parseDERs(a.Chain)
	if err != nil {
		return nil, fmt.Errorf("failed to parse chain: %w", err)
	}
	roots, err := parseDERs(a.Roots)
	if err != nil {
		return nil, fmt.Errorf("failed to parse roots: %w", err)
	}
	cross, err := parseDERs(a.CrossSigned)
	if err != nil {
		return nil, fmt.Errorf("failed to parse cross-signed roots: %w", err)
	}
	if a.State == store.StateRemoved {
		// The key is erased: keep the certificates for the record only.
		return &authority{id: a.ID, state: a.State, cert: chain[0], roots: roots,
			notAfter: chain[0].NotAfter, crossSigned: cross}, nil
	}
	parsed, err := x509.ParsePKCS8PrivateKey(a.Key)
	if err != nil {
		return nil, fmt.Errorf("failed to parse private key: %w", err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key type %T cannot sign", parsed)
	}
	auth, err := newAuthority(a.ID, a.State, chain, roots, key)
	if err != nil {
		return nil, err
	}
	auth.crossSigned = cross
	return auth, nil
}

// newAuthority checks that the key matches the certificate, that the certificate may
// sign certificates and that the chain verifies to the roots.
func newAuthority(id string, state store.AuthorityState, chain, roots []*x509.Certificate,
	key crypto.Signer) (*authority, error) {
	cert := chain[0]
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("private key does not match the authority certificate")
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("certificate %q is not a CA allowed to sign certificates",
			cert.Subject)
	}

	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	interPool := x509.NewCertPool()
	var inters []*x509.Certificate
	for _, c := range chain {
		if isSelfSigned(c) {
			continue
		}
		interPool.AddCert(c)
		inters = append(inters, c)
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: interPool,
		CurrentTime:   cert.NotBefore.Add(time.Second),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("authority certificate does not chain to its roots: %w", err)
	}

	notAfter := cert.NotAfter
	for _, c := range append(append([]*x509.Certificate{}, chain...), roots...) {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return &authority{
		id: id, state: state, cert: cert, key: key,
		intermediates: inters, roots: roots, notAfter: notAfter,
	}, nil
}

// generateRoot creates a self-signed root for the trust domain.
func generateRoot(td spiffeid.TrustDomain, kt KeyType, ttl, backdate time.Duration,
	now time.Time) (store.Authority, error) {
	key, err := GenerateKey(kt)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to generate root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return store.Authority{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The serial number attribute tells apart the roots of successive rotations,
		// which are trusted side by side and, through crossSign, chained to each
		// other: verifiers that build chains by name need distinct names.
		Subject: pkix.Name{
			Organization: []string{"meshca"},
			CommonName:   "meshca root " + td.Name(),
			SerialNumber: serial.Text(16),
		},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign |
			x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to sign root certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to encode root key: %w", err)
	}
	return store.Authority{
		ID:        authorityID(der),
		State:     store.StateActive,
		Chain:     [][]byte{der},
		Roots:     [][]byte{der},
		Key:       keyDER,
		CreatedAt: now,
	}, nil
}

// crossSign issues a certificate with the name, key and constraints of root, signed
// by issuer: clients that trust only issuer can then verify what root signed. It is
// valid until the first of the two expires.
func crossSign(root *x509.Certificate, issuer *authority, backdate time.Duration,
	now time.Time) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := root.NotAfter
	if issuer.notAfter.Before(notAfter) {
		notAfter = issuer.notAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The name exactly as encoded in root: verifiers match a certificate's
		// issuer to its parent's subject byte for byte.
		RawSubject:   root.RawSubject,
		SubjectKeyId: root.SubjectKeyId,
		// Set here because the standard library leaves it out when the two names
		// are equal (an imported root named like the old one), and verifiers would
		// then take the certificate for a self-signed one.
		AuthorityKeyId:        issuer.cert.SubjectKeyId,
		URIs:                  root.URIs,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            root.MaxPathLen,
		MaxPathLenZero:        root.MaxPathLenZero,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		// What root may sign, it may sign through this certificate too: no more.
		PermittedDNSDomainsCritical: root.PermittedDNSDomainsCritical,
		PermittedDNSDomains:         root.PermittedDNSDomains,
		ExcludedDNSDomains:          root.ExcludedDNSDomains,
		PermittedIPRanges:           root.PermittedIPRanges,
		ExcludedIPRanges:            root.ExcludedIPRanges,
		PermittedEmailAddresses:     root.PermittedEmailAddresses,
		ExcludedEmailAddresses:      root.ExcludedEmailAddresses,
		PermittedURIDomains:         root.PermittedURIDomains,
		ExcludedURIDomains:          root.ExcludedURIDomains,
		Policies:                    root.Policies,
	}
	der, err := x509.CreateCertificate(nil, tmpl, issuer.cert, root.PublicKey, issuer.key)
	if err != nil {
		return nil, fmt.Errorf("failed to cross-sign root %q: %w", root.Subject, err)
	}
	return der, nil
}

// pathLenAllows reports whether ca's path length constraint lets n CA certificates
// follow it in a chain.
func pathLenAllows(ca *x509.Certificate, n int) bool {
	if ca.MaxPathLen < 0 || ca.MaxPathLen == 0 && !ca.MaxPathLenZero {
		return true // no constraint
	}
	return n <= ca.MaxPathLen
}

// Import is an operator's existing CA that meshca signs with instead of creating
// its own root. Only used on the first start, when the store holds no authority.
type Import struct {
	// CertPEM holds the CA certificate first, then optionally the certificates that
	// issued it.
	CertPEM []byte
	// KeyPEM holds the CA's private key (PKCS #8, PKCS #1 or SEC 1, unencrypted).
	KeyPEM []byte
	// BundlePEM holds the roots to trust. It may be empty when CertPEM is a root or
	// ends with one.
	BundlePEM []byte
}

// importAuthority checks an operator's CA and turns it into a stored authority.
func importAuthority(imp Import, now time.Time) (store.Authority, error) {
	chain, err := pemutil.ParseCertificateBundle(imp.CertPEM)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to parse CA certificate file: %w", err)
	}
	parsedKey, err := pemutil.ParseKey(imp.KeyPEM)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to parse CA key file: %w", err)
	}
	key, ok := parsedKey.(crypto.Signer)
	if !ok {
		return store.Authority{}, fmt.Errorf("CA key of type %T cannot sign", parsedKey)
	}

	var roots []*x509.Certificate
	if len(bytes.TrimSpace(imp.BundlePEM)) > 0 {
		if roots, err = pemutil.ParseCertificateBundle(imp.BundlePEM); err != nil {
			return store.Authority{}, fmt.Errorf("failed to parse CA bundle file: %w", err)
		}
	}
	for _, c := range chain {
		if isSelfSigned(c) && !containsCert(roots, c) {
			roots = append(roots, c)
		}
	}
	if len(roots) == 0 {
		return store.Authority{}, errors.New("no root to trust: the CA certificate " +
			"is not self-signed and no bundle was given")
	}
	if now.After(chain[0].NotAfter) {
		return store.Authority{}, fmt.Errorf("CA certificate expired at %s",
			chain[0].NotAfter.Format(time.RFC3339))
	}

	a, err := newAuthority("", store.StateActive, chain, roots, key)
	if err != nil {
		return store.Authority{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to encode CA key: %w", err)
	}
	return store.Authority{
		ID:        authorityID(a.cert.Raw),
		State:     store.StateActive,
		Chain:     rawDERs(chain),
		Roots:     rawDERs(roots),
		Key:       keyDER,
		CreatedAt: now,
	}, nil
}

// authorityID names an authority by the start of its certificate's fingerprint.
func authorityID(der []byte) string {
	return Fingerprint(der)[:16]
}

// Fingerprint returns the lowercase hex SHA-256 of a DER certificate.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func parseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(ders))
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func rawDERs(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

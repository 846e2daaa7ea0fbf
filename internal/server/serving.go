package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
)

// servingTTL is the lifetime of meshca's own TLS certificate; it renews at half.
const servingTTL = 24 * time.Hour

// servingCert keeps meshca's TLS serving certificate fresh. The key lives in memory
// only and is replaced at every renewal.
type servingCert struct {
	ca       *ca.CA
	dnsNames []string
	log      *slog.Logger

	// mu guards cert and signer.
	mu   sync.RWMutex
	cert *tls.Certificate
	// signer is the ID of the authority that signed cert.
	signer string
}

func newServingCert(authority *ca.CA, dnsNames []string, log *slog.Logger) *servingCert {
	return &servingCert{ca: authority, dnsNames: dnsNames, log: log}
}

// renew issues a new certificate and key, replacing the current ones.
func (s *servingCert) renew(ctx context.Context) error {
	key, err := ca.GenerateKey(ca.KeyECP256)
	if err != nil {
		return fmt.Errorf("failed to generate serving key: %w", err)
	}
	var dns []string
	var ips []net.IP
	for _, n := range s.dnsNames {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	svid, err := s.ca.IssueServing(ctx, ca.ServingParams{
		DNSNames: dns, IPs: ips, PublicKey: key.Public(), TTL: servingTTL,
	})
	if err != nil {
		return fmt.Errorf("failed to issue serving certificate: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: svid.Leaf()}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.mu.Lock()
	s.cert, s.signer = cert, svid.AuthorityID
	s.mu.Unlock()
	s.log.Info("Issued the serving certificate", "serial", ca.SerialHex(svid.Leaf().SerialNumber),
		"not_after", svid.Leaf().NotAfter)
	return nil
}

// getCertificate is the tls.Config hook.
func (s *servingCert) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert, nil
}

// Run renews the certificate at half of its remaining lifetime until ctx ends, and at
// once when another authority starts signing, so that the old one can be removed. A
// failed renewal is logged and retried every minute, even past the old
// certificate's expiry, since meshca cannot serve TLS without one.
func (s *servingCert) Run(ctx context.Context) error {
	for {
		s.mu.RLock()
		leaf, signer := s.cert.Leaf, s.signer
		s.mu.RUnlock()
		wait := time.Until(leaf.NotAfter) / 2
		_, changed := s.ca.WatchBundle()
		if s.ca.ActiveID() == signer {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-changed:
				continue
			case <-time.After(wait):
			}
		}
		if err := s.renew(ctx); err != nil {
			s.log.Error("Failed to renew serving certificate", "error", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Minute):
			}
		}
	}
}

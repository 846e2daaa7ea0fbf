package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
)

// ErrPermissionDenied marks a request for something the caller may not have; it
// maps to PermissionDenied.
var ErrPermissionDenied = errors.New("permission denied")

// Authenticator turns a bearer token into the identity Kubernetes vouches for.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (ca.Identity, error)
}

// CertificateConfig configures the certificate signing service.
type CertificateConfig struct {
	CA     Authority
	Auth   Authenticator
	Logger *slog.Logger
}

// Certificates implements meshcav1.CertificateServiceServer: a workload trades its
// projected service-account token and a CSR for an X.509-SVID of its own identity.
type Certificates struct {
	meshcav1.UnimplementedCertificateServiceServer
	ca   Authority
	auth Authenticator
	log  *slog.Logger
}

var _ meshcav1.CertificateServiceServer = (*Certificates)(nil)

// NewCertificates returns the certificate signing service.
func NewCertificates(cfg CertificateConfig) *Certificates {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Certificates{ca: cfg.CA, auth: cfg.Auth, log: log}
}

// SignX509SVID implements meshcav1.CertificateServiceServer.
func (s *Certificates) SignX509SVID(ctx context.Context, req *meshcav1.SignX509SVIDRequest) (
	*meshcav1.SignX509SVIDResponse, error) {
	ident, err := Authenticate(ctx, s.auth)
	if err != nil {
		return nil, ToStatus(ctx, s.log, "sign", err)
	}
	csr, err := checkCSR(req.GetCsr(), ident)
	if err != nil {
		return nil, ToStatus(ctx, s.log, "sign", err)
	}
	svid, err := s.ca.IssueX509SVID(ctx, ca.X509SVIDParams{
		ID: ident.ID, PublicKey: csr.PublicKey, TTL: req.GetTtl().AsDuration(),
		Requester: ident.String(),
	})
	if err != nil {
		return nil, ToStatus(ctx, s.log, "sign", err)
	}
	return &meshcav1.SignX509SVIDResponse{
		SpiffeId:  ident.ID.String(),
		CertChain: rawCerts(svid.Certificates),
		Bundle:    rawCerts(s.ca.Bundle().X509Authorities()),
		NotAfter:  timestamppb.New(svid.Leaf().NotAfter),
	}, nil
}

// Authenticate reads the bearer token from the request metadata and checks it.
func Authenticate(ctx context.Context, auth Authenticator) (ca.Identity, error) {
	if auth == nil {
		return ca.Identity{}, fmt.Errorf("no Kubernetes API configured: %w",
			ca.ErrAuthUnavailable)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return ca.Identity{}, fmt.Errorf("want one authorization header, got %d: %w",
			len(vals), ca.ErrInvalidToken)
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return ca.Identity{}, fmt.Errorf("authorization is not a bearer token: %w",
			ca.ErrInvalidToken)
	}
	return auth.Authenticate(ctx, token)
}

// checkCSR parses the CSR and checks its signature and SANs. Only its public key is
// used; its SANs must be empty or exactly the caller's SPIFFE ID.
func checkCSR(der []byte, ident ca.Identity) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("malformed CSR: %w: %w", err, ca.ErrInvalidRequest)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature does not verify: %w: %w", err,
			ca.ErrInvalidRequest)
	}
	if len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("CSR asks for DNS, IP or email SANs; only the caller's "+
			"SPIFFE ID is allowed: %w", ErrPermissionDenied)
	}
	switch {
	case len(csr.URIs) == 0:
	case len(csr.URIs) == 1 && csr.URIs[0].String() == ident.ID.String():
	default:
		return nil, fmt.Errorf("CSR asks for URI SANs %q; the caller may only have %q: %w",
			csr.URIs, ident.ID, ErrPermissionDenied)
	}
	return csr, nil
}

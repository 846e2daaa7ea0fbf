package api

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
)

// defaultListLimit caps ListIssuances when the caller sets no limit, and
// maxListLimit whatever it sets, so a response stays far below gRPC's 4 MiB.
const (
	defaultListLimit = 100
	maxListLimit     = 5000
)

// Authority is what the API needs of the certificate authority.
type Authority interface {
	TrustDomain() spiffeid.TrustDomain
	Authorities() []ca.AuthorityStatus
	Bundle() *x509bundle.Bundle
	IssueX509SVID(ctx context.Context, p ca.X509SVIDParams) (*ca.X509SVID, error)
	PrepareAuthority(ctx context.Context, p ca.PrepareParams) (ca.AuthorityStatus, error)
	Activate(ctx context.Context, p ca.ActivateParams) (ca.AuthorityStatus, error)
	Retire(ctx context.Context, id string) (ca.AuthorityStatus, error)
	Remove(ctx context.Context, p ca.RemoveParams) (ca.AuthorityStatus, error)
	CheckRemoval(ctx context.Context, id string) (ca.Removal, error)
}

// BundleAcks says which open discovery streams have the trust bundle holding a root.
type BundleAcks interface {
	// BundleAcks returns how many streams subscribed to the bundle acknowledged one
	// containing root, and how many are subscribed.
	BundleAcks(root *x509.Certificate) (acked, total int)
}

// Reissuer re-issues workload certificates under a newly active authority.
type Reissuer interface {
	// Reissue schedules the renewal of every workload certificate that the authority
	// signer did not sign, each at a random time within window, and returns how many.
	Reissue(signer string, window time.Duration) int
}

// AuditLog reads the issuance and rotation audit logs.
type AuditLog interface {
	Issuances(ctx context.Context, q store.IssuanceQuery) ([]store.Issuance, error)
	AuthorityEvents(ctx context.Context) ([]store.AuthorityEvent, error)
}

// AdminConfig configures the admin service.
type AdminConfig struct {
	CA    Authority
	Audit AuditLog
	// Acks is consulted before activating an authority; nil counts no streams.
	Acks BundleAcks
	// Reissuer re-issues workload certificates after an activation that asks for
	// it; nil re-issues none.
	Reissuer Reissuer
	Logger   *slog.Logger
}

// Admin implements meshcav1.AdminServiceServer. Whoever reaches it is trusted: it is
// served only on the 0600 admin socket.
type Admin struct {
	meshcav1.UnimplementedAdminServiceServer
	ca       Authority
	audit    AuditLog
	acks     BundleAcks
	reissuer Reissuer
	log      *slog.Logger
}

var _ meshcav1.AdminServiceServer = (*Admin)(nil)

// NewAdmin returns the admin service.
func NewAdmin(cfg AdminConfig) *Admin {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	acks := cfg.Acks
	if acks == nil {
		acks = noStreams{}
	}
	reissuer := cfg.Reissuer
	if reissuer == nil {
		reissuer = noStreams{}
	}
	return &Admin{ca: cfg.CA, audit: cfg.Audit, acks: acks, reissuer: reissuer, log: log}
}

// GetStatus implements meshcav1.AdminServiceServer.
func (a *Admin) GetStatus(ctx context.Context, _ *meshcav1.GetStatusRequest) (
	*meshcav1.GetStatusResponse, error) {
	resp := &meshcav1.GetStatusResponse{TrustDomain: a.ca.TrustDomain().Name()}
	for _, s := range a.ca.Authorities() {
		resp.Authorities = append(resp.Authorities, authorityProto(s))
	}
	return resp, nil
}

func authorityProto(s ca.AuthorityStatus) *meshcav1.Authority {
	return &meshcav1.Authority{
		Id:                s.ID,
		State:             string(s.State),
		Subject:           s.Subject,
		FingerprintSha256: s.Fingerprint,
		NotBefore:         timestamppb.New(s.NotBefore),
		NotAfter:          timestamppb.New(s.NotAfter),
		Root:              s.Root,
	}
}

// GetBundle implements meshcav1.AdminServiceServer.
func (a *Admin) GetBundle(ctx context.Context, _ *meshcav1.GetBundleRequest) (
	*meshcav1.GetBundleResponse, error) {
	b := a.ca.Bundle()
	return &meshcav1.GetBundleResponse{
		TrustDomain:     b.TrustDomain().Name(),
		X509Authorities: rawCerts(b.X509Authorities()),
	}, nil
}

// MintX509SVID implements meshcav1.AdminServiceServer.
func (a *Admin) MintX509SVID(ctx context.Context, req *meshcav1.MintX509SVIDRequest) (
	*meshcav1.MintX509SVIDResponse, error) {
	id, err := ca.ParseSPIFFEID(req.GetSpiffeId())
	if err != nil {
		return nil, ToStatus(ctx, a.log, "mint", err)
	}
	pub, err := x509.ParsePKIXPublicKey(req.GetPublicKey())
	if err != nil {
		err = fmt.Errorf("public key is not PKIX DER: %w: %w", err, ca.ErrInvalidRequest)
		return nil, ToStatus(ctx, a.log, "mint", err)
	}
	svid, err := a.ca.IssueX509SVID(ctx, ca.X509SVIDParams{
		ID: id, PublicKey: pub, TTL: req.GetTtl().AsDuration(), Requester: "admin",
	})
	if err != nil {
		return nil, ToStatus(ctx, a.log, "mint", err)
	}
	return &meshcav1.MintX509SVIDResponse{
		SpiffeId:  id.String(),
		CertChain: rawCerts(svid.Certificates),
		Bundle:    rawCerts(a.ca.Bundle().X509Authorities()),
		NotAfter:  timestamppb.New(svid.Leaf().NotAfter),
	}, nil
}

// ListIssuances implements meshcav1.AdminServiceServer.
func (a *Admin) ListIssuances(ctx context.Context, req *meshcav1.ListIssuancesRequest) (
	*meshcav1.ListIssuancesResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	recs, err := a.audit.Issuances(ctx, store.IssuanceQuery{
		SPIFFEID: req.GetSpiffeId(), Limit: limit,
	})
	if err != nil {
		return nil, ToStatus(ctx, a.log, "list issuances", err)
	}
	resp := &meshcav1.ListIssuancesResponse{}
	for _, r := range recs {
		resp.Issuances = append(resp.Issuances, &meshcav1.Issuance{
			Serial:      r.Serial,
			SpiffeId:    r.SPIFFEID,
			AuthorityId: r.AuthorityID,
			NotBefore:   timestamppb.New(r.NotBefore),
			NotAfter:    timestamppb.New(r.NotAfter),
			IssuedAt:    timestamppb.New(r.IssuedAt),
			Requester:   r.Requester,
		})
	}
	return resp, nil
}

func rawCerts(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

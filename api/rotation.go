package api

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
)

// activateRisk is what --force risks when activating early.
const activateRisk = "a workload whose bundle lacks the new root rejects every peer " +
	"certificate the new authority signs, so its connections fail until it gets the bundle"

// DefaultReissueWindow spreads the re-issue of workload certificates after an
// activation when the request names no window: long enough that a large mesh does not
// hit the CA and the store at once, far shorter than the normal renewal of default
// one-hour certificates.
const DefaultReissueWindow = 5 * time.Minute

// ActivationCheck says why activating s is not safe yet: how many open SDS and ADS
// streams subscribed to the trust bundle have not acknowledged one containing every
// root of s. It returns "" when every such stream has. The admin API and automatic
// rotation both refuse to activate while it is not empty.
func ActivationCheck(acks BundleAcks, s ca.AuthorityStatus) string {
	acked, total := ackedBy(acks, s)
	if acked >= total {
		return ""
	}
	return fmt.Sprintf("%d of %d streams have not acknowledged a bundle containing "+
		"authority %s", total-acked, total, s.ID)
}

// PrepareAuthority implements meshcav1.AdminServiceServer.
func (a *Admin) PrepareAuthority(ctx context.Context, req *meshcav1.PrepareAuthorityRequest) (
	*meshcav1.PrepareAuthorityResponse, error) {
	p := ca.PrepareParams{Intermediate: req.GetIntermediate()}
	switch {
	case len(req.GetCertPem()) > 0 && len(req.GetKeyPem()) > 0:
		p.Import = &ca.Import{CertPEM: req.GetCertPem(), KeyPEM: req.GetKeyPem(),
			BundlePEM: req.GetBundlePem()}
	case len(req.GetCertPem()) > 0 || len(req.GetKeyPem()) > 0 || len(req.GetBundlePem()) > 0:
		err := fmt.Errorf("importing an authority needs both its certificate and its key: %w",
			ca.ErrInvalidRequest)
		return nil, ToStatus(ctx, a.log, "prepare authority", err)
	}
	st, err := a.ca.PrepareAuthority(ctx, p)
	if err != nil {
		return nil, ToStatus(ctx, a.log, "prepare authority", err)
	}
	return &meshcav1.PrepareAuthorityResponse{Authority: authorityProto(st)}, nil
}

// ActivateAuthority implements meshcav1.AdminServiceServer.
func (a *Admin) ActivateAuthority(ctx context.Context, req *meshcav1.ActivateAuthorityRequest) (
	*meshcav1.ActivateAuthorityResponse, error) {
	window := req.GetReissueWindow().AsDuration()
	if req.GetReissueWindow() != nil && (!req.GetReissueWindow().IsValid() || window < 0) {
		err := fmt.Errorf("reissue window %s must not be negative: %w", window,
			ca.ErrInvalidRequest)
		return nil, ToStatus(ctx, a.log, "activate authority", err)
	}
	if window == 0 {
		window = DefaultReissueWindow
	}
	var detail string
	id := req.GetId()
	if target, ok := a.findPrepared(id); ok {
		// Activate exactly the authority checked, even if another was prepared since.
		id = target.ID
		detail = ActivationCheck(a.acks, target)
		if detail != "" && !req.GetForce() {
			err := fmt.Errorf("%s; wait for them (meshctl ca rotate status), or use --force, "+
				"which risks this: %s: %w", detail, activateRisk, ca.ErrPrecondition)
			return nil, ToStatus(ctx, a.log, "activate authority", err)
		}
	}
	st, err := a.ca.Activate(ctx, ca.ActivateParams{
		ID: id, Forced: detail != "", Detail: detail,
	})
	if err != nil {
		return nil, ToStatus(ctx, a.log, "activate authority", err)
	}
	resp := &meshcav1.ActivateAuthorityResponse{Authority: authorityProto(st)}
	if detail != "" {
		resp.Warning = "forced: " + detail + "; " + activateRisk
		a.log.WarnContext(ctx, "Activated an authority before every stream had its bundle",
			"authority_id", st.ID, "detail", detail)
	}
	if req.GetReissue() {
		resp.Reissued = int32(a.reissuer.Reissue(st.ID, window))
		resp.ReissuedBy = timestamppb.New(time.Now().Add(window))
	}
	return resp, nil
}

// RetireAuthority implements meshcav1.AdminServiceServer.
func (a *Admin) RetireAuthority(ctx context.Context, req *meshcav1.RetireAuthorityRequest) (
	*meshcav1.RetireAuthorityResponse, error) {
	st, err := a.ca.Retire(ctx, req.GetId())
	if err != nil {
		return nil, ToStatus(ctx, a.log, "retire authority", err)
	}
	return &meshcav1.RetireAuthorityResponse{Authority: authorityProto(st)}, nil
}

// RemoveAuthority implements meshcav1.AdminServiceServer.
func (a *Admin) RemoveAuthority(ctx context.Context, req *meshcav1.RemoveAuthorityRequest) (
	*meshcav1.RemoveAuthorityResponse, error) {
	var warning string
	if req.GetForce() {
		check, err := a.ca.CheckRemoval(ctx, req.GetId())
		if err != nil {
			return nil, ToStatus(ctx, a.log, "remove authority", err)
		}
		if check.LiveLeaves > 0 {
			warning = fmt.Sprintf("forced: %s valid until %s, and whoever holds one fails "+
				"handshakes with peers that got the new bundle",
				ca.Certificates(check.LiveLeaves, "that needs authority "+check.ID+" stays",
					"that need authority "+check.ID+" stay"),
				check.SafeAt.UTC().Format(time.RFC3339))
		}
	}
	st, err := a.ca.Remove(ctx, ca.RemoveParams{ID: req.GetId(), Force: req.GetForce()})
	if err != nil {
		return nil, ToStatus(ctx, a.log, "remove authority", err)
	}
	return &meshcav1.RemoveAuthorityResponse{Authority: authorityProto(st), Warning: warning},
		nil
}

// GetRotationStatus implements meshcav1.AdminServiceServer.
func (a *Admin) GetRotationStatus(ctx context.Context, _ *meshcav1.GetRotationStatusRequest) (
	*meshcav1.GetRotationStatusResponse, error) {
	resp := &meshcav1.GetRotationStatusResponse{NextStep: "prepare", NextStepSafe: true}
	var prepared, retired []*meshcav1.AuthorityRotation
	for _, s := range a.ca.Authorities() {
		r := &meshcav1.AuthorityRotation{Authority: authorityProto(s)}
		switch s.State {
		case store.StatePrepared:
			acked, total := ackedBy(a.acks, s)
			r.StreamsAcked, r.StreamsTotal = int32(acked), int32(total)
			prepared = append(prepared, r)
		case store.StateRetired:
			check, err := a.ca.CheckRemoval(ctx, s.ID)
			if err != nil {
				return nil, ToStatus(ctx, a.log, "rotation status", err)
			}
			r.LiveLeaves = int32(check.LiveLeaves)
			if check.LiveLeaves > 0 {
				r.SafeToRemoveAt = timestamppb.New(check.SafeAt)
			}
			retired = append(retired, r)
		}
		resp.Authorities = append(resp.Authorities, r)
	}

	switch {
	case len(prepared) > 0:
		r := prepared[0]
		resp.NextStep = "activate"
		resp.NextStepSafe = r.StreamsAcked == r.StreamsTotal
		if !resp.NextStepSafe {
			resp.WaitingFor = fmt.Sprintf("%d of %d streams to acknowledge the bundle with %s",
				r.StreamsTotal-r.StreamsAcked, r.StreamsTotal, r.Authority.GetId())
		}
	case len(retired) > 0:
		r := retired[0]
		resp.NextStep = "remove"
		resp.NextStepSafe = r.LiveLeaves == 0
		if !resp.NextStepSafe {
			resp.WaitingFor = ca.Certificates(int(r.LiveLeaves),
				"that needs "+r.Authority.GetId()+" to expire",
				"that need "+r.Authority.GetId()+" to expire")
			resp.SafeAt = r.SafeToRemoveAt
		}
	}
	return resp, nil
}

// findPrepared returns the authority an activation names, or the only prepared one.
func (a *Admin) findPrepared(id string) (ca.AuthorityStatus, bool) {
	var found []ca.AuthorityStatus
	for _, s := range a.ca.Authorities() {
		if s.State == store.StatePrepared && (id == "" || s.ID == id) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		return ca.AuthorityStatus{}, false // the CA refuses it with the precise reason
	}
	return found[0], true
}

// ackedBy returns how many subscribed streams have every root of s, and how many
// streams are subscribed.
func ackedBy(acks BundleAcks, s ca.AuthorityStatus) (acked, total int) {
	acked = -1
	for _, r := range s.Roots {
		n, t := acks.BundleAcks(r)
		if acked < 0 || n < acked {
			acked = n
		}
		total = t
	}
	return max(acked, 0), total
}

// GetRotationLog implements meshcav1.AdminServiceServer.
func (a *Admin) GetRotationLog(ctx context.Context, _ *meshcav1.GetRotationLogRequest) (
	*meshcav1.GetRotationLogResponse, error) {
	events, err := a.audit.AuthorityEvents(ctx)
	if err != nil {
		return nil, ToStatus(ctx, a.log, "rotation log", err)
	}
	resp := &meshcav1.GetRotationLogResponse{}
	for _, ev := range events {
		pe := &meshcav1.RotationEvent{
			Seq: ev.Seq, At: timestamppb.New(ev.At), Op: ev.Op, Created: ev.Created,
			Forced: ev.Forced, Detail: ev.Detail,
		}
		for _, ch := range ev.Changes {
			pe.Changes = append(pe.Changes, &meshcav1.AuthorityChange{
				Id: ch.ID, From: string(ch.From), To: string(ch.To),
			})
		}
		resp.Events = append(resp.Events, pe)
	}
	return resp, nil
}

// noStreams stands in for a server with no discovery streams: none to acknowledge a
// bundle, no certificate to re-issue.
type noStreams struct{}

func (noStreams) BundleAcks(*x509.Certificate) (int, int) { return 0, 0 }

func (noStreams) Reissue(string, time.Duration) int { return 0 }

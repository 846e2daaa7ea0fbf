package xds

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"strconv"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/meshca/meshca/api"
)

// deltaStream is an incremental stream: SDS DeltaSecrets or delta ADS.
type deltaStream interface {
	Context() context.Context
	Send(*discovery.DeltaDiscoveryResponse) error
	Recv() (*discovery.DeltaDiscoveryRequest, error)
}

// deltaState is the protocol state of one incremental stream.
type deltaState struct {
	nodeID string
	// versions maps each subscribed name to the version the client has of it ("" for
	// none yet).
	versions map[string]string
	started  bool
	nonce    uint64
}

func (s *Server) serveDelta(stream deltaStream, op string) error {
	ctx := stream.Context()
	ident, err := api.Authenticate(ctx, s.cfg.Auth)
	if err != nil {
		return api.ToStatus(ctx, s.log, op, err)
	}
	s.metrics.StreamOpened()
	defer s.metrics.StreamClosed()
	log := s.log.With("op", op, "spiffe_id", ident.ID.String(), "pod_uid", ident.PodUID)

	reqs, recvErr := recvLoop(ctx, stream.Recv)
	expired, stopTimer := tokenExpiry(ident)
	defer stopTimer()

	st := deltaState{versions: map[string]string{}}
	var pending []*discovery.DeltaDiscoveryRequest
	ready := s.ready
	var sess *session
	defer func() {
		if sess != nil {
			sess.close()
		}
	}()

	for {
		var certChanged, bundleChanged <-chan struct{}
		if sess != nil {
			certChanged, bundleChanged = sess.certChanged, sess.bundleChanged
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-expired:
			log.Info("Closing stream: token expired", "node_id", st.nodeID)
			return errTokenExpired
		case <-ready:
			ready = nil
			sess = s.newSession(ident)
			for _, req := range pending {
				if err := s.onDeltaRequest(ctx, stream, sess, &st, req, log); err != nil {
					return err
				}
			}
			pending = nil
		case req := <-reqs:
			if sess == nil {
				// Subscriptions add up, so every request waits for readiness.
				pending = append(pending, req)
				continue
			}
			if err := s.onDeltaRequest(ctx, stream, sess, &st, req, log); err != nil {
				return err
			}
		case <-certChanged:
			sess.refreshCert()
			if err := s.pushDelta(ctx, stream, sess, &st, nil, log); err != nil {
				return err
			}
		case <-bundleChanged:
			sess.refreshBundle()
			if err := s.pushDelta(ctx, stream, sess, &st, nil, log); err != nil {
				return err
			}
		}
	}
}

func (s *Server) onDeltaRequest(ctx context.Context, stream deltaStream, sess *session,
	st *deltaState, req *discovery.DeltaDiscoveryRequest, log *slog.Logger) error {
	if req.GetNode() != nil {
		st.nodeID = req.GetNode().GetId()
	}
	if err := checkType(req.GetTypeUrl()); err != nil {
		return api.ToStatus(ctx, s.log, "sds delta", err)
	}
	if n := req.GetResponseNonce(); n != "" && n != strconv.FormatUint(st.nonce, 10) {
		log.Debug("Ignoring request with a stale nonce", "node_id", st.nodeID, "nonce", n)
		return nil
	}
	if detail := req.GetErrorDetail(); detail != nil {
		s.metrics.Rejected(secretTypeURL)
		log.Error("Client rejected secrets", "node_id", st.nodeID,
			"detail", detail.GetMessage())
		return nil
	}

	subscribe := req.GetResourceNamesSubscribe()
	if !st.started && len(subscribe) == 0 {
		subscribe = wildcardNames
	}
	st.started = true
	if err := sess.check(subscribe); err != nil {
		return api.ToStatus(ctx, s.log, "sds delta", err)
	}
	var added []string
	for _, n := range subscribe {
		if _, ok := st.versions[n]; !ok {
			st.versions[n] = req.GetInitialResourceVersions()[n]
			added = append(added, n)
		}
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		delete(st.versions, n)
	}
	if len(added) == 0 {
		return nil
	}
	return s.pushDelta(ctx, stream, sess, st, added, log)
}

// pushDelta sends every subscribed secret whose content differs from the version
// the client has; only names are considered when names is not nil.
func (s *Server) pushDelta(ctx context.Context, stream deltaStream, sess *session,
	st *deltaState, names []string, log *slog.Logger) error {
	if names == nil {
		for n := range st.versions {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil
	}
	res, err := sess.resolve(ctx, names)
	if err != nil {
		return api.ToStatus(ctx, s.log, "sds delta", err)
	}
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: secretTypeURL}
	for _, r := range res {
		v := s.bootID + "-" + hex.EncodeToString(r.hash[:8])
		if st.versions[r.name] == v {
			continue
		}
		st.versions[r.name] = v
		resp.Resources = append(resp.Resources, &discovery.Resource{
			Name: r.name, Version: v, Resource: r.any,
		})
	}
	if len(resp.Resources) == 0 {
		return nil
	}
	st.nonce++
	resp.Nonce = strconv.FormatUint(st.nonce, 10)
	resp.SystemVersionInfo = s.nextVersion()
	if err := stream.Send(resp); err != nil {
		return err
	}
	s.metrics.Pushed(secretTypeURL)
	log.Debug("Sent secrets", "node_id", st.nodeID, "nonce", resp.Nonce,
		"count", len(resp.Resources))
	return nil
}

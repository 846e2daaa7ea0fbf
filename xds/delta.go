package xds

import (
	"cmp"
	"context"
	"encoding/hex"
	"log/slog"
	"slices"
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

// wantsBundle says whether the stream is subscribed to a bundle secret.
func (st *deltaState) wantsBundle(sess *session) bool {
	for n := range st.versions {
		if kind, err := classifyName(n, sess.ident); err == nil && kind == kindBundle {
			return true
		}
	}
	return false
}

func (s *Server) serveDelta(stream deltaStream, op string) error {
	st := deltaState{versions: map[string]string{}}
	type req = *discovery.DeltaDiscoveryRequest
	return serveStream(s, stream.Context(), op, stream.Recv, streamHandlers[req]{
		nodeID: func() string { return st.nodeID },
		request: func(ctx context.Context, sess *session, r req, log *slog.Logger) error {
			return s.onDeltaRequest(ctx, stream, sess, &st, r, log)
		},
		changed: func(ctx context.Context, sess *session, log *slog.Logger) error {
			return s.pushDelta(ctx, stream, sess, &st, nil, log)
		},
	})
}

func (s *Server) onDeltaRequest(ctx context.Context, stream deltaStream, sess *session,
	st *deltaState, req *discovery.DeltaDiscoveryRequest, log *slog.Logger) error {
	if req.GetNode() != nil {
		st.nodeID = req.GetNode().GetId()
	}
	if err := checkType(cmp.Or(req.GetTypeUrl(), secretTypeURL), secretOnly); err != nil {
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
	if req.GetResponseNonce() != "" {
		s.acks.acked(sess.id, st.nonce)
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
	if !st.wantsBundle(sess) {
		s.acks.drop(sess.id)
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
	sent := res[:0:0]
	for _, r := range res {
		if slices.ContainsFunc(resp.Resources, func(x *discovery.Resource) bool {
			return x.Name == r.name
		}) {
			sent = append(sent, r)
		}
	}
	sess.sentBundle(st.nonce, sent)
	s.metrics.Pushed(secretTypeURL)
	log.Debug("Sent secrets", "node_id", st.nodeID, "nonce", resp.Nonce,
		"count", len(resp.Resources))
	return nil
}

package xds

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"slices"
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/meshca/meshca/api"
)

// sotwStream is a state-of-the-world stream: SDS StreamSecrets or ADS.
type sotwStream interface {
	Context() context.Context
	Send(*discovery.DiscoveryResponse) error
	Recv() (*discovery.DiscoveryRequest, error)
}

// sotwState is the protocol state of one stream.
type sotwState struct {
	node       *core.Node
	subscribed bool     // a request with names (or the wildcard) has been answered
	names      []string // the names last asked for
	nonce      uint64   // of the last response sent
	sent       [sha256.Size]byte
	acked      string // version of the last response the client accepted
}

func (st *sotwState) nodeID() string { return st.node.GetId() }

func (s *Server) serveSotW(stream sotwStream, op string) error {
	var st sotwState
	type req = *discovery.DiscoveryRequest
	return serveStream(s, stream.Context(), op, stream.Recv, streamHandlers[req]{
		nodeID: st.nodeID,
		request: func(ctx context.Context, sess *session, r req, log *slog.Logger) error {
			if r.GetNode() != nil {
				st.node = r.GetNode()
			}
			return s.onSotWRequest(ctx, stream, sess, &st, r, log)
		},
		changed: func(ctx context.Context, sess *session, log *slog.Logger) error {
			return s.pushSotW(ctx, stream, sess, &st, log)
		},
	})
}

func (s *Server) onSotWRequest(ctx context.Context, stream sotwStream, sess *session,
	st *sotwState, req *discovery.DiscoveryRequest, log *slog.Logger) error {
	if err := checkType(req.GetTypeUrl()); err != nil {
		return api.ToStatus(ctx, s.log, "sds", err)
	}
	if n := req.GetResponseNonce(); n != "" && n != strconv.FormatUint(st.nonce, 10) {
		log.Debug("Ignoring request with a stale nonce", "node_id", st.nodeID(), "nonce", n)
		return nil
	}
	if detail := req.GetErrorDetail(); detail != nil {
		s.metrics.Rejected(secretTypeURL)
		log.Error("Client rejected secrets", "node_id", st.nodeID(),
			"version", req.GetVersionInfo(), "names", req.GetResourceNames(),
			"detail", detail.GetMessage())
		// The rejected content is not sent again; a change of content will be.
		return nil
	}
	if req.GetResponseNonce() != "" {
		st.acked = req.GetVersionInfo()
	}
	if st.subscribed && slices.Equal(req.GetResourceNames(), st.names) {
		return nil
	}
	if err := sess.check(req.GetResourceNames()); err != nil {
		return api.ToStatus(ctx, s.log, "sds", err)
	}
	st.names, st.subscribed = slices.Clone(req.GetResourceNames()), true
	st.sent = [sha256.Size]byte{} // names changed: always answer
	return s.pushSotW(ctx, stream, sess, st, log)
}

// pushSotW sends the subscribed secrets unless they are what was sent last.
func (s *Server) pushSotW(ctx context.Context, stream sotwStream, sess *session,
	st *sotwState, log *slog.Logger) error {
	if !st.subscribed {
		return nil
	}
	res, err := sess.resolve(ctx, st.names)
	if err != nil {
		return api.ToStatus(ctx, s.log, "sds", err)
	}
	d := digest(res)
	if d == st.sent {
		return nil
	}
	st.nonce++
	resp := &discovery.DiscoveryResponse{
		VersionInfo: s.nextVersion(),
		Resources:   anys(res),
		TypeUrl:     secretTypeURL,
		Nonce:       strconv.FormatUint(st.nonce, 10),
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	st.sent = d
	s.metrics.Pushed(secretTypeURL)
	log.Debug("Sent secrets", "node_id", st.nodeID(), "version", resp.VersionInfo,
		"nonce", resp.Nonce, "names", st.names)
	return nil
}

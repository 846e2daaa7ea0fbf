package xds

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/ca"
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

// recvLoop feeds a stream's requests into a channel until Recv fails.
func recvLoop[T any](ctx context.Context, recv func() (T, error)) (<-chan T, <-chan error) {
	reqs := make(chan T)
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	return reqs, errc
}

// tokenExpiry returns a channel that fires when the stream's token expires.
func tokenExpiry(ident ca.Identity) (<-chan time.Time, func()) {
	if ident.TokenExpiry.IsZero() {
		return nil, func() {}
	}
	t := time.NewTimer(time.Until(ident.TokenExpiry))
	return t.C, func() { t.Stop() }
}

var errTokenExpired = status.Error(codes.Unauthenticated,
	"token expired: reconnect with a fresh token")

func (s *Server) serveSotW(stream sotwStream, op string) error {
	ctx := stream.Context()
	ident, err := api.Authenticate(ctx, s.cfg.Auth)
	if err != nil {
		return api.ToStatus(ctx, s.log, op, err)
	}
	s.metrics.StreamOpened()
	defer s.metrics.StreamClosed()
	log := s.log.With("op", op, "spiffe_id", ident.ID.String(), "pod_uid", ident.PodUID)
	log.Debug("Stream opened")

	reqs, recvErr := recvLoop(ctx, stream.Recv)
	expired, stopTimer := tokenExpiry(ident)
	defer stopTimer()

	var st sotwState
	var pending *discovery.DiscoveryRequest
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
			log.Info("Closing stream: token expired", "node_id", st.nodeID())
			return errTokenExpired
		case <-ready:
			ready = nil
			sess = s.newSession(ident)
			if pending != nil {
				if err := s.onSotWRequest(ctx, stream, sess, &st, pending, log); err != nil {
					return err
				}
				pending = nil
			}
		case req := <-reqs:
			if req.GetNode() != nil {
				st.node = req.GetNode()
			}
			if sess == nil {
				// Not ready yet: keep the newest request and answer it when ready.
				pending = req
				continue
			}
			if err := s.onSotWRequest(ctx, stream, sess, &st, req, log); err != nil {
				return err
			}
		case <-certChanged:
			sess.refreshCert()
			if err := s.pushSotW(ctx, stream, sess, &st, log); err != nil {
				return err
			}
		case <-bundleChanged:
			sess.refreshBundle()
			if err := s.pushSotW(ctx, stream, sess, &st, log); err != nil {
				return err
			}
		}
	}
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

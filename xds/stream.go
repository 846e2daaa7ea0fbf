package xds

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/ca"
)

// streamHandlers are what differs between state-of-the-world and incremental streams.
type streamHandlers[Req any] struct {
	// nodeID names the client in logs, once it has said who it is.
	nodeID func() string
	// request handles one request from the client.
	request func(ctx context.Context, sess *session, req Req, log *slog.Logger) error
	// changed sends what changed after a renewal or a new bundle.
	changed func(ctx context.Context, sess *session, log *slog.Logger) error
}

// serveStream is the loop every discovery stream shares: authenticate, then one
// select over the client's requests, renewals, bundle and configuration changes, the
// token's expiry and the server becoming ready. Requests that arrive before the CA is
// ready wait, in order, and are answered as soon as it is.
func serveStream[Req any](s *Server, ctx context.Context, op string, recv func() (Req, error),
	h streamHandlers[Req]) error {
	ident, err := api.Authenticate(ctx, s.cfg.Auth)
	if err != nil {
		return api.ToStatus(ctx, s.log, op, err)
	}
	s.metrics.StreamOpened()
	defer s.metrics.StreamClosed()
	log := s.log.With("op", op, "spiffe_id", ident.ID.String(), "pod_uid", ident.PodUID)
	log.Debug("Stream opened")

	reqs, recvErr := recvLoop(ctx, recv)
	expired, stopTimer := tokenExpiry(ident)
	defer stopTimer()

	var pending []Req
	ready := s.ready
	var sess *session
	defer func() {
		if sess != nil {
			sess.close()
		}
	}()
	for {
		var certChanged, bundleChanged, policiesChanged, endpointsChanged <-chan struct{}
		if sess != nil {
			certChanged, bundleChanged = sess.certChanged, sess.bundleChanged
			policiesChanged, endpointsChanged = sess.configChanged()
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
			log.Info("Closing stream: token expired", "node_id", h.nodeID())
			return errTokenExpired
		case <-ready:
			ready = nil
			sess = s.newSession(ident)
			for _, req := range pending {
				if err := h.request(ctx, sess, req, log); err != nil {
					return err
				}
			}
			pending = nil
		case req := <-reqs:
			if sess == nil {
				pending = append(pending, req)
				continue
			}
			if err := h.request(ctx, sess, req, log); err != nil {
				return err
			}
		case <-certChanged:
			sess.refreshCert()
			if err := h.changed(ctx, sess, log); err != nil {
				return err
			}
		case <-bundleChanged:
			sess.refreshBundle()
			if err := h.changed(ctx, sess, log); err != nil {
				return err
			}
		case <-policiesChanged:
			sess.refreshConfig()
			if err := h.changed(ctx, sess, log); err != nil {
				return err
			}
		case <-endpointsChanged:
			sess.refreshConfig()
			if err := h.changed(ctx, sess, log); err != nil {
				return err
			}
		}
	}
}

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

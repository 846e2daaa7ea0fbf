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
	node *core.Node
	// types holds the state of each resource type the client subscribed to.
	types map[string]*typeState
	// order is the order in which types were first asked for; pushes follow it, so
	// that clusters go out before endpoints and listeners before routes.
	order []string
	nonce uint64 // of the last response sent, of any type
}

// typeState is the protocol state of one resource type on a stream.
type typeState struct {
	names []string // the names last asked for, sorted, without "*"
	// wildcard is set when the first request named nothing; star when the last one
	// named "*". Either asks for every resource of the type.
	wildcard, star bool
	nonce          string // of the last response of this type
	sent           [sha256.Size]byte
	acked          string // version of the last response the client accepted
}

func (st *sotwState) nodeID() string { return st.node.GetId() }

// serveSotW serves a state-of-the-world stream of the given resource types.
func (s *Server) serveSotW(stream sotwStream, op string, types ...string) error {
	st := sotwState{types: map[string]*typeState{}}
	type req = *discovery.DiscoveryRequest
	return serveStream(s, stream.Context(), op, stream.Recv, streamHandlers[req]{
		nodeID: st.nodeID,
		request: func(ctx context.Context, sess *session, r req, log *slog.Logger) error {
			if r.GetNode() != nil {
				st.node = r.GetNode()
			}
			return s.onSotWRequest(ctx, stream, sess, &st, r, types, op, log)
		},
		changed: func(ctx context.Context, sess *session, log *slog.Logger) error {
			for _, t := range st.order {
				if err := s.pushSotW(ctx, stream, sess, &st, t, op, log); err != nil {
					return err
				}
			}
			return nil
		},
	})
}

func (s *Server) onSotWRequest(ctx context.Context, stream sotwStream, sess *session,
	st *sotwState, req *discovery.DiscoveryRequest, types []string, op string,
	log *slog.Logger) error {
	typeURL := req.GetTypeUrl()
	if typeURL == "" && len(types) == 1 {
		typeURL = types[0] // SDS streams may leave the type out
	}
	if err := checkType(typeURL, types); err != nil {
		return api.ToStatus(ctx, s.log, op, err)
	}
	ts := st.types[typeURL]
	n := req.GetResponseNonce()
	stale := n != "" && (ts == nil || n != ts.nonce)
	if detail := req.GetErrorDetail(); detail != nil {
		// Counted even when a newer response has gone out since: every rejection is
		// worth knowing about.
		s.metrics.Rejected(typeURL)
		log.Error("Client rejected resources", "node_id", st.nodeID(), "type", typeURL,
			"version", req.GetVersionInfo(), "names", req.GetResourceNames(),
			"nonce", n, "stale", stale, "detail", detail.GetMessage())
		// The rejected content is not sent again; a change of content will be.
		return nil
	}
	if stale {
		log.Debug("Ignoring request with a stale nonce", "node_id", st.nodeID(),
			"type", typeURL, "nonce", n)
		return nil
	}
	if ts != nil && req.GetResponseNonce() != "" {
		ts.acked = req.GetVersionInfo()
		if typeURL == secretTypeURL {
			nonce, _ := strconv.ParseUint(n, 10, 64)
			s.acks.acked(sess.id, nonce)
		}
	}
	// Clients list names in any order (grpc-go's differs from one request to the
	// next): only a change of the set is a new subscription.
	names, star := nameSet(req.GetResourceNames())
	if ts != nil && slices.Equal(names, ts.names) && star == ts.star {
		return nil
	}
	if typeURL == secretTypeURL {
		if err := sess.check(names); err != nil {
			return api.ToStatus(ctx, s.log, op, err)
		}
	} else {
		sess.subscribed(typeURL)
	}
	if ts == nil {
		// A first request without names subscribes to everything (the legacy
		// wildcard); later, only an explicit "*" keeps it.
		ts = &typeState{wildcard: len(names) == 0}
		st.types[typeURL] = ts
		st.order = append(st.order, typeURL)
	}
	ts.names, ts.star = names, star
	ts.sent = [sha256.Size]byte{} // names changed: always answer
	return s.pushSotW(ctx, stream, sess, st, typeURL, op, log)
}

// pushSotW sends the subscribed resources of a type unless they are what was sent
// last.
func (s *Server) pushSotW(ctx context.Context, stream sotwStream, sess *session,
	st *sotwState, typeURL, op string, log *slog.Logger) error {
	ts := st.types[typeURL]
	var res []namedResource
	if typeURL == secretTypeURL {
		var err error
		if res, err = sess.resolve(ctx, ts.names); err != nil {
			return api.ToStatus(ctx, s.log, op, err)
		}
	} else {
		res = sess.resolveConfig(typeURL, ts.names, ts.wildcard || ts.star, st.node, log)
	}
	d := digest(res)
	if d == ts.sent {
		return nil
	}
	st.nonce++
	resp := &discovery.DiscoveryResponse{
		VersionInfo: s.nextVersion(),
		Resources:   anys(res),
		TypeUrl:     typeURL,
		Nonce:       strconv.FormatUint(st.nonce, 10),
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	ts.sent, ts.nonce = d, resp.Nonce
	if typeURL == secretTypeURL {
		// Every secret response repeats every subscribed secret: one without a
		// bundle means the client stopped asking for it.
		if !sess.sentBundle(st.nonce, res) {
			s.acks.drop(sess.id)
		}
	}
	s.metrics.Pushed(typeURL)
	log.Debug("Sent resources", "node_id", st.nodeID(), "type", typeURL,
		"version", resp.VersionInfo, "nonce", resp.Nonce, "names", ts.names)
	return nil
}

// nameSet returns the names sorted and without duplicates or "*", and whether "*" was
// among them.
func nameSet(names []string) ([]string, bool) {
	out := slices.Clone(names)
	slices.Sort(out)
	out = slices.Compact(out)
	i, star := slices.BinarySearch(out, "*")
	if star {
		out = slices.Delete(out, i, i+1)
	}
	return out, star
}

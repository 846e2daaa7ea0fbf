package xds

import (
	"crypto/x509"
	"slices"
	"sync"
)

// bundleAcks records, for every open stream subscribed to a bundle secret (ROOTCA or
// the SPIFFE trust-domain name), the roots of the last bundle it was sent and of the
// last one it acknowledged. Rotation reads it to know that every client trusts a new
// root before that root signs anything. It is safe for concurrent use.
type bundleAcks struct {
	// mu guards streams.
	mu      sync.Mutex
	streams map[uint64]*streamBundle
}

// streamBundle is what one stream was sent and accepted. Nonces are the stream's
// response counter, which only grows.
type streamBundle struct {
	sent      []*x509.Certificate
	sentNonce uint64
	acked     []*x509.Certificate
}

// sent records that the response with this nonce carried a bundle with these roots.
func (b *bundleAcks) sent(stream, nonce uint64, roots []*x509.Certificate) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.streams == nil {
		b.streams = map[uint64]*streamBundle{}
	}
	sb := b.streams[stream]
	if sb == nil {
		sb = &streamBundle{}
		b.streams[stream] = sb
	}
	sb.sent, sb.sentNonce = roots, nonce
}

// acked records that the client accepted the response with this nonce. Streams
// ignore stale nonces, so only the latest response is ever acknowledged; accepting
// it counts for the bundle sent with it or before it. A state-of-the-world stream
// repeats the bundle in every secret response, so there it is exact.
func (b *bundleAcks) acked(stream, nonce uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sb := b.streams[stream]; sb != nil && sb.sent != nil && nonce >= sb.sentNonce {
		sb.acked = sb.sent
	}
}

// drop forgets a stream that closed or no longer asks for a bundle.
func (b *bundleAcks) drop(stream uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.streams, stream)
}

// count returns how many subscribed streams acknowledged a bundle holding root, and
// how many streams are subscribed.
func (b *bundleAcks) count(root *x509.Certificate) (acked, total int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, sb := range b.streams {
		total++
		if slices.ContainsFunc(sb.acked, root.Equal) {
			acked++
		}
	}
	return acked, total
}

// BundleAcks returns how many open SDS and ADS streams that subscribed to a bundle
// secret have acknowledged a bundle containing root, and how many such streams
// there are. Streams that never asked for a bundle are not counted. Rotation
// activates a new root only when acked equals total.
func (s *Server) BundleAcks(root *x509.Certificate) (acked, total int) {
	return s.acks.count(root)
}

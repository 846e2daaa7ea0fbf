package xds

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
)

// workloadCert is one issued certificate with its key, ready to serve. Immutable.
type workloadCert struct {
	chainPEM []byte
	keyPEM   []byte
	serial   string
	issued   time.Time
	notAfter time.Time
	// authority is the ID of the authority that signed it.
	authority string
	// due is its normal renewal time, jittered once when it is issued.
	due time.Time
}

// certEntry is the certificate of one pod identity, shared by every stream of that
// pod, and renewed in the background while any stream uses it.
type certEntry struct {
	ident ca.Identity
	key   string
	// refs counts the streams using the entry; guarded by certManager.mu.
	refs int

	// mu guards cur, changed, stop and reissueAt, and serializes the first issuance.
	mu      sync.Mutex
	cur     *workloadCert
	changed chan struct{}      // closed and replaced at every renewal
	stop    context.CancelFunc // ends the renewer; set with the first certificate
	// reissueAt, when set, is a renewal earlier than cur.due that Reissue asked for,
	// to move the certificate to the authority reissueTo; the renewer clears both
	// once that authority signed the certificate it serves.
	reissueAt time.Time
	reissueTo string
	// poke wakes the renewer to read reissueAt again. Buffered: one wake-up is
	// enough, however many Reissue calls came.
	poke chan struct{}
}

// current returns the certificate and a channel closed when it is renewed.
func (e *certEntry) current() (*workloadCert, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cur, e.changed
}

// certManager issues and renews the direct-mode certificates, one per pod identity.
// Lock order: certManager.mu before certEntry.mu.
type certManager struct {
	issuer Issuer
	ttl    time.Duration
	log    *slog.Logger

	// mu guards entries and every entry's refs.
	mu      sync.Mutex
	entries map[string]*certEntry
}

func newCertManager(issuer Issuer, ttl time.Duration, log *slog.Logger) *certManager {
	return &certManager{issuer: issuer, ttl: ttl, log: log, entries: map[string]*certEntry{}}
}

// acquire returns the pod's certificate entry, issuing its first certificate if
// needed. Every successful acquire needs one release.
func (m *certManager) acquire(ctx context.Context, ident ca.Identity) (*certEntry, error) {
	key := ident.PodUID + "|" + ident.ID.String()
	m.mu.Lock()
	e := m.entries[key]
	if e == nil {
		e = &certEntry{ident: ident, key: key, changed: make(chan struct{}),
			poke: make(chan struct{}, 1)}
		m.entries[key] = e
	}
	e.refs++
	m.mu.Unlock()

	if err := m.ensureIssued(ctx, e); err != nil {
		m.release(e)
		return nil, err
	}
	return e, nil
}

func (m *certManager) ensureIssued(ctx context.Context, e *certEntry) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur != nil {
		return nil
	}
	wc, err := m.issue(ctx, e.ident)
	if err != nil {
		return err
	}
	e.cur = wc
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.stop = cancel
	go m.renewLoop(rctx, e)
	return nil
}

// release gives back an entry; the last release forgets the key and stops renewals.
func (m *certManager) release(e *certEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.refs--
	if e.refs > 0 || m.entries[e.key] != e {
		return
	}
	delete(m.entries, e.key)
	e.mu.Lock()
	if e.stop != nil {
		e.stop()
	}
	e.mu.Unlock()
}

func (m *certManager) issue(ctx context.Context, ident ca.Identity) (*workloadCert, error) {
	key, err := ca.GenerateKey(ca.KeyECP256)
	if err != nil {
		return nil, err
	}
	svid, err := m.issuer.IssueX509SVID(ctx, ca.X509SVIDParams{
		ID: ident.ID, PublicKey: key.Public(), TTL: m.ttl, Requester: ident.String() + " sds",
	})
	if err != nil {
		return nil, err
	}
	keyPEM, err := pemKey(key)
	if err != nil {
		return nil, err
	}
	leaf := svid.Leaf()
	wc := &workloadCert{
		chainPEM:  pemCerts(svid.Certificates),
		keyPEM:    keyPEM,
		serial:    ca.SerialHex(leaf.SerialNumber),
		issued:    time.Now(),
		notAfter:  leaf.NotAfter,
		authority: svid.AuthorityID,
	}
	wc.due = renewAt(wc)
	return wc, nil
}

// Reissue schedules the renewal of every direct-mode workload certificate (the
// ones served over SDS and ADS) that the authority with ID signer did not sign, each
// at its own random time within window from now, or at its normal renewal if that
// comes first; zero window renews them all at once. It returns how many it
// scheduled. Rotation calls it after activating signer, so that certificates move to
// the new authority sooner than their normal renewal; the new certificates are pushed
// on every open stream that uses them, as at any renewal. Certificates issued later
// are signed by signer anyway.
func (s *Server) Reissue(signer string, window time.Duration) int {
	select {
	case <-s.ready:
	default:
		return 0 // no issuer yet, so no certificate either
	}
	n := s.workload.reissue(signer, window)
	s.log.Info("Scheduled workload certificates for re-issue", "authority_id", signer,
		"certificates", n, "window", window)
	return n
}

// renewAt is about half of the certificate's lifetime, with ±10% jitter so that
// pods started together do not renew together.
func renewAt(wc *workloadCert) time.Time {
	life := wc.notAfter.Sub(wc.issued)
	frac := 0.4 + 0.2*rand.Float64()
	return wc.issued.Add(time.Duration(float64(life) * frac))
}

// nextRenewal returns the current certificate and when to renew it: at its normal
// time, or earlier if Reissue asked for that.
func (e *certEntry) nextRenewal() (*workloadCert, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	at := e.cur.due
	if !e.reissueAt.IsZero() && e.reissueAt.Before(at) {
		at = e.reissueAt
	}
	return e.cur, at
}

// reissue asks the renewer to renew before at, unless the current certificate was
// signed by the authority keep, and says whether it asked.
func (e *certEntry) reissue(keep string, at time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur == nil || e.cur.authority == keep {
		return false // not issued yet (it will be, by keep), or already by keep
	}
	if e.reissueAt.IsZero() || at.Before(e.reissueAt) {
		e.reissueAt = at
	}
	e.reissueTo = keep
	select {
	case e.poke <- struct{}{}:
	default:
	}
	return true
}

// reissue schedules the renewal of every certificate not signed by the authority
// keep, each at a random time within window from now, and returns how many.
func (m *certManager) reissue(keep string, window time.Duration) int {
	m.mu.Lock()
	entries := make([]*certEntry, 0, len(m.entries))
	for _, e := range m.entries {
		entries = append(entries, e)
	}
	m.mu.Unlock()

	now := time.Now()
	n := 0
	for _, e := range entries {
		at := now
		if window > 0 {
			at = now.Add(rand.N(window))
		}
		if e.reissue(keep, at) {
			n++
		}
	}
	return n
}

func (m *certManager) renewLoop(ctx context.Context, e *certEntry) {
	for {
		cur, at := e.nextRenewal()
		timer := time.NewTimer(time.Until(at))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-e.poke:
			timer.Stop()
			continue
		case <-timer.C:
		}
		wc, err := m.issue(ctx, e.ident)
		if err != nil {
			m.log.Error("Failed to renew workload certificate", "spiffe_id", e.ident.ID.String(),
				"serial", cur.serial, "not_after", cur.notAfter, "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(retryAfter(cur)):
			}
			continue
		}
		e.mu.Lock()
		e.cur = wc
		// Whatever signed it, the new certificate is from the authority signing now: a
		// pending re-issue is done, even when another activation came in between.
		e.reissueAt, e.reissueTo = time.Time{}, ""
		close(e.changed)
		e.changed = make(chan struct{})
		e.mu.Unlock()
		m.log.Debug("Renewed workload certificate", "spiffe_id", e.ident.ID.String(),
			"serial", wc.serial, "not_after", wc.notAfter)
	}
}

// retryAfter spaces renewal attempts after a failure: often enough to renew before
// the certificate expires, never in a tight loop.
func retryAfter(cur *workloadCert) time.Duration {
	return max(time.Second, min(5*time.Second, time.Until(cur.notAfter)/4))
}

func pemCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

func pemKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("failed to encode workload key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

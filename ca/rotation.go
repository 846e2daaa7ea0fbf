package ca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/meshca/meshca/store"
)

// RotationStore is the persistence rotation needs beyond Store: state changes with
// their audit record in one transaction, and the live leaves of an authority.
type RotationStore interface {
	ChangeAuthorities(ctx context.Context, cs store.AuthorityChangeSet) error
	LiveLeaves(ctx context.Context, q store.LiveLeavesQuery) (store.LiveLeaves, error)
}

// servingRequester is the audit requester of meshca's own serving certificates.
// They do not hold an authority back from removal: meshca re-issues its serving
// certificate as soon as the signing authority changes, and on every start.
const servingRequester = "meshca-server"

// PrepareParams says what PrepareAuthority creates.
type PrepareParams struct {
	// Intermediate creates an intermediate signed by the active root instead of a
	// new root.
	Intermediate bool
	// Import, when set, is an operator's CA (root or intermediate) to prepare instead
	// of creating one; Intermediate is then ignored.
	Import *Import
	// Detail goes into the audit record, e.g. why automatic rotation prepared it.
	Detail string
}

// PrepareAuthority creates (or imports) the next authority in the prepared state:
// trusted, its roots in every bundle, not signing. Watchers of the bundle are told
// at once. Only one authority may be prepared at a time (ErrPrecondition).
func (c *CA) PrepareAuthority(ctx context.Context, p PrepareParams) (AuthorityStatus, error) {
	c.rotMu.Lock()
	defer c.rotMu.Unlock()
	rs, err := c.rotationStore()
	if err != nil {
		return AuthorityStatus{}, err
	}
	if prepared := c.inState(store.StatePrepared); len(prepared) > 0 {
		return AuthorityStatus{}, fmt.Errorf("authority %s is already prepared; activate or "+
			"retire it first: %w", prepared[0].id, ErrPrecondition)
	}

	now := c.now()
	var a store.Authority
	switch {
	case p.Import != nil:
		if a, err = importAuthority(*p.Import, now); err != nil {
			return AuthorityStatus{}, fmt.Errorf("failed to import authority: %w: %w",
				err, ErrInvalidRequest)
		}
	case p.Intermediate:
		a, err = c.newIntermediate(now)
	default:
		a, err = generateRoot(c.cfg.TrustDomain, c.cfg.KeyType, c.cfg.RootTTL, c.cfg.Backdate, now)
	}
	if err != nil {
		return AuthorityStatus{}, err
	}
	a.State = store.StatePrepared
	if a.CrossSigned, err = c.crossSignNewRoot(a, now); err != nil {
		return AuthorityStatus{}, err
	}

	err = rs.ChangeAuthorities(ctx, store.AuthorityChangeSet{
		Create: &a,
		Event:  store.AuthorityEvent{At: now, Op: "prepare", Created: a.ID, Detail: p.Detail},
	})
	if err != nil {
		return AuthorityStatus{}, fmt.Errorf("failed to store prepared authority: %w", err)
	}
	if err := c.reload(ctx); err != nil {
		return AuthorityStatus{}, err
	}
	st, err := c.status(a.ID)
	if err != nil {
		return AuthorityStatus{}, err
	}
	c.log.Info("Prepared a new authority", "authority_id", a.ID,
		"imported", p.Import != nil, "root", st.Root)
	return st, nil
}

// crossSignNewRoot returns a certificate of a's root issued by the root of the active
// authority, when a brings a new root and meshca holds the active root's key; else
// nothing. Envoy reads the bundle it trusts meshca with once, at start (the gRPC
// channel credentials of its xDS cluster), so without it a sidecar started before
// the rotation could not reconnect to meshca once meshca's serving certificate
// chains to the new root.
func (c *CA) crossSignNewRoot(a store.Authority, now time.Time) ([][]byte, error) {
	issuer := c.rootSigner()
	if issuer == nil {
		return nil, nil
	}
	root, err := x509.ParseCertificate(a.Roots[0])
	if err != nil {
		return nil, fmt.Errorf("failed to parse the new root: %w", err)
	}
	if containsCert([]*x509.Certificate{issuer.cert}, root) {
		return nil, nil // an intermediate under the same root
	}
	// Below the old root come the cross certificate and a's own CA certificates
	// other than the new root.
	below := 1
	for _, der := range a.Chain {
		if c, err := x509.ParseCertificate(der); err == nil && !isSelfSigned(c) {
			below++
		}
	}
	if !pathLenAllows(issuer.cert, below) {
		c.log.Warn("Not cross-signing the new root: the active root's path length "+
			"constraint forbids it; sidecars started before this rotation cannot "+
			"reconnect to meshca after activation until they restart",
			"authority_id", a.ID, "root_id", issuer.id)
		return nil, nil
	}
	der, err := crossSign(root, issuer, c.cfg.Backdate, now)
	if err != nil {
		return nil, err
	}
	return [][]byte{der}, nil
}

// newIntermediate signs a new intermediate with the key of the active authority's
// root, which meshca must hold.
func (c *CA) newIntermediate(now time.Time) (store.Authority, error) {
	parent := c.rootSigner()
	if parent == nil {
		return store.Authority{}, fmt.Errorf("meshca holds no key of the active root to sign "+
			"an intermediate with; import one instead: %w", ErrPrecondition)
	}
	key, err := GenerateKey(c.cfg.KeyType)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to generate intermediate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return store.Authority{}, err
	}
	notAfter := now.Add(c.cfg.IntermediateTTL)
	if parent.notAfter.Before(notAfter) {
		notAfter = parent.notAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"meshca"},
			CommonName:   "meshca intermediate " + c.cfg.TrustDomain.Name(),
		},
		URIs:                  []*url.URL{c.cfg.TrustDomain.ID().URL()},
		NotBefore:             now.Add(-c.cfg.Backdate),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign |
			x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(nil, tmpl, parent.cert, key.Public(), parent.key)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to sign intermediate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return store.Authority{}, fmt.Errorf("failed to encode intermediate key: %w", err)
	}
	return store.Authority{
		ID: authorityID(der), Chain: [][]byte{der}, Roots: rawDERs(parent.roots),
		Key: keyDER, CreatedAt: now,
	}, nil
}

// rootSigner returns the loaded root authority, with its key, that the active
// authority chains to, or nil.
func (c *CA) rootSigner() *authority {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.active == nil {
		return nil
	}
	for _, a := range c.all {
		if a.state != store.StateRemoved && a.key != nil && isSelfSigned(a.cert) &&
			containsCert(c.active.roots, a.cert) {
			return a
		}
	}
	return nil
}

// ActivateParams selects the authority to activate.
type ActivateParams struct {
	// ID is the prepared authority; empty means the only prepared one.
	ID string
	// Forced and Detail go into the audit record: whether an operator overrode the
	// caller's safety check, and what that check found.
	Forced bool
	Detail string
}

// Activate makes a prepared authority the one that signs. The authority that signed
// until now is retired in the same transaction: still trusted, no longer signing.
// The caller checks beforehand that every client has the new bundle.
func (c *CA) Activate(ctx context.Context, p ActivateParams) (AuthorityStatus, error) {
	c.rotMu.Lock()
	defer c.rotMu.Unlock()
	rs, err := c.rotationStore()
	if err != nil {
		return AuthorityStatus{}, err
	}
	target, err := c.pick(p.ID, store.StatePrepared, "activate")
	if err != nil {
		return AuthorityStatus{}, err
	}
	now := c.now()
	if !target.notAfter.After(now) {
		return AuthorityStatus{}, fmt.Errorf("authority %s expired at %s: %w", target.id,
			target.notAfter.Format(time.RFC3339), ErrPrecondition)
	}
	changes := []store.AuthorityChange{{ID: target.id, From: store.StatePrepared,
		To: store.StateActive}}
	c.mu.RLock()
	old := c.active
	c.mu.RUnlock()
	if old != nil {
		changes = append(changes, store.AuthorityChange{ID: old.id, From: store.StateActive,
			To: store.StateRetired})
	}
	err = rs.ChangeAuthorities(ctx, store.AuthorityChangeSet{
		Changes: changes,
		Event: store.AuthorityEvent{At: now, Op: "activate", Changes: changes,
			Forced: p.Forced, Detail: p.Detail},
	})
	if err != nil {
		return AuthorityStatus{}, fmt.Errorf("failed to activate authority %s: %w", target.id, err)
	}
	if err := c.reload(ctx); err != nil {
		return AuthorityStatus{}, err
	}
	c.log.Info("Activated authority", "authority_id", target.id, "forced", p.Forced)
	return c.status(target.id)
}

// Retire withdraws a prepared authority that will not be activated: it stays
// trusted, and can then be removed. An empty id means the only prepared one. The
// authority that signed before an activation needs no retire: activating retires it.
func (c *CA) Retire(ctx context.Context, id string) (AuthorityStatus, error) {
	c.rotMu.Lock()
	defer c.rotMu.Unlock()
	rs, err := c.rotationStore()
	if err != nil {
		return AuthorityStatus{}, err
	}
	target, err := c.pick(id, store.StatePrepared, "retire")
	if err != nil {
		return AuthorityStatus{}, err
	}
	changes := []store.AuthorityChange{{ID: target.id, From: store.StatePrepared,
		To: store.StateRetired}}
	err = rs.ChangeAuthorities(ctx, store.AuthorityChangeSet{
		Changes: changes,
		Event:   store.AuthorityEvent{At: c.now(), Op: "retire", Changes: changes},
	})
	if err != nil {
		return AuthorityStatus{}, fmt.Errorf("failed to retire authority %s: %w", target.id, err)
	}
	if err := c.reload(ctx); err != nil {
		return AuthorityStatus{}, err
	}
	c.log.Info("Retired authority", "authority_id", target.id)
	return c.status(target.id)
}

// RemoveParams selects the authority to remove.
type RemoveParams struct {
	// ID is the retired authority; empty means the only retired one.
	ID string
	// Force removes it even though certificates that depend on it are still valid:
	// their holders fail every handshake with peers that got the new bundle.
	Force bool
}

// Removal says whether removing an authority is safe yet.
type Removal struct {
	// ID is the authority.
	ID string
	// DroppedRoots are the roots that leave the bundle when it is removed; none when
	// other authorities still chain to its roots.
	DroppedRoots []*x509.Certificate
	// LiveLeaves counts the still-valid certificates that chain to DroppedRoots.
	LiveLeaves int
	// SafeAt is when the last of them expires; zero when LiveLeaves is zero.
	SafeAt time.Time
}

// CheckRemoval says what removing a retired authority would drop from the bundle,
// and until when certificates that need it stay valid (from the issuance audit log).
func (c *CA) CheckRemoval(ctx context.Context, id string) (Removal, error) {
	rs, err := c.rotationStore()
	if err != nil {
		return Removal{}, err
	}
	target, err := c.pick(id, store.StateRetired, "remove")
	if err != nil {
		return Removal{}, err
	}
	dropped, affected := c.dependents(target)
	r := Removal{ID: target.id, DroppedRoots: dropped}
	if len(affected) == 0 {
		return r, nil
	}
	live, err := rs.LiveLeaves(ctx, store.LiveLeavesQuery{
		AuthorityIDs: affected, At: c.now(), ExcludeRequester: servingRequester,
	})
	if err != nil {
		return Removal{}, fmt.Errorf("failed to read the issuance log: %w", err)
	}
	r.LiveLeaves, r.SafeAt = live.Count, live.LastNotAfter
	return r, nil
}

// dependents returns the roots that leave the bundle when target is removed, and the
// IDs of every authority (whatever its state) whose certificates chain to them.
func (c *CA) dependents(target *authority) ([]*x509.Certificate, []string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var dropped []*x509.Certificate
	for _, r := range target.roots {
		kept := false
		for _, a := range c.all {
			if a != target && a.state != store.StateRemoved && containsCert(a.roots, r) {
				kept = true
				break
			}
		}
		if !kept {
			dropped = append(dropped, r)
		}
	}
	var affected []string
	for _, a := range c.all {
		for _, r := range dropped {
			if containsCert(a.roots, r) {
				affected = append(affected, a.id)
				break
			}
		}
	}
	return dropped, affected
}

// Remove stops trusting a retired authority: its roots leave the bundle (unless
// another authority still chains to them) and its key is erased. It is refused with
// ErrPrecondition while certificates that need those roots are still valid, naming
// when that ends, unless p.Force.
func (c *CA) Remove(ctx context.Context, p RemoveParams) (AuthorityStatus, error) {
	c.rotMu.Lock()
	defer c.rotMu.Unlock()
	rs, err := c.rotationStore()
	if err != nil {
		return AuthorityStatus{}, err
	}
	check, err := c.CheckRemoval(ctx, p.ID)
	if err != nil {
		return AuthorityStatus{}, err
	}
	var detail string
	if check.LiveLeaves > 0 {
		detail = Certificates(check.LiveLeaves, "that needs it is", "that need it are") +
			" valid until " + check.SafeAt.UTC().Format(time.RFC3339)
		if !p.Force {
			return AuthorityStatus{}, fmt.Errorf("authority %s cannot be removed yet: %s; "+
				"removing it is safe from then on (--force removes it now, and every "+
				"workload still holding one of them fails its handshakes): %w",
				check.ID, detail, ErrPrecondition)
		}
	}
	changes := []store.AuthorityChange{{ID: check.ID, From: store.StateRetired,
		To: store.StateRemoved}}
	err = rs.ChangeAuthorities(ctx, store.AuthorityChangeSet{
		Changes: changes,
		Event: store.AuthorityEvent{At: c.now(), Op: "remove", Changes: changes,
			Forced: p.Force && check.LiveLeaves > 0, Detail: detail},
	})
	if err != nil {
		return AuthorityStatus{}, fmt.Errorf("failed to remove authority %s: %w", check.ID, err)
	}
	if err := c.reload(ctx); err != nil {
		return AuthorityStatus{}, err
	}
	c.log.Info("Removed authority", "authority_id", check.ID,
		"forced", p.Force && check.LiveLeaves > 0)
	return c.status(check.ID)
}

// ActiveID returns the ID of the authority that signs now.
func (c *CA) ActiveID() string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.active == nil {
		return ""
	}
	return c.active.id
}

// pick finds the authority a step applies to: id, which must be in state want, or
// the only authority in that state when id is empty.
func (c *CA) pick(id string, want store.AuthorityState, op string) (*authority, error) {
	if id == "" {
		found := c.inState(want)
		switch len(found) {
		case 0:
			return nil, fmt.Errorf("no %s authority to %s%s: %w", want, op, pickHint(op),
				ErrPrecondition)
		case 1:
			return found[0], nil
		default:
			ids := make([]string, len(found))
			for i, a := range found {
				ids[i] = a.id
			}
			return nil, fmt.Errorf("%d authorities are %s (%s); name the one to %s "+
				"(meshctl: --id): %w", len(found), want, strings.Join(ids, ", "), op,
				ErrInvalidRequest)
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, a := range c.all {
		if a.id != id {
			continue
		}
		if a.state != want {
			return nil, fmt.Errorf("authority %s is %s; only a %s authority can be %s: %w",
				id, a.state, want, pastTense(op), ErrPrecondition)
		}
		return a, nil
	}
	return nil, fmt.Errorf("authority %q: %w", id, store.ErrNotFound)
}

func pickHint(op string) string {
	if op == "retire" {
		return " (activate already retired the authority it replaced)"
	}
	return ""
}

func pastTense(op string) string {
	if op == "remove" {
		return "removed"
	}
	return op + "d"
}

func (c *CA) inState(st store.AuthorityState) []*authority {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*authority
	for _, a := range c.all {
		if a.state == st {
			out = append(out, a)
		}
	}
	return out
}

func (c *CA) rotationStore() (RotationStore, error) {
	rs, ok := c.cfg.Store.(RotationStore)
	if !ok {
		return nil, errors.New("the store does not support rotation")
	}
	return rs, nil
}

// reload reads every authority back from the store and swaps them in.
func (c *CA) reload(ctx context.Context) error {
	stored, err := c.cfg.Store.Authorities(ctx)
	if err != nil {
		return fmt.Errorf("failed to read authorities: %w", err)
	}
	return c.load(stored)
}

func (c *CA) status(id string) (AuthorityStatus, error) {
	for _, st := range c.Authorities() {
		if st.ID == id {
			return st, nil
		}
	}
	return AuthorityStatus{}, fmt.Errorf("authority %q vanished", id)
}

// Certificates writes "1 certificate " followed by one, or "n certificates " followed
// by many: the count and the words that agree with it.
func Certificates(n int, one, many string) string {
	if n == 1 {
		return "1 certificate " + one
	}
	return fmt.Sprintf("%d certificates %s", n, many)
}

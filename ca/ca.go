package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/store"
)

// Defaults applied by New to a zero Config.
const (
	DefaultBackdate   = 60 * time.Second
	DefaultLeafTTL    = time.Hour
	DefaultMaxLeafTTL = 24 * time.Hour
	DefaultRootTTL    = 10 * 365 * 24 * time.Hour
	// DefaultIntermediateTTL is the lifetime of an intermediate the CA creates; it is
	// also capped by its root's NotAfter.
	DefaultIntermediateTTL = 365 * 24 * time.Hour
	DefaultKeyType         = KeyECP256
)

// Store is the persistence the CA needs. Rotation (PrepareAuthority, Activate,
// Retire, Remove) needs a RotationStore as well; a Store without it refuses them.
type Store interface {
	Authorities(ctx context.Context) ([]store.Authority, error)
	CreateAuthority(ctx context.Context, a store.Authority) error
	RecordIssuance(ctx context.Context, rec store.Issuance) error
}

// Config configures a CA. Zero fields take the defaults above.
type Config struct {
	// TrustDomain is the trust domain every issued SPIFFE ID must belong to.
	TrustDomain spiffeid.TrustDomain
	// Store keeps authorities and the audit log. Required.
	Store Store
	// Logger receives one Info line per issuance, never key material.
	Logger *slog.Logger
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Backdate is subtracted from NotBefore to absorb clock skew between machines.
	Backdate time.Duration
	// DefaultTTL is a leaf's lifetime when the caller asks for none.
	DefaultTTL time.Duration
	// MaxTTL caps every leaf's requested lifetime.
	MaxTTL time.Duration
	// RootTTL is the lifetime of a root the CA creates.
	RootTTL time.Duration
	// IntermediateTTL is the lifetime of an intermediate the CA creates, capped by
	// its root's NotAfter.
	IntermediateTTL time.Duration
	// KeyType is the algorithm of a root the CA creates.
	KeyType KeyType
	// Import, when set, is used instead of a new root on the first start.
	Import *Import
}

// CA issues X.509-SVIDs from the active authority. It is safe for concurrent use.
type CA struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	// rotMu serializes rotation steps: each checks its preconditions, commits and
	// reloads memory before the next begins, so memory never goes back to an older
	// state than the store, and two steps never both pass a check one alone may.
	rotMu sync.Mutex
	// mu guards active, all and bundleChanged. Writers replace the slices and
	// pointers whole; readers copy what they need under RLock and never mutate it.
	mu     sync.RWMutex
	active *authority
	all    []*authority
	// bundleChanged is closed, and replaced, whenever the trust bundle changes.
	bundleChanged chan struct{}
}

// New loads the authorities from the store, or on the first start creates (or
// imports) a root and stores it. A stored authority that cannot be loaded is an
// error: the CA never replaces a root by itself.
func New(ctx context.Context, cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("trust domain is required")
	}
	if cfg.Store == nil {
		return nil, errors.New("store is required")
	}
	cfg = withDefaults(cfg)
	c := &CA{cfg: cfg, log: cfg.Logger, now: cfg.Clock, bundleChanged: make(chan struct{})}

	stored, err := cfg.Store.Authorities(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to read authorities: %w", err)
	}
	if len(stored) == 0 {
		first, err := c.firstAuthority()
		if err != nil {
			return nil, err
		}
		if err := cfg.Store.CreateAuthority(ctx, first); err != nil {
			return nil, fmt.Errorf("failed to store authority: %w", err)
		}
		c.log.Info("Created certificate authority", "authority_id", first.ID,
			"imported", cfg.Import != nil)
		stored = []store.Authority{first}
	} else if cfg.Import != nil {
		if err := checkImportMatches(*cfg.Import, stored, cfg.Clock()); err != nil {
			return nil, err
		}
	}

	if err := c.load(stored); err != nil {
		return nil, err
	}
	return c, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Backdate == 0 {
		cfg.Backdate = DefaultBackdate
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = DefaultLeafTTL
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = DefaultMaxLeafTTL
	}
	if cfg.RootTTL == 0 {
		cfg.RootTTL = DefaultRootTTL
	}
	if cfg.IntermediateTTL == 0 {
		cfg.IntermediateTTL = DefaultIntermediateTTL
	}
	if cfg.KeyType == "" {
		cfg.KeyType = DefaultKeyType
	}
	return cfg
}

func (c *CA) firstAuthority() (store.Authority, error) {
	if c.cfg.Import != nil {
		a, err := importAuthority(*c.cfg.Import, c.now())
		if err != nil {
			return store.Authority{}, fmt.Errorf("failed to import CA: %w", err)
		}
		return a, nil
	}
	return generateRoot(c.cfg.TrustDomain, c.cfg.KeyType, c.cfg.RootTTL, c.cfg.Backdate,
		c.now())
}

// checkImportMatches accepts an import given again on a later start only when it is
// the authority already stored, so a changed file is not silently ignored.
func checkImportMatches(imp Import, stored []store.Authority, now time.Time) error {
	a, err := importAuthority(imp, now)
	if err != nil {
		return fmt.Errorf("failed to check CA import: %w", err)
	}
	for _, s := range stored {
		if s.ID == a.ID {
			return nil
		}
	}
	return fmt.Errorf("the store already holds authorities and the CA to import (%s) is "+
		"not one of them; importing happens on the first start only", a.ID)
}

// load parses the stored authorities and picks the active one.
func (c *CA) load(stored []store.Authority) error {
	var all []*authority
	var active *authority
	for _, s := range stored {
		a, err := loadAuthority(s)
		if err != nil {
			return fmt.Errorf("failed to load stored authority %q: %w", s.ID, err)
		}
		all = append(all, a)
		if a.state == store.StateActive {
			if active != nil {
				return fmt.Errorf("store holds two active authorities, %q and %q",
					active.id, a.id)
			}
			active = a
		}
	}
	if active == nil {
		return errors.New("store holds no active authority")
	}

	c.mu.Lock()
	c.active, c.all = active, all
	close(c.bundleChanged)
	c.bundleChanged = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// WatchBundle returns the current trust bundle and a channel that is closed when the
// authorities change (a rotation step; the bundle itself may be unchanged, e.g. when
// activating); call again after that to get the new bundle and the next channel.
func (c *CA) WatchBundle() (*x509bundle.Bundle, <-chan struct{}) {
	c.mu.RLock()
	ch := c.bundleChanged
	c.mu.RUnlock()
	// The bundle is read after the channel: a change in between closes ch, so the
	// caller sees it at once rather than missing it.
	return c.Bundle(), ch
}

// Prepare creates a new root in the prepared state: trusted, in every bundle, not
// signing yet. Watchers of the bundle are told at once. It is PrepareAuthority with
// no options.
func (c *CA) Prepare(ctx context.Context) (AuthorityStatus, error) {
	return c.PrepareAuthority(ctx, PrepareParams{})
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.cfg.TrustDomain }

// MaxTTL returns the longest lifetime a leaf may be issued with.
func (c *CA) MaxTTL() time.Duration { return c.cfg.MaxTTL }

// Bundle returns the trust bundle: the roots of every authority still trusted.
func (c *CA) Bundle() *x509bundle.Bundle {
	c.mu.RLock()
	defer c.mu.RUnlock()
	b := x509bundle.New(c.cfg.TrustDomain)
	for _, a := range c.all {
		if a.state == store.StateRemoved {
			continue
		}
		for _, r := range a.roots {
			b.AddX509Authority(r)
		}
	}
	return b
}

// AuthorityStatus describes one authority for operators.
type AuthorityStatus struct {
	ID          string
	State       store.AuthorityState
	Subject     string
	Fingerprint string // SHA-256 of the certificate, lowercase hex
	NotBefore   time.Time
	NotAfter    time.Time
	// ChainNotAfter is when the authority stops being usable: the earliest NotAfter
	// of its certificate, the certificates that issued it and its roots. No leaf it
	// signs outlives it. For an authority meshca created it equals NotAfter.
	ChainNotAfter time.Time
	// Root is true for a self-signed authority, false for an intermediate.
	Root bool
	// Certificate is the authority's own certificate.
	Certificate *x509.Certificate
	// Roots are the trust anchors it chains to; they are in the bundle unless the
	// authority is removed.
	Roots []*x509.Certificate
}

// Authorities describes every authority, oldest first.
func (c *CA) Authorities() []AuthorityStatus {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]AuthorityStatus, 0, len(c.all))
	for _, a := range c.all {
		out = append(out, AuthorityStatus{
			ID:            a.id,
			State:         a.state,
			Subject:       a.cert.Subject.String(),
			Fingerprint:   Fingerprint(a.cert.Raw),
			NotBefore:     a.cert.NotBefore,
			NotAfter:      a.cert.NotAfter,
			ChainNotAfter: a.notAfter,
			Root:          isSelfSigned(a.cert),
			Certificate:   a.cert,
			Roots:         a.roots,
		})
	}
	return out
}

func (c *CA) signer() (*authority, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.active == nil {
		return nil, ErrNotReady
	}
	return c.active, nil
}

// roots returns the trust anchors as certificates, for tests and verification.
func (c *CA) roots() []*x509.Certificate {
	return c.Bundle().X509Authorities()
}

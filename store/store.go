// Package store persists meshca's state: the certificate authorities with their keys,
// and an audit log of every certificate issued, from which the records of long
// expired certificates are pruned.
//
// The Store interface is what the rest of meshca needs; Bolt is the embedded backend
// used by default. Every write is a single transaction: a crash leaves the state as it
// was before or after the write, never in between.
package store

import (
	"context"
	"errors"
	"time"
)

// SchemaVersion is the version of the on-disk layout this build writes and reads.
// A store written by a newer schema is refused rather than guessed at. Version 2 added
// the removed state and the authority event log; a version 1 file is upgraded in
// place when it is opened, so an older meshca refuses it afterwards instead of
// trusting a removed root again.
const SchemaVersion = 2

var (
	// ErrExists is returned when creating a record whose key is already taken.
	ErrExists = errors.New("already exists")
	// ErrNotFound is returned when a record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrClosed is returned by operations on a closed store.
	ErrClosed = errors.New("store is closed")
)

// AuthorityState is where an authority stands in its rotation life cycle.
type AuthorityState string

// The states of an authority. Only one authority of each kind is active at a time.
const (
	// StatePrepared authorities are trusted (in every bundle) but do not sign yet.
	StatePrepared AuthorityState = "prepared"
	// StateActive authorities sign new certificates.
	StateActive AuthorityState = "active"
	// StateRetired authorities no longer sign but stay trusted until their leaves expire.
	StateRetired AuthorityState = "retired"
	// StateRemoved authorities are no longer trusted; their key is erased and only
	// the certificates are kept, for the record.
	StateRemoved AuthorityState = "removed"
)

// Authority is a signing certificate authority with its private key.
type Authority struct {
	// ID names the authority; it is stable for its whole life.
	ID string `json:"id"`
	// State is the authority's place in the rotation life cycle.
	State AuthorityState `json:"state"`
	// Chain holds DER certificates: the authority's own certificate first, then the
	// certificates that issued it, up to and possibly including a root.
	Chain [][]byte `json:"chain"`
	// Roots holds the DER trust anchors that the chain leads to; they go into the
	// trust bundle. For a self-signed root authority it is the root itself.
	Roots [][]byte `json:"roots"`
	// Key is the PKCS #8 DER private key of Chain[0]. It never leaves the store
	// except into the CA's memory, and is erased when the authority is removed.
	Key []byte `json:"key"`
	// CreatedAt is when the authority was created or imported.
	CreatedAt time.Time `json:"created_at"`
	// CrossSigned holds DER certificates of this authority's root (Roots[0]), with
	// its name and key, issued by the root that was active when it was prepared.
	// meshca sends them after its own serving certificate, so that clients which
	// read the old bundle once at start (Envoy's connection to meshca) still verify
	// meshca after a rotation. Empty for the first root.
	CrossSigned [][]byte `json:"cross_signed,omitempty"`
}

// Issuance is one audit record: a certificate that meshca handed out.
type Issuance struct {
	// Serial is the certificate serial number in lowercase hex.
	Serial string `json:"serial"`
	// SPIFFEID is the identity the certificate carries.
	SPIFFEID string `json:"spiffe_id"`
	// AuthorityID is the ID of the authority that signed it.
	AuthorityID string `json:"authority_id"`
	// NotBefore and NotAfter bound the certificate's validity.
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// IssuedAt is when meshca signed it.
	IssuedAt time.Time `json:"issued_at"`
	// Requester says who asked: the admin API, or the caller authenticated by a token.
	Requester string `json:"requester"`
}

// IssuanceQuery selects audit records, newest first.
type IssuanceQuery struct {
	// SPIFFEID, when set, keeps only records for that identity.
	SPIFFEID string
	// Limit caps the number of records returned; zero means no cap.
	Limit int
}

// Store is the persistence meshca needs. Implementations are safe for concurrent use.
type Store interface {
	// Authorities returns every stored authority, oldest first.
	Authorities(ctx context.Context) ([]Authority, error)
	// CreateAuthority stores a new authority; ErrExists if its ID is taken.
	CreateAuthority(ctx context.Context, a Authority) error
	// RecordIssuance appends an audit record. It returns only once the record is
	// durable on disk; concurrent calls may share one disk sync.
	RecordIssuance(ctx context.Context, rec Issuance) error
	// Issuances returns audit records, newest first.
	Issuances(ctx context.Context, q IssuanceQuery) ([]Issuance, error)
	// PruneIssuances deletes the audit records of certificates that expired before
	// a time, and returns how many it deleted.
	PruneIssuances(ctx context.Context, expiredBefore time.Time) (int, error)
	// ChangeAuthorities applies one rotation step in one transaction; see
	// AuthorityChangeSet.
	ChangeAuthorities(ctx context.Context, cs AuthorityChangeSet) error
	// AuthorityEvents returns the rotation audit log, oldest first.
	AuthorityEvents(ctx context.Context) ([]AuthorityEvent, error)
	// LiveLeaves summarizes the audit records of certificates signed by the given
	// authorities that are still valid at a time.
	LiveLeaves(ctx context.Context, q LiveLeavesQuery) (LiveLeaves, error)
	// Close releases the store. Pending writes finish first.
	Close() error
}

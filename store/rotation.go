package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketAuthorityEvents = []byte("authority_events")

// AuthorityChange moves one authority from one state to another.
type AuthorityChange struct {
	ID string `json:"id"`
	// From is the state the authority must be in; the change fails with ErrConflict
	// otherwise, so two operators racing cannot both succeed.
	From AuthorityState `json:"from"`
	To   AuthorityState `json:"to"`
}

// AuthorityEvent is one record of the rotation audit log.
type AuthorityEvent struct {
	// Seq numbers events from 1, in the order they were committed.
	Seq uint64    `json:"seq"`
	At  time.Time `json:"at"`
	// Op is the step: "prepare", "activate", "retire" or "remove".
	Op string `json:"op"`
	// Created is the ID of the authority the step created, if any.
	Created string            `json:"created,omitempty"`
	Changes []AuthorityChange `json:"changes,omitempty"`
	// Forced is true when an operator overrode a safety check.
	Forced bool `json:"forced,omitempty"`
	// Detail says what the check found, e.g. how many streams had not acknowledged.
	Detail string `json:"detail,omitempty"`
}

// AuthorityChangeSet is one rotation step: an optional new authority, state changes
// of existing ones, and the audit record saying so. It is applied in one
// transaction: all of it, or nothing.
type AuthorityChangeSet struct {
	// Create, when set, is stored as a new authority; ErrExists if its ID is taken.
	Create *Authority
	// Changes are applied in order; each must find its authority in From.
	Changes []AuthorityChange
	// Event is appended to the rotation audit log; its Seq is assigned.
	Event AuthorityEvent
}

// LiveLeavesQuery selects the audit records that LiveLeaves summarizes.
type LiveLeavesQuery struct {
	// AuthorityIDs are the signers whose certificates count.
	AuthorityIDs []string
	// At is the time of validity: certificates with NotAfter after it count.
	At time.Time
	// ExcludeRequester leaves out records of this requester, e.g. meshca's own
	// serving certificates, which meshca replaces itself.
	ExcludeRequester string
}

// LiveLeaves summarizes the still-valid certificates of some authorities.
type LiveLeaves struct {
	// Count is how many certificates are still valid.
	Count int
	// LastNotAfter is the latest NotAfter among them; zero when Count is zero.
	LastNotAfter time.Time
}

// ChangeAuthorities implements Store.
func (b *Bolt) ChangeAuthorities(ctx context.Context, cs AuthorityChangeSet) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bkt := tx.Bucket(bucketAuthorities)
		if a := cs.Create; a != nil {
			if bkt.Get([]byte(a.ID)) != nil {
				return fmt.Errorf("authority %q: %w", a.ID, ErrExists)
			}
			if err := putJSON(bkt, []byte(a.ID), a); err != nil {
				return err
			}
		}
		for _, ch := range cs.Changes {
			if err := changeState(bkt, ch); err != nil {
				return err
			}
		}
		return appendEvent(tx.Bucket(bucketAuthorityEvents), cs.Event)
	})
}

func changeState(bkt *bolt.Bucket, ch AuthorityChange) error {
	raw := bkt.Get([]byte(ch.ID))
	if raw == nil {
		return fmt.Errorf("authority %q: %w", ch.ID, ErrNotFound)
	}
	var a Authority
	if err := json.Unmarshal(raw, &a); err != nil {
		return fmt.Errorf("failed to decode authority %q: %w", ch.ID, err)
	}
	if a.State != ch.From {
		return fmt.Errorf("authority %q is %s, not %s: %w", ch.ID, a.State, ch.From, ErrConflict)
	}
	a.State = ch.To
	if ch.To == StateRemoved {
		a.Key = nil
	}
	return putJSON(bkt, []byte(ch.ID), a)
}

func appendEvent(bkt *bolt.Bucket, ev AuthorityEvent) error {
	seq, err := bkt.NextSequence()
	if err != nil {
		return err
	}
	ev.Seq = seq
	return putJSON(bkt, binary.BigEndian.AppendUint64(nil, seq), ev)
}

func putJSON(bkt *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("failed to encode %q: %w", key, err)
	}
	return bkt.Put(key, raw)
}

// AuthorityEvents implements Store.
func (b *Bolt) AuthorityEvents(ctx context.Context) ([]AuthorityEvent, error) {
	var out []AuthorityEvent
	err := b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAuthorityEvents).ForEach(func(k, v []byte) error {
			var ev AuthorityEvent
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("failed to decode authority event %x: %w", k, err)
			}
			out = append(out, ev)
			return nil
		})
	})
	return out, err
}

// LiveLeaves implements Store.
//
// TODO: this scans the whole issuance log; a busy mesh needs an index by authority
// (or per-authority high-water marks kept as records are appended).
func (b *Bolt) LiveLeaves(ctx context.Context, q LiveLeavesQuery) (LiveLeaves, error) {
	var out LiveLeaves
	err := b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIssuances).ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var rec Issuance
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("failed to decode issuance record %x: %w", k, err)
			}
			if !rec.NotAfter.After(q.At) || !slices.Contains(q.AuthorityIDs, rec.AuthorityID) ||
				(q.ExcludeRequester != "" && rec.Requester == q.ExcludeRequester) {
				return nil
			}
			out.Count++
			if rec.NotAfter.After(out.LastNotAfter) {
				out.LastNotAfter = rec.NotAfter
			}
			return nil
		})
	})
	return out, err
}

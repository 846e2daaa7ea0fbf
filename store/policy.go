package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrConflict is returned when a write's expected revision is not the stored one.
var ErrConflict = errors.New("revision conflict")

var (
	bucketPolicies      = []byte("policies")
	bucketPolicyHistory = []byte("policy_history")
)

// PolicyRecord is one revision of an authorization policy. The store keeps the
// policy document as opaque JSON; the api package owns its schema.
type PolicyRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Revision counts this policy's changes, from 1; a deletion is a revision too.
	Revision int64 `json:"revision"`
	// Generation is the store-wide change counter when this revision was written;
	// it orders changes across policies.
	Generation uint64          `json:"generation"`
	Deleted    bool            `json:"deleted,omitempty"`
	Document   json.RawMessage `json:"document,omitempty"`
	UpdatedAt  time.Time       `json:"updated_at"`
	// Author says who made the change, for the history.
	Author string `json:"author,omitempty"`
}

// AnyRevision as an expected revision accepts whatever is stored;
// MustNotExist accepts only a policy that does not exist (or is deleted).
const (
	AnyRevision  int64 = -1
	MustNotExist int64 = 0
)

// PolicyWrite is one change in an ApplyPolicies call.
type PolicyWrite struct {
	Namespace, Name string
	// Document is the new policy; nil deletes it.
	Document json.RawMessage
	// ExpectRevision is compared with the stored revision (compare-and-swap), unless
	// it is AnyRevision.
	ExpectRevision int64
	Author         string
}

func policyKey(ns, name string) []byte { return []byte(ns + "/" + name) }

// ApplyPolicies writes every change in one transaction: all of them, or none when
// one conflicts (ErrConflict) or fails. A write whose document equals the stored one
// is a no-op and keeps its revision. It returns the resulting records in order.
func (b *Bolt) ApplyPolicies(ctx context.Context, writes []PolicyWrite) ([]PolicyRecord, error) {
	var out []PolicyRecord
	err := b.db.Update(func(tx *bolt.Tx) error {
		out = out[:0]
		cur, hist := tx.Bucket(bucketPolicies), tx.Bucket(bucketPolicyHistory)
		for _, w := range writes {
			rec, err := applyPolicy(cur, hist, w)
			if err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func applyPolicy(cur, hist *bolt.Bucket, w PolicyWrite) (PolicyRecord, error) {
	key := policyKey(w.Namespace, w.Name)
	var old PolicyRecord
	if raw := cur.Get(key); raw != nil {
		if err := json.Unmarshal(raw, &old); err != nil {
			return PolicyRecord{}, fmt.Errorf("failed to decode policy %s: %w", key, err)
		}
	}
	live := old.Revision > 0 && !old.Deleted
	switch {
	case w.ExpectRevision == AnyRevision:
	case w.ExpectRevision == MustNotExist && live:
		return PolicyRecord{}, fmt.Errorf("policy %s exists at revision %d: %w", key,
			old.Revision, ErrConflict)
	case w.ExpectRevision > 0 && w.ExpectRevision != old.Revision:
		return PolicyRecord{}, fmt.Errorf("policy %s is at revision %d, not %d: %w", key,
			old.Revision, w.ExpectRevision, ErrConflict)
	}
	if w.Document == nil && !live {
		return PolicyRecord{}, fmt.Errorf("policy %s: %w", key, ErrNotFound)
	}
	if w.Document != nil && live && jsonEqual(old.Document, w.Document) {
		return old, nil
	}

	gen, err := cur.NextSequence()
	if err != nil {
		return PolicyRecord{}, err
	}
	rec := PolicyRecord{
		Namespace: w.Namespace, Name: w.Name, Revision: old.Revision + 1, Generation: gen,
		Deleted: w.Document == nil, Document: w.Document, UpdatedAt: time.Now().UTC(),
		Author: w.Author,
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return PolicyRecord{}, err
	}
	if err := cur.Put(key, raw); err != nil {
		return PolicyRecord{}, err
	}
	hkey := binary.BigEndian.AppendUint64(append(key, 0), uint64(rec.Revision))
	return rec, hist.Put(hkey, raw)
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// Policy returns the current revision of a policy; ErrNotFound when it does not
// exist or is deleted.
func (b *Bolt) Policy(ctx context.Context, ns, name string) (PolicyRecord, error) {
	var rec PolicyRecord
	err := b.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketPolicies).Get(policyKey(ns, name))
		if raw == nil {
			return fmt.Errorf("policy %s/%s: %w", ns, name, ErrNotFound)
		}
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		if rec.Deleted {
			return fmt.Errorf("policy %s/%s: %w", ns, name, ErrNotFound)
		}
		return nil
	})
	return rec, err
}

// Policies returns the live policies of a namespace, or of all namespaces when ns
// is empty, ordered by namespace and name, and the store-wide generation they
// reflect.
func (b *Bolt) Policies(ctx context.Context, ns string) ([]PolicyRecord, uint64, error) {
	var out []PolicyRecord
	var gen uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		bkt := tx.Bucket(bucketPolicies)
		gen = bkt.Sequence()
		c := bkt.Cursor()
		prefix := []byte(ns + "/")
		k, v := c.First()
		if ns != "" {
			k, v = c.Seek(prefix)
		}
		for ; k != nil; k, v = c.Next() {
			if ns != "" && !bytes.HasPrefix(k, prefix) {
				break
			}
			var rec PolicyRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("failed to decode policy %s: %w", k, err)
			}
			if !rec.Deleted {
				out = append(out, rec)
			}
		}
		return nil
	})
	return out, gen, err
}

// PolicyHistory returns every revision of a policy, oldest first; ErrNotFound when
// it never existed.
func (b *Bolt) PolicyHistory(ctx context.Context, ns, name string) ([]PolicyRecord, error) {
	var out []PolicyRecord
	err := b.db.View(func(tx *bolt.Tx) error {
		prefix := append(policyKey(ns, name), 0)
		c := tx.Bucket(bucketPolicyHistory).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var rec PolicyRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("failed to decode policy history %q: %w", k, err)
			}
			out = append(out, rec)
		}
		if len(out) == 0 {
			return fmt.Errorf("policy %s/%s: %w", ns, name, ErrNotFound)
		}
		return nil
	})
	return out, err
}

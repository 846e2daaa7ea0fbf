package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	bucketMeta        = []byte("meta")
	bucketAuthorities = []byte("authorities")
	bucketIssuances   = []byte("issuances")
	keySchema         = []byte("schema_version")
)

// maxGroupCommit caps how many audit records share one transaction.
const maxGroupCommit = 4096

// BoltOptions tunes the embedded store.
type BoltOptions struct {
	// LockTimeout is how long to wait for another process to release the file.
	// Zero means one second.
	LockTimeout time.Duration
}

// Bolt is the embedded Store: one bbolt file, mode 0600, one transaction per write.
// Audit records written concurrently are committed together (group commit), so many
// issuances share one disk sync while none returns before its record is durable.
type Bolt struct {
	path string
	db   *bolt.DB

	// mu guards closed and sends on writes: senders hold it for reading, Close for
	// writing, so nothing is sent on a closed channel.
	mu     sync.RWMutex
	closed bool
	writes chan pendingIssuance
	done   chan struct{} // closed when the commit loop has drained and exited
}

type pendingIssuance struct {
	rec    Issuance
	result chan error
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the store file at path. A file that is locked by another
// process, corrupt, or written by a newer schema is refused with an error naming the
// file, and is left byte-for-byte unchanged.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	info, err := os.Stat(path)
	switch {
	case err == nil && info.Size() > 0:
		if err := checkExisting(path, opts.LockTimeout); err != nil {
			return nil, err
		}
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("failed to stat store file %q: %w", path, err)
	}

	db, err := openBolt(path, &bolt.Options{Timeout: opts.LockTimeout})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("failed to restrict store file %q to 0600: %w", path, err)
	}
	if err := db.Update(initSchema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("failed to initialize store file %q: %w", path, err)
	}

	b := &Bolt{
		path:   path,
		db:     db,
		writes: make(chan pendingIssuance, maxGroupCommit),
		done:   make(chan struct{}),
	}
	go b.commitLoop()
	return b, nil
}

// openBolt opens the file and turns bbolt's errors, and its panics on some corrupt
// files, into errors that name the file.
func openBolt(path string, opts *bolt.Options) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("store file %q is corrupt: %v", path, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, opts)
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("store file %q is locked by another process", path)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum),
		errors.Is(err, bolterrors.ErrVersionMismatch):
		return nil, fmt.Errorf("store file %q is corrupt: %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("failed to open store file %q: %w", path, err)
	}
	return db, nil
}

// checkExisting opens an existing file read-only and checks its consistency and schema
// before anything may write to it.
func checkExisting(path string, lockTimeout time.Duration) (err error) {
	db, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return err
	}
	defer db.Close()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("store file %q is corrupt: %v", path, r)
		}
	}()

	return db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			return fmt.Errorf("store file %q is corrupt: %w", path, cerr)
		}
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return fmt.Errorf("store file %q is not a meshca store (no meta bucket)", path)
		}
		v, err := schemaVersion(meta)
		if err != nil {
			return fmt.Errorf("store file %q: %w", path, err)
		}
		if v > SchemaVersion {
			return fmt.Errorf("store file %q has schema version %d, newer than %d that "+
				"this meshca understands; upgrade meshca", path, v, SchemaVersion)
		}
		return nil
	})
}

func schemaVersion(meta *bolt.Bucket) (int, error) {
	raw := meta.Get(keySchema)
	if raw == nil {
		return 0, errors.New("no schema version stored")
	}
	v, err := strconv.Atoi(string(raw))
	if err != nil {
		return 0, fmt.Errorf("unreadable schema version %q", raw)
	}
	return v, nil
}

func initSchema(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketMeta, bucketAuthorities, bucketIssuances,
		bucketPolicies, bucketPolicyHistory, bucketAuthorityEvents} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	// Older schemas only lack buckets, created above: the upgrade is writing the
	// new version, in the same transaction.
	meta := tx.Bucket(bucketMeta)
	if v, err := schemaVersion(meta); err == nil && v >= SchemaVersion {
		return nil
	}
	return meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
}

// Path returns the file the store lives in.
func (b *Bolt) Path() string { return b.path }

// Authorities implements Store.
func (b *Bolt) Authorities(ctx context.Context) ([]Authority, error) {
	var out []Authority
	err := b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAuthorities).ForEach(func(k, v []byte) error {
			var a Authority
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("failed to decode authority %q: %w", k, err)
			}
			out = append(out, a)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sortAuthorities(out)
	return out, nil
}

// CreateAuthority implements Store.
func (b *Bolt) CreateAuthority(ctx context.Context, a Authority) error {
	raw, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("failed to encode authority %q: %w", a.ID, err)
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		bkt := tx.Bucket(bucketAuthorities)
		if bkt.Get([]byte(a.ID)) != nil {
			return fmt.Errorf("authority %q: %w", a.ID, ErrExists)
		}
		return bkt.Put([]byte(a.ID), raw)
	})
}

// RecordIssuance implements Store. The record is queued for the commit loop, which
// writes every queued record in one transaction; the call returns after that commit.
func (b *Bolt) RecordIssuance(ctx context.Context, rec Issuance) error {
	p := pendingIssuance{rec: rec, result: make(chan error, 1)}

	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return ErrClosed
	}
	select {
	case b.writes <- p:
		b.mu.RUnlock()
	case <-ctx.Done():
		b.mu.RUnlock()
		return ctx.Err()
	}

	// Once queued, the record is committed whatever the caller's context does; the
	// caller just stops waiting.
	select {
	case err := <-p.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Group commit: under load, the commit loop gathers records for a moment before it
// commits. A commit costs about the same for one record as for hundreds (two
// fdatasync calls, during which the goroutine keeps its processor idle); without the
// pause, commits run back to back with the few records signed during the previous
// one. With it, issuance from 64 callers went from about 0.5 to about 0.67 of the
// bare CreateCertificate rate (docs/performance.md).
const (
	// gatherMax bounds the pause: the extra latency of an issuance under load.
	gatherMax = 2 * time.Millisecond
	// gatherGap ends the pause early once no record has arrived for this long: the
	// callers in flight have all been heard from.
	gatherGap = 250 * time.Microsecond
)

func (b *Bolt) commitLoop() {
	defer close(b.done)
	batch := make([]pendingIssuance, 0, maxGroupCommit)
	gather := time.NewTimer(time.Hour)
	gather.Stop()
	loaded := false // the previous commit had more than one record
	for first := range b.writes {
		batch = append(batch[:0], first)
		open := b.drain(&batch)
		// A lone caller never waits: the pause starts only under concurrent load.
		if loaded && open {
			open = b.gather(&batch, gather)
		}
		err := b.db.Update(func(tx *bolt.Tx) error {
			return appendIssuances(tx.Bucket(bucketIssuances), batch)
		})
		for _, p := range batch {
			p.result <- err
		}
		loaded = len(batch) > 1
		if !open {
			return
		}
	}
}

// drain adds the records already queued to batch, up to maxGroupCommit. It returns
// false when the queue is closed.
func (b *Bolt) drain(batch *[]pendingIssuance) bool {
	for len(*batch) < maxGroupCommit {
		select {
		case p, ok := <-b.writes:
			if !ok {
				return false
			}
			*batch = append(*batch, p)
		default:
			return true
		}
	}
	return true
}

// gather adds records to batch until gatherGap passes without one, gatherMax has
// passed in all, or the batch is full. It returns false when the queue is closed.
func (b *Bolt) gather(batch *[]pendingIssuance, timer *time.Timer) bool {
	deadline := time.Now().Add(gatherMax)
	for len(*batch) < maxGroupCommit {
		wait := min(gatherGap, time.Until(deadline))
		if wait <= 0 {
			return true
		}
		timer.Reset(wait)
		select {
		case p, ok := <-b.writes:
			timer.Stop()
			if !ok {
				return false
			}
			*batch = append(*batch, p)
		case <-timer.C:
			return true
		}
	}
	return true
}

func appendIssuances(bkt *bolt.Bucket, batch []pendingIssuance) error {
	for _, p := range batch {
		raw, err := json.Marshal(p.rec)
		if err != nil {
			return fmt.Errorf("failed to encode issuance %s: %w", p.rec.Serial, err)
		}
		seq, err := bkt.NextSequence()
		if err != nil {
			return err
		}
		if err := bkt.Put(binary.BigEndian.AppendUint64(nil, seq), raw); err != nil {
			return err
		}
	}
	return nil
}

// pruneBatch bounds the records one pruning transaction deletes, so that the commit
// loop's audit writes never wait long behind it.
const pruneBatch = 5000

// PruneIssuances implements Store. It reads the whole log, a batch of records per
// read transaction, and deletes the expired records of each batch in one write
// transaction; readers never block the commit loop, and the log stays small once
// pruned. An error or a cancelled ctx keeps the deletions already committed.
func (b *Bolt) PruneIssuances(ctx context.Context, expiredBefore time.Time) (int, error) {
	pruned := 0
	var from []byte // the key to continue from; nil starts at the oldest record
	for {
		// Read first, and write only when there is something to delete: an idle
		// store's file stays byte-for-byte the same.
		var expired [][]byte
		var done bool
		err := b.db.View(func(tx *bolt.Tx) error {
			expired, from, done = expiredRecords(tx.Bucket(bucketIssuances), from,
				expiredBefore)
			return nil
		})
		if err == nil && len(expired) > 0 {
			err = b.db.Update(func(tx *bolt.Tx) error {
				bkt := tx.Bucket(bucketIssuances)
				for _, k := range expired {
					if err := bkt.Delete(k); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err != nil {
			return pruned, fmt.Errorf("failed to prune audit records in %q: %w", b.path, err)
		}
		pruned += len(expired)
		if done {
			return pruned, nil
		}
		if err := ctx.Err(); err != nil {
			return pruned, err
		}
	}
}

// expiredRecords returns the keys of up to pruneBatch records, from the key from on,
// whose certificates expired before cutoff; the key to continue from; and whether
// the scan reached the end.
func expiredRecords(bkt *bolt.Bucket, from []byte, cutoff time.Time,
) (expired [][]byte, next []byte, done bool) {
	c := bkt.Cursor()
	k, v := c.First()
	if from != nil {
		k, v = c.Seek(from)
	}
	for ; k != nil; k, v = c.Next() {
		if len(expired) == pruneBatch {
			return expired, slices.Clone(k), false
		}
		var rec Issuance
		if err := json.Unmarshal(v, &rec); err != nil {
			continue // an unreadable record stays, for someone to look at
		}
		if rec.NotAfter.Before(cutoff) {
			expired = append(expired, slices.Clone(k))
		}
	}
	return expired, nil, true
}

// Issuances implements Store.
//
// TODO: records are filtered by a full scan; a busy mesh needs an index by SPIFFE ID.
func (b *Bolt) Issuances(ctx context.Context, q IssuanceQuery) ([]Issuance, error) {
	var out []Issuance
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketIssuances).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var rec Issuance
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("failed to decode issuance record %x: %w", k, err)
			}
			if q.SPIFFEID != "" && rec.SPIFFEID != q.SPIFFEID {
				continue
			}
			out = append(out, rec)
			if q.Limit > 0 && len(out) >= q.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Close implements Store: it waits for queued audit records, then closes the file.
func (b *Bolt) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.writes)
	b.mu.Unlock()

	<-b.done
	return b.db.Close()
}

package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/store"
)

func open(t *testing.T, path string) *store.Bolt {
	t.Helper()
	st, err := store.OpenBolt(path, store.BoltOptions{LockTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	return st
}

func TestAuthoritiesPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	st := open(t, path)
	ctx := context.Background()
	a := store.Authority{ID: "a1", State: store.StateActive, Chain: [][]byte{{1}},
		Roots: [][]byte{{1}}, Key: []byte{2}, CreatedAt: time.Unix(100, 0).UTC()}
	b := store.Authority{ID: "b2", State: store.StatePrepared, Chain: [][]byte{{3}},
		Roots: [][]byte{{3}}, Key: []byte{4}, CreatedAt: time.Unix(50, 0).UTC()}
	require.NoError(t, st.CreateAuthority(ctx, a))
	require.NoError(t, st.CreateAuthority(ctx, b))
	require.ErrorIs(t, st.CreateAuthority(ctx, a), store.ErrExists)
	require.NoError(t, st.Close())

	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	st = open(t, path)
	defer st.Close()
	got, err := st.Authorities(ctx)
	require.NoError(t, err)
	require.Equal(t, []store.Authority{b, a}, got, "oldest first")
}

func TestRecordIssuanceGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	st := open(t, path)
	ctx := context.Background()

	const writers, each = 32, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				errs <- st.RecordIssuance(ctx, store.Issuance{
					Serial:   fmt.Sprintf("%02x%02x", w, i),
					SPIFFEID: fmt.Sprintf("spiffe://td/w%d", w%2),
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, st.Close())
	require.ErrorIs(t, st.RecordIssuance(ctx, store.Issuance{}), store.ErrClosed)

	// Every acknowledged record survives a reopen.
	st = open(t, path)
	defer st.Close()
	all, err := st.Issuances(ctx, store.IssuanceQuery{})
	require.NoError(t, err)
	require.Len(t, all, writers*each)

	some, err := st.Issuances(ctx, store.IssuanceQuery{SPIFFEID: "spiffe://td/w1", Limit: 7})
	require.NoError(t, err)
	require.Len(t, some, 7)
	for _, r := range some {
		require.Equal(t, "spiffe://td/w1", r.SPIFFEID)
	}

	require.NoError(t, st.RecordIssuance(ctx, store.Issuance{Serial: "newest"}))
	latest, err := st.Issuances(ctx, store.IssuanceQuery{Limit: 1})
	require.NoError(t, err)
	require.Equal(t, "newest", latest[0].Serial, "newest first")
}

// TestCloseWhileGathering closes the store while writers keep the commit loop
// gathering batches: every record acknowledged before Close is in the file, and no
// call hangs.
func TestCloseWhileGathering(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	st := open(t, path)

	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				serial := fmt.Sprintf("%02x%04x", w, i)
				err := st.RecordIssuance(context.Background(), store.Issuance{Serial: serial})
				if errors.Is(err, store.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("record %s: %v", serial, err)
					return
				}
				mu.Lock()
				acked[serial] = true
				mu.Unlock()
			}
		})
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 500
	}, 10*time.Second, time.Millisecond)
	require.NoError(t, st.Close())
	wg.Wait()

	st = open(t, path)
	defer st.Close()
	all, err := st.Issuances(context.Background(), store.IssuanceQuery{})
	require.NoError(t, err)
	stored := map[string]bool{}
	for _, r := range all {
		stored[r.Serial] = true
	}
	for serial := range acked {
		require.True(t, stored[serial], "acknowledged record %s is lost", serial)
	}
}

func TestOpenRefusesAndLeavesFileUnchanged(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, path string) (cleanup func())
		wantMsg string
	}{
		{
			name: "locked by another process",
			prepare: func(t *testing.T, path string) func() {
				st := open(t, path)
				return func() { _ = st.Close() }
			},
			wantMsg: "is locked by another process",
		},
		{
			name: "garbage",
			prepare: func(t *testing.T, path string) func() {
				require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 2048), 0o600))
				return func() {}
			},
			wantMsg: "is corrupt",
		},
		{
			name: "meta pages overwritten",
			prepare: func(t *testing.T, path string) func() {
				st := open(t, path)
				require.NoError(t, st.Close())
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				require.NoError(t, err)
				_, err = f.WriteAt(bytes.Repeat([]byte{0xA5}, 64), 16)
				require.NoError(t, err)
				_, err = f.WriteAt(bytes.Repeat([]byte{0xA5}, 64), 4096+16)
				require.NoError(t, err)
				require.NoError(t, f.Close())
				return func() {}
			},
			wantMsg: "is corrupt",
		},
		{
			name: "newer schema",
			prepare: func(t *testing.T, path string) func() {
				st := open(t, path)
				require.NoError(t, st.Close())
				db, err := bolt.Open(path, 0o600, nil)
				require.NoError(t, err)
				require.NoError(t, db.Update(func(tx *bolt.Tx) error {
					return tx.Bucket([]byte("meta")).Put([]byte("schema_version"), []byte("99"))
				}))
				require.NoError(t, db.Close())
				return func() {}
			},
			wantMsg: "has schema version 99, newer than 2",
		},
		{
			name: "not a meshca store",
			prepare: func(t *testing.T, path string) func() {
				db, err := bolt.Open(path, 0o600, nil)
				require.NoError(t, err)
				require.NoError(t, db.Update(func(tx *bolt.Tx) error {
					_, err := tx.CreateBucket([]byte("other"))
					return err
				}))
				require.NoError(t, db.Close())
				return func() {}
			},
			wantMsg: "is not a meshca store",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshca.db")
			cleanup := tc.prepare(t, path)
			defer cleanup()
			before, err := os.ReadFile(path)
			require.NoError(t, err)

			_, err = store.OpenBolt(path, store.BoltOptions{LockTimeout: 100 * time.Millisecond})
			require.ErrorContains(t, err, tc.wantMsg)
			require.ErrorContains(t, err, path, "the error names the file")

			after, err := os.ReadFile(path)
			require.NoError(t, err)
			require.True(t, bytes.Equal(before, after), "the file was modified")
		})
	}
}

// TestPruneIssuances deletes exactly the records of certificates that expired before
// the cutoff, over more records than one pruning transaction deletes, and keeps what
// the rotation checks need: every certificate still valid, whenever it was issued.
func TestPruneIssuances(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	st := open(t, path)
	ctx := context.Background()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

	// Record i is issued at base+i s and valid for an hour; every thousandth one is
	// valid for 1,000 hours.
	const n = 11000
	var wg sync.WaitGroup
	for w := range 100 {
		wg.Go(func() {
			for i := w; i < n; i += 100 {
				issued := base.Add(time.Duration(i) * time.Second)
				ttl := time.Hour
				if i%1000 == 0 {
					ttl = 1000 * time.Hour
				}
				if err := st.RecordIssuance(ctx, store.Issuance{
					Serial: fmt.Sprintf("%x", i), IssuedAt: issued, NotBefore: issued,
					NotAfter: issued.Add(ttl),
				}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()

	// Certificates 0 to 7,999 expired before the cutoff, except the 8 long-lived ones.
	cutoff := base.Add(8000*time.Second + time.Hour)
	pruned, err := st.PruneIssuances(ctx, cutoff)
	require.NoError(t, err)
	require.Equal(t, 8000-8, pruned)

	pruned, err = st.PruneIssuances(ctx, cutoff)
	require.NoError(t, err)
	require.Zero(t, pruned, "pruning again finds nothing")

	require.NoError(t, st.Close())
	st = open(t, path)
	defer st.Close()
	left, err := st.Issuances(ctx, store.IssuanceQuery{})
	require.NoError(t, err)
	require.Len(t, left, n-8000+8)
	for _, rec := range left {
		require.False(t, rec.NotAfter.Before(cutoff), "record %s expired at %s", rec.Serial,
			rec.NotAfter)
	}
}

// TestPruneIssuancesOutOfOrder prunes records whatever their order in the log: a
// clock that jumped ahead once leaves records issued "later" before older ones.
func TestPruneIssuancesOutOfOrder(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "meshca.db"))
	defer st.Close()
	ctx := context.Background()
	cutoff := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, rec := range []store.Issuance{
		{Serial: "old", IssuedAt: cutoff.Add(-2 * time.Hour), NotAfter: cutoff.Add(-time.Hour)},
		{Serial: "future", IssuedAt: cutoff.Add(24 * time.Hour),
			NotAfter: cutoff.Add(25 * time.Hour)},
		{Serial: "after-the-jump", IssuedAt: cutoff.Add(-2 * time.Hour),
			NotAfter: cutoff.Add(-time.Hour)},
	} {
		require.NoError(t, st.RecordIssuance(ctx, rec))
	}
	pruned, err := st.PruneIssuances(ctx, cutoff)
	require.NoError(t, err)
	require.Equal(t, 2, pruned)
	left, err := st.Issuances(ctx, store.IssuanceQuery{})
	require.NoError(t, err)
	require.Len(t, left, 1)
	require.Equal(t, "future", left[0].Serial)
}

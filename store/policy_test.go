package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/store"
)

func doc(v string) json.RawMessage { return json.RawMessage(`{"v":"` + v + `"}`) }

func TestPolicyRevisions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	st := open(t, path)
	ctx := context.Background()
	put := func(name string, d json.RawMessage, expect int64) (store.PolicyRecord, error) {
		recs, err := st.ApplyPolicies(ctx, []store.PolicyWrite{{
			Namespace: "payments", Name: name, Document: d, ExpectRevision: expect,
		}})
		if err != nil {
			return store.PolicyRecord{}, err
		}
		return recs[0], nil
	}

	rec, err := put("charge", doc("a"), store.MustNotExist)
	require.NoError(t, err)
	require.Equal(t, int64(1), rec.Revision)
	_, err = put("charge", doc("b"), store.MustNotExist)
	require.ErrorIs(t, err, store.ErrConflict)
	require.ErrorContains(t, err, "exists at revision 1")

	rec, err = put("charge", doc("b"), 1)
	require.NoError(t, err)
	require.Equal(t, int64(2), rec.Revision)
	_, err = put("charge", doc("c"), 1)
	require.ErrorIs(t, err, store.ErrConflict)
	require.ErrorContains(t, err, "is at revision 2, not 1")

	same, err := put("charge", json.RawMessage(`{ "v" : "b" }`), store.AnyRevision)
	require.NoError(t, err)
	require.Equal(t, int64(2), same.Revision, "an unchanged document is no new revision")

	_, err = put("refund", doc("r"), store.AnyRevision)
	require.NoError(t, err)
	deleted, err := put("charge", nil, 2)
	require.NoError(t, err)
	require.True(t, deleted.Deleted)
	require.Equal(t, int64(3), deleted.Revision)
	_, err = put("charge", nil, store.AnyRevision)
	require.ErrorIs(t, err, store.ErrNotFound, "deleting twice")
	_, err = st.Policy(ctx, "payments", "charge")
	require.ErrorIs(t, err, store.ErrNotFound)

	require.NoError(t, st.Close())
	st = open(t, path)
	defer st.Close()
	hist, err := st.PolicyHistory(ctx, "payments", "charge")
	require.NoError(t, err)
	require.Len(t, hist, 3)
	require.JSONEq(t, `{"v":"a"}`, string(hist[0].Document))
	require.JSONEq(t, `{"v":"b"}`, string(hist[1].Document))
	require.True(t, hist[2].Deleted)

	live, gen, err := st.Policies(ctx, "payments")
	require.NoError(t, err)
	require.Len(t, live, 1)
	require.Equal(t, "refund", live[0].Name)
	require.Equal(t, uint64(4), gen, "four changes were written")
	other, _, err := st.Policies(ctx, "pay")
	require.NoError(t, err)
	require.Empty(t, other, "a namespace prefix is not a namespace")
}

func TestApplyPoliciesIsAllOrNothing(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "meshca.db"))
	defer st.Close()
	ctx := context.Background()
	_, err := st.ApplyPolicies(ctx, []store.PolicyWrite{
		{Namespace: "a", Name: "one", Document: doc("1"), ExpectRevision: store.AnyRevision},
	})
	require.NoError(t, err)

	_, err = st.ApplyPolicies(ctx, []store.PolicyWrite{
		{Namespace: "a", Name: "two", Document: doc("2"), ExpectRevision: store.AnyRevision},
		{Namespace: "a", Name: "one", Document: doc("x"), ExpectRevision: 7},
	})
	require.ErrorIs(t, err, store.ErrConflict)
	live, _, err := st.Policies(ctx, "")
	require.NoError(t, err)
	require.Len(t, live, 1, "the first write of a failed batch is not stored")
	require.JSONEq(t, `{"v":"1"}`, string(live[0].Document))
}

// TestConcurrentWritersLoseNoUpdate runs read-modify-write loops that retry on
// conflict, as the admin API does: every increment must survive.
func TestConcurrentWritersLoseNoUpdate(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "meshca.db"))
	defer st.Close()
	ctx := context.Background()
	const writers, each = 8, 25
	_, err := st.ApplyPolicies(ctx, []store.PolicyWrite{{Namespace: "a", Name: "n",
		Document: json.RawMessage(`{"count":0}`), ExpectRevision: store.MustNotExist}})
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			for range each {
				for {
					cur, err := st.Policy(ctx, "a", "n")
					if err != nil {
						errs <- err
						return
					}
					var v struct{ Count int }
					_ = json.Unmarshal(cur.Document, &v)
					next := json.RawMessage(fmt.Sprintf(`{"count":%d}`, v.Count+1))
					_, err = st.ApplyPolicies(ctx, []store.PolicyWrite{{Namespace: "a", Name: "n",
						Document: next, ExpectRevision: cur.Revision}})
					if errors.Is(err, store.ErrConflict) {
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	final, err := st.Policy(ctx, "a", "n")
	require.NoError(t, err)
	require.JSONEq(t, fmt.Sprintf(`{"count":%d}`, writers*each), string(final.Document))
	require.Equal(t, int64(writers*each+1), final.Revision)
}

package xds

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
)

// newTestCA returns a CA on a fresh store in a temp dir.
func newTestCA(t *testing.T) *ca.CA {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	c, err := ca.New(context.Background(), ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: st,
	})
	require.NoError(t, err)
	return c
}

// TestReissueMovesEveryCertificateWithinTheWindow holds hour-long certificates, whose
// normal renewal is half an hour away, rotates the CA and asks for a re-issue: every
// certificate of the old authority is scheduled within the window, and each is
// replaced by one of the new authority long before its normal renewal.
func TestReissueMovesEveryCertificateWithinTheWindow(t *testing.T) {
	ctx := context.Background()
	c := newTestCA(t)
	m := newCertManager(c, time.Hour, slog.New(slog.DiscardHandler))
	oldID := c.ActiveID()

	var entries []*certEntry
	for i := range 20 {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://cluster.local/ns/a/sa/w%d", i))
		e, err := m.acquire(ctx, ca.Identity{ID: id, PodUID: fmt.Sprint(i)})
		require.NoError(t, err)
		t.Cleanup(func() { m.release(e) })
		entries = append(entries, e)
	}
	for _, e := range entries {
		cur, _ := e.current()
		require.Equal(t, oldID, cur.authority)
		require.Greater(t, time.Until(cur.due), 20*time.Minute, "no normal renewal in this test")
	}

	_, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)
	newID := c.ActiveID()

	// One entry already moved: it is left alone.
	moved, err := m.acquire(ctx, ca.Identity{
		ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/new"), PodUID: "new",
	})
	require.NoError(t, err)
	t.Cleanup(func() { m.release(moved) })

	const window = 2 * time.Second
	before := time.Now()
	require.Equal(t, len(entries), m.reissue(newID, window))
	after := time.Now()
	for _, e := range entries {
		e.mu.Lock()
		at := e.reissueAt
		e.mu.Unlock()
		// The renewer may already have renewed and cleared it.
		if !at.IsZero() {
			require.False(t, at.Before(before), "scheduled before the call")
			require.False(t, at.After(after.Add(window)), "scheduled after the window")
		}
	}
	moved.mu.Lock()
	require.True(t, moved.reissueAt.IsZero(), "a certificate of the new authority stays")
	moved.mu.Unlock()

	for _, e := range entries {
		deadline := time.Now().Add(30 * time.Second)
		for {
			cur, _ := e.current()
			if cur.authority == newID {
				break
			}
			require.False(t, time.Now().After(deadline), "%s not re-issued", e.ident.ID)
			time.Sleep(20 * time.Millisecond)
		}
		e.mu.Lock()
		require.True(t, e.reissueAt.IsZero(), "the request is cleared once done")
		e.mu.Unlock()
	}
	require.Zero(t, m.reissue(newID, window), "nothing is left to move")
}

// A re-issue towards B that another activation (C) overtakes ends with one renewal
// under C, not a renewal loop: the pending re-issue is cleared by any renewal.
func TestReissueOvertakenByAnotherActivation(t *testing.T) {
	ctx := context.Background()
	c := newTestCA(t)
	m := newCertManager(c, time.Hour, slog.New(slog.DiscardHandler))
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/w")
	e, err := m.acquire(ctx, ca.Identity{ID: id, PodUID: "1"})
	require.NoError(t, err)
	t.Cleanup(func() { m.release(e) })

	activate := func() string {
		_, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
		require.NoError(t, err)
		_, err = c.Activate(ctx, ca.ActivateParams{})
		require.NoError(t, err)
		return c.ActiveID()
	}
	b := activate()
	e.mu.Lock()
	// As reissue does, but due only after the next activation.
	e.reissueAt, e.reissueTo = time.Now().Add(300*time.Millisecond), b
	e.mu.Unlock()
	cNew := activate()
	select {
	case e.poke <- struct{}{}:
	default:
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		cur, _ := e.current()
		if cur.authority == cNew {
			break
		}
		require.False(t, time.Now().After(deadline), "not re-issued")
		time.Sleep(20 * time.Millisecond)
	}
	first, _ := e.current()
	time.Sleep(time.Second)
	now, _ := e.current()
	require.Equal(t, first.serial, now.serial, "renewed again after the re-issue")
	e.mu.Lock()
	require.True(t, e.reissueAt.IsZero())
	e.mu.Unlock()
}

package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/store"
)

// fakeClock is a settable clock shared by a CA and the authority watch.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Set(t time.Time) {
	f.mu.Lock()
	f.now = t
	f.mu.Unlock()
}

// syncBuffer is a log destination that tests read while the watch writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the log lines that contain msg.
func (b *syncBuffer) lines(msg string) []string {
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, msg) {
			out = append(out, l)
		}
	}
	return out
}

// streamAcks reports, for every root but the trusted ones, missing of total streams
// without it. Safe for concurrent use.
type streamAcks struct {
	mu             sync.Mutex
	trusted        []*x509.Certificate
	missing, total int
}

func (s *streamAcks) BundleAcks(root *x509.Certificate) (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.trusted {
		if r.Equal(root) {
			return s.total, s.total
		}
	}
	return s.total - s.missing, s.total
}

func (s *streamAcks) setMissing(n int) {
	s.mu.Lock()
	s.missing = n
	s.mu.Unlock()
}

func newWatchCA(t *testing.T, cfg ca.Config) *ca.CA {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), StoreFileName), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	cfg.Store = st
	c, err := ca.New(context.Background(), cfg)
	require.NoError(t, err)
	return c
}

// TestExpiryWarning runs the watch on a CA imported with a root that expires in two
// hours and a prepared root of ten years: the short one is logged at Warn at start,
// with its state and what to do; the long one never is.
func TestExpiryWarning(t *testing.T) {
	rootKey := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "short root", rootKey, nil, nil, 2*time.Hour)
	c := newWatchCA(t, ca.Config{Import: &ca.Import{
		CertPEM: testutil.PEMCerts(root), KeyPEM: testutil.PEMKey(t, rootKey),
	}})
	shortID := c.ActiveID()
	long, err := c.PrepareAuthority(context.Background(), ca.PrepareParams{})
	require.NoError(t, err)

	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	w := newAuthorityWatch(c, nil, 30*24*time.Hour, false, nil, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(logs.lines("Authority expires soon")) == 0 {
		require.False(t, time.Now().After(deadline), "no warning at start; log:\n%s", logs.String())
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)

	warnings := logs.lines("Authority expires soon")
	require.Len(t, warnings, 1, "only the short-lived authority, once")
	line := warnings[0]
	require.Contains(t, line, "level=WARN")
	require.Contains(t, line, "authority_id="+shortID)
	require.Contains(t, line, "state=active")
	require.Contains(t, line, "time_left=")
	require.Contains(t, line, `action="rotate it: meshctl ca rotate prepare`)
	require.NotContains(t, logs.String(), long.ID)
	require.NotContains(t, logs.String(), "BEGIN", "no PEM in the log")
}

// TestExpiryWarningRepeatsAndFollowsState checks the schedule of warnings with a fake
// clock: once on entering the window, again after warnEvery, "expired" past the end,
// and never for a removed authority.
func TestExpiryWarningRepeatsAndFollowsState(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	c := newWatchCA(t, ca.Config{Clock: clock.Now, RootTTL: 10 * 24 * time.Hour})
	var logs syncBuffer
	w := newAuthorityWatch(c, nil, 3*24*time.Hour, false, clock.Now,
		slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	count := func() int {
		return len(logs.lines("Authority expires soon")) + len(logs.lines("Authority has expired"))
	}

	w.check(ctx)
	require.Zero(t, count(), "ten days left, outside the three-day window")
	clock.Set(start.Add(8 * 24 * time.Hour))
	w.check(ctx)
	require.Equal(t, 1, count(), "two days left: warned")
	clock.Set(start.Add(8*24*time.Hour + time.Hour))
	w.check(ctx)
	require.Equal(t, 1, count(), "not again within warnEvery")
	clock.Set(start.Add(9*24*time.Hour + time.Hour))
	w.check(ctx)
	require.Equal(t, 2, count(), "again a day later")
	clock.Set(start.Add(11 * 24 * time.Hour))
	w.check(ctx)
	require.Len(t, logs.lines("Authority has expired"), 1)
}

// TestAutoRotation runs automatic rotation on a CA whose roots live 60 minutes, with
// a fake clock: nothing before half the lifetime; a prepared root after it; no
// activation before a sixth remains, nor while a stream lacks the new bundle (logged
// once); activation once every stream has it; the audit log says it was automatic.
func TestAutoRotation(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), StoreFileName), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	c, err := ca.New(context.Background(), ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: st,
		Clock: clock.Now, RootTTL: time.Hour, Backdate: time.Nanosecond,
	})
	require.NoError(t, err)
	firstID := c.ActiveID()
	acks := &streamAcks{trusted: c.Bundle().X509Authorities(), total: 3}
	var logs syncBuffer
	w := newAuthorityWatch(c, acks, 0, true, clock.Now,
		slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	states := func() []string {
		var out []string
		for _, a := range c.Authorities() {
			out = append(out, string(a.State))
		}
		return out
	}

	clock.Set(start.Add(29 * time.Minute))
	w.check(ctx)
	require.Equal(t, []string{"active"}, states(), "before half of the lifetime")

	clock.Set(start.Add(31 * time.Minute))
	w.check(ctx)
	require.Equal(t, []string{"active", "prepared"}, states())
	require.Len(t, logs.lines("Automatic rotation prepared a new root"), 1)
	w.check(ctx)
	require.Len(t, c.Authorities(), 2, "one prepared authority is enough")

	clock.Set(start.Add(49 * time.Minute))
	w.check(ctx)
	require.Equal(t, firstID, c.ActiveID(), "more than a sixth remains")

	acks.setMissing(1)
	clock.Set(start.Add(51 * time.Minute))
	w.check(ctx)
	w.check(ctx)
	require.Equal(t, firstID, c.ActiveID(), "a stream lacks the new bundle")
	waits := logs.lines("Automatic rotation waits to activate")
	require.Len(t, waits, 1, "logged once while the reason stays the same")
	require.Contains(t, waits[0], "level=WARN")
	require.Contains(t, waits[0], "1 of 3 streams have not acknowledged")

	acks.setMissing(0)
	w.check(ctx)
	require.NotEqual(t, firstID, c.ActiveID())
	require.Equal(t, []string{"retired", "active"}, states())
	require.Len(t, logs.lines("Automatic rotation activated the prepared authority"), 1)

	events, err := st.AuthorityEvents(ctx)
	require.NoError(t, err)
	require.Len(t, events, 2)
	require.Equal(t, "prepare", events[0].Op)
	require.Contains(t, events[0].Detail, "automatic rotation: half of the lifetime")
	require.Equal(t, "activate", events[1].Op)
	require.False(t, events[1].Forced)
	require.Contains(t, events[1].Detail, "automatic rotation: a sixth of the lifetime")

	// The new root lives an hour from its creation: nothing more is due yet.
	w.check(ctx)
	require.Len(t, c.Authorities(), 2)
}

// TestAuthorityExpiryMetric checks that every authority still trusted, intermediates
// included, has its remaining lifetime as a metric, and removed ones do not.
func TestAuthorityExpiryMetric(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	c := newWatchCA(t, ca.Config{Clock: clock.Now, RootTTL: 10 * time.Hour,
		IntermediateTTL: 4 * time.Hour})
	ctx := context.Background()
	rootID := c.ActiveID()
	inter, err := c.PrepareAuthority(ctx, ca.PrepareParams{Intermediate: true})
	require.NoError(t, err)
	_, err = c.Activate(ctx, ca.ActivateParams{})
	require.NoError(t, err)
	spare, err := c.PrepareAuthority(ctx, ca.PrepareParams{})
	require.NoError(t, err)
	_, err = c.Retire(ctx, "")
	require.NoError(t, err)
	_, err = c.Remove(ctx, ca.RemoveParams{ID: spare.ID})
	require.NoError(t, err)

	reg := prometheus.NewRegistry()
	reg.MustRegister(authorityExpiry(c, clock.Now))
	families, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, families, 1)
	got := map[string]float64{}
	for _, m := range families[0].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		got[labels["authority_id"]+" "+labels["state"]] = m.GetGauge().GetValue()
	}
	require.Equal(t, map[string]float64{
		rootID + " retired":  (10 * time.Hour).Seconds(),
		inter.ID + " active": (4 * time.Hour).Seconds(),
	}, got)
}

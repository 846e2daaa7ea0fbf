package server

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/store"
)

// TestAuditPruner runs the pruner on a real store: at start it deletes the records of
// certificates that expired more than the retention ago, and keeps the others.
func TestAuditPruner(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	defer st.Close()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, rec := range []store.Issuance{
		{Serial: "long-expired", IssuedAt: now.Add(-10 * 24 * time.Hour),
			NotAfter: now.Add(-9 * 24 * time.Hour)},
		{Serial: "recently-expired", IssuedAt: now.Add(-2 * 24 * time.Hour),
			NotAfter: now.Add(-24 * time.Hour)},
		{Serial: "valid", IssuedAt: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)},
	} {
		require.NoError(t, st.RecordIssuance(t.Context(), rec))
	}

	var logs syncBuffer
	p := &auditPruner{store: st, retention: 7 * 24 * time.Hour,
		now: func() time.Time { return now }, log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	require.Eventually(t, func() bool { return len(logs.lines("Pruned the audit log")) == 1 },
		5*time.Second, 10*time.Millisecond)
	cancel()
	require.True(t, errors.Is(<-done, context.Canceled))

	require.Contains(t, logs.String(), "pruned=1 expired_before=2026-05-25T12:00:00Z")
	left, err := st.Issuances(t.Context(), store.IssuanceQuery{})
	require.NoError(t, err)
	var serials []string
	for _, rec := range left {
		serials = append(serials, rec.Serial)
	}
	require.Equal(t, []string{"valid", "recently-expired"}, serials)
}

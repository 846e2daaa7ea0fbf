package server

import (
	"context"
	"log/slog"
	"time"
)

// DefaultAuditRetention is how long meshca keeps the audit records of certificates
// after they expire.
const DefaultAuditRetention = 7 * 24 * time.Hour

// pruneInterval is how often the audit log is pruned.
const pruneInterval = time.Hour

// issuancePruner is the part of the store that auditPruner needs.
type issuancePruner interface {
	PruneIssuances(ctx context.Context, expiredBefore time.Time) (int, error)
}

// auditPruner deletes the audit records of certificates that expired more than
// retention ago, at start and then hourly, so that the store stops growing once a
// mesh renews at a steady rate.
type auditPruner struct {
	store     issuancePruner
	retention time.Duration
	now       func() time.Time
	log       *slog.Logger
}

// Run prunes until ctx ends. A failed pruning is logged and tried again at the next
// interval: issuance does not depend on it.
func (p *auditPruner) Run(ctx context.Context) error {
	for {
		cutoff := p.now().Add(-p.retention)
		n, err := p.store.PruneIssuances(ctx, cutoff)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			p.log.Error("Failed to prune the audit log", "pruned", n, "error", err)
		case n > 0:
			p.log.Info("Pruned the audit log", "pruned", n,
				"expired_before", cutoff.UTC().Format(time.RFC3339))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pruneInterval):
		}
	}
}

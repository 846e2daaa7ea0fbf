package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/store"
)

// policySink receives the whole set of policies in force; *xds.Server is one.
type policySink interface {
	SetPolicies(ps []policy.Policy)
}

// policyLister reads the live policies; *store.Bolt is one.
type policyLister interface {
	Policies(ctx context.Context, ns string) ([]store.PolicyRecord, uint64, error)
}

// policySync hands the stored policies to the sink: once at startup, then after every
// committed change.
type policySync struct {
	store policyLister
	sink  policySink
	td    spiffeid.TrustDomain
	log   *slog.Logger

	// mu serializes push: the store is read and the sink called under it, so a push
	// that read an older set can never reach the sink after one that read a newer.
	mu sync.Mutex
	// gen is the store generation last pushed, and pushed whether any push happened;
	// guarded by mu.
	gen    uint64
	pushed bool
	// resync is how often Run checks for a generation it has not pushed.
	resync time.Duration
}

func newPolicySync(st policyLister, sink policySink, td spiffeid.TrustDomain,
	log *slog.Logger) *policySync {
	return &policySync{store: st, sink: sink, td: td, log: log, resync: policyResync}
}

// push reads every live policy and gives the set to the sink, unless the sink already
// has the set of this store generation.
//
// Applies validate the set they leave, so stored policies are valid, unless the
// server's trust domain changed since they were stored. They are handed on anyway, and
// the problem is logged: xds fails closed on a policy it cannot compile, denying every
// request to the workloads concerned, where leaving the policy out would open them.
// The operator fixes or deletes the policy with meshctl.
func (p *policySync) push(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	recs, gen, err := p.store.Policies(ctx, "")
	if err != nil {
		return fmt.Errorf("failed to read policies: %w", err)
	}
	if p.pushed && gen == p.gen {
		return nil
	}
	ps := make([]policy.Policy, 0, len(recs))
	for _, rec := range recs {
		pol, err := api.DecodePolicy(rec)
		if err != nil {
			return err
		}
		ps = append(ps, pol)
	}
	if err := policy.ValidateSet(ps, p.td); err != nil {
		p.log.ErrorContext(ctx, "Stored authorization policies are invalid; the workloads "+
			"they select deny every request until they are fixed", "error", err)
	}
	p.sink.SetPolicies(ps)
	p.gen, p.pushed = gen, true
	p.log.DebugContext(ctx, "Policies in force", "count", len(ps), "generation", gen)
	return nil
}

// changed is the policy service's Changed hook. The change is already committed, so
// a failure to hand it on is our fault: it is logged, and Run tries again.
func (p *policySync) changed(ctx context.Context) {
	if err := p.push(ctx); err != nil {
		p.log.ErrorContext(ctx, "Failed to hand the changed policies to xDS; retrying",
			"error", err)
	}
}

// policyResync is how often Run compares the store's generation with the one pushed.
const policyResync = 5 * time.Second

// Run pushes the stored policies again whenever the store holds a generation the sink
// has not seen, which only a failed push leaves behind, until ctx ends. Reading the
// generation is one read transaction, cheap at this interval.
func (p *policySync) Run(ctx context.Context) error {
	t := time.NewTicker(p.resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := p.push(ctx); err != nil && ctx.Err() == nil {
			p.log.ErrorContext(ctx, "Failed to hand the stored policies to xDS", "error", err)
		}
	}
}

package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
)

// policyAuthor is the author of every change made through the admin socket: whoever
// reaches the 0600 socket is the operator, and the socket tells no more.
const policyAuthor = "admin"

// maxPolicyAttempts bounds how often a write without an expected revision is
// recomputed when a concurrent writer got in first. Each retry re-reads the store, so
// only a steady stream of conflicting writers exhausts it; the caller then gets
// Aborted and may retry.
const maxPolicyAttempts = 5

// The actions of a meshcav1.PolicyChange.
const (
	actionCreated   = "created"
	actionUpdated   = "updated"
	actionUnchanged = "unchanged"
	actionDeleted   = "deleted"
)

// PolicyStore keeps policy revisions; *store.Bolt implements it. ApplyPolicies writes
// all or nothing and reports a failed compare-and-swap as store.ErrConflict; reads of
// an absent policy return store.ErrNotFound.
type PolicyStore interface {
	ApplyPolicies(ctx context.Context, writes []store.PolicyWrite) ([]store.PolicyRecord, error)
	Policy(ctx context.Context, ns, name string) (store.PolicyRecord, error)
	Policies(ctx context.Context, ns string) ([]store.PolicyRecord, uint64, error)
	PolicyHistory(ctx context.Context, ns, name string) ([]store.PolicyRecord, error)
}

var _ PolicyStore = (*store.Bolt)(nil)

// PolicyConfig configures the policy service.
type PolicyConfig struct {
	Store PolicyStore
	// TrustDomain is the server's: SPIFFE IDs in policies must belong to it.
	TrustDomain spiffeid.TrustDomain
	// Changed, when set, is called after every committed change, with the request's
	// values but never canceled; not after a dry run nor an apply that changed
	// nothing. Concurrent changes call it concurrently and in no particular order, so
	// it must read the store's current state rather than rely on the order of calls.
	Changed func(ctx context.Context)
	Logger  *slog.Logger
}

// Policies implements meshcav1.PolicyServiceServer over a PolicyStore. Like Admin, it
// trusts whoever reaches it: it is served only on the 0600 admin socket.
type Policies struct {
	meshcav1.UnimplementedPolicyServiceServer
	store   PolicyStore
	td      spiffeid.TrustDomain
	changed func(ctx context.Context)
	log     *slog.Logger
}

var _ meshcav1.PolicyServiceServer = (*Policies)(nil)

// NewPolicies returns the policy service.
func NewPolicies(cfg PolicyConfig) *Policies {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	changed := cfg.Changed
	if changed == nil {
		changed = func(context.Context) {}
	}
	return &Policies{store: cfg.Store, td: cfg.TrustDomain, changed: changed, log: log}
}

// ApplyPolicies implements meshcav1.PolicyServiceServer. Every source is parsed and
// validated first, exactly as `meshctl policy validate` does; then the set the apply
// would leave in the store is validated as a whole, and every change is written in
// one transaction. A policy equal to the stored one is reported unchanged and gets no
// new revision.
func (s *Policies) ApplyPolicies(ctx context.Context, req *meshcav1.ApplyPoliciesRequest) (
	*meshcav1.ApplyPoliciesResponse, error) {
	policies, err := s.parseSources(req.GetSources())
	if err != nil {
		return nil, ToStatus(ctx, s.log, "apply policies", err)
	}
	expect, err := expectations(req.GetExpect(), policies)
	if err != nil {
		return nil, ToStatus(ctx, s.log, "apply policies", err)
	}
	changes, err := s.apply(ctx, policies, expect, req.GetDryRun())
	if err != nil {
		return nil, ToStatus(ctx, s.log, "apply policies", err)
	}
	return &meshcav1.ApplyPoliciesResponse{Changes: changes}, nil
}

// parseSources validates the sources as one set and returns their policies.
func (s *Policies) parseSources(sources []*meshcav1.PolicySource) ([]policy.Policy, error) {
	files := make([]policy.File, len(sources))
	for i, src := range sources {
		name := src.GetName()
		if name == "" {
			name = fmt.Sprintf("source %d", i+1)
		}
		files[i] = policy.File{Name: name, Data: src.GetContent()}
	}
	if errs := policy.ValidateContents(files, s.td); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var policies []policy.Policy
	for _, f := range files {
		ps, err := policy.Parse(f.Data, f.Name)
		if err != nil { // ValidateContents saw the same documents
			return nil, fmt.Errorf("failed to parse %s again: %w", f.Name, err)
		}
		policies = append(policies, ps...)
	}
	if len(policies) == 0 {
		return nil, fmt.Errorf("no policy documents in the request: %w", ca.ErrInvalidRequest)
	}
	return policies, nil
}

// expectations indexes the expected revisions by policy key. An expectation for a
// policy the request does not apply is refused: it is certainly a mistake.
func expectations(exps []*meshcav1.Expectation, policies []policy.Policy) (map[string]int64,
	error) {
	applied := make(map[string]bool, len(policies))
	for _, p := range policies {
		applied[p.Key()] = true
	}
	out := make(map[string]int64, len(exps))
	for _, e := range exps {
		key := e.GetNamespace() + "/" + e.GetName()
		switch _, dup := out[key]; {
		case !applied[key]:
			return nil, fmt.Errorf("expectation for policy %s, which the request does not "+
				"apply: %w", key, ca.ErrInvalidRequest)
		case dup:
			return nil, fmt.Errorf("two expectations for policy %s: %w", key,
				ca.ErrInvalidRequest)
		case e.GetRevision() < 0:
			return nil, fmt.Errorf("expectation for policy %s: revision %d is negative: %w",
				key, e.GetRevision(), ca.ErrInvalidRequest)
		}
		out[key] = e.GetRevision()
	}
	return out, nil
}

// apply validates policies together with the stored ones they do not replace and
// writes them in one transaction. expect holds the revisions the caller expects (0:
// must not exist); a policy without one is written over whatever is stored, and a
// conflict with a concurrent writer is resolved by reading and planning again. With
// dryRun nothing is written.
func (s *Policies) apply(ctx context.Context, policies []policy.Policy,
	expect map[string]int64, dryRun bool) ([]*meshcav1.PolicyChange, error) {
	for attempt := 1; ; attempt++ {
		p, err := s.plan(ctx, policies, expect)
		if err != nil {
			return nil, err
		}
		if dryRun || len(p.writes) == 0 {
			return p.changes, nil
		}
		recs, err := s.store.ApplyPolicies(ctx, append(slices.Clip(p.writes), p.guards...))
		if errors.Is(err, store.ErrConflict) && attempt < maxPolicyAttempts {
			s.log.DebugContext(ctx, "Policy write conflicted, planning again",
				"attempt", attempt, "error", err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("failed to store policies: %w", err)
		}
		for i, c := range p.written {
			c.NewRevision = recs[i].Revision
		}
		s.committed(ctx, p.written)
		return p.changes, nil
	}
}

// policyPlan is what an apply would do: a change for every policy applied, and the
// writes for those that are not unchanged, in the same order as written.
type policyPlan struct {
	changes []*meshcav1.PolicyChange
	writes  []store.PolicyWrite
	written []*meshcav1.PolicyChange
	// guards re-check, in the same transaction, the revision of every policy the
	// apply leaves unchanged: an expectation, or the validation of the set, must hold
	// when the writes commit, not only when they were planned. They write nothing.
	guards []store.PolicyWrite
}

// plan reads the stored policies, checks the expectations against them, validates the
// set the apply would leave, and lists the changes. Every write expects the revision
// just read, so that what the plan reports is exactly what a successful write did.
func (s *Policies) plan(ctx context.Context, policies []policy.Policy,
	expect map[string]int64) (*policyPlan, error) {
	stored, err := s.storedPolicies(ctx)
	if err != nil {
		return nil, err
	}
	for key, want := range expect {
		if have := stored[key].rec.Revision; have != want {
			return nil, revisionConflict(key, have, want)
		}
	}
	if err := s.validateResult(policies, stored); err != nil {
		return nil, err
	}

	plan := &policyPlan{}
	for _, p := range policies {
		doc, err := json.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("failed to encode policy %s: %w", p.Key(), err)
		}
		old, exists := stored[p.Key()]
		c := &meshcav1.PolicyChange{
			Namespace: p.Metadata.Namespace, Name: p.Metadata.Name,
			Action: actionCreated, NewDocument: string(doc),
		}
		if exists {
			c.OldRevision, c.OldDocument = old.rec.Revision, string(old.rec.Document)
			c.Action = actionUpdated
			if old.policy.Equal(p) {
				c.Action, c.NewRevision = actionUnchanged, old.rec.Revision
			}
		}
		plan.changes = append(plan.changes, c)
		if c.Action == actionUnchanged {
			plan.guards = append(plan.guards, store.PolicyWrite{
				Namespace: c.Namespace, Name: c.Name, Document: old.rec.Document,
				ExpectRevision: old.rec.Revision, Author: policyAuthor,
			})
			continue
		}
		plan.writes = append(plan.writes, store.PolicyWrite{
			Namespace: c.Namespace, Name: c.Name, Document: doc,
			ExpectRevision: c.OldRevision, Author: policyAuthor,
		})
		plan.written = append(plan.written, c)
	}
	return plan, nil
}

// revisionConflict reports an expected revision that is not the stored one; have is
// 0 for a policy that does not exist.
func revisionConflict(key string, have, want int64) error {
	switch {
	case want == 0:
		return fmt.Errorf("policy %s exists at revision %d, expected none: %w", key, have,
			store.ErrConflict)
	case have == 0:
		return fmt.Errorf("policy %s does not exist, expected revision %d: %w", key, want,
			store.ErrConflict)
	default:
		return fmt.Errorf("policy %s is at revision %d, expected %d: %w", key, have, want,
			store.ErrConflict)
	}
}

// storedPolicy is a live policy as stored, with its decoded document.
type storedPolicy struct {
	rec    store.PolicyRecord
	policy policy.Policy
}

// storedPolicies reads every live policy, by key.
func (s *Policies) storedPolicies(ctx context.Context) (map[string]storedPolicy, error) {
	recs, _, err := s.store.Policies(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("failed to read policies: %w", err)
	}
	out := make(map[string]storedPolicy, len(recs))
	for _, rec := range recs {
		p, err := DecodePolicy(rec)
		if err != nil {
			return nil, err
		}
		out[rec.Namespace+"/"+rec.Name] = storedPolicy{rec: rec, policy: p}
	}
	return out, nil
}

// validateResult validates the set of policies the apply would leave: the policies
// applied (a rolled-back document may predate today's rules), then the stored ones
// they do not replace, by key. This also catches stored policies that are no longer
// valid (say, after the trust domain changed), which the operator must fix or delete
// first.
func (s *Policies) validateResult(applied []policy.Policy,
	stored map[string]storedPolicy) error {
	set := make([]policy.Policy, 0, len(applied)+len(stored))
	replaced := make(map[string]bool, len(applied))
	for _, p := range applied {
		set = append(set, p)
		replaced[p.Key()] = true
	}
	for _, key := range slices.Sorted(maps.Keys(stored)) {
		if !replaced[key] {
			set = append(set, stored[key].policy)
		}
	}
	return policy.ValidateSet(set, s.td)
}

// DecodePolicy decodes the document of a stored policy revision.
func DecodePolicy(rec store.PolicyRecord) (policy.Policy, error) {
	var p policy.Policy
	if err := json.Unmarshal(rec.Document, &p); err != nil {
		return policy.Policy{}, fmt.Errorf("failed to decode stored policy %s/%s revision %d: %w",
			rec.Namespace, rec.Name, rec.Revision, err)
	}
	return p, nil
}

// committed logs the changes written and reports them to Changed.
func (s *Policies) committed(ctx context.Context, changes []*meshcav1.PolicyChange) {
	for _, c := range changes {
		s.log.InfoContext(ctx, "Policy changed", "policy", c.Namespace+"/"+c.Name,
			"action", c.Action, "revision", c.NewRevision, "author", policyAuthor)
	}
	s.changed(context.WithoutCancel(ctx))
}

// GetPolicy implements meshcav1.PolicyServiceServer.
func (s *Policies) GetPolicy(ctx context.Context, req *meshcav1.GetPolicyRequest) (
	*meshcav1.Policy, error) {
	if err := requireName(req.GetNamespace(), req.GetName()); err != nil {
		return nil, ToStatus(ctx, s.log, "get policy", err)
	}
	rec, err := s.store.Policy(ctx, req.GetNamespace(), req.GetName())
	if err != nil {
		return nil, ToStatus(ctx, s.log, "get policy", err)
	}
	return policyProto(rec), nil
}

// ListPolicies implements meshcav1.PolicyServiceServer.
func (s *Policies) ListPolicies(ctx context.Context, req *meshcav1.ListPoliciesRequest) (
	*meshcav1.ListPoliciesResponse, error) {
	recs, _, err := s.store.Policies(ctx, req.GetNamespace())
	if err != nil {
		return nil, ToStatus(ctx, s.log, "list policies", err)
	}
	resp := &meshcav1.ListPoliciesResponse{}
	for _, rec := range recs {
		resp.Policies = append(resp.Policies, policyProto(rec))
	}
	return resp, nil
}

// PolicyHistory implements meshcav1.PolicyServiceServer.
func (s *Policies) PolicyHistory(ctx context.Context, req *meshcav1.PolicyHistoryRequest) (
	*meshcav1.PolicyHistoryResponse, error) {
	if err := requireName(req.GetNamespace(), req.GetName()); err != nil {
		return nil, ToStatus(ctx, s.log, "policy history", err)
	}
	recs, err := s.store.PolicyHistory(ctx, req.GetNamespace(), req.GetName())
	if err != nil {
		return nil, ToStatus(ctx, s.log, "policy history", err)
	}
	resp := &meshcav1.PolicyHistoryResponse{}
	for _, rec := range recs {
		resp.Revisions = append(resp.Revisions, policyProto(rec))
	}
	return resp, nil
}

// DeletePolicy implements meshcav1.PolicyServiceServer. The deletion is a new
// revision without a document; the history keeps every earlier one.
func (s *Policies) DeletePolicy(ctx context.Context, req *meshcav1.DeletePolicyRequest) (
	*meshcav1.PolicyChange, error) {
	c, err := s.delete(ctx, req.GetNamespace(), req.GetName(), req.GetExpectedRevision())
	if err != nil {
		return nil, ToStatus(ctx, s.log, "delete policy", err)
	}
	return c, nil
}

// delete deletes a live policy; expect, when positive, must be its revision.
func (s *Policies) delete(ctx context.Context, ns, name string, expect int64) (
	*meshcav1.PolicyChange, error) {
	if err := requireName(ns, name); err != nil {
		return nil, err
	}
	if expect < 0 {
		return nil, fmt.Errorf("expected revision %d is negative: %w", expect,
			ca.ErrInvalidRequest)
	}
	for attempt := 1; ; attempt++ {
		old, err := s.store.Policy(ctx, ns, name)
		if err != nil {
			return nil, err
		}
		if expect > 0 && old.Revision != expect {
			return nil, revisionConflict(ns+"/"+name, old.Revision, expect)
		}
		recs, err := s.store.ApplyPolicies(ctx, []store.PolicyWrite{{
			Namespace: ns, Name: name, ExpectRevision: old.Revision, Author: policyAuthor,
		}})
		if errors.Is(err, store.ErrConflict) && expect == 0 && attempt < maxPolicyAttempts {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("failed to delete policy: %w", err)
		}
		c := &meshcav1.PolicyChange{
			Namespace: ns, Name: name, Action: actionDeleted,
			OldRevision: old.Revision, NewRevision: recs[0].Revision,
			OldDocument: string(old.Document),
		}
		s.committed(ctx, []*meshcav1.PolicyChange{c})
		return c, nil
	}
}

// RollbackPolicy implements meshcav1.PolicyServiceServer: the document of an earlier
// revision is validated again and applied as a new revision. A deleted policy is
// re-created; rolling back to the current document changes nothing.
func (s *Policies) RollbackPolicy(ctx context.Context, req *meshcav1.RollbackPolicyRequest) (
	*meshcav1.PolicyChange, error) {
	c, err := s.rollback(ctx, req)
	if err != nil {
		return nil, ToStatus(ctx, s.log, "rollback policy", err)
	}
	return c, nil
}

func (s *Policies) rollback(ctx context.Context, req *meshcav1.RollbackPolicyRequest) (
	*meshcav1.PolicyChange, error) {
	ns, name, to := req.GetNamespace(), req.GetName(), req.GetToRevision()
	if err := requireName(ns, name); err != nil {
		return nil, err
	}
	if to <= 0 || req.GetExpectedRevision() < 0 {
		return nil, fmt.Errorf("revision to roll back to must be positive and the expected "+
			"revision not negative: %w", ca.ErrInvalidRequest)
	}
	hist, err := s.store.PolicyHistory(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(hist, func(r store.PolicyRecord) bool { return r.Revision == to })
	if i < 0 {
		return nil, fmt.Errorf("policy %s/%s has no revision %d (latest is %d): %w", ns, name,
			to, hist[len(hist)-1].Revision, store.ErrNotFound)
	}
	if hist[i].Deleted {
		return nil, fmt.Errorf("revision %d of policy %s/%s is its deletion; delete the "+
			"policy instead: %w", to, ns, name, ca.ErrInvalidRequest)
	}
	// apply validates the old document again: it may predate today's rules.
	p, err := DecodePolicy(hist[i])
	if err != nil {
		return nil, err
	}
	var expect map[string]int64
	if req.GetExpectedRevision() > 0 {
		expect = map[string]int64{p.Key(): req.GetExpectedRevision()}
	}
	changes, err := s.apply(ctx, []policy.Policy{p}, expect, false)
	if err != nil {
		return nil, err
	}
	return changes[0], nil
}

// requireName refuses a request that does not name a policy.
func requireName(ns, name string) error {
	if ns == "" || name == "" {
		return fmt.Errorf("namespace and name of the policy are required: %w",
			ca.ErrInvalidRequest)
	}
	return nil
}

func policyProto(rec store.PolicyRecord) *meshcav1.Policy {
	return &meshcav1.Policy{
		Namespace: rec.Namespace,
		Name:      rec.Name,
		Revision:  rec.Revision,
		Deleted:   rec.Deleted,
		Document:  string(rec.Document),
		UpdatedAt: timestamppb.New(rec.UpdatedAt),
		Author:    rec.Author,
	}
}

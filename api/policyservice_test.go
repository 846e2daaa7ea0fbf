package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/store"
)

var clusterLocal = spiffeid.RequireTrustDomainFromString("cluster.local")

// policyDoc is an ALLOW policy of namespace payments letting orders call path.
func policyDoc(name, path string) string {
	return fmt.Sprintf(`apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: payments}
spec:
  action: ALLOW
  rules:
  - from: [{serviceAccount: orders/orders}]
    to: [{methods: [POST], paths: [%s]}]
`, name, path)
}

// fixture is a policy service over a real Bolt store.
type fixture struct {
	store   *store.Bolt
	svc     *api.Policies
	changed atomic.Int32 // calls of the Changed hook
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "meshca.db"), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	f := &fixture{store: st}
	f.svc = newService(st, clusterLocal, &f.changed)
	return f
}

func newService(st api.PolicyStore, td spiffeid.TrustDomain, changed *atomic.Int32) *api.Policies {
	return api.NewPolicies(api.PolicyConfig{
		Store: st, TrustDomain: td,
		Changed: func(context.Context) { changed.Add(1) },
	})
}

// source makes one named source of documents.
func source(name string, docs ...string) *meshcav1.PolicySource {
	return &meshcav1.PolicySource{Name: name, Content: []byte(strings.Join(docs, "---\n"))}
}

func (f *fixture) apply(t *testing.T, req *meshcav1.ApplyPoliciesRequest) (
	[]*meshcav1.PolicyChange, error) {
	t.Helper()
	resp, err := f.svc.ApplyPolicies(t.Context(), req)
	return resp.GetChanges(), err
}

func (f *fixture) mustApply(t *testing.T, docs ...string) []*meshcav1.PolicyChange {
	t.Helper()
	changes, err := f.apply(t, &meshcav1.ApplyPoliciesRequest{
		Sources: []*meshcav1.PolicySource{source("policies.yaml", docs...)},
	})
	require.NoError(t, err)
	return changes
}

// snapshot is everything the store holds about policies, to compare before and after.
func (f *fixture) snapshot(t *testing.T) ([]store.PolicyRecord, uint64) {
	t.Helper()
	recs, gen, err := f.store.Policies(t.Context(), "")
	require.NoError(t, err)
	return recs, gen
}

// summary reduces changes to "ns/name action old->new".
func summary(changes []*meshcav1.PolicyChange) []string {
	var out []string
	for _, c := range changes {
		out = append(out, fmt.Sprintf("%s/%s %s %d->%d", c.GetNamespace(), c.GetName(),
			c.GetAction(), c.GetOldRevision(), c.GetNewRevision()))
	}
	return out
}

func requireCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, status.Code(err), "error: %v", err)
	require.Contains(t, status.Convert(err).Message(), msg)
}

func TestApplyPoliciesRevisions(t *testing.T) {
	f := newFixture(t)

	changes := f.mustApply(t, policyDoc("charge", "/charge"), policyDoc("refund", "/refund"))
	require.Equal(t, []string{"payments/charge created 0->1", "payments/refund created 0->1"},
		summary(changes))
	require.Empty(t, changes[0].GetOldDocument())
	var doc policy.Policy
	require.NoError(t, json.Unmarshal([]byte(changes[0].GetNewDocument()), &doc))
	require.Equal(t, "/charge", doc.Spec.Rules[0].To[0].Paths[0])

	// Re-applying the same documents, even formatted differently, changes nothing.
	_, gen := f.snapshot(t)
	flow := strings.Replace(policyDoc("charge", "/charge"), "metadata: {name: charge, "+
		"namespace: payments}", "metadata:\n  namespace: payments\n  name: charge", 1)
	changes = f.mustApply(t, flow, policyDoc("refund", "/refund"))
	require.Equal(t, []string{"payments/charge unchanged 1->1", "payments/refund unchanged 1->1"},
		summary(changes))
	_, genAfter := f.snapshot(t)
	require.Equal(t, gen, genAfter, "nothing was written")

	changes = f.mustApply(t, policyDoc("charge", "/v2/charge"), policyDoc("refund", "/refund"))
	require.Equal(t, []string{"payments/charge updated 1->2", "payments/refund unchanged 1->1"},
		summary(changes))
	require.Contains(t, changes[0].GetOldDocument(), `"/charge"`)
	require.Contains(t, changes[0].GetNewDocument(), `"/v2/charge"`)
	require.Equal(t, int32(2), f.changed.Load(), "Changed after each apply that wrote")

	got, err := f.svc.GetPolicy(t.Context(), &meshcav1.GetPolicyRequest{
		Namespace: "payments", Name: "charge"})
	require.NoError(t, err)
	require.Equal(t, int64(2), got.GetRevision())
	require.Equal(t, "admin", got.GetAuthor())
	require.JSONEq(t, changes[0].GetNewDocument(), got.GetDocument())

	list, err := f.svc.ListPolicies(t.Context(), &meshcav1.ListPoliciesRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetPolicies(), 2)
	list, err = f.svc.ListPolicies(t.Context(), &meshcav1.ListPoliciesRequest{Namespace: "x"})
	require.NoError(t, err)
	require.Empty(t, list.GetPolicies())
}

func TestApplyPoliciesDryRun(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, policyDoc("charge", "/charge"))
	before, gen := f.snapshot(t)

	changes, err := f.apply(t, &meshcav1.ApplyPoliciesRequest{
		Sources: []*meshcav1.PolicySource{source("p.yaml", policyDoc("charge", "/v2"),
			policyDoc("refund", "/refund"))},
		DryRun: true,
	})
	require.NoError(t, err)
	require.Equal(t, []string{"payments/charge updated 1->0", "payments/refund created 0->0"},
		summary(changes), "a dry run assigns no revision")
	require.Contains(t, changes[0].GetOldDocument(), `"/charge"`)
	require.Contains(t, changes[0].GetNewDocument(), `"/v2"`)

	after, genAfter := f.snapshot(t)
	require.Equal(t, before, after)
	require.Equal(t, gen, genAfter)
	require.Equal(t, int32(1), f.changed.Load(), "no Changed for a dry run")
}

// A broken file is refused whole with every problem named, and nothing is stored,
// not even the valid policies next to it.
func TestApplyPoliciesInvalid(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, policyDoc("charge", "/charge"))
	before, gen := f.snapshot(t)

	broken := strings.Replace(policyDoc("refund", "/refund"), "[POST]", "[post]", 1)
	broken = strings.Replace(broken, "action: ALLOW", "action: MAYBE", 1)
	_, err := f.apply(t, &meshcav1.ApplyPoliciesRequest{Sources: []*meshcav1.PolicySource{
		source("good.yaml", policyDoc("charge", "/v2/charge")),
		source("broken.yaml", broken),
	}})
	requireCode(t, err, codes.InvalidArgument, "invalid policies (2 problems):\n"+
		"broken.yaml:5: document 1: spec.action: must be ALLOW or DENY, not \"MAYBE\"\n"+
		"broken.yaml:8: document 1: spec.rules[0].to[0].methods[0]: method \"post\" must be "+
		"upper case: \"POST\"")

	after, genAfter := f.snapshot(t)
	require.Equal(t, before, after)
	require.Equal(t, gen, genAfter)
	require.Equal(t, int32(1), f.changed.Load())

	tests := []struct {
		name string
		req  *meshcav1.ApplyPoliciesRequest
		msg  string
	}{{
		name: "the same policy in two sources",
		req: &meshcav1.ApplyPoliciesRequest{Sources: []*meshcav1.PolicySource{
			source("a.yaml", policyDoc("refund", "/a")),
			source("b.yaml", policyDoc("refund", "/b")),
		}},
		msg: "b.yaml:3: document 1: metadata.name: policy payments/refund is defined twice: " +
			"first in a.yaml:3 (document 1)",
	}, {
		name: "no documents at all",
		req:  &meshcav1.ApplyPoliciesRequest{Sources: []*meshcav1.PolicySource{source("e.yaml")}},
		msg:  "no policy documents in the request",
	}, {
		name: "an expectation for a policy not applied",
		req: &meshcav1.ApplyPoliciesRequest{
			Sources: []*meshcav1.PolicySource{source("a.yaml", policyDoc("refund", "/a"))},
			Expect:  []*meshcav1.Expectation{{Namespace: "payments", Name: "charge", Revision: 1}},
		},
		msg: "expectation for policy payments/charge, which the request does not apply",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.apply(t, tt.req)
			requireCode(t, err, codes.InvalidArgument, tt.msg)
			after, genAfter := f.snapshot(t)
			require.Equal(t, before, after)
			require.Equal(t, gen, genAfter)
		})
	}
}

// The set the apply leaves is validated as a whole: a stored policy that is no
// longer valid (here, for another trust domain) blocks applies until it is fixed.
func TestApplyPoliciesValidatesResultingSet(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, strings.Replace(policyDoc("charge", "/charge"), "serviceAccount: orders/orders",
		"spiffeID: spiffe://cluster.local/legacy", 1))

	var changed atomic.Int32
	other := newService(f.store, spiffeid.RequireTrustDomainFromString("example.org"), &changed)
	_, err := other.ApplyPolicies(t.Context(), &meshcav1.ApplyPoliciesRequest{
		Sources: []*meshcav1.PolicySource{source("r.yaml", policyDoc("refund", "/refund"))},
	})
	requireCode(t, err, codes.InvalidArgument, "invalid policy (1 problem):\npolicy "+
		"payments/charge: spec.rules[0].from[0].spiffeID: \"spiffe://cluster.local/legacy\" "+
		"is in trust domain \"cluster.local\", not \"example.org\"")

	// Replacing the stale policy in the same apply fixes the set.
	_, err = other.ApplyPolicies(t.Context(), &meshcav1.ApplyPoliciesRequest{
		Sources: []*meshcav1.PolicySource{source("r.yaml", policyDoc("refund", "/refund"),
			policyDoc("charge", "/charge"))},
	})
	require.NoError(t, err)
}

func TestApplyPoliciesExpectations(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, policyDoc("charge", "/charge"))
	f.mustApply(t, policyDoc("charge", "/v2"))
	expect := func(name string, rev int64, docs ...string) error {
		_, err := f.apply(t, &meshcav1.ApplyPoliciesRequest{
			Sources: []*meshcav1.PolicySource{source("p.yaml", docs...)},
			Expect:  []*meshcav1.Expectation{{Namespace: "payments", Name: name, Revision: rev}},
		})
		return err
	}
	before, gen := f.snapshot(t)

	err := expect("charge", 1, policyDoc("charge", "/v3"), policyDoc("refund", "/refund"))
	requireCode(t, err, codes.Aborted, "policy payments/charge is at revision 2, expected 1: "+
		"changed concurrently; re-read it and retry")
	err = expect("charge", 0, policyDoc("charge", "/v3"))
	requireCode(t, err, codes.Aborted, "policy payments/charge exists at revision 2, expected none")
	err = expect("refund", 3, policyDoc("refund", "/refund"))
	requireCode(t, err, codes.Aborted, "policy payments/refund does not exist, expected revision 3")
	after, genAfter := f.snapshot(t)
	require.Equal(t, before, after, "a conflict writes nothing, not even the other policies")
	require.Equal(t, gen, genAfter)

	require.NoError(t, expect("charge", 2, policyDoc("charge", "/v3")))
	require.NoError(t, expect("refund", 0, policyDoc("refund", "/refund")))
}

// interferingStore makes a concurrent writer win the race: before the first write it
// is asked to do, another write of the same policy lands.
type interferingStore struct {
	*store.Bolt
	once sync.Once
	doc  string
}

func (s *interferingStore) ApplyPolicies(ctx context.Context, w []store.PolicyWrite) (
	[]store.PolicyRecord, error) {
	var err error
	s.once.Do(func() {
		ps, perr := policy.Parse([]byte(s.doc), "other")
		if perr != nil {
			err = perr
			return
		}
		doc, _ := json.Marshal(ps[0])
		_, err = s.Bolt.ApplyPolicies(ctx, []store.PolicyWrite{{Namespace: "payments",
			Name: "charge", Document: doc, ExpectRevision: store.AnyRevision, Author: "other"}})
	})
	if err != nil {
		return nil, err
	}
	return s.Bolt.ApplyPolicies(ctx, w)
}

func TestApplyPoliciesRetriesConflicts(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, policyDoc("charge", "/charge"))

	t.Run("without an expectation the write is planned again", func(t *testing.T) {
		var changed atomic.Int32
		st := &interferingStore{Bolt: f.store, doc: policyDoc("charge", "/other")}
		svc := newService(st, clusterLocal, &changed)
		resp, err := svc.ApplyPolicies(t.Context(), &meshcav1.ApplyPoliciesRequest{
			Sources: []*meshcav1.PolicySource{source("p.yaml", policyDoc("charge", "/mine"))},
		})
		require.NoError(t, err)
		require.Equal(t, []string{"payments/charge updated 2->3"}, summary(resp.GetChanges()),
			"the change is reported against the revision the other writer made")
		require.Contains(t, resp.GetChanges()[0].GetOldDocument(), `"/other"`)

		hist, err := f.store.PolicyHistory(t.Context(), "payments", "charge")
		require.NoError(t, err)
		require.Len(t, hist, 3, "neither write is lost")
		require.Equal(t, "other", hist[1].Author)
		require.Contains(t, string(hist[2].Document), `"/mine"`)
	})
	t.Run("with an expectation the conflict is reported", func(t *testing.T) {
		var changed atomic.Int32
		st := &interferingStore{Bolt: f.store, doc: policyDoc("charge", "/other2")}
		svc := newService(st, clusterLocal, &changed)
		_, err := svc.ApplyPolicies(t.Context(), &meshcav1.ApplyPoliciesRequest{
			Sources: []*meshcav1.PolicySource{source("p.yaml", policyDoc("charge", "/mine2"))},
			Expect:  []*meshcav1.Expectation{{Namespace: "payments", Name: "charge", Revision: 3}},
		})
		requireCode(t, err, codes.Aborted, "policy payments/charge is at revision 4, expected 3")
		require.Zero(t, changed.Load())
	})
}

// Concurrent appliers without expectations all succeed and no update is lost: every
// writer gets its own revision of the shared policy, holding its own document. Each
// conflict a writer meets is another writer's commit, so with as many writers as
// attempts none can run out of attempts.
func TestApplyPoliciesConcurrent(t *testing.T) {
	f := newFixture(t)
	const writers = 5
	revs := make([]int64, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			resp, err := f.svc.ApplyPolicies(context.Background(), &meshcav1.ApplyPoliciesRequest{
				Sources: []*meshcav1.PolicySource{source("p.yaml",
					policyDoc("shared", fmt.Sprintf("/w%d", i)),
					policyDoc(fmt.Sprintf("own-%d", i), "/own"))},
			})
			if !assertNoError(t, err) {
				return
			}
			revs[i] = resp.GetChanges()[0].GetNewRevision()
		})
	}
	wg.Wait()

	hist, err := f.store.PolicyHistory(t.Context(), "payments", "shared")
	require.NoError(t, err)
	require.Len(t, hist, writers)
	for i, rev := range revs {
		require.Positive(t, rev)
		require.Contains(t, string(hist[rev-1].Document), fmt.Sprintf(`"/w%d"`, i),
			"writer %d's revision holds its document", i)
	}
	recs, _ := f.snapshot(t)
	require.Len(t, recs, writers+1)
	require.Equal(t, int32(writers), f.changed.Load())
}

// assertNoError is require.NoError for goroutines other than the test's.
func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("unexpected error: %v", err)
		return false
	}
	return true
}

func TestDeletePolicy(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, policyDoc("charge", "/charge"))
	f.mustApply(t, policyDoc("charge", "/v2"))
	del := func(name string, expect int64) (*meshcav1.PolicyChange, error) {
		return f.svc.DeletePolicy(t.Context(), &meshcav1.DeletePolicyRequest{
			Namespace: "payments", Name: name, ExpectedRevision: expect})
	}

	_, err := del("charge", 1)
	requireCode(t, err, codes.Aborted, "policy payments/charge is at revision 2, expected 1")
	c, err := del("charge", 2)
	require.NoError(t, err)
	require.Equal(t, []string{"payments/charge deleted 2->3"},
		summary([]*meshcav1.PolicyChange{c}))
	require.Contains(t, c.GetOldDocument(), `"/v2"`)
	require.Equal(t, int32(3), f.changed.Load())

	_, err = f.svc.GetPolicy(t.Context(), &meshcav1.GetPolicyRequest{
		Namespace: "payments", Name: "charge"})
	requireCode(t, err, codes.NotFound, "policy payments/charge: not found")
	_, err = del("charge", 0)
	requireCode(t, err, codes.NotFound, "policy payments/charge: not found")
	_, err = del("", 0)
	requireCode(t, err, codes.InvalidArgument, "namespace and name of the policy are required")
	list, err := f.svc.ListPolicies(t.Context(), &meshcav1.ListPoliciesRequest{})
	require.NoError(t, err)
	require.Empty(t, list.GetPolicies())

	// A deleted policy does not exist: re-creating it expects revision 0.
	_, err = f.apply(t, &meshcav1.ApplyPoliciesRequest{
		Sources: []*meshcav1.PolicySource{source("p.yaml", policyDoc("charge", "/v3"))},
		Expect:  []*meshcav1.Expectation{{Namespace: "payments", Name: "charge"}},
	})
	require.NoError(t, err)
}

func TestPolicyHistoryAndRollback(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, policyDoc("charge", "/v1"))
	f.mustApply(t, policyDoc("charge", "/v2"))
	rollback := func(to, expect int64) (*meshcav1.PolicyChange, error) {
		return f.svc.RollbackPolicy(t.Context(), &meshcav1.RollbackPolicyRequest{
			Namespace: "payments", Name: "charge", ToRevision: to, ExpectedRevision: expect})
	}

	c, err := rollback(1, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"payments/charge updated 2->3"},
		summary([]*meshcav1.PolicyChange{c}))
	got, err := f.svc.GetPolicy(t.Context(), &meshcav1.GetPolicyRequest{
		Namespace: "payments", Name: "charge"})
	require.NoError(t, err)
	require.Contains(t, got.GetDocument(), `"/v1"`)

	c, err = rollback(3, 0)
	require.NoError(t, err)
	require.Equal(t, "unchanged", c.GetAction(), "rolling back to the current document")
	_, err = rollback(2, 2)
	requireCode(t, err, codes.Aborted, "policy payments/charge is at revision 3, expected 2")
	_, err = rollback(9, 0)
	requireCode(t, err, codes.NotFound, "policy payments/charge has no revision 9 (latest is 3)")
	_, err = rollback(0, 0)
	requireCode(t, err, codes.InvalidArgument, "revision to roll back to must be positive")

	_, err = f.svc.DeletePolicy(t.Context(), &meshcav1.DeletePolicyRequest{
		Namespace: "payments", Name: "charge"})
	require.NoError(t, err)
	_, err = rollback(4, 0)
	requireCode(t, err, codes.InvalidArgument, "revision 4 of policy payments/charge is its "+
		"deletion; delete the policy instead")
	c, err = rollback(2, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"payments/charge created 0->5"},
		summary([]*meshcav1.PolicyChange{c}), "rolling back a deleted policy re-creates it")

	hist, err := f.svc.PolicyHistory(t.Context(), &meshcav1.PolicyHistoryRequest{
		Namespace: "payments", Name: "charge"})
	require.NoError(t, err)
	var lines []string
	for _, r := range hist.GetRevisions() {
		path := "deleted"
		if !r.GetDeleted() {
			var p policy.Policy
			require.NoError(t, json.Unmarshal([]byte(r.GetDocument()), &p))
			path = p.Spec.Rules[0].To[0].Paths[0]
		}
		require.Equal(t, "admin", r.GetAuthor())
		lines = append(lines, fmt.Sprintf("%d %s", r.GetRevision(), path))
	}
	require.Equal(t, []string{"1 /v1", "2 /v2", "3 /v1", "4 deleted", "5 /v2"}, lines)

	_, err = f.svc.PolicyHistory(t.Context(), &meshcav1.PolicyHistoryRequest{
		Namespace: "payments", Name: "never"})
	requireCode(t, err, codes.NotFound, "policy payments/never: not found")
}

// An expectation on a policy the apply leaves unchanged holds when the other writes
// commit, not only when they were planned.
func TestUnchangedPolicyExpectationHoldsAtCommit(t *testing.T) {
	f := newFixture(t)
	f.mustApply(t, policyDoc("charge", "/charge"))
	var changed atomic.Int32
	st := &interferingStore{Bolt: f.store, doc: policyDoc("charge", "/other")}
	svc := newService(st, clusterLocal, &changed)
	_, err := svc.ApplyPolicies(t.Context(), &meshcav1.ApplyPoliciesRequest{
		Sources: []*meshcav1.PolicySource{
			source("p.yaml", policyDoc("charge", "/charge"), policyDoc("refund", "/refund")),
		},
		Expect: []*meshcav1.Expectation{{Namespace: "payments", Name: "charge", Revision: 1}},
	})
	requireCode(t, err, codes.Aborted, "policy payments/charge is at revision 2, expected 1")
	require.Zero(t, changed.Load())
	_, err = f.store.Policy(t.Context(), "payments", "refund")
	require.ErrorIs(t, err, store.ErrNotFound, "refund was written despite the conflict")
}

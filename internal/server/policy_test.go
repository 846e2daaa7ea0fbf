package server

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/api/policy"
	"github.com/meshca/meshca/store"
)

// fakeSink records every set of policies it is given, as sorted keys.
type fakeSink struct {
	mu   sync.Mutex
	sets [][]string
}

func (s *fakeSink) SetPolicies(ps []policy.Policy) {
	keys := []string{}
	for _, p := range ps {
		keys = append(keys, p.Key()+" "+string(p.Spec.Action))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets = append(s.sets, keys)
}

func (s *fakeSink) all() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]string(nil), s.sets...)
}

func applyDoc(t *testing.T, svc *api.Policies, name, action string, dryRun bool) {
	t.Helper()
	doc := "apiVersion: meshca.io/v1alpha1\nkind: AuthorizationPolicy\n" +
		"metadata: {name: " + name + ", namespace: payments}\n" +
		"spec: {action: " + action + ", rules: [{}]}\n"
	_, err := svc.ApplyPolicies(t.Context(), &meshcav1.ApplyPoliciesRequest{
		Sources: []*meshcav1.PolicySource{{Name: "p.yaml", Content: []byte(doc)}},
		DryRun:  dryRun,
	})
	require.NoError(t, err)
}

// The sink gets the stored policies at startup, then the whole new set after every
// committed change, and nothing for a dry run or a change that wrote nothing.
func TestPolicySync(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), StoreFileName), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	td := spiffeid.RequireTrustDomainFromString("cluster.local")

	// A policy stored by an earlier run.
	applyDoc(t, api.NewPolicies(api.PolicyConfig{Store: st, TrustDomain: td}),
		"old", "DENY", false)

	sink := &fakeSink{}
	ps := newPolicySync(st, sink, td, slog.New(slog.DiscardHandler))
	require.NoError(t, ps.push(t.Context()))
	require.Equal(t, [][]string{{"payments/old DENY"}}, sink.all())

	svc := api.NewPolicies(api.PolicyConfig{Store: st, TrustDomain: td, Changed: ps.changed})
	applyDoc(t, svc, "new", "ALLOW", false)
	applyDoc(t, svc, "newer", "ALLOW", true) // dry run
	applyDoc(t, svc, "new", "ALLOW", false)  // unchanged
	applyDoc(t, svc, "old", "ALLOW", false)  // updated
	_, err = svc.DeletePolicy(t.Context(), &meshcav1.DeletePolicyRequest{
		Namespace: "payments", Name: "new"})
	require.NoError(t, err)
	require.NoError(t, ps.push(t.Context()), "a push without a change")

	require.Equal(t, [][]string{
		{"payments/old DENY"},
		{"payments/new ALLOW", "payments/old DENY"},
		{"payments/new ALLOW", "payments/old ALLOW"},
		{"payments/old ALLOW"},
	}, sink.all())
}

// Policies stored for another trust domain are handed on all the same, for xds to
// fail closed on, and the problem is logged.
func TestPolicySyncInvalidStored(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), StoreFileName), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	old := spiffeid.RequireTrustDomainFromString("cluster.local")
	applyDoc(t, api.NewPolicies(api.PolicyConfig{Store: st, TrustDomain: old}),
		"deny", "DENY", false)
	_, err = api.NewPolicies(api.PolicyConfig{Store: st, TrustDomain: old}).ApplyPolicies(
		t.Context(), &meshcav1.ApplyPoliciesRequest{Sources: []*meshcav1.PolicySource{{
			Name: "p.yaml", Content: []byte("apiVersion: meshca.io/v1alpha1\n" +
				"kind: AuthorizationPolicy\nmetadata: {name: legacy, namespace: payments}\n" +
				"spec: {action: ALLOW, rules: [{from: [{spiffeID: spiffe://cluster.local/x}]}]}\n"),
		}}})
	require.NoError(t, err)

	var logs bytes.Buffer
	sink := &fakeSink{}
	ps := newPolicySync(st, sink, spiffeid.RequireTrustDomainFromString("example.org"),
		slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, ps.push(t.Context()))
	require.Equal(t, [][]string{{"payments/deny DENY", "payments/legacy ALLOW"}}, sink.all())
	require.Contains(t, logs.String(), `level=ERROR msg="Stored authorization policies are `+
		`invalid; the workloads they select deny every request until they are fixed" `+
		`error="policy payments/legacy: spec.rules[0].from[0].spiffeID: `+
		`\"spiffe://cluster.local/x\" is in trust domain \"cluster.local\", not \"example.org\""`)
}

// flakyLister fails while fail is set.
type flakyLister struct {
	policyLister
	fail atomic.Bool
}

func (f *flakyLister) Policies(ctx context.Context, ns string) (
	[]store.PolicyRecord, uint64, error) {
	if f.fail.Load() {
		return nil, 0, errors.New("disk on fire")
	}
	return f.policyLister.Policies(ctx, ns)
}

// A committed change that could not be handed on at once reaches the sink later.
func TestPolicySyncRetriesAFailedPush(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), StoreFileName), store.BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	sink := &fakeSink{}
	flaky := &flakyLister{policyLister: st}
	ps := newPolicySync(flaky, sink, td, slog.New(slog.DiscardHandler))
	ps.resync = 10 * time.Millisecond
	require.NoError(t, ps.push(t.Context()))

	flaky.fail.Store(true)
	svc := api.NewPolicies(api.PolicyConfig{Store: st, TrustDomain: td, Changed: ps.changed})
	applyDoc(t, svc, "deny-all", "DENY", false)
	require.Len(t, sink.all(), 1, "the push after the change failed")

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ps.Run(ctx) }()
	flaky.fail.Store(false)
	require.Eventually(t, func() bool { return len(sink.all()) == 2 }, 10*time.Second,
		10*time.Millisecond)
	require.Equal(t, []string{"payments/deny-all DENY"}, sink.all()[1])
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

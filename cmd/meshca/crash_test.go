package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/internal/testutil"
)

// crashTrialsEnv sets the number of kill -9 trials per rotation step; the default is
// the fifty (about 10 s for the three steps under -race on 2 cores).
const crashTrialsEnv = "MESHCA_CRASH_TRIALS"

// caState is what a crash must leave as it was or as the step makes it: every
// authority's state, and the bundle's bytes.
type caState struct {
	states map[string]string
	bundle []byte
}

func readState(t *testing.T, c meshcav1.AdminServiceClient) caState {
	t.Helper()
	st, err := c.GetStatus(context.Background(), &meshcav1.GetStatusRequest{})
	require.NoError(t, err)
	s := caState{states: map[string]string{}}
	for _, a := range st.Authorities {
		s.states[a.Id] = a.State
	}
	b, err := c.GetBundle(context.Background(), &meshcav1.GetBundleRequest{})
	require.NoError(t, err)
	s.bundle = bytes.Join(b.X509Authorities, nil)
	return s
}

// crashStep is one rotation step: how to reach the state before it, how to run it,
// and what state it leads to from a given one.
type crashStep struct {
	name  string
	setup []func(meshcav1.AdminServiceClient) error
	run   func(meshcav1.AdminServiceClient) error
	// after says whether got is the state the step leads to from before.
	after func(before, got caState) bool
}

var (
	prepareStep = func(c meshcav1.AdminServiceClient) error {
		_, err := c.PrepareAuthority(context.Background(), &meshcav1.PrepareAuthorityRequest{})
		return err
	}
	activateStep = func(c meshcav1.AdminServiceClient) error {
		_, err := c.ActivateAuthority(context.Background(), &meshcav1.ActivateAuthorityRequest{})
		return err
	}
	removeStep = func(c meshcav1.AdminServiceClient) error {
		_, err := c.RemoveAuthority(context.Background(), &meshcav1.RemoveAuthorityRequest{})
		return err
	}
)

// changed says whether got holds the authorities of before, each moved from one
// state to another as moves says, and no others.
func changed(before, got caState, moves map[string]string) bool {
	if len(got.states) != len(before.states) {
		return false
	}
	for id, st := range before.states {
		want := st
		if to, ok := moves[st]; ok {
			want = to
		}
		if got.states[id] != want {
			return false
		}
	}
	return true
}

// TestCrashDuringRotation kills meshca with SIGKILL at random points of each rotation
// step, then restarts it: the state is always the one before or after the step, the
// bundle of an unchanged state is byte-identical, and a fresh leaf verifies with
// openssl against the served bundle.
func TestCrashDuringRotation(t *testing.T) {
	trials := 50
	if v := os.Getenv(crashTrialsEnv); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "%s=%q", crashTrialsEnv, v)
		trials = n
	}
	steps := []crashStep{{
		name: "prepare",
		run:  prepareStep,
		after: func(before, got caState) bool {
			if len(got.states) != len(before.states)+1 ||
				!bytes.HasPrefix(got.bundle, before.bundle) {
				return false
			}
			for id, st := range got.states {
				if want, ok := before.states[id]; ok && st != want ||
					!ok && st != "prepared" {
					return false
				}
			}
			return true
		},
	}, {
		name:  "activate",
		setup: []func(meshcav1.AdminServiceClient) error{prepareStep},
		run:   activateStep,
		after: func(before, got caState) bool {
			return bytes.Equal(before.bundle, got.bundle) && changed(before, got,
				map[string]string{"prepared": "active", "active": "retired"})
		},
	}, {
		name:  "remove",
		setup: []func(meshcav1.AdminServiceClient) error{prepareStep, activateStep},
		run:   removeStep,
		after: func(before, got caState) bool {
			return len(got.bundle) < len(before.bundle) && changed(before, got,
				map[string]string{"retired": "removed"})
		},
	}}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			var befores, afters int
			for i := range trials {
				if crashTrial(t, step, i) {
					afters++
				} else {
					befores++
				}
			}
			t.Logf("%s: %d trials, %d left the state before, %d after", step.name, trials,
				befores, afters)
		})
	}
}

// crashTrial runs one trial on a fresh data directory and says whether the step had
// taken effect.
func crashTrial(t *testing.T, step crashStep, i int) bool {
	t.Helper()
	dir := t.TempDir()
	socket := filepath.Join(dir, "admin.sock")
	p := startServer(t, "--data-dir", dir)
	p.waitReady(t)
	c := adminClient(t, socket)
	for _, s := range step.setup {
		require.NoError(t, s(c))
	}
	before := readState(t, c)

	// Kill at a random moment from just before the call until after it usually ends
	// (a step is at most one key generation and one fsync: 1 to 3 ms here).
	delay := time.Duration(rand.Int64N(int64(4 * time.Millisecond)))
	go func() { _ = step.run(c) }()
	time.Sleep(delay)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.exited

	p = startServer(t, "--data-dir", dir)
	p.waitReady(t)
	c = adminClient(t, socket)
	got := readState(t, c)
	took := step.after(before, got)
	if !took {
		require.Equal(t, before.states, got.states,
			"trial %d (kill after %s): neither the state before nor after %s", i, delay, step.name)
		require.True(t, bytes.Equal(before.bundle, got.bundle),
			"trial %d: same state, different bundle bytes", i)
	}

	chain := mint(t, c, "spiffe://cluster.local/ns/crash/sa/test")
	certs := make([]*x509.Certificate, len(chain))
	for j, der := range chain {
		var err error
		certs[j], err = x509.ParseCertificate(der)
		require.NoError(t, err)
	}
	testutil.OpensslVerify(t, bundle(t, c).X509Authorities(), certs)
	p.stop(t)
	return took
}

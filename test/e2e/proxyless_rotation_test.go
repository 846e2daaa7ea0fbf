package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/xds/proxyless"
)

// keptWorkload is a proxyless workload whose SVID files proxyless.KeepFiles keeps
// up to date from meshca's SDS, as a workload does in production.
func keptWorkload(t *testing.T, kube *kubetest.Cluster, m *meshca, ns, sa string) (
	*proxylessWorkload, proxyless.Workload) {
	t.Helper()
	pod := sa + "-0"
	kube.CreateWorkload(t, ns, sa, pod)
	token := kube.PodToken(t, ns, sa, pod, "meshca", time.Hour)
	dir := t.TempDir()
	// One bundle file serves both to trust meshca and for the workload's peers: the
	// keeper rewrites it on every rotation step, and the meshca credentials re-read it,
	// so the channel to meshca follows the rotation too. It starts as the ConfigMap
	// meshca-root-cert would.
	caFile, tokenFile := filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(caFile, testutil.PEMCerts(rootsNow(t, m)...), 0o600))
	require.NoError(t, os.WriteFile(tokenFile, []byte(token), 0o600))
	w := proxyless.Workload{
		ServerURI: m.addrs.GRPC.String(), ServerName: "localhost", CAFile: caFile,
		TokenFile: tokenFile, NodeID: ns + "/" + pod,
		CertFile:   filepath.Join(dir, "svid.pem"),
		KeyFile:    filepath.Join(dir, "svid-key.pem"),
		BundleFile: caFile,
		Refresh:    200 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = proxyless.KeepFiles(ctx, w, nil, func() { close(ready) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("the SVID files were not written")
	}
	boot, err := proxyless.Bootstrap(w)
	require.NoError(t, err)
	return &proxylessWorkload{ns: ns, sa: sa, bootstrap: boot}, w
}

// caller keeps calling Charge on one long-lived channel and, once a second, on a new
// channel (new connections: new handshakes), counting every failure.
type caller struct {
	calls, failures atomic.Int64
	mu              sync.Mutex
	lastErr         error
}

func (c *caller) run(ctx context.Context, t *testing.T, w *proxylessWorkload, target string) {
	long := w.dial(t, target)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		conn := long
		if i%20 == 0 {
			conn = w.dial(t, target)
		}
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := conn.Invoke(callCtx, chargeMethod, &emptypb.Empty{}, &emptypb.Empty{},
			grpc.WaitForReady(true))
		cancel()
		if conn != long {
			_ = conn.Close()
		}
		if ctx.Err() != nil {
			return
		}
		c.calls.Add(1)
		if status.Code(err) != codes.OK {
			c.failures.Add(1)
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
		}
	}
}

func TestProxylessCallsSurviveRotation(t *testing.T) {
	_, err := meshctlBinary()
	require.NoError(t, err)
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), leafTTL: 20 * time.Second})
	payNS, ordNS := kube.NewNamespace(t), kube.NewNamespace(t)
	payments, payFiles := keptWorkload(t, kube, m, payNS, "payments")
	payments.serve(t)
	orders, _ := keptWorkload(t, kube, m, ordNS, "orders")
	target := "payments." + payNS
	conn := orders.dial(t, target)
	waitFor(t, "first call", time.Now(),
		expectation{"orders", conn, chargeMethod, codes.OK})

	ctx, cancel := context.WithCancel(context.Background())
	var c caller
	done := make(chan struct{})
	go func() { defer close(done); c.run(ctx, t, orders, target) }()
	stop := func() { cancel(); <-done }
	defer stop()

	oldRoot := rootsNow(t, m)[0]
	m.meshctl(t, "", "ca", "rotate", "prepare")
	m.meshctl(t, "", "ca", "rotate", "activate", "--wait", "30s")
	newRoot := rootsNow(t, m)[1]
	require.False(t, oldRoot.Equal(newRoot))
	// Certificates move to the new root at renewal, then the old root can go.
	eventually(t, "removal of the old root", func() bool {
		cmd := meshctlCmd(t, m, "ca", "rotate", "remove")
		return cmd.Run() == nil
	})
	require.Len(t, rootsNow(t, m), 1)
	// The server's files moved to the new root without a restart.
	data, err := os.ReadFile(payFiles.CertFile)
	require.NoError(t, err)
	chain, err := testutil.ParsePEMCerts(data)
	require.NoError(t, err)
	require.NoError(t, chain[0].CheckSignatureFrom(newRoot), "the server's leaf is not new")
	// Keep calling with only the new root trusted, new connections included.
	time.Sleep(2 * time.Second)
	stop()

	c.mu.Lock()
	defer c.mu.Unlock()
	t.Logf("%d calls through the rotation, %d failed (last error: %v)", c.calls.Load(),
		c.failures.Load(), c.lastErr)
	require.Greater(t, c.calls.Load(), int64(100))
	require.Zero(t, c.failures.Load(), "last error: %v", c.lastErr)
}

package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/server"
)

var clusterLocal = spiffeid.RequireTrustDomainFromString("cluster.local")

// startServer runs a real meshca server on a temporary data directory and returns
// its admin socket. The server stops when the test ends.
func startServer(t *testing.T) string {
	t.Helper()
	socket, _ := startServerAt(t, t.TempDir())
	return socket
}

// startServerAt runs a real meshca server on dataDir and returns its admin socket and
// a function that stops it and waits until it has; it also stops when the test ends.
func startServerAt(t *testing.T, dataDir string) (socket string, stop func()) {
	t.Helper()
	// Unix socket paths are limited to about 100 bytes; test temp dirs can be longer.
	sockDir, err := os.MkdirTemp("", "meshctl")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })

	ready := make(chan server.Addrs, 1)
	srv, err := server.New(server.Config{
		DataDir:     dataDir,
		TrustDomain: clusterLocal,
		AdminSocket: filepath.Join(sockDir, "admin.sock"),
		GRPCAddr:    "127.0.0.1:0",
		HTTPAddr:    "127.0.0.1:0",
		Ready:       func(a server.Addrs) { ready <- a },
	})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Error("server did not stop within 10s")
			}
		})
	}
	t.Cleanup(stop)

	select {
	case a := <-ready:
		return a.Admin, stop
	case err := <-done:
		t.Fatalf("server stopped before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready within 30s")
	}
	return "", stop
}

// mustRun runs meshctl against socket and fails the test on an error.
func mustRun(t *testing.T, socket string, args ...string) string {
	t.Helper()
	res := execute(t, time.Now(), append([]string{"--admin-socket", socket}, args...)...)
	require.NoError(t, res.err, "meshctl %s\nstderr: %s", strings.Join(args, " "), res.stderr)
	return res.stdout
}

func TestE2ESVIDMint(t *testing.T) {
	socket := startServer(t)
	out := filepath.Join(t.TempDir(), "creds")
	const id = "spiffe://cluster.local/ns/shop/sa/orders"

	stdout := mustRun(t, socket, "svid", "mint", "--spiffe-id", id, "--ttl", "30m",
		"--out", out)
	require.Contains(t, stdout, id)
	require.NotContains(t, stdout, "PRIVATE KEY")

	certPath, keyPath, bundlePath := mintOptions{outDir: out}.paths()
	assertMode(t, out, 0o700|os.ModeDir)
	assertMode(t, keyPath, 0o600)
	assertMode(t, certPath, 0o644)
	assertMode(t, bundlePath, 0o644)

	// The key matches the leaf, and openssl accepts the chain against the bundle.
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	require.NoError(t, err)
	require.Contains(t, stdout, ca.SerialHex(pair.Leaf.SerialNumber))
	require.WithinDuration(t, time.Now().Add(30*time.Minute), pair.Leaf.NotAfter, time.Minute)
	verify, err := exec.Command("openssl", "verify", "-CAfile", bundlePath,
		"-untrusted", certPath, certPath).CombinedOutput()
	require.NoError(t, err, "openssl verify: %s", verify)
	require.Contains(t, string(verify), ": OK")

	// The issuance is in the audit log, and only it for that SPIFFE ID.
	var list issuanceList
	listed := mustRun(t, socket, "-o", "json", "cert", "list", "--spiffe-id", id)
	require.NoError(t, json.Unmarshal([]byte(listed), &list))
	require.Len(t, list.Issuances, 1)
	require.Equal(t, ca.SerialHex(pair.Leaf.SerialNumber), list.Issuances[0].Serial)
	require.Equal(t, "admin", list.Issuances[0].Requester)
	require.Contains(t, mustRun(t, socket, "cert", "list", "--limit", "5"), id)

	// cert inspect verifies the minted SVID, with the server's bundle or the file.
	inspected := mustRun(t, socket, "cert", "inspect", certPath)
	require.Contains(t, inspected, "Chains to bundle:  yes (bundle from server)")
	require.Contains(t, inspected, "SPIFFE ID:         "+id)
	var ins inspection
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, socket, "-o", "json", "cert",
		"inspect", certPath, "--bundle", bundlePath)), &ins))
	require.Equal(t, chainsYes, ins.Verification.ChainsToBundle)
	require.Equal(t, "ec-p256", ins.KeyType)
}

func TestE2ESVIDMintOverwrite(t *testing.T) {
	socket := startServer(t)
	out := t.TempDir()
	const id = "spiffe://cluster.local/ns/shop/sa/orders"
	certPath, keyPath, _ := mintOptions{outDir: out}.paths()

	// A key left world-readable by someone else is replaced by a 0600 one.
	require.NoError(t, os.WriteFile(keyPath, []byte("old key"), 0o644))
	res := execute(t, time.Now(), "--admin-socket", socket, "svid", "mint",
		"--spiffe-id", id, "--out", out)
	require.EqualError(t, res.err, keyPath+" already exists (use --force to overwrite)")
	old, err := os.ReadFile(keyPath)
	require.NoError(t, err)
	require.Equal(t, "old key", string(old), "a refused mint leaves files alone")
	require.NoFileExists(t, certPath)

	mustRun(t, socket, "svid", "mint", "--spiffe-id", id, "--out", out, "--force",
		"--key-type", "rsa-2048")
	assertMode(t, keyPath, 0o600)
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	require.NoError(t, err)
	require.Equal(t, "rsa-2048", keyType(pair.Leaf.PublicKey))
}

func TestE2EMintRefused(t *testing.T) {
	socket := startServer(t)
	tests := []struct {
		name       string
		id         string
		wantPrefix string
	}{{
		name:       "an empty path segment",
		id:         "spiffe://cluster.local/ns/a//sa/b",
		wantPrefix: `failed to mint SVID: invalid SPIFFE ID "spiffe://cluster.local/ns/a//sa/b": `,
	}, {
		name: "another trust domain",
		id:   "spiffe://other.org/ns/a/sa/b",
		wantPrefix: `failed to mint SVID: SPIFFE ID "spiffe://other.org/ns/a/sa/b" is not in ` +
			`trust domain "cluster.local"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "creds")
			res := execute(t, time.Now(), "--admin-socket", socket, "svid", "mint",
				"--spiffe-id", tt.id, "--out", out)
			require.Error(t, res.err)
			require.Equal(t, codes.InvalidArgument, status.Code(res.err))
			require.True(t, strings.HasPrefix(res.err.Error(), tt.wantPrefix), res.err.Error())
			require.NotContains(t, res.err.Error(), "rpc error", "no gRPC dump")
			require.NoDirExists(t, out, "a refused mint writes nothing")
		})
	}
}

func TestE2EBundleAndStatus(t *testing.T) {
	socket := startServer(t)

	rootsPEM := mustRun(t, socket, "bundle", "export")
	roots, err := parsePEMCerts([]byte(rootsPEM))
	require.NoError(t, err)
	require.Len(t, roots, 1)
	root := roots[0]

	doc := mustRun(t, socket, "bundle", "export", "--format", "spiffe")
	b, err := spiffebundle.Parse(clusterLocal, []byte(doc))
	require.NoError(t, err)
	require.True(t, b.HasX509Authority(root))
	require.Len(t, b.X509Authorities(), 1)

	outFile := filepath.Join(t.TempDir(), "bundle.jwks")
	require.Empty(t, mustRun(t, socket, "bundle", "export", "--format", "spiffe",
		"--out", outFile))
	_, err = spiffebundle.Load(clusterLocal, outFile)
	require.NoError(t, err)

	sum := sha256.Sum256(root.Raw)
	var st caStatus
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, socket, "ca", "status", "-o", "json")),
		&st))
	require.Equal(t, "cluster.local", st.TrustDomain)
	require.Len(t, st.Authorities, 1)
	require.Equal(t, "active", st.Authorities[0].State)
	require.Equal(t, "root", st.Authorities[0].Kind)
	require.Equal(t, hex.EncodeToString(sum[:]), st.Authorities[0].FingerprintSHA256)
	require.Positive(t, st.Authorities[0].TimeLeftSeconds)

	var fromYAML caStatus
	require.NoError(t, yaml.Unmarshal([]byte(mustRun(t, socket, "ca", "status", "-o", "yaml")),
		&fromYAML))
	require.Equal(t, st.Authorities[0].FingerprintSHA256, fromYAML.Authorities[0].FingerprintSHA256)
	require.Contains(t, mustRun(t, socket, "ca", "status"), hex.EncodeToString(sum[:]))

	// The environment variable names the socket when the flag does not.
	t.Setenv(adminSocketEnv, socket)
	res := execute(t, time.Now(), "ca", "status")
	require.NoError(t, res.err)
	require.Contains(t, res.stdout, "Trust domain: cluster.local")
}

func TestE2EServerNotRunning(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	lis, err := net.Listen("unix", stale)
	require.NoError(t, err)
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, lis.Close())

	tests := []struct {
		name   string
		socket string
		args   []string
	}{
		{"no socket file", filepath.Join(dir, "absent.sock"), []string{"ca", "status"}},
		{"a stale socket file", stale, []string{"ca", "status"}},
		{"bundle export", stale, []string{"bundle", "export"}},
		{"cert list", stale, []string{"cert", "list"}},
		{"svid mint", stale, []string{"svid", "mint", "--spiffe-id",
			"spiffe://cluster.local/ns/a/sa/b", "--out", filepath.Join(dir, "creds")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := execute(t, time.Now(), append([]string{"--admin-socket", tt.socket},
				tt.args...)...)
			var unreachable *unreachableError
			require.True(t, errors.As(res.err, &unreachable), "error: %v", res.err)
			require.Equal(t, tt.socket, unreachable.Socket)
			require.Contains(t, res.err.Error(), "cannot reach meshca admin socket "+tt.socket+": ")
			require.True(t, strings.HasSuffix(res.err.Error(), "; is the server running?"))
			require.NoDirExists(t, filepath.Join(dir, "creds"))
		})
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, want, info.Mode(), "mode of %s", path)
}

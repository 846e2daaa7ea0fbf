package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
)

var meshcaBin string

// vcsStamped says whether meshcaBin carries the commit it was built from.
var vcsStamped bool

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshca-bin")
	if err != nil {
		panic(err)
	}
	meshcaBin = filepath.Join(dir, "meshca")
	// With the commit stamped in, for TestVersion; without, where git cannot read
	// this checkout (another owner, no .git).
	out, err := exec.Command("go", "build", "-buildvcs=true", "-o", meshcaBin, ".").
		CombinedOutput()
	vcsStamped = err == nil
	if err != nil {
		out, err = exec.Command("go", "build", "-buildvcs=false", "-o", meshcaBin, ".").
			CombinedOutput()
	}
	if err != nil {
		panic("go build: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a meshca server process started by a test.
type proc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	ready  chan string // the "meshca is ready" log line
	exited chan error
}

func startServer(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(meshcaBin, append([]string{"server",
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)...)
	pipe, err := cmd.StderrPipe()
	require.NoError(t, err)
	p := &proc{cmd: cmd, stderr: &bytes.Buffer{}, ready: make(chan string, 1),
		exited: make(chan error, 1)}
	require.NoError(t, cmd.Start())
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			p.stderr.WriteString(line + "\n")
			if strings.Contains(line, "meshca is ready") {
				p.ready <- line
			}
		}
	}()
	go func() {
		<-scanned
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *proc) waitReady(t *testing.T) string {
	t.Helper()
	select {
	case line := <-p.ready:
		return line
	case err := <-p.exited:
		t.Fatalf("meshca exited before ready: %v\n%s", err, p.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("meshca not ready after 30 s\n%s", p.stderr)
	}
	return ""
}

func (p *proc) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.exited:
		require.NoError(t, err, "meshca exits 0 on SIGTERM\n%s", p.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("meshca did not stop on SIGTERM\n%s", p.stderr)
	}
}

// waitExit waits for a server expected to fail and returns its stderr.
func (p *proc) waitExit(t *testing.T) string {
	t.Helper()
	select {
	case err := <-p.exited:
		require.Error(t, err, "meshca must exit non-zero")
		var exitErr *exec.ExitError
		require.ErrorAs(t, err, &exitErr)
		require.NotZero(t, exitErr.ExitCode())
	case <-time.After(30 * time.Second):
		t.Fatalf("meshca did not exit\n%s", p.stderr)
	}
	return p.stderr.String()
}

func adminClient(t *testing.T, socket string) meshcav1.AdminServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return meshcav1.NewAdminServiceClient(conn)
}

func mint(t *testing.T, c meshcav1.AdminServiceClient, id string) [][]byte {
	t.Helper()
	key := testutil.MustKey(t, ca.KeyECP256)
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	resp, err := c.MintX509SVID(context.Background(), &meshcav1.MintX509SVIDRequest{
		SpiffeId: id, PublicKey: pub,
	})
	require.NoError(t, err)
	return resp.CertChain
}

func bundle(t *testing.T, c meshcav1.AdminServiceClient) *x509bundle.Bundle {
	t.Helper()
	resp, err := c.GetBundle(context.Background(), &meshcav1.GetBundleRequest{})
	require.NoError(t, err)
	b, err := x509bundle.ParseRaw(spiffeid.RequireTrustDomainFromString(resp.TrustDomain),
		bytes.Join(resp.X509Authorities, nil))
	require.NoError(t, err)
	return b
}

func rootFingerprint(t *testing.T, c meshcav1.AdminServiceClient) string {
	t.Helper()
	resp, err := c.GetStatus(context.Background(), &meshcav1.GetStatusRequest{})
	require.NoError(t, err)
	require.Len(t, resp.Authorities, 1)
	require.Equal(t, "active", resp.Authorities[0].State)
	return resp.Authorities[0].FingerprintSha256
}

func TestRestartKeepsRoot(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "admin.sock")

	first := startServer(t, "--data-dir", dir)
	first.waitReady(t)
	info, err := os.Stat(socket)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "admin socket is 0600")
	client := adminClient(t, socket)
	fp := rootFingerprint(t, client)
	chain := mint(t, client, "spiffe://cluster.local/ns/payments/sa/api")
	first.stop(t)

	second := startServer(t, "--data-dir", dir)
	second.waitReady(t)
	client = adminClient(t, socket)
	require.Equal(t, fp, rootFingerprint(t, client), "the root survives a restart")

	id, _, err := x509svid.ParseAndVerify(chain, bundle(t, client))
	require.NoError(t, err, "the first leaf still verifies against the reloaded bundle")
	require.Equal(t, "spiffe://cluster.local/ns/payments/sa/api", id.String())
	second.stop(t)
}

func TestBadStoreStopsServerAndIsNotModified(t *testing.T) {
	t.Run("corrupt", func(t *testing.T) {
		dir := t.TempDir()
		db := filepath.Join(dir, "meshca.db")
		require.NoError(t, os.WriteFile(db, bytes.Repeat([]byte("not bolt"), 4096), 0o600))
		before := readFile(t, db)

		out := startServer(t, "--data-dir", dir).waitExit(t)
		require.Contains(t, out, db, "the message names the file")
		require.Contains(t, out, "is corrupt")
		require.Equal(t, before, readFile(t, db), "the file is byte-for-byte unchanged")
	})
	t.Run("locked", func(t *testing.T) {
		dir := t.TempDir()
		db := filepath.Join(dir, "meshca.db")
		holder := startServer(t, "--data-dir", dir)
		holder.waitReady(t)
		before := readFile(t, db)

		out := startServer(t, "--data-dir", dir,
			"--admin-socket", filepath.Join(dir, "other.sock")).waitExit(t)
		require.Contains(t, out, db, "the message names the file")
		require.Contains(t, out, "is locked by another process")
		require.Equal(t, before, readFile(t, db), "the file is byte-for-byte unchanged")
		holder.stop(t)
	})
}

func TestConfigFile(t *testing.T) {
	for _, tc := range []struct {
		name, config string
		args         []string
		wantMsg      string
	}{
		{"unknown key", "data-dir: x\ntrust-domian: example.org\n", nil,
			`unknown key "trust-domian"`},
		{"bad duration", "leaf-ttl: an hour\n", nil, `key "leaf-ttl": invalid value "an hour"`},
		{"bad trust domain", "trust-domain: Example.ORG\n", nil, `--trust-domain "Example.ORG"`},
		{"leaf TTL over max", "leaf-ttl: 48h\n", nil, "--leaf-ttl 48h0m0s is longer than --max-ttl"},
		{"flag beats file", "trust-domain: Bad.Domain\n", []string{"--trust-domain", "Other.Bad"},
			`--trust-domain "Other.Bad"`},
		{"not YAML", "data-dir: [unclosed\n", nil, "is not valid YAML"},
		{"negative expiry warning", "authority-expiry-warning: -1h\n", nil,
			"--authority-expiry-warning -1h0m0s must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "meshca.yaml")
			require.NoError(t, os.WriteFile(cfg, []byte(tc.config), 0o600))
			args := append([]string{"--config", cfg, "--data-dir", filepath.Join(dir, "data")},
				tc.args...)
			out := startServer(t, args...).waitExit(t)
			require.Contains(t, out, tc.wantMsg)
			_, err := os.Stat(filepath.Join(dir, "data"))
			require.ErrorIs(t, err, os.ErrNotExist, "nothing started, nothing created")
		})
	}
}

func TestConfigFileValuesApply(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "meshca.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("trust-domain: prod.example.com\n"+
		"data-dir: "+dir+"\nlog-format: json\n"), 0o600))
	p := startServer(t, "--config", cfg)
	line := p.waitReady(t)
	require.Regexp(t, regexp.MustCompile(`"trust_domain":"prod.example.com"`), line)
	resp, err := adminClient(t, filepath.Join(dir, "admin.sock")).GetStatus(
		context.Background(), &meshcav1.GetStatusRequest{})
	require.NoError(t, err)
	require.Equal(t, "prod.example.com", resp.TrustDomain)
	p.stop(t)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	b, err := io.ReadAll(f)
	require.NoError(t, err)
	return b
}

// Without a Kubernetes API meshca serves its admin API and health, and says it cannot
// serve workloads.
func TestNotReadyWithoutKubernetes(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	p := startServer(t, "--data-dir", t.TempDir())
	line := p.waitReady(t)
	m := regexp.MustCompile(`http_addr=(\S+)`).FindStringSubmatch(line)
	require.Len(t, m, 2, "no http_addr in %q", line)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + m[1] + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, _ := get("/healthz")
	require.Equal(t, http.StatusOK, code)
	code, body := get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "token authentication: no Kubernetes API configured")
	code, body = get("/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `go_build_info{checksum="",path="github.com/meshca/meshca"`)
	require.Contains(t, line, "version=")
	p.stop(t)
}

// TestVersion runs `meshca version` and `meshca --version` on the binary built for
// these tests: both name the commit of this checkout and the Go toolchain.
func TestVersion(t *testing.T) {
	var head []byte
	if vcsStamped {
		var err error
		head, err = exec.Command("git", "rev-parse", "HEAD").Output()
		require.NoError(t, err)
	} else {
		t.Log("git cannot read this checkout: the binary names no commit")
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := exec.Command(meshcaBin, args...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.True(t, strings.HasPrefix(string(out), "meshca "), "%s: %q", args[0], out)
		require.Contains(t, string(out), runtime.Version())
		if head != nil {
			require.Contains(t, string(out), ", commit "+string(head[:12]))
		}
	}
}

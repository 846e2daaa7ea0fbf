package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/xds"
	"github.com/meshca/meshca/xds/proxyless"
)

// The payments service of the tests: two methods that return an empty message.
const (
	chargeMethod = "/payments.Payments/Charge"
	refundMethod = "/payments.Payments/Refund"
)

var paymentsDesc = grpc.ServiceDesc{
	ServiceName: "payments.Payments",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Charge", Handler: emptyHandler},
		{MethodName: "Refund", Handler: emptyHandler},
	},
}

func emptyHandler(_ any, _ context.Context, dec func(any) error,
	_ grpc.UnaryServerInterceptor) (any, error) {
	var in emptypb.Empty
	if err := dec(&in); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// proxylessWorkload is a pod whose gRPC programs get everything from meshca: an SVID
// signed through the certificate API, written where grpc-go's file_watcher reads it,
// and a bootstrap pointing grpc-go's xDS client at meshca.
type proxylessWorkload struct {
	ns, sa    string
	bootstrap []byte
}

func newProxylessWorkload(t *testing.T, kube *kubetest.Cluster, m *meshca, ns, sa string,
	meta map[string]string) *proxylessWorkload {
	t.Helper()
	pod := sa + "-0"
	kube.CreateWorkload(t, ns, sa, pod)
	token := kube.PodToken(t, ns, sa, pod, "meshca", time.Hour)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o600))
		return p
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	resp, err := sign(t.Context(), m, token, csrDER(t, key, &x509.CertificateRequest{}))
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	var chain, bundle []byte
	for _, der := range resp.CertChain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	for _, der := range resp.Bundle {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}

	boot, err := proxyless.Bootstrap(proxyless.Workload{
		ServerURI:  m.addrs.GRPC.String(),
		ServerName: "localhost",
		CAFile:     write("meshca-ca.pem", bundle),
		TokenFile:  write("token", []byte(token)),
		NodeID:     ns + "/" + pod,
		Metadata:   meta,
		CertFile:   write("svid.pem", chain),
		KeyFile: write("svid-key.pem",
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		BundleFile: write("bundle.pem", bundle),
	})
	require.NoError(t, err)
	return &proxylessWorkload{ns: ns, sa: sa, bootstrap: boot}
}

// serve runs a grpc-go xDS server for the payments service on loopback.
func (w *proxylessWorkload) serve(t *testing.T) {
	t.Helper()
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{
		FallbackCreds: insecure.NewCredentials(),
	})
	require.NoError(t, err)
	srv, err := grpcxds.NewGRPCServer(grpc.Creds(creds),
		grpcxds.BootstrapContentsForTesting(w.bootstrap))
	require.NoError(t, err)
	srv.RegisterService(&paymentsDesc, struct{}{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
}

// dial opens a grpc-go xDS client channel to target "<service>.<namespace>".
func (w *proxylessWorkload) dial(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(w.bootstrap)
	require.NoError(t, err)
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{
		FallbackCreds: insecure.NewCredentials(),
	})
	require.NoError(t, err)
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds),
		grpc.WithResolvers(resolver))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// call makes one unary call and returns its status code.
func call(conn *grpc.ClientConn, method string) codes.Code {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.WaitForReady(true))
	return status.Code(err)
}

// expectation is the code one caller must get for one method.
type expectation struct {
	who    string
	conn   *grpc.ClientConn
	method string
	want   codes.Code
}

// waitFor polls until every expectation holds at once, and logs how long after start
// that was. It fails the test after 15 s, with what each caller got last.
func waitFor(t *testing.T, what string, start time.Time, exps ...expectation) {
	t.Helper()
	var got []codes.Code
	for time.Since(start) < 15*time.Second {
		got = got[:0]
		ok := true
		for _, e := range exps {
			c := call(e.conn, e.method)
			got = append(got, c)
			ok = ok && c == e.want
		}
		if ok {
			t.Logf("%s: in effect %v after the change began", what,
				time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, e := range exps {
		t.Errorf("%s: %s %s: got %v, want %v", what, e.who, e.method, got[i], e.want)
	}
	t.FailNow()
}

func TestProxylessGRPCAuthorization(t *testing.T) {
	// Built first, so that the time a change takes does not include building it.
	_, err := meshctlBinary()
	require.NoError(t, err)
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig()})
	payNS, ordNS := kube.NewNamespace(t), kube.NewNamespace(t)

	payments := newProxylessWorkload(t, kube, m, payNS, "payments", nil)
	payments.serve(t)
	orders := newProxylessWorkload(t, kube, m, ordNS, "orders", nil)
	other := newProxylessWorkload(t, kube, m, ordNS, "other", nil)
	target := "payments." + payNS
	ordersConn, otherConn := orders.dial(t, target), other.dial(t, target)

	// No policy selects payments: everything is allowed.
	waitFor(t, "no policy", time.Now(),
		expectation{"orders", ordersConn, chargeMethod, codes.OK},
		expectation{"other", otherConn, chargeMethod, codes.OK})

	allow := `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payments-charge, namespace: ` + payNS + `}
spec:
  selector: {serviceAccount: payments}
  action: ALLOW
  rules:
  - from:
    - serviceAccount: ` + ordNS + `/orders
    to:
    - methods: [POST]
      paths: [` + chargeMethod + `]
`
	start := time.Now()
	m.applyPolicies(t, allow)
	waitFor(t, "allow orders to charge", start,
		expectation{"orders", ordersConn, chargeMethod, codes.OK},
		expectation{"other", otherConn, chargeMethod, codes.PermissionDenied},
		expectation{"orders", ordersConn, refundMethod, codes.PermissionDenied})

	deny := `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-charges, namespace: ` + payNS + `}
spec:
  action: DENY
  rules:
  - to:
    - paths: [` + chargeMethod + `]
`
	start = time.Now()
	m.applyPolicies(t, deny)
	waitFor(t, "deny overrides allow", start,
		expectation{"orders", ordersConn, chargeMethod, codes.PermissionDenied},
		expectation{"other", otherConn, chargeMethod, codes.PermissionDenied})

	start = time.Now()
	m.deletePolicy(t, payNS, "no-charges")
	m.deletePolicy(t, payNS, "payments-charge")
	waitFor(t, "policies deleted", start,
		expectation{"orders", ordersConn, chargeMethod, codes.OK},
		expectation{"other", otherConn, chargeMethod, codes.OK},
		expectation{"orders", ordersConn, refundMethod, codes.OK})

	require.Zero(t, m.metric(t, "meshca_xds_rejections_total"),
		"a client rejected configuration")
}

// applyPolicies applies YAML documents with `meshctl policy apply -f -`.
func (m *meshca) applyPolicies(t *testing.T, docs string) {
	t.Helper()
	out := m.meshctl(t, docs, "policy", "apply", "-f", "-")
	t.Logf("meshctl policy apply: %s", strings.TrimSpace(out))
}

func (m *meshca) deletePolicy(t *testing.T, ns, name string) {
	t.Helper()
	m.meshctl(t, "", "policy", "delete", name, "-n", ns)
}

var meshctlBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "meshctl-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "meshctl")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/meshca/meshca/cmd/meshctl").
		CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build meshctl: %v\n%s", err, out)
	}
	return bin, nil
})

// meshctlCmd returns the command running meshctl against this server.
func meshctlCmd(t *testing.T, m *meshca, args ...string) *exec.Cmd {
	t.Helper()
	bin, err := meshctlBinary()
	require.NoError(t, err)
	return exec.Command(bin, append([]string{"--admin-socket", m.addrs.Admin}, args...)...)
}

// meshctl runs the meshctl binary against this server with stdin and returns its
// standard output; a non-zero exit fails the test.
func (m *meshca) meshctl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := meshctlCmd(t, m, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "meshctl %v: %s", args, stderr.String())
	return string(out)
}

// metric returns the sum of a counter's series on meshca's /metrics.
func (m *meshca) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + m.addrs.HTTP.String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	var sum float64
	for _, match := range re.FindAllStringSubmatch(string(body), -1) {
		var v float64
		_, err := fmt.Sscan(match[2], &v)
		require.NoError(t, err)
		sum += v
	}
	return sum
}

func TestProxylessDefaultDeny(t *testing.T) {
	_, err := meshctlBinary()
	require.NoError(t, err)
	kube := kubetest.Start(t)
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), defaultDeny: true})
	payNS, ordNS := kube.NewNamespace(t), kube.NewNamespace(t)
	newProxylessWorkload(t, kube, m, payNS, "payments", nil).serve(t)
	orders := newProxylessWorkload(t, kube, m, ordNS, "orders", nil)
	conn := orders.dial(t, "payments."+payNS)

	waitFor(t, "default deny", time.Now(),
		expectation{"orders", conn, chargeMethod, codes.PermissionDenied})
	start := time.Now()
	m.applyPolicies(t, `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-only, namespace: `+payNS+`}
spec:
  action: ALLOW
  rules:
  - from: [{namespace: `+ordNS+`}]
`)
	waitFor(t, "allow the orders namespace", start,
		expectation{"orders", conn, chargeMethod, codes.OK},
		expectation{"orders", conn, refundMethod, codes.OK})
}

// fetchADS opens an ADS stream, asks for resources of one type and returns the first
// response.
func fetchADS(t *testing.T, conn *grpc.ClientConn, token, typeURL string,
	names ...string) *discovery.DiscoveryResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(withToken(context.Background(), token), 10*time.Second)
	defer cancel()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	stream, err := ads.StreamAggregatedResources(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&discovery.DiscoveryRequest{
		Node: &core.Node{Id: t.Name()}, TypeUrl: typeURL, ResourceNames: names,
	}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	return resp
}

func TestPoliciesAndListenersSurviveRestart(t *testing.T) {
	kube := kubetest.Start(t)
	dir := t.TempDir()
	m := startMeshca(t, serverOpts{rest: kube.RESTConfig(), dataDir: dir})
	ns, token := workload(t, kube, "payments")
	m.applyPolicies(t, `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payments-charge, namespace: `+ns+`}
spec:
  selector: {serviceAccount: payments}
  action: ALLOW
  rules:
  - from: [{serviceAccount: orders/orders}]
    to: [{methods: [POST], paths: [/charge]}]
`)
	name := xds.ServerListenerPrefix + "127.0.0.1:8443"
	before := fetchADS(t, m.conn, token, resource.ListenerType, name)
	require.Len(t, before.Resources, 1)
	history := func(m *meshca) []*meshcav1.Policy {
		h, err := m.policies.PolicyHistory(t.Context(), &meshcav1.PolicyHistoryRequest{
			Namespace: ns, Name: "payments-charge",
		})
		require.NoError(t, err)
		return h.Revisions
	}
	revs := history(m)
	require.NotEmpty(t, revs)

	m.stop()
	m2 := startMeshca(t, serverOpts{rest: kube.RESTConfig(), dataDir: dir})
	after := fetchADS(t, m2.conn, token, resource.ListenerType, name)
	require.Len(t, after.Resources, 1)
	require.True(t, proto.Equal(before.Resources[0], after.Resources[0]),
		"the first listener served after a restart differs from the one before")
	revs2 := history(m2)
	require.Len(t, revs2, len(revs))
	for i := range revs {
		require.True(t, proto.Equal(revs[i], revs2[i]), "revision %d changed", i)
	}
}

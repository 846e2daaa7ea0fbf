package publisher_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/kubetest"
	"github.com/meshca/meshca/internal/publisher"
	"github.com/meshca/meshca/internal/server"
	"github.com/meshca/meshca/internal/testutil"
)

// TestServerPublishesBundle checks the wiring: `meshca server` with a Kubernetes
// API and PublishBundle publishes its root.
func TestServerPublishesBundle(t *testing.T) {
	c := kubetest.Start(t)
	dir := t.TempDir()
	srv, err := server.New(server.Config{
		DataDir:       dir,
		TrustDomain:   spiffeid.RequireTrustDomainFromString("cluster.local"),
		GRPCAddr:      "127.0.0.1:0",
		HTTPAddr:      "127.0.0.1:0",
		Kube:          server.KubeConfig{RESTConfig: c.RESTConfig(), Audience: "meshca"},
		PublishBundle: true,
		Logger:        testLogger(t),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	ns := c.NewNamespace(t)
	var data string
	require.Eventually(t, func() bool {
		cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(t.Context(), publisher.ConfigMapName,
			metav1.GetOptions{})
		if err != nil {
			return false
		}
		data = cm.Data[publisher.Key]
		return true
	}, deadline, 20*time.Millisecond, "no ConfigMap in %s", ns)

	roots, err := testutil.ParsePEMCerts([]byte(data))
	require.NoError(t, err)
	require.Len(t, roots, 1)
	root := roots[0]
	require.True(t, root.IsCA)
	require.NoError(t, root.CheckSignatureFrom(root), "not a self-signed root")
	require.Equal(t, x509.KeyUsageCertSign, root.KeyUsage&x509.KeyUsageCertSign)
}

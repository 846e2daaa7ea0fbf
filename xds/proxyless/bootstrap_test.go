package proxyless_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testutil"
	"github.com/meshca/meshca/xds"
	"github.com/meshca/meshca/xds/proxyless"
)

func TestBootstrapIsAcceptedByGRPC(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	key := testutil.MustKey(t, ca.KeyECP256)
	root := testutil.CACert(t, "test root", key, nil, key, time.Hour)
	require.NoError(t, os.WriteFile(caFile, testutil.PEMCerts(root), 0o600))
	w := proxyless.Workload{
		ServerURI: "127.0.0.1:15012", ServerName: "localhost", CAFile: caFile,
		TokenFile: filepath.Join(dir, "token"), NodeID: "orders/orders-0",
		Metadata: map[string]string{xds.MetaInstanceIP: "10.0.0.7"},
		CertFile: filepath.Join(dir, "svid.pem"), KeyFile: filepath.Join(dir, "key.pem"),
		BundleFile: caFile, Refresh: 90 * time.Second,
	}
	boot, err := proxyless.Bootstrap(w)
	require.NoError(t, err)

	// grpc-go parses the bootstrap when it builds the resolver: every field must be
	// one it knows, the "meshca" credentials type must be registered.
	_, err = grpcxds.NewXDSResolverWithConfigForTesting(boot)
	require.NoError(t, err)

	var doc struct {
		Servers []struct {
			URI   string `json:"server_uri"`
			Creds []struct {
				Type   string                      `json:"type"`
				Config proxyless.CredentialsConfig `json:"config"`
			} `json:"channel_creds"`
		} `json:"xds_servers"`
		Providers map[string]struct {
			Plugin string         `json:"plugin_name"`
			Config map[string]any `json:"config"`
		} `json:"certificate_providers"`
		Template string `json:"server_listener_resource_name_template"`
	}
	require.NoError(t, json.Unmarshal(boot, &doc))
	require.Len(t, doc.Servers, 1)
	require.Equal(t, w.ServerURI, doc.Servers[0].URI)
	require.Equal(t, proxyless.CredentialsType, doc.Servers[0].Creds[0].Type)
	require.Equal(t, w.TokenFile, doc.Servers[0].Creds[0].Config.TokenFile)
	p := doc.Providers[xds.CertProviderInstance]
	require.Equal(t, "file_watcher", p.Plugin)
	require.Equal(t, "90s", p.Config["refresh_interval"])
	require.Equal(t, w.CertFile, p.Config["certificate_file"])
	require.Equal(t, xds.ServerListenerPrefix+"%s", doc.Template)

	_, err = proxyless.Bootstrap(proxyless.Workload{ServerURI: "x"})
	require.Error(t, err)
}

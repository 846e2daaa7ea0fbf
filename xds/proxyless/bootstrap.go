package proxyless

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/meshca/meshca/xds"
)

// Workload describes a proxyless gRPC workload for its xDS bootstrap.
type Workload struct {
	// ServerURI is meshca's gRPC address, host:port.
	ServerURI string
	// ServerName is the name meshca's certificate must carry (default: the host of
	// ServerURI).
	ServerName string
	// CAFile holds the roots meshca's certificate chains to (the bundle ConfigMap).
	CAFile string
	// TokenFile is the projected service-account token (audience meshca).
	TokenFile string
	// NodeID names the workload in meshca's logs, e.g. the pod name.
	NodeID string
	// Metadata is sent as node metadata (see xds.MetaInstanceIP).
	Metadata map[string]string
	// CertFile, KeyFile and BundleFile are where the workload's SVID, its key and
	// the trust bundle are kept up to date; grpc-go's file_watcher reads them.
	CertFile, KeyFile, BundleFile string
	// Refresh is how often grpc-go re-reads the files (default DefaultRefresh).
	// KeepFiles acknowledges a new bundle only after that long, so that meshca
	// activates a new root only once grpc-go trusts it.
	Refresh time.Duration
}

// Bootstrap returns the grpc-go xDS bootstrap JSON of a workload: meshca as the only
// xDS server, reached with the "meshca" credentials, and the certificate provider
// instance that meshca's listeners and clusters name.
func Bootstrap(w Workload) ([]byte, error) {
	if w.ServerURI == "" || w.CAFile == "" || w.TokenFile == "" || w.NodeID == "" {
		return nil, errors.New("server URI, CA file, token file and node ID are required")
	}
	if w.CertFile == "" || w.KeyFile == "" || w.BundleFile == "" {
		return nil, errors.New("certificate, key and bundle files are required")
	}
	creds, err := credentialsOf(w)
	if err != nil {
		return nil, err
	}
	refresh := w.refresh()
	type obj = map[string]any
	node := obj{"id": w.NodeID}
	if len(w.Metadata) > 0 {
		node["metadata"] = w.Metadata
	}
	doc := obj{
		"xds_servers": []obj{{
			"server_uri":      w.ServerURI,
			"channel_creds":   []obj{{"type": CredentialsType, "config": creds}},
			"server_features": []string{"xds_v3"},
		}},
		"node": node,
		"certificate_providers": obj{
			xds.CertProviderInstance: obj{
				"plugin_name": "file_watcher",
				"config": obj{
					"certificate_file":    w.CertFile,
					"private_key_file":    w.KeyFile,
					"ca_certificate_file": w.BundleFile,
					"refresh_interval":    durationJSON(refresh),
				},
			},
		},
		"server_listener_resource_name_template": xds.ServerListenerPrefix + "%s",
	}
	return json.MarshalIndent(doc, "", "  ")
}

// durationJSON formats a duration as google.protobuf.Duration does in JSON: seconds
// with an "s" suffix.
func durationJSON(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// credentialsOf is the "meshca" credentials config of a workload; the server name
// defaults to the host of the server URI.
func credentialsOf(w Workload) (CredentialsConfig, error) {
	name := w.ServerName
	if name == "" {
		host, _, err := net.SplitHostPort(w.ServerURI)
		if err != nil {
			return CredentialsConfig{}, fmt.Errorf("server URI %q: %w", w.ServerURI, err)
		}
		name = host
	}
	return CredentialsConfig{CAFile: w.CAFile, TokenFile: w.TokenFile, ServerName: name}, nil
}

// DefaultRefresh is how often grpc-go re-reads the certificate files by default. It
// bounds how long a new bundle waits before it is acknowledged (KeepFiles), and so how
// soon a prepared root can be activated.
const DefaultRefresh = time.Minute

func (w Workload) refresh() time.Duration {
	if w.Refresh <= 0 {
		return DefaultRefresh
	}
	return w.Refresh
}

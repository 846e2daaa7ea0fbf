// Package proxyless connects grpc-go's xDS client to meshca: it registers the
// "meshca" channel credentials type for grpc-go's xDS bootstrap (TLS to meshca and
// the workload's projected service-account token on every stream) and writes the
// bootstrap a proxyless workload needs.
package proxyless

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/xds/bootstrap"
)

// CredentialsType is the channel_creds type this package registers.
const CredentialsType = "meshca"

// CredentialsConfig is the config of a "meshca" channel_creds entry.
type CredentialsConfig struct {
	// CAFile holds the PEM roots that meshca's serving certificate chains to; it is
	// read again when it changes, so a rotated trust bundle is picked up.
	CAFile string `json:"ca_certificate_file"`
	// TokenFile holds the projected service-account token; it is read for every
	// stream, so the kubelet's refreshed token is always the one sent.
	TokenFile string `json:"token_file"`
	// ServerName is the DNS name or IP address meshca's certificate must carry.
	// Required: with an IP address as server URI, Go's TLS client would otherwise
	// check no name at all.
	ServerName string `json:"server_name"`
}

func init() {
	bootstrap.RegisterChannelCredentials(builder{})
}

var (
	_ bootstrap.ChannelCredentials  = builder{}
	_ credentials.Bundle            = (*bundle)(nil)
	_ credentials.PerRPCCredentials = tokenFile("")
)

type builder struct{}

func (builder) Name() string { return CredentialsType }

func (builder) Build(raw json.RawMessage) (credentials.Bundle, func(), error) {
	var cfg CredentialsConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, nil, fmt.Errorf("meshca credentials: %w", err)
	}
	b, err := newBundle(cfg)
	if err != nil {
		return nil, nil, err
	}
	return b, func() {}, nil
}

// newBundle checks the config and reads the roots once, so that a missing file is
// reported when the channel is built.
func newBundle(cfg CredentialsConfig) (*bundle, error) {
	if cfg.CAFile == "" || cfg.TokenFile == "" || cfg.ServerName == "" {
		return nil, errors.New("meshca credentials: ca_certificate_file, " +
			"token_file and server_name are required")
	}
	roots := &rootFile{path: cfg.CAFile}
	if _, err := roots.pool(); err != nil {
		return nil, err
	}
	return &bundle{cfg: cfg, roots: roots}, nil
}

// bundle is TLS that verifies meshca against the CA file, plus the token.
type bundle struct {
	cfg   CredentialsConfig
	roots *rootFile
}

func (b *bundle) TransportCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: b.cfg.ServerName,
		// Verification happens in VerifyConnection, against roots read from the
		// file at each handshake rather than once.
		InsecureSkipVerify: true,
		VerifyConnection:   b.verify,
	})
}

func (b *bundle) verify(cs tls.ConnectionState) error {
	pool, err := b.roots.pool()
	if err != nil {
		return err
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("meshca presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	// Workload SVIDs chain to the same roots and may be used for serving: one must
	// never pass for meshca, which would then collect every workload's token.
	if len(leaf.URIs) > 0 {
		return fmt.Errorf("the server presented a workload certificate (%s), not meshca's",
			leaf.URIs[0])
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, DNSName: b.cfg.ServerName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

func (b *bundle) PerRPCCredentials() credentials.PerRPCCredentials {
	return tokenFile(b.cfg.TokenFile)
}

func (b *bundle) NewWithMode(string) (credentials.Bundle, error) {
	return nil, errors.New("meshca credentials have a single mode")
}

// tokenFile sends the token read from a file as a bearer token.
type tokenFile string

func (f tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("failed to read the service-account token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("service-account token file %s is empty", string(f))
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

func (tokenFile) RequireTransportSecurity() bool { return true }

// rootFile is a PEM file of roots, parsed again when its modification time changes.
type rootFile struct {
	path string

	mu      sync.Mutex
	modTime time.Time
	cached  *x509.CertPool
}

func (r *rootFile) pool() (*x509.CertPool, error) {
	fi, err := os.Stat(r.path)
	if err != nil {
		return nil, fmt.Errorf("failed to read meshca's roots: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cached != nil && fi.ModTime().Equal(r.modTime) {
		return r.cached, nil
	}
	data, err := os.ReadFile(r.path)
	if err != nil {
		return nil, fmt.Errorf("failed to read meshca's roots: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("no PEM certificate in %s", r.path)
	}
	r.cached, r.modTime = pool, fi.ModTime()
	return pool, nil
}

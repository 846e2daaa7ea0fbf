// Package server wires meshca's components into the `meshca server` process: the
// store, the CA, the main TLS gRPC port, the admin socket and the HTTP port for
// health and metrics. Every long-lived part has Run(ctx) error and all of them run in
// one errgroup: the first failure stops the rest.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/buildinfo"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/store"
	"github.com/meshca/meshca/xds"
)

// StoreFileName is the bbolt file inside the data directory.
const StoreFileName = "meshca.db"

// Config is the validated configuration of a meshca server.
type Config struct {
	// DataDir holds the store file; created 0700 if missing.
	DataDir string
	// TrustDomain of every identity meshca issues.
	TrustDomain spiffeid.TrustDomain
	// AdminSocket is the Unix socket of the admin API, mode 0600.
	AdminSocket string
	// GRPCAddr is the main TLS gRPC listen address.
	GRPCAddr string
	// HTTPAddr serves /healthz, /readyz and /metrics in plain HTTP.
	HTTPAddr string
	// ServerDNSNames are the names in meshca's own serving certificate.
	ServerDNSNames []string
	// CA tunes issuance; TrustDomain, Store, Logger and Clock are filled in by Run.
	CA ca.Config
	// Kube says how to reach the Kubernetes API for token authentication.
	Kube KubeConfig
	// DefaultDeny denies every request to a workload that no ALLOW policy selects;
	// without it such a workload accepts every caller that no DENY policy names.
	DefaultDeny bool
	// PublishBundle keeps the ConfigMap meshca-root-cert in every namespace when a
	// Kubernetes API is configured (internal/publisher).
	PublishBundle bool
	// AuthorityExpiryWarning logs at Warn every authority still trusted that expires
	// within it, at start and then daily; zero turns the warnings off.
	AuthorityExpiryWarning time.Duration
	// AutoRotate prepares a new root at half of the active authority's lifetime and
	// activates it when a sixth remains, once every stream has its bundle.
	AutoRotate bool
	// AuditRetention is how long the audit records of expired certificates are kept;
	// they are pruned at start and hourly. Zero keeps them forever.
	AuditRetention time.Duration
	// Logger is the process logger.
	Logger *slog.Logger
	// Ready, when set, is called once every listener is up and the CA is loaded.
	Ready func(Addrs)
}

// Addrs are the addresses actually bound, useful when the config asked for port 0.
type Addrs struct {
	GRPC, HTTP net.Addr
	Admin      string
}

// Server is a configured meshca server.
type Server struct {
	cfg Config
	log *slog.Logger
}

// New checks the configuration and returns a server ready to Run.
func New(cfg Config) (*Server, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("trust domain is required")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("data directory is required")
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = filepath.Join(cfg.DataDir, "admin.sock")
	}
	if len(cfg.ServerDNSNames) == 0 {
		cfg.ServerDNSNames = []string{"localhost"}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Logger}, nil
}

// runner is a long-lived component.
type runner interface {
	Run(ctx context.Context) error
}

// Run starts every component and blocks until ctx ends or one of them fails. A
// canceled ctx is a clean stop and returns nil.
func (s *Server) Run(ctx context.Context) error {
	start := time.Now()
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("failed to create data directory: %w", err)
	}
	st, err := store.OpenBolt(filepath.Join(s.cfg.DataDir, StoreFileName), store.BoltOptions{})
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			s.log.Error("Failed to close store", "error", err)
		}
	}()

	runners, addrs, err := s.build(ctx, st)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, r := range runners {
		g.Go(func() error { return r.Run(gctx) })
	}
	s.log.Info("meshca is ready", "version", buildinfo.String(),
		"trust_domain", s.cfg.TrustDomain.Name(),
		"grpc_addr", addrs.GRPC.String(), "http_addr", addrs.HTTP.String(),
		"admin_socket", addrs.Admin, "data_dir", s.cfg.DataDir,
		"startup", time.Since(start).Round(time.Millisecond))
	if s.cfg.Ready != nil {
		s.cfg.Ready(addrs)
	}

	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	s.log.Info("meshca stopped")
	return err
}

// build loads the CA and binds every listener. On error nothing is left listening.
func (s *Server) build(ctx context.Context, st *store.Bolt) ([]runner, Addrs, error) {
	caCfg := s.cfg.CA
	caCfg.TrustDomain, caCfg.Store, caCfg.Logger = s.cfg.TrustDomain, st, s.log
	authority, err := ca.New(ctx, caCfg)
	if err != nil {
		return nil, Addrs{}, fmt.Errorf("failed to start the certificate authority: %w", err)
	}
	reg := prometheus.NewRegistry()
	now := caCfg.Clock
	if now == nil {
		now = time.Now
	}
	metrics := newMetrics(reg, authority, now)
	serving := newServingCert(authority, s.cfg.ServerDNSNames, s.log)
	if err := serving.renew(ctx); err != nil {
		return nil, Addrs{}, err
	}
	auth, access, err := s.tokenAuth(metrics)
	if err != nil {
		return nil, Addrs{}, err
	}
	publish, err := s.bundlePublisher(authority)
	if err != nil {
		return nil, Addrs{}, err
	}

	discovery := xds.New(xds.Config{
		Auth: auth, CertTTL: s.cfg.CA.DefaultTTL, DefaultDeny: s.cfg.DefaultDeny,
		Logger: s.log, Metrics: metrics,
	})
	discovery.SetIssuer(authority)
	policies := newPolicySync(st, discovery, s.cfg.TrustDomain, s.log)
	if err := policies.push(ctx); err != nil {
		return nil, Addrs{}, fmt.Errorf("failed to load authorization policies: %w", err)
	}
	mainGRPC, err := newMainGRPC(s.cfg.GRPCAddr, serving, metrics, s.log,
		api.NewCertificates(api.CertificateConfig{CA: authority, Auth: auth, Logger: s.log}),
		discovery)
	if err != nil {
		return nil, Addrs{}, err
	}
	policyAPI := api.NewPolicies(api.PolicyConfig{
		Store: st, TrustDomain: s.cfg.TrustDomain, Changed: policies.changed, Logger: s.log,
	})
	admin, err := newAdminGRPC(s.cfg.AdminSocket, authority, st, discovery, policyAPI, metrics,
		s.log)
	if err != nil {
		mainGRPC.close()
		return nil, Addrs{}, err
	}
	var checks []readyCheck
	if access != nil {
		checks = append(checks, readyCheck{name: "token authentication", check: access.ready})
	} else {
		// Health, the admin API and the bundle still work; workloads cannot be served.
		checks = append(checks, readyCheck{name: "token authentication", check: func() error {
			return errors.New("no Kubernetes API configured (--kubeconfig, in-cluster " +
				"credentials or $KUBECONFIG)")
		}})
	}
	httpSrv, err := newHTTP(s.cfg.HTTPAddr, reg, checks)
	if err != nil {
		mainGRPC.close()
		admin.close()
		return nil, Addrs{}, err
	}

	runners := []runner{serving, mainGRPC, admin, httpSrv, policies}
	if s.cfg.AuthorityExpiryWarning > 0 || s.cfg.AutoRotate {
		runners = append(runners, newAuthorityWatch(authority, discovery,
			s.cfg.AuthorityExpiryWarning, s.cfg.AutoRotate, now, s.log))
	}
	if s.cfg.AuditRetention > 0 {
		runners = append(runners, &auditPruner{store: st, retention: s.cfg.AuditRetention,
			now: now, log: s.log})
	}
	if access != nil {
		runners = append(runners, access)
	}
	if publish != nil {
		runners = append(runners, publish)
	}
	httpSrv.setReady(true)
	addrs := Addrs{GRPC: mainGRPC.addr(), HTTP: httpSrv.addr(), Admin: s.cfg.AdminSocket}
	return runners, addrs, nil
}

// tokenAuth builds the token authenticator, or returns nil ones when no Kubernetes
// API is configured: meshca still serves its admin API and bundle then, and the
// certificate API answers Unavailable.
func (s *Server) tokenAuth(m *metrics) (api.Authenticator, *accessCheck, error) {
	restCfg, source, err := s.cfg.Kube.restConfig()
	if err != nil {
		return nil, nil, err
	}
	if restCfg == nil {
		s.log.Warn("No Kubernetes API configured; token authentication is disabled")
		return nil, nil, nil
	}
	client, err := kube.NewForConfig(restCfg)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to create Kubernetes client: %w", err)
	}
	s.log.Info("Token authentication with the Kubernetes API", "source", source,
		"audience", s.cfg.Kube.Audience)
	reviewer := ca.NewTokenReviewer(ca.TokenReviewConfig{
		Reviews: client.TokenReviews(), TrustDomain: s.cfg.TrustDomain,
		Audience: s.cfg.Kube.Audience, CacheTTL: s.cfg.Kube.CacheTTL, Logger: s.log, Metrics: m,
	})
	return reviewer, newAccessCheck(client.SelfSubjectAccessReviews(), s.log), nil
}

package xds

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/ca"
)

const secretTypeURL = resource.SecretType

// Issuer is what the SDS server needs of the certificate authority.
type Issuer interface {
	IssueX509SVID(ctx context.Context, p ca.X509SVIDParams) (*ca.X509SVID, error)
	WatchBundle() (*x509bundle.Bundle, <-chan struct{})
}

// Metrics counts what the discovery server does. Implementations must be safe for
// concurrent use.
type Metrics interface {
	// StreamOpened and StreamClosed track open streams.
	StreamOpened()
	StreamClosed()
	// Pushed counts one response sent.
	Pushed(typeURL string)
	// Rejected counts one NACK received.
	Rejected(typeURL string)
}

// Config configures the discovery server.
type Config struct {
	// Auth checks the bearer token of every stream. Nil refuses every stream with
	// Unavailable (no Kubernetes API configured).
	Auth api.Authenticator
	// CertTTL is the lifetime of direct-mode workload certificates; zero means the
	// CA's default.
	CertTTL time.Duration
	// DefaultDeny denies every request to a workload that no ALLOW policy selects.
	DefaultDeny bool
	Logger      *slog.Logger
	Metrics     Metrics
}

// Server implements Envoy's SecretDiscoveryService and the Secret type of the
// AggregatedDiscoveryService. Streams wait, without failing, until SetIssuer has
// been called: nothing is ever answered from a half-loaded CA.
type Server struct {
	secretservice.UnimplementedSecretDiscoveryServiceServer
	discovery.UnimplementedAggregatedDiscoveryServiceServer

	cfg     Config
	log     *slog.Logger
	metrics Metrics
	// bootID starts every version string, so versions never repeat across restarts.
	bootID  string
	version atomic.Uint64

	ready    chan struct{} // closed by SetIssuer
	setOnce  sync.Once
	issuer   Issuer       // written once before ready is closed, then read-only
	workload *certManager // likewise

	// configMu guards config.
	configMu sync.RWMutex
	config   *configState
	// streamID numbers streams, to own the endpoints they register.
	streamID atomic.Uint64
	// bundleMu guards bundle, the encoded bundle shared by every stream.
	bundleMu sync.Mutex
	bundle   *bundleView
	// acks tracks which bundle each subscribed stream acknowledged.
	acks bundleAcks
}

var (
	_ secretservice.SecretDiscoveryServiceServer = (*Server)(nil)
	_ discovery.AggregatedDiscoveryServiceServer = (*Server)(nil)
)

// New returns a discovery server that is not ready until SetIssuer is called.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	boot := make([]byte, 8)
	_, _ = rand.Read(boot)
	return &Server{
		cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics,
		bootID: hex.EncodeToString(boot), ready: make(chan struct{}),
		config: newConfigState(),
	}
}

// SetIssuer makes the server ready: streams waiting for it are answered at once.
// Only the first call has an effect.
func (s *Server) SetIssuer(issuer Issuer) {
	s.setOnce.Do(func() {
		s.issuer = issuer
		s.workload = newCertManager(issuer, s.cfg.CertTTL, s.log)
		close(s.ready)
	})
}

// nextVersion returns a version string unique to this process and this server.
func (s *Server) nextVersion() string {
	return s.bootID + "-" + strconv.FormatUint(s.version.Add(1), 10)
}

// StreamSecrets implements SDS over a state-of-the-world stream.
func (s *Server) StreamSecrets(
	stream secretservice.SecretDiscoveryService_StreamSecretsServer) error {
	return s.serveSotW(stream, "sds", secretTypeURL)
}

// DeltaSecrets implements SDS over an incremental stream.
func (s *Server) DeltaSecrets(
	stream secretservice.SecretDiscoveryService_DeltaSecretsServer) error {
	return s.serveDelta(stream, "sds delta")
}

// adsTypes are the resource types served over state-of-the-world ADS.
var adsTypes = []string{
	listenerTypeURL, routeTypeURL, clusterTypeURL, endpointTypeURL, secretTypeURL,
}

// StreamAggregatedResources implements ADS: listeners, routes, clusters, endpoints and
// secrets.
func (s *Server) StreamAggregatedResources(
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return s.serveSotW(stream, "ads", adsTypes...)
}

// DeltaAggregatedResources implements incremental ADS for the Secret type.
//
// TODO: incremental ADS serves secrets only; listeners, routes, clusters and
// endpoints need the state-of-the-world stream, which Envoy and grpc-go use by default.
func (s *Server) DeltaAggregatedResources(
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return s.serveDelta(stream, "ads delta")
}

// FetchSecrets answers one request with the secrets it names.
func (s *Server) FetchSecrets(ctx context.Context, req *discovery.DiscoveryRequest) (
	*discovery.DiscoveryResponse, error) {
	ident, err := api.Authenticate(ctx, s.cfg.Auth)
	if err != nil {
		return nil, api.ToStatus(ctx, s.log, "sds fetch", err)
	}
	if err := checkType(cmp.Or(req.GetTypeUrl(), secretTypeURL), secretOnly); err != nil {
		return nil, api.ToStatus(ctx, s.log, "sds fetch", err)
	}
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil, api.ToStatus(ctx, s.log, "sds fetch", ctx.Err())
	}
	sess := s.newSession(ident)
	defer sess.close()
	res, err := sess.resolve(ctx, req.GetResourceNames())
	if err != nil {
		return nil, api.ToStatus(ctx, s.log, "sds fetch", err)
	}
	s.metrics.Pushed(secretTypeURL)
	return &discovery.DiscoveryResponse{
		VersionInfo: s.nextVersion(), TypeUrl: secretTypeURL, Resources: anys(res),
	}, nil
}

// secretOnly is the resource type of SDS streams.
var secretOnly = []string{secretTypeURL}

// checkType refuses a resource type the stream does not serve.
func checkType(typeURL string, types []string) error {
	if !slices.Contains(types, typeURL) {
		return fmt.Errorf("resource type %q is not served on this stream (only %s): %w",
			typeURL, strings.Join(types, ", "), ca.ErrInvalidRequest)
	}
	return nil
}

type nopMetrics struct{}

func (nopMetrics) StreamOpened()   {}
func (nopMetrics) StreamClosed()   {}
func (nopMetrics) Pushed(string)   {}
func (nopMetrics) Rejected(string) {}

package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/meshca/meshca/api"
	"github.com/meshca/meshca/api/meshcav1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
	"github.com/meshca/meshca/xds"
)

// grpcServer is a gRPC server bound to its listener, with Run(ctx) error.
type grpcServer struct {
	name   string
	srv    *grpc.Server
	lis    net.Listener
	health *health.Server
	log    *slog.Logger
}

func (g *grpcServer) addr() net.Addr { return g.lis.Addr() }

func (g *grpcServer) close() { _ = g.lis.Close() }

// Run serves until ctx ends, then stops gracefully.
func (g *grpcServer) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- g.srv.Serve(g.lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s server stopped: %w", g.name, err)
	case <-ctx.Done():
		g.health.Shutdown()
		// Discovery streams never end by themselves: give unary calls a moment to
		// finish, then cut the streams so clients reconnect elsewhere.
		stopped := make(chan struct{})
		go func() {
			g.srv.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(gracePeriod):
			g.srv.Stop()
			<-stopped
		}
		return ctx.Err()
	}
}

// gracePeriod is how long a stopping server waits for calls in flight.
const gracePeriod = 2 * time.Second

// newMainGRPC listens on the main TLS port with the gRPC health service.
func newMainGRPC(addr string, serving *servingCert, m *metrics, log *slog.Logger,
	certs meshcav1.CertificateServiceServer, discovery *xds.Server) (*grpcServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on gRPC address %q: %w", addr, err)
	}
	creds := credentials.NewTLS(&tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: serving.getCertificate,
		// Workloads authenticate with tokens now; mTLS clients come with the agent.
		ClientAuth: tls.NoClientCert,
	})
	srv := grpc.NewServer(append(xds.ServerOptions(), grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(m.unaryInterceptor))...)
	meshcav1.RegisterCertificateServiceServer(srv, certs)
	secretservice.RegisterSecretDiscoveryServiceServer(srv, discovery)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, discovery)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	return &grpcServer{name: "main gRPC", srv: srv, lis: lis, health: hs, log: log}, nil
}

// discoveryStreams is what the admin API needs of the discovery server: which streams
// acknowledged a bundle, and re-issuing their certificates after an activation.
type discoveryStreams interface {
	api.BundleAcks
	api.Reissuer
}

// newAdminGRPC listens on the admin Unix socket, mode 0600, with the admin and policy
// APIs.
func newAdminGRPC(path string, authority *ca.CA, st *store.Bolt, streams discoveryStreams,
	policies meshcav1.PolicyServiceServer, m *metrics, log *slog.Logger) (*grpcServer, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// The umask makes the socket 0600 from its creation. It is process-wide, so it
	// is restored at once; nothing else creates files while the server starts.
	old := syscall.Umask(0o177)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on admin socket %q: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("failed to restrict admin socket %q to 0600: %w", path, err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(m.unaryInterceptor))
	meshcav1.RegisterAdminServiceServer(srv, api.NewAdmin(api.AdminConfig{
		CA: authority, Audit: st, Acks: streams, Reissuer: streams, Logger: log,
	}))
	meshcav1.RegisterPolicyServiceServer(srv, policies)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	return &grpcServer{name: "admin gRPC", srv: srv, lis: lis, health: hs, log: log}, nil
}

// removeStaleSocket deletes a socket left by a previous run, and refuses to delete
// anything that is not a socket.
func removeStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to check admin socket %q: %w", path, err)
	}
	if info.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("admin socket path %q exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("failed to remove stale admin socket %q: %w", path, err)
	}
	return nil
}

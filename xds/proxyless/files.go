package proxyless

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/xds"
)

// KeepFiles keeps the workload's certificate chain, key and trust bundle files
// (w.CertFile, w.KeyFile, w.BundleFile) up to date with what meshca serves over SDS:
// the first response, every renewal and every new bundle. grpc-go's file_watcher
// provider reads them at its refresh interval; new connections use them from then on.
// Each file is replaced atomically (written beside it, then renamed); the key file is
// 0600. ready, when not nil, is called once after the first files are written. It
// reconnects, with the token read again, until ctx ends.
func KeepFiles(ctx context.Context, w Workload, log *slog.Logger, ready func()) error {
	if w.CertFile == "" || w.KeyFile == "" || w.BundleFile == "" {
		return errors.New("certificate, key and bundle files are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := dialMeshca(w)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The bundle grpc-go reads now, so that only a change delays an ACK.
	bundle, _ := os.ReadFile(w.BundleFile)
	backoff := 100 * time.Millisecond
	for {
		err := keepOnce(ctx, conn, w, &bundle, func() {
			backoff = 100 * time.Millisecond
			if ready != nil {
				ready()
				ready = nil
			}
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("SDS stream to meshca ended; reconnecting", "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// dialMeshca opens a channel to meshca with the "meshca" credentials of w.
func dialMeshca(w Workload) (*grpc.ClientConn, error) {
	cfg, err := credentialsOf(w)
	if err != nil {
		return nil, err
	}
	b, err := newBundle(cfg)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(w.ServerURI, grpc.WithCredentialsBundle(b))
}

// keepOnce runs one SDS stream until it fails, writing the files on every response
// that carries both secrets.
// A response with a new bundle is acknowledged only after grpc-go's file_watcher has
// had time to read it (its refresh interval and a second): meshca activates a new root
// once every stream acknowledged it, and this workload must trust it by then.
func keepOnce(ctx context.Context, conn *grpc.ClientConn, w Workload, bundle *[]byte,
	wrote func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := secretservice.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return err
	}
	names := []string{xds.SecretDefault, xds.SecretRootCA}
	req := &discovery.DiscoveryRequest{
		Node: &core.Node{Id: w.NodeID}, TypeUrl: resource.SecretType, ResourceNames: names,
	}
	if err := stream.Send(req); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		ack := &discovery.DiscoveryRequest{TypeUrl: resource.SecretType,
			ResourceNames: names, ResponseNonce: resp.GetNonce()}
		written, err := writeSecrets(resp, w)
		if err != nil {
			// A response meshca should never send: say so, and keep the old files.
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument),
				Message: err.Error()}
		} else {
			ack.VersionInfo = resp.GetVersionInfo()
			wrote()
			if !bytes.Equal(written, *bundle) {
				*bundle = written
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(w.refresh() + time.Second):
				}
			}
		}
		if err := stream.Send(ack); err != nil {
			return err
		}
	}
}

// writeSecrets writes the files from a response holding "default" and "ROOTCA", and
// returns the bundle written.
func writeSecrets(resp *discovery.DiscoveryResponse, w Workload) ([]byte, error) {
	var chain, key, bundle []byte
	for _, a := range resp.GetResources() {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			return nil, fmt.Errorf("undecodable secret: %w", err)
		}
		switch s.GetName() {
		case xds.SecretDefault:
			chain = s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
			key = s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()
		case xds.SecretRootCA:
			bundle = s.GetValidationContext().GetTrustedCa().GetInlineBytes()
		}
	}
	if len(chain) == 0 || len(key) == 0 || len(bundle) == 0 {
		return nil, errors.New("response lacks the certificate, its key or the bundle")
	}
	// The bundle first: a peer's new certificate must never arrive before its root.
	// TODO: the key and the certificate are renamed one after the other, so a reader
	// can see a new key with the old certificate for a moment; grpc-go's file_watcher
	// skips such a pair and keeps the old one until its next refresh.
	if err := writeAtomic(w.BundleFile, bundle, 0o644); err != nil {
		return nil, err
	}
	if err := writeAtomic(w.KeyFile, key, 0o600); err != nil {
		return nil, err
	}
	return bundle, writeAtomic(w.CertFile, chain, 0o644)
}

// writeAtomic replaces path with data: readers see the old file or the new one.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Command payments is a proxyless gRPC server that gets everything from meshca: its
// certificate and trust bundle over SDS (kept in files that grpc-go's file_watcher
// reads), and its listener, with the RBAC compiled from the policies that select it,
// over xDS. It serves payments.Payments/Charge and payments.Payments/Refund.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshca/meshca/xds/proxyless"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "payments:", err)
		os.Exit(1)
	}
}

func run() error {
	var w proxyless.Workload
	var dir, listen string
	flag.StringVar(&w.ServerURI, "meshca", "127.0.0.1:15012", "meshca's gRPC address")
	flag.StringVar(&w.TokenFile, "token-file", "", "projected service-account token")
	flag.StringVar(&w.NodeID, "node-id", "payments", "name in meshca's logs")
	flag.DurationVar(&w.Refresh, "refresh", proxyless.DefaultRefresh,
		"how often grpc-go re-reads the certificate files")
	flag.StringVar(&dir, "dir", "", "directory for the SVID, its key and the bundle; "+
		"bundle.pem must hold meshca's roots at start")
	flag.StringVar(&listen, "listen", "127.0.0.1:0", "address to serve on")
	flag.Parse()
	if w.TokenFile == "" || dir == "" {
		return fmt.Errorf("--token-file and --dir are required")
	}
	w.CertFile = filepath.Join(dir, "svid.pem")
	w.KeyFile = filepath.Join(dir, "svid-key.pem")
	w.BundleFile = filepath.Join(dir, "bundle.pem")
	w.CAFile = w.BundleFile // the keeper keeps it current through rotations
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ready := make(chan struct{})
	go func() {
		err := proxyless.KeepFiles(ctx, w, log, func() { close(ready) })
		if ctx.Err() == nil {
			log.Error("Keeping the SVID files failed", "error", err)
			stop()
		}
	}()
	select {
	case <-ready:
	case <-ctx.Done():
		return ctx.Err()
	}

	boot, err := proxyless.Bootstrap(w)
	if err != nil {
		return err
	}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{
		FallbackCreds: insecure.NewCredentials(),
	})
	if err != nil {
		return err
	}
	// The bootstrap is made at run time, after the SVID files exist, so it is handed
	// over directly rather than through GRPC_XDS_BOOTSTRAP.
	srv, err := grpcxds.NewGRPCServer(grpc.Creds(creds),
		grpcxds.BootstrapContentsForTesting(boot))
	if err != nil {
		return err
	}
	srv.RegisterService(&paymentsService, struct{}{})
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Printf("payments: serving on %s\n", lis.Addr())
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	return srv.Serve(lis)
}

// paymentsService answers every call with an empty message: the demo is about who
// may call, not what the call does.
var paymentsService = grpc.ServiceDesc{
	ServiceName: "payments.Payments",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Charge", Handler: empty},
		{MethodName: "Refund", Handler: empty},
	},
}

func empty(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (
	any, error) {
	var in emptypb.Empty
	if err := dec(&in); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Command orders is a proxyless gRPC client that gets everything from meshca: its
// certificate and trust bundle over SDS (kept in files that grpc-go's file_watcher
// reads), and the listener, route, cluster and endpoints of its target over xDS. It
// calls a method of payments.Payments once, or again and again until interrupted,
// and prints what each call returned.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshca/meshca/xds/proxyless"
)

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run() (int, error) {
	var w proxyless.Workload
	var dir, target, method, name string
	var loop bool
	var interval time.Duration
	flag.StringVar(&w.ServerURI, "meshca", "127.0.0.1:15012", "meshca's gRPC address")
	flag.StringVar(&w.TokenFile, "token-file", "", "projected service-account token")
	flag.StringVar(&w.NodeID, "node-id", "orders", "name in meshca's logs")
	flag.DurationVar(&w.Refresh, "refresh", proxyless.DefaultRefresh,
		"how often grpc-go re-reads the certificate files")
	flag.StringVar(&dir, "dir", "", "directory for the SVID, its key and the bundle; "+
		"bundle.pem must hold meshca's roots at start")
	flag.StringVar(&target, "target", "payments.payments",
		"service to call: <service account>.<namespace>")
	flag.StringVar(&method, "method", "Charge", "method of payments.Payments to call")
	flag.StringVar(&name, "name", "orders", "who is calling, for the output")
	flag.BoolVar(&loop, "loop", false, "call until interrupted (every 20th call on a new "+
		"channel), then print a summary")
	flag.DurationVar(&interval, "interval", 100*time.Millisecond, "time between calls")
	flag.Parse()
	if w.TokenFile == "" || dir == "" {
		return 0, fmt.Errorf("--token-file and --dir are required")
	}
	w.CertFile = filepath.Join(dir, "svid.pem")
	w.KeyFile = filepath.Join(dir, "svid-key.pem")
	w.BundleFile = filepath.Join(dir, "bundle.pem")
	w.CAFile = w.BundleFile
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
		return 0, ctx.Err()
	}

	boot, err := proxyless.Bootstrap(w)
	if err != nil {
		return 0, err
	}
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		return 0, err
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{
		FallbackCreds: insecure.NewCredentials(),
	})
	if err != nil {
		return 0, err
	}
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds),
		grpc.WithResolvers(resolver))
	if err != nil {
		return 0, err
	}
	defer conn.Close()

	dial := func() (*grpc.ClientConn, error) {
		return grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds),
			grpc.WithResolvers(resolver))
	}
	full := "/payments.Payments/" + method
	invoke := func(conn *grpc.ClientConn) codes.Code {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := conn.Invoke(callCtx, full, &emptypb.Empty{}, &emptypb.Empty{},
			grpc.WaitForReady(true))
		return status.Code(err)
	}
	call := func() codes.Code { return invoke(conn) }
	if !loop {
		code := call()
		fmt.Printf("%s -> %s: %s\n", name, method, code)
		return 0, nil
	}
	// Every 20th call goes over a new channel: new connections, new handshakes, with
	// whatever certificates and roots are current.
	var calls, failed int
	for ctx.Err() == nil {
		var code codes.Code
		if calls%20 == 19 {
			fresh, err := dial()
			if err != nil {
				return 0, err
			}
			code = invoke(fresh)
			_ = fresh.Close()
		} else {
			code = call()
		}
		if ctx.Err() != nil {
			break
		}
		calls++
		if code != codes.OK {
			failed++
			fmt.Printf("%s -> %s: %s\n", name, method, code)
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
	fmt.Printf("%s -> %s: %d calls, %d failed\n", name, method, calls, failed)
	if failed > 0 {
		return 1, nil
	}
	return 0, nil
}

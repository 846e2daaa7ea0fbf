package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/api/meshcav1"
)

// adminClient is a connection to the admin socket. Its errors read as sentences: an
// unreachable socket is an *unreachableError, a refusal by the server an *rpcError
// carrying the server's status.
type adminClient struct {
	socket  string
	timeout time.Duration
	conn    *grpc.ClientConn
	dialer  *socketDialer
	api     meshcav1.AdminServiceClient
	policy  meshcav1.PolicyServiceClient
}

// dialAdmin prepares a client of the admin socket. Nothing is dialed yet: the first
// call connects, and call reports a socket it cannot reach.
func (g *globals) dialAdmin() (*adminClient, error) {
	path, err := filepath.Abs(g.adminSocket)
	if err != nil {
		return nil, fmt.Errorf("failed to resolve admin socket path %q: %w", g.adminSocket, err)
	}
	// The socket is local and 0600: the file mode is the access control, and there
	// is no network to protect, hence no TLS.
	d := &socketDialer{path: path}
	target := (&url.URL{Scheme: "unix", Path: path}).String()
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(d.dial))
	if err != nil {
		return nil, fmt.Errorf("failed to set up admin client for %s: %w", path, err)
	}
	return &adminClient{
		socket: path, timeout: g.timeout, conn: conn, dialer: d,
		api:    meshcav1.NewAdminServiceClient(conn),
		policy: meshcav1.NewPolicyServiceClient(conn),
	}, nil
}

// Close releases the connection.
func (c *adminClient) Close() error { return c.conn.Close() }

// call runs one admin RPC under the --timeout deadline and makes its error readable.
func call[Req, Resp any](ctx context.Context, c *adminClient,
	rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := rpc(ctx, req)
	if err != nil {
		return resp, c.explain(ctx, err)
	}
	return resp, nil
}

// explain turns a gRPC failure into an error a person can act on.
func (c *adminClient) explain(ctx context.Context, err error) error {
	st := status.Convert(err)
	if dialErr := c.dialer.failure(); dialErr != nil && st.Code() == codes.Unavailable {
		return &unreachableError{Socket: c.socket, Err: dialErr}
	}
	if st.Code() == codes.DeadlineExceeded && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("meshca admin socket %s did not answer within %s", c.socket, c.timeout)
	}
	if st.Code() == codes.Canceled && ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return &rpcError{st: st}
}

// unreachableError says that nothing answers on the admin socket.
type unreachableError struct {
	Socket string
	// Err is why connecting failed, e.g. "connect: no such file or directory".
	Err error
}

// Error names the socket and the cause, and suggests what to check.
func (e *unreachableError) Error() string {
	hint := "is the server running?"
	if errors.Is(e.Err, fs.ErrPermission) {
		hint = "the socket is 0600: run meshctl as the user that runs meshca"
	}
	return fmt.Sprintf("cannot reach meshca admin socket %s: %v; %s", e.Socket, e.Err, hint)
}

// Unwrap returns the cause, so errors.Is sees e.g. fs.ErrPermission.
func (e *unreachableError) Unwrap() error { return e.Err }

// rpcError is a refusal by the server, shown as its status message alone. It keeps
// the status, so status.Code still sees the gRPC code.
type rpcError struct{ st *status.Status }

// Error returns the server's message, without the "rpc error: code = ..." dump.
func (e *rpcError) Error() string { return e.st.Message() }

// GRPCStatus lets status.FromError and status.Code read the code.
func (e *rpcError) GRPCStatus() *status.Status { return e.st }

// socketDialer dials the admin socket and remembers why connecting failed, so that
// an absent server is reported as such rather than as a transport status dump.
type socketDialer struct {
	path string

	// mu guards lastErr and connected.
	mu        sync.Mutex
	lastErr   error
	connected bool
}

// dial is the gRPC context dialer. gRPC passes the target text; the path is known.
func (d *socketDialer) dial(ctx context.Context, _ string) (net.Conn, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "unix", d.path)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.lastErr = err
		var opErr *net.OpError
		if errors.As(err, &opErr) {
			d.lastErr = opErr.Err // drop "dial unix <path>": the message names it once
		}
		return nil, err
	}
	d.connected = true
	return conn, nil
}

// failure returns why the socket could not be reached, or nil once a dial succeeded.
func (d *socketDialer) failure() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.connected {
		return nil
	}
	return d.lastErr
}

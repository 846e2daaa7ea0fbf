package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpServer serves /healthz, /readyz and /metrics.
type httpServer struct {
	srv    *http.Server
	lis    net.Listener
	ready  atomic.Bool
	checks []readyCheck
}

// readyCheck is one condition of readiness; check returns why it is not met.
type readyCheck struct {
	name  string
	check func() error
}

func newHTTP(addr string, reg *prometheus.Registry, checks []readyCheck) (*httpServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on HTTP address %q: %w", addr, err)
	}
	h := &httpServer{lis: lis, checks: checks}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return h, nil
}

func (h *httpServer) addr() net.Addr { return h.lis.Addr() }

func (h *httpServer) setReady(v bool) { h.ready.Store(v) }

func (h *httpServer) readyz(w http.ResponseWriter, _ *http.Request) {
	if !h.ready.Load() {
		http.Error(w, "not ready: starting", http.StatusServiceUnavailable)
		return
	}
	var failed []string
	for _, c := range h.checks {
		if err := c.check(); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", c.name, err))
		}
	}
	if len(failed) > 0 {
		http.Error(w, "not ready: "+strings.Join(failed, "; "), http.StatusServiceUnavailable)
		return
	}
	_, _ = fmt.Fprintln(w, "ok")
}

// Run serves until ctx ends, then shuts down within five seconds.
func (h *httpServer) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- h.srv.Serve(h.lis) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("HTTP server stopped: %w", err)
	case <-ctx.Done():
		h.setReady(false)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.srv.Shutdown(sctx)
		return ctx.Err()
	}
}

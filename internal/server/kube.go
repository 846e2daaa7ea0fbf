package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/ca"
)

// KubeConfig says how meshca reaches the Kubernetes API.
type KubeConfig struct {
	// Kubeconfig is a kubeconfig file; empty means in-cluster, then $KUBECONFIG,
	// then none (token authentication disabled).
	Kubeconfig string
	// QPS and Burst limit the client's request rate.
	QPS   float32
	Burst int
	// Audience tokens must be issued for.
	Audience string
	// CacheTTL bounds how long a good token review is reused.
	CacheTTL time.Duration
	// RESTConfig, when set, is used instead of any kubeconfig (tests and embedding).
	RESTConfig *rest.Config
}

// restConfig resolves the Kubernetes client configuration; nil with no error means
// no Kubernetes API is configured.
func (k KubeConfig) restConfig() (*rest.Config, string, error) {
	if k.RESTConfig != nil {
		return k.limits(rest.CopyConfig(k.RESTConfig)), "REST config", nil
	}
	path := k.Kubeconfig
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err == nil {
			return k.limits(cfg), "in-cluster", nil
		}
		if !errors.Is(err, rest.ErrNotInCluster) {
			return nil, "", fmt.Errorf("failed to load in-cluster config: %w", err)
		}
		path = os.Getenv("KUBECONFIG")
	}
	if path == "" {
		return nil, "", nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, "", fmt.Errorf("failed to load kubeconfig %q: %w", path, err)
	}
	return k.limits(cfg), path, nil
}

func (k KubeConfig) limits(cfg *rest.Config) *rest.Config {
	cfg.QPS, cfg.Burst = k.QPS, k.Burst
	cfg.UserAgent = "meshca"
	return cfg
}

// accessCheck keeps asking the Kubernetes API whether meshca may create
// TokenReviews, and reports the answer to readiness.
type accessCheck struct {
	reviews ca.AccessReviews
	log     *slog.Logger

	// mu guards err.
	mu  sync.Mutex
	err error
}

func newAccessCheck(reviews ca.AccessReviews, log *slog.Logger) *accessCheck {
	return &accessCheck{reviews: reviews, log: log, err: errors.New("not checked yet")}
}

// ready returns nil when token authentication works, else why it does not.
func (a *accessCheck) ready() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Run checks now, then every few seconds while failing and every minute while fine.
func (a *accessCheck) Run(ctx context.Context) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := ca.CheckAccess(cctx, a.reviews)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.mu.Lock()
		changed := (err == nil) != (a.err == nil)
		a.err = err
		a.mu.Unlock()
		if changed && err != nil {
			a.log.Error("Token authentication not ready", "error", err)
		} else if changed {
			a.log.Info("Token authentication ready")
		}

		wait := time.Minute
		if err != nil {
			wait = 3 * time.Second
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

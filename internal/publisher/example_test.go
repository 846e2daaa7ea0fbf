package publisher_test

import (
	"context"
	"log/slog"

	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/publisher"
)

// Publish the bundle of a CA until ctx ends. (Not run: it needs a cluster.)
func Example() {
	run := func(ctx context.Context, cfg *rest.Config, authority *ca.CA) error {
		client, err := kube.NewForConfig(cfg)
		if err != nil {
			return err
		}
		p, err := publisher.New(publisher.Config{
			Client: client, Bundle: authority, Logger: slog.Default(),
		})
		if err != nil {
			return err
		}
		return p.Run(ctx)
	}
	_ = run
}

package server

import (
	"fmt"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/publisher"
)

// bundlePublisher builds the publisher of the meshca-root-cert ConfigMaps, or
// returns nil when publishing is off or no Kubernetes API is configured. It has a
// client of its own, so that updating every namespace after a rotation does not
// spend the request budget of token reviews.
func (s *Server) bundlePublisher(bundle publisher.BundleSource) (runner, error) {
	if !s.cfg.PublishBundle {
		return nil, nil
	}
	restCfg, _, err := s.cfg.Kube.restConfig()
	if err != nil || restCfg == nil {
		return nil, err
	}
	client, err := kube.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("failed to create Kubernetes client: %w", err)
	}
	p, err := publisher.New(publisher.Config{Client: client, Bundle: bundle, Logger: s.log})
	if err != nil {
		return nil, err
	}
	return p, nil
}

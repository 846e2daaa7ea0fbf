// Package publisher keeps meshca's trust bundle in a ConfigMap in every namespace,
// so that workloads and Envoy bootstraps can trust meshca without fetching anything.
//
// The ConfigMap is named meshca-root-cert and holds one key, root-cert.pem: the PEM
// of every root in the bundle, oldest first. The publisher creates it in each
// namespace, new ones included, rewrites it when the bundle changes (a root
// rotation), and puts it back when someone edits or deletes it. It owns the data of
// that ConfigMap; labels and annotations that others add are kept.
//
// It needs, cluster-wide: namespaces get, list and watch; configmaps create; and
// get, list, watch and update on configmaps named meshca-root-cert (see
// deploy/kustomize/base/clusterrole.yaml).
//
//	client, err := kube.NewForConfig(restConfig)
//	if err != nil {
//		return err
//	}
//	p, err := publisher.New(publisher.Config{Client: client, Bundle: authority})
//	if err != nil {
//		return err
//	}
//	return p.Run(ctx) // until ctx ends
package publisher

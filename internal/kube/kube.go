// Package kube is the Kubernetes client that meshca runs with: client-go REST
// clients for the three API groups meshca calls (core/v1, authentication.k8s.io/v1
// and authorization.k8s.io/v1), sharing one HTTP client and one rate limiter, on a
// scheme that registers only those groups' types.
//
// client-go's generated clientset would do the same calls, but linking it registers
// every built-in API group and typed client when the process starts, which costs
// meshca about a fifth of its idle memory for types it never reads (see
// docs/performance.md). Tests and tools keep using the clientset.
package kube

import (
	"context"
	"fmt"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/flowcontrol"
)

// scheme knows the types of the three groups, and the meta types (Status, list and
// watch options) every group uses.
var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
	params = runtime.NewParameterCodec(scheme)
)

func init() {
	utilruntime.Must(corev1.AddToScheme(scheme))
	utilruntime.Must(authnv1.AddToScheme(scheme))
	utilruntime.Must(authzv1.AddToScheme(scheme))
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
}

// Client calls the Kubernetes API for meshca. It is safe for concurrent use.
type Client struct {
	core  *rest.RESTClient
	authn *rest.RESTClient
	authz *rest.RESTClient
}

// NewForConfig returns a client for cfg. Like the clientset, it rate-limits all its
// requests together by cfg.QPS and cfg.Burst unless cfg.RateLimiter is set.
func NewForConfig(cfg *rest.Config) (*Client, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if cfg.RateLimiter == nil && cfg.QPS > 0 {
		if cfg.Burst <= 0 {
			return nil, fmt.Errorf("burst must be positive when QPS is set, got %d", cfg.Burst)
		}
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to create the Kubernetes HTTP client: %w", err)
	}
	group := func(apiPath string, gv schema.GroupVersion) (*rest.RESTClient, error) {
		c := rest.CopyConfig(cfg)
		c.APIPath = apiPath
		c.GroupVersion = &gv
		c.NegotiatedSerializer = codecs.WithoutConversion()
		rc, err := rest.RESTClientForConfigAndClient(c, httpClient)
		if err != nil {
			return nil, fmt.Errorf("failed to create the Kubernetes client for %s: %w",
				gv, err)
		}
		return rc, nil
	}
	var k Client
	if k.core, err = group("/api", corev1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if k.authn, err = group("/apis", authnv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if k.authz, err = group("/apis", authzv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	return &k, nil
}

// TokenReviews creates TokenReviews. It satisfies ca.TokenReviews, as the
// clientset's AuthenticationV1().TokenReviews() does.
func (k *Client) TokenReviews() TokenReviews { return TokenReviews{k.authn} }

// SelfSubjectAccessReviews creates SelfSubjectAccessReviews.
func (k *Client) SelfSubjectAccessReviews() SelfSubjectAccessReviews {
	return SelfSubjectAccessReviews{k.authz}
}

// ConfigMaps writes the ConfigMaps of one namespace.
func (k *Client) ConfigMaps(namespace string) ConfigMaps {
	return ConfigMaps{k.core, namespace}
}

// Namespaces lists and watches every namespace, for an informer.
func (k *Client) Namespaces() cache.ListerWatcher {
	return cache.NewListWatchFromClient(k.core, "namespaces", metav1.NamespaceAll,
		fields.Everything())
}

// ConfigMapsNamed lists and watches the ConfigMaps with the given name in every
// namespace, for an informer.
func (k *Client) ConfigMapsNamed(name string) cache.ListerWatcher {
	return cache.NewListWatchFromClient(k.core, "configmaps", metav1.NamespaceAll,
		fields.OneTermEqualSelector("metadata.name", name))
}

// TokenReviews creates TokenReviews.
type TokenReviews struct{ c *rest.RESTClient }

// Create sends review and returns the API server's answer.
func (t TokenReviews) Create(ctx context.Context, review *authnv1.TokenReview,
	opts metav1.CreateOptions) (*authnv1.TokenReview, error) {
	return send(ctx, t.c.Post().Resource("tokenreviews"), &opts, review,
		&authnv1.TokenReview{})
}

// SelfSubjectAccessReviews creates SelfSubjectAccessReviews.
type SelfSubjectAccessReviews struct{ c *rest.RESTClient }

// Create sends review and returns the API server's answer.
func (s SelfSubjectAccessReviews) Create(ctx context.Context,
	review *authzv1.SelfSubjectAccessReview, opts metav1.CreateOptions,
) (*authzv1.SelfSubjectAccessReview, error) {
	return send(ctx, s.c.Post().Resource("selfsubjectaccessreviews"), &opts, review,
		&authzv1.SelfSubjectAccessReview{})
}

// ConfigMaps writes the ConfigMaps of one namespace.
type ConfigMaps struct {
	c         *rest.RESTClient
	namespace string
}

// Create creates cm in the namespace.
func (m ConfigMaps) Create(ctx context.Context, cm *corev1.ConfigMap,
	opts metav1.CreateOptions) (*corev1.ConfigMap, error) {
	return send(ctx, m.c.Post().Namespace(m.namespace).Resource("configmaps"), &opts, cm,
		&corev1.ConfigMap{})
}

// Update replaces cm, which must carry the resourceVersion it was read at.
func (m ConfigMaps) Update(ctx context.Context, cm *corev1.ConfigMap,
	opts metav1.UpdateOptions) (*corev1.ConfigMap, error) {
	return send(ctx, m.c.Put().Namespace(m.namespace).Resource("configmaps").Name(cm.Name),
		&opts, cm, &corev1.ConfigMap{})
}

// send completes req with the options and the body, and decodes the API server's
// answer into out.
func send[T runtime.Object](ctx context.Context, req *rest.Request, opts runtime.Object,
	body, out T) (T, error) {
	err := req.VersionedParams(opts, params).Body(body).Do(ctx).Into(out)
	return out, err
}

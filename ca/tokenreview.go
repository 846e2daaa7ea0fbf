package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var (
	// ErrInvalidToken means the token does not prove a pod-bound service-account
	// identity for meshca's audience. The API maps it to Unauthenticated.
	ErrInvalidToken = errors.New("invalid token")
	// ErrAuthUnavailable means meshca could not check the token: the Kubernetes API is
	// unreachable or refuses meshca. The API maps it to Unavailable.
	ErrAuthUnavailable = errors.New("token authentication unavailable")
)

// The TokenReview extras Kubernetes sets for a token bound to a pod.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
	saPrefix     = "system:serviceaccount:"
	saGroup      = "system:serviceaccounts"
)

// Identity is a workload identity that Kubernetes vouched for.
type Identity struct {
	ID             spiffeid.ID
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	// TokenExpiry is when the token that proved the identity expires; zero when
	// the token carries no expiry. Streams authenticated by it end then.
	TokenExpiry time.Time
}

// String names the identity for audit logs.
func (i Identity) String() string {
	return fmt.Sprintf("k8s:%s/%s pod=%s uid=%s", i.Namespace, i.ServiceAccount, i.PodName,
		i.PodUID)
}

// ReviewMetrics counts token reviews; every method must be safe for concurrent use.
type ReviewMetrics interface {
	// Reviewed counts one TokenReview call by result: "authenticated",
	// "rejected" or "error".
	Reviewed(result string)
	// CacheHit counts an authentication answered from the cache.
	CacheHit()
}

// TokenReviews creates TokenReviews: meshca's internal/kube client and client-go's
// AuthenticationV1().TokenReviews() satisfy it.
type TokenReviews interface {
	Create(ctx context.Context, review *authnv1.TokenReview,
		opts metav1.CreateOptions) (*authnv1.TokenReview, error)
}

// TokenReviewConfig configures a TokenReviewer.
type TokenReviewConfig struct {
	// Reviews creates TokenReviews in the Kubernetes API. Required.
	Reviews TokenReviews
	// TrustDomain of the SPIFFE IDs built from reviews. Required.
	TrustDomain spiffeid.TrustDomain
	// Audience that tokens must be issued for; "meshca" when empty.
	Audience string
	// CacheTTL bounds how long a good review is reused; 10 s when zero. A review
	// is never reused past the token's own expiry.
	CacheTTL time.Duration
	// MaxCacheEntries bounds the cache; 100,000 when zero.
	MaxCacheEntries int
	Logger          *slog.Logger
	Metrics         ReviewMetrics
	Clock           func() time.Time
}

// TokenReviewer authenticates projected service-account tokens with the Kubernetes
// TokenReview API. It is safe for concurrent use.
type TokenReviewer struct {
	cfg     TokenReviewConfig
	log     *slog.Logger
	metrics ReviewMetrics
	now     func() time.Time
	flight  singleflight.Group

	// mu guards cache.
	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedIdentity
}

type cachedIdentity struct {
	id      Identity
	expires time.Time
}

// NewTokenReviewer returns an authenticator with the defaults filled in.
func NewTokenReviewer(cfg TokenReviewConfig) *TokenReviewer {
	if cfg.Audience == "" {
		cfg.Audience = "meshca"
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = 10 * time.Second
	}
	if cfg.MaxCacheEntries == 0 {
		cfg.MaxCacheEntries = 100_000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &TokenReviewer{
		cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics, now: cfg.Clock,
		cache: make(map[[sha256.Size]byte]cachedIdentity),
	}
}

// Audience returns the audience tokens must carry.
func (r *TokenReviewer) Audience() string { return r.cfg.Audience }

// Authenticate returns the identity a token proves. Errors wrap ErrInvalidToken or
// ErrAuthUnavailable. Concurrent calls with one token share one TokenReview; good
// results are cached, failures never.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, fmt.Errorf("empty token: %w", ErrInvalidToken)
	}
	key := sha256.Sum256([]byte(r.cfg.Audience + "\x00" + token))
	if id, ok := r.cached(key); ok {
		r.metrics.CacheHit()
		return id, nil
	}

	// The review runs under its own context so that one impatient caller does not
	// fail the others waiting on the same token.
	v, err, _ := r.flight.Do(string(key[:]), func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		id, err := r.review(rctx, token)
		if err == nil {
			r.store(key, id)
		}
		return id, err
	})
	if err != nil {
		return Identity{}, err
	}
	return v.(Identity), nil
}

func (r *TokenReviewer) cached(key [sha256.Size]byte) (Identity, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[key]
	if !ok {
		return Identity{}, false
	}
	if !r.now().Before(e.expires) {
		delete(r.cache, key)
		return Identity{}, false
	}
	return e.id, true
}

// store caches a good review until the earlier of the cache TTL and the token's exp.
func (r *TokenReviewer) store(key [sha256.Size]byte, id Identity) {
	exp := id.TokenExpiry
	now := r.now()
	expires := now.Add(r.cfg.CacheTTL)
	if exp.Before(expires) {
		expires = exp
	}
	if !expires.After(now) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.cfg.MaxCacheEntries {
		for k, e := range r.cache {
			if !now.Before(e.expires) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= r.cfg.MaxCacheEntries {
			clear(r.cache)
		}
	}
	r.cache[key] = cachedIdentity{id: id, expires: expires}
}

func (r *TokenReviewer) review(ctx context.Context, token string) (Identity, error) {
	tr, err := r.cfg.Reviews.Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{
			Token: token, Audiences: []string{r.cfg.Audience},
		}}, metav1.CreateOptions{})
	if err != nil {
		r.metrics.Reviewed("error")
		if apierrors.IsForbidden(err) {
			return Identity{}, fmt.Errorf("the Kubernetes API refuses meshca's TokenReview "+
				"(bind meshca's service account to system:auth-delegator): %w: %w",
				err, ErrAuthUnavailable)
		}
		return Identity{}, fmt.Errorf("TokenReview failed: %w: %w", err, ErrAuthUnavailable)
	}
	id, err := IdentityFromReview(tr.Status, r.cfg.Audience, r.cfg.TrustDomain)
	if err != nil {
		r.metrics.Reviewed("rejected")
		return Identity{}, err
	}
	// kube-apiserver accepts a correctly signed token without exp; a projected token
	// always has one, and meshca needs it to end streams, so refuse the others.
	exp, ok := tokenExpiry(token)
	if !ok {
		r.metrics.Reviewed("rejected")
		return Identity{}, fmt.Errorf("token of %q has no expiry: %w", id.ID, ErrInvalidToken)
	}
	r.metrics.Reviewed("authenticated")
	id.TokenExpiry = exp
	return id, nil
}

// IdentityFromReview turns a TokenReview status into an identity. It accepts only an
// authenticated review for the audience, of a service account in the service
// accounts group, bound to a pod.
func IdentityFromReview(st authnv1.TokenReviewStatus, audience string,
	td spiffeid.TrustDomain) (Identity, error) {
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return Identity{}, fmt.Errorf("token review: %s: %w", reason, ErrInvalidToken)
	}
	if !slices.Contains(st.Audiences, audience) {
		return Identity{}, fmt.Errorf("token audiences %q do not include %q: %w",
			st.Audiences, audience, ErrInvalidToken)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, saPrefix), ":")
	if !strings.HasPrefix(st.User.Username, saPrefix) || !ok || ns == "" || sa == "" ||
		strings.Contains(sa, ":") {
		return Identity{}, fmt.Errorf("user %q is not a service account: %w",
			st.User.Username, ErrInvalidToken)
	}
	if !slices.Contains(st.User.Groups, saGroup) {
		return Identity{}, fmt.Errorf("user %q is not in group %s: %w", st.User.Username,
			saGroup, ErrInvalidToken)
	}
	podName, podUID := single(st.User.Extra[extraPodName]), single(st.User.Extra[extraPodUID])
	if podName == "" || podUID == "" {
		return Identity{}, fmt.Errorf("token of %q is not bound to a pod: %w",
			st.User.Username, ErrInvalidToken)
	}
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa", sa)
	if err != nil {
		return Identity{}, fmt.Errorf("no SPIFFE ID for %q: %w: %w", st.User.Username, err,
			ErrInvalidToken)
	}
	return Identity{ID: id, Namespace: ns, ServiceAccount: sa, PodName: podName,
		PodUID: podUID}, nil
}

func single(v authnv1.ExtraValue) string {
	if len(v) != 1 {
		return ""
	}
	return v[0]
}

// tokenExpiry reads the exp claim of a JWT without verifying it. It only bounds the
// cache of a review that Kubernetes already verified.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *int64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(*claims.Exp, 0), true
}

// AccessReviews creates SelfSubjectAccessReviews: meshca's internal/kube client and
// client-go's AuthorizationV1().SelfSubjectAccessReviews() satisfy it.
type AccessReviews interface {
	Create(ctx context.Context, review *authzv1.SelfSubjectAccessReview,
		opts metav1.CreateOptions) (*authzv1.SelfSubjectAccessReview, error)
}

// CheckAccess asks the Kubernetes API whether meshca itself may create
// TokenReviews. It returns nil when allowed, and an error that says what to fix.
func CheckAccess(ctx context.Context, reviews AccessReviews) error {
	ssar, err := reviews.Create(ctx,
		&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authzv1.ResourceAttributes{
				Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create",
			},
		}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("cannot reach the Kubernetes API: %w", err)
	}
	if !ssar.Status.Allowed {
		return errors.New("meshca may not create TokenReviews: bind its service account " +
			"to the ClusterRole system:auth-delegator")
	}
	return nil
}

type nopMetrics struct{}

func (nopMetrics) Reviewed(string) {}
func (nopMetrics) CacheHit()       {}

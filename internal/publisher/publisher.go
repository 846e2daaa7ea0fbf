package publisher

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshca/meshca/internal/kube"
)

// What the publisher writes.
const (
	// ConfigMapName is the name of the ConfigMap in every namespace.
	ConfigMapName = "meshca-root-cert"
	// Key is the ConfigMap key that holds the PEM roots.
	Key = "root-cert.pem"
	// ManagedByLabel marks the ConfigMaps the publisher owns, with the value
	// ManagedBy.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedBy is the value of ManagedByLabel.
	ManagedBy = "meshca"
	// fieldManager names meshca in the ConfigMaps' managed fields.
	fieldManager = "meshca"
)

// Defaults applied by New to a zero Config.
const (
	DefaultResync  = 10 * time.Minute
	DefaultWorkers = 4
)

// BundleSource gives the trust bundle to publish. ca.CA satisfies it.
type BundleSource interface {
	// WatchBundle returns the current bundle and a channel closed when it changes.
	WatchBundle() (*x509bundle.Bundle, <-chan struct{})
}

// Config configures a Publisher.
type Config struct {
	// Client reaches the Kubernetes API. Required.
	Client *kube.Client
	// Bundle is the source of the roots to publish. Required.
	Bundle BundleSource
	// Logger receives one line per bundle change and per repaired ConfigMap, never
	// the PEM itself. Nil discards.
	Logger *slog.Logger
	// Resync is how often every namespace is checked again even without an event.
	Resync time.Duration
	// Workers is the number of namespaces written concurrently.
	Workers int
}

// Publisher keeps the ConfigMap ConfigMapName in every namespace equal to the
// trust bundle. Run it once.
type Publisher struct {
	cfg   Config
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[string]

	// namespaces and configMaps are set by Run before any worker starts.
	namespaces corelisters.NamespaceLister
	configMaps corelisters.ConfigMapLister

	// mu guards want and previous: the PEM to publish, and the one before the last
	// bundle change (to tell a rotation from an edit in the logs).
	mu       sync.RWMutex
	want     []byte
	previous []byte
}

// New checks the configuration and returns a publisher ready to Run.
func New(cfg Config) (*Publisher, error) {
	if cfg.Client == nil {
		return nil, errors.New("publisher: a Kubernetes client is required")
	}
	if cfg.Bundle == nil {
		return nil, errors.New("publisher: a bundle source is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "meshca_bundle_publisher"})
	return &Publisher{cfg: cfg, log: cfg.Logger, queue: queue}, nil
}

// Run publishes the bundle until ctx ends, then returns ctx's error. It blocks
// until its caches of namespaces and ConfigMaps are filled; when meshca may not
// list them, it keeps waiting (client-go logs why) without stopping the server.
func (p *Publisher) Run(ctx context.Context) error {
	defer p.queue.ShutDown()
	bundleChanged := p.loadBundle()

	nsInformer := cache.NewSharedIndexInformer(p.cfg.Client.Namespaces(), &corev1.Namespace{},
		p.cfg.Resync, cache.Indexers{})
	cmInformer := cache.NewSharedIndexInformer(p.cfg.Client.ConfigMapsNamed(ConfigMapName),
		&corev1.ConfigMap{}, p.cfg.Resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if _, err := nsInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    p.enqueueNamespace,
		UpdateFunc: func(_, obj any) { p.enqueueNamespace(obj) },
	}); err != nil {
		return fmt.Errorf("failed to watch namespaces: %w", err)
	}
	if _, err := cmInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    p.enqueueConfigMap,
		UpdateFunc: func(_, obj any) { p.enqueueConfigMap(obj) },
		DeleteFunc: p.enqueueConfigMap,
	}); err != nil {
		return fmt.Errorf("failed to watch ConfigMaps: %w", err)
	}
	p.namespaces = corelisters.NewNamespaceLister(nsInformer.GetIndexer())
	p.configMaps = corelisters.NewConfigMapLister(cmInformer.GetIndexer())

	// The informers stop when ctx ends; Run returns only after they have.
	var informers sync.WaitGroup
	defer informers.Wait()
	informers.Go(func() { nsInformer.RunWithContext(ctx) })
	informers.Go(func() { cmInformer.RunWithContext(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), nsInformer.HasSynced, cmInformer.HasSynced) {
		return ctx.Err()
	}
	p.log.Info("Publishing the trust bundle in every namespace", "configmap", ConfigMapName)

	var wg sync.WaitGroup
	for range p.cfg.Workers {
		wg.Go(func() {
			for p.processNext(ctx) {
			}
		})
	}
	wg.Go(func() { p.watchBundle(ctx, bundleChanged) })
	<-ctx.Done()
	p.queue.ShutDown()
	wg.Wait()
	return ctx.Err()
}

// loadBundle reads the bundle into want and returns the channel of its next change.
func (p *Publisher) loadBundle() <-chan struct{} {
	bundle, changed := p.cfg.Bundle.WatchBundle()
	var buf bytes.Buffer
	roots := bundle.X509Authorities()
	for _, root := range roots {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	}
	if len(roots) == 0 {
		// Publishing an empty bundle would make every sidecar distrust meshca.
		p.log.Error("The trust bundle has no root; keeping the published one")
		return changed
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !bytes.Equal(p.want, buf.Bytes()) {
		p.previous, p.want = p.want, buf.Bytes()
	}
	return changed
}

// pems returns the PEM to publish and the one published before the last change.
func (p *Publisher) pems() (want, previous []byte) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.want, p.previous
}

// watchBundle queues every namespace each time the bundle changes.
func (p *Publisher) watchBundle(ctx context.Context, changed <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		changed = p.loadBundle()
		all, err := p.namespaces.List(labels.Everything())
		if err != nil {
			p.log.Error("Failed to list cached namespaces", "error", err)
			continue
		}
		p.log.Info("Trust bundle changed; updating every namespace",
			"namespaces", len(all))
		for _, ns := range all {
			p.queue.Add(ns.Name)
		}
	}
}

func (p *Publisher) enqueueNamespace(obj any) {
	if ns, ok := obj.(*corev1.Namespace); ok {
		p.queue.Add(ns.Name)
	}
}

func (p *Publisher) enqueueConfigMap(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Name == ConfigMapName {
		p.queue.Add(cm.Namespace)
	}
}

// processNext syncs one namespace from the queue; false means the queue is shut down.
func (p *Publisher) processNext(ctx context.Context) bool {
	ns, shutdown := p.queue.Get()
	if shutdown {
		return false
	}
	defer p.queue.Done(ns)
	err := p.sync(ctx, ns)
	if err == nil {
		p.queue.Forget(ns)
		return true
	}
	if ctx.Err() != nil {
		return true
	}
	// A conflict or an existing object means the cache lags behind a write; the
	// retry reads the newer state.
	level := slog.LevelError
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		level = slog.LevelDebug
	}
	p.log.Log(ctx, level, "Failed to publish the trust bundle; will retry", "namespace", ns,
		"retries", p.queue.NumRequeues(ns), "error", err)
	p.queue.AddRateLimited(ns)
	return true
}

// sync makes the namespace's ConfigMap hold exactly the current bundle.
func (p *Publisher) sync(ctx context.Context, name string) error {
	ns, err := p.namespaces.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ns.DeletionTimestamp != nil {
		return nil // the API refuses new objects in a namespace being deleted
	}
	want, previous := p.pems()
	if want == nil {
		return nil
	}

	cm, err := p.configMaps.ConfigMaps(name).Get(ConfigMapName)
	if apierrors.IsNotFound(err) {
		return p.create(ctx, name, want)
	}
	if err != nil {
		return err
	}
	if upToDate(cm, want) {
		return nil
	}
	updated := cm.DeepCopy()
	updated.Data = map[string]string{Key: string(want)}
	updated.BinaryData = nil
	updated.Labels = maps.Clone(cm.Labels)
	if updated.Labels == nil {
		updated.Labels = make(map[string]string, 1)
	}
	updated.Labels[ManagedByLabel] = ManagedBy
	_, err = p.cfg.Client.ConfigMaps(name).Update(ctx, updated,
		metav1.UpdateOptions{FieldManager: fieldManager})
	if err != nil {
		return fmt.Errorf("failed to update ConfigMap: %w", err)
	}
	if cm.Data[Key] == string(previous) && len(cm.Data) == 1 && len(cm.BinaryData) == 0 {
		p.log.Debug("Updated the trust bundle ConfigMap", "namespace", name)
	} else {
		p.log.Info("Repaired an edited trust bundle ConfigMap", "namespace", name)
	}
	return nil
}

func (p *Publisher) create(ctx context.Context, namespace string, want []byte) error {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:      ConfigMapName,
			Namespace: namespace,
			Labels:    map[string]string{ManagedByLabel: ManagedBy},
		},
		Data: map[string]string{Key: string(want)},
	}
	_, err := p.cfg.Client.ConfigMaps(namespace).Create(ctx, cm,
		metav1.CreateOptions{FieldManager: fieldManager})
	if err != nil {
		return fmt.Errorf("failed to create ConfigMap: %w", err)
	}
	p.log.Debug("Created the trust bundle ConfigMap", "namespace", namespace)
	return nil
}

// upToDate reports whether cm holds exactly want and carries the managed-by label.
func upToDate(cm *corev1.ConfigMap, want []byte) bool {
	return len(cm.Data) == 1 && cm.Data[Key] == string(want) && len(cm.BinaryData) == 0 &&
		cm.Labels[ManagedByLabel] == ManagedBy
}

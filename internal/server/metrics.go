package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/store"
	"github.com/meshca/meshca/xds"
)

// metrics are meshca's Prometheus metrics, registered on the server's own registry.
type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	reviews   *prometheus.CounterVec
	cacheHits prometheus.Counter
	streams   prometheus.Gauge
	pushes    *prometheus.CounterVec
	nacks     *prometheus.CounterVec
}

var (
	_ ca.ReviewMetrics = (*metrics)(nil)
	_ xds.Metrics      = (*metrics)(nil)
)

// newMetrics registers meshca's metrics; now is the clock of the authorities' expiry.
func newMetrics(reg *prometheus.Registry, authority *ca.CA, now func() time.Time) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_grpc_requests_total",
			Help: "gRPC requests handled, by method and status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshca_grpc_request_duration_seconds",
			Help:    "gRPC request latency, by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"method"}),
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_token_reviews_total",
			Help: "TokenReview calls to the Kubernetes API, by result.",
		}, []string{"result"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_token_review_cache_hits_total",
			Help: "Token authentications answered from the review cache.",
		}),
	}
	m.streams = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshca_xds_streams",
		Help: "Open discovery streams (SDS and ADS).",
	})
	m.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshca_xds_pushes_total",
		Help: "Discovery responses sent, by resource type.",
	}, []string{"type_url"})
	m.nacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshca_xds_rejections_total",
		Help: "Discovery responses the client rejected (NACK), by resource type.",
	}, []string{"type_url"})
	reg.MustRegister(m.requests, m.latency, m.reviews, m.cacheHits, m.streams, m.pushes, m.nacks,
		collectors.NewGoCollector(), collectors.NewBuildInfoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		authorityExpiry(authority, now))
	return m
}

// authorityExpiry reports, at scrape, the seconds until each authority still trusted
// (prepared, active or retired; roots and intermediates alike) stops being usable:
// the earliest expiry of its certificate, its issuers and its roots. Removed
// authorities are left out: they no longer matter, and an alert on them could never
// be resolved.
func authorityExpiry(authority *ca.CA, now func() time.Time) prometheus.Collector {
	desc := prometheus.NewDesc("meshca_authority_expiry_seconds",
		"Seconds until the authority, with the certificates that issued it, expires.",
		[]string{"authority_id", "state"}, nil)
	return collectorFunc{desc: desc, collect: func(ch chan<- prometheus.Metric) {
		for _, a := range authority.Authorities() {
			if a.State == store.StateRemoved {
				continue
			}
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue,
				a.ChainNotAfter.Sub(now()).Seconds(), a.ID, string(a.State))
		}
	}}
}

type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

func (m *metrics) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo,
	handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.latency.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

// Reviewed implements ca.ReviewMetrics.
func (m *metrics) Reviewed(result string) { m.reviews.WithLabelValues(result).Inc() }

// CacheHit implements ca.ReviewMetrics.
func (m *metrics) CacheHit() { m.cacheHits.Inc() }

// StreamOpened implements xds.Metrics.
func (m *metrics) StreamOpened() { m.streams.Inc() }

// StreamClosed implements xds.Metrics.
func (m *metrics) StreamClosed() { m.streams.Dec() }

// Pushed implements xds.Metrics.
func (m *metrics) Pushed(typeURL string) { m.pushes.WithLabelValues(typeURL).Inc() }

// Rejected implements xds.Metrics.
func (m *metrics) Rejected(typeURL string) { m.nacks.WithLabelValues(typeURL).Inc() }

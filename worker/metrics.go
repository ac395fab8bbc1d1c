package worker

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	events    *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	published prometheus.Counter
	retries   prometheus.Counter
	owned     prometheus.Gauge
	rebuilds  prometheus.Counter
	latency   prometheus.Histogram
	// pending is what each owned partition's consumer has left to deliver.
	pending       *prometheus.GaugeVec
	redeliveries  prometheus.Counter
	stalls        prometheus.Counter
	backendErrors *prometheus.CounterVec
	configReads   *prometheus.CounterVec
	// How long each step of handling a batch waited and worked: the
	// configuration lookup, loading agents, the commit, the publish, the ack.
	stepConfig, stepLoad, stepCommit, stepPublish, stepAck prometheus.Observer
}

// newMetrics registers the worker's metrics with reg (a registry per worker, so
// several workers can live in one test process).
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "presenced_events_total", Help: "Input events by type and outcome (applied, duplicate, redelivered).",
		}, []string{"type", "outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "presenced_rejected_total", Help: "Input events rejected, by code.",
		}, []string{"code"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "presenced_status_published_total", Help: "agent.status.changed events published.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "presenced_batch_retries_total", Help: "Batches retried after a transient Redis or NATS failure.",
		}),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "presenced_partitions_owned", Help: "Input partitions this replica owns.",
		}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "presenced_store_rebuilds_total", Help: "Partitions rebuilt from JetStream after the state store lost data.",
		}),
	}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "presenced_event_latency_seconds",
		Help:    "From the time JetStream stored an input event to the time its outcome was published and acknowledged.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	m.pending = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "presenced_consumer_pending", Help: "Input messages an owned partition's consumer has still to deliver.",
	}, []string{"partition"})
	m.redeliveries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "presenced_redeliveries_total", Help: "Input messages JetStream delivered more than once (after an ack wait or a nak).",
	})
	m.stalls = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "presenced_partition_stalls_total",
		Help: "Partitions taken over again because their consumer held inputs they did not receive for the stall timeout (15s by default).",
	})
	m.backendErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "presenced_backend_errors_total", Help: "Failed calls to the state store (backend redis or memory) and to NATS, by operation.",
	}, []string{"backend", "op"})
	m.configReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "presenced_config_reads_total",
		Help: "Reads of the configuration subject, shared by the partitions' batches: by what they proved, the stream up to its last sequence (stream) or the range asked (subject).",
	}, []string{"proved"})
	steps := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "presenced_batch_step_seconds",
		Help:    "Time a batch spent in each step of its handling (config, load, commit, publish, ack), round trips included.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"step"})
	m.stepConfig, m.stepLoad = steps.WithLabelValues("config"), steps.WithLabelValues("load")
	m.stepCommit, m.stepPublish, m.stepAck = steps.WithLabelValues("commit"), steps.WithLabelValues("publish"), steps.WithLabelValues("ack")
	reg.MustRegister(m.backendErrors, m.events, m.rejected, m.published, m.retries, m.owned, m.rebuilds, m.latency, m.pending,
		m.redeliveries, m.stalls, m.configReads, steps)
	return m
}

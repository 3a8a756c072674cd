package admitter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the admitter's Prometheus series, on a registry of its own so that several
// admitters can run in one process.
type metrics struct {
	reg             *prometheus.Registry
	decisions       *prometheus.CounterVec
	decisionSec     prometheus.Histogram
	publishSec      *prometheus.HistogramVec
	publishErrors   *prometheus.CounterVec
	finishes        *prometheus.CounterVec
	open            prometheus.Gauge
	httpInflight    prometheus.Gauge
	expired         prometheus.Counter
	stateEvents     *prometheus.CounterVec
	deadLettered    prometheus.Counter
	replays         prometheus.Counter
	peerEvents      prometheus.Counter
	revoked         prometheus.Counter
	confirmTimeouts prometheus.Counter
	logFinishes     prometheus.Counter
	logIndexFull    prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	lat := []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_admitter_decisions_total",
		Help: "Admission decisions by reason (\"allowed\" when allowed) and funding source."}, []string{"reason", "funding"})
	m.decisionSec = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_admitter_decision_seconds",
		Help: "Time spent in the decision core per admit.", Buckets: []float64{1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 1e-4, 1e-3}})
	m.publishSec = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tally_admitter_publish_seconds",
		Help: "Time to get an event acknowledged by Kafka (acks=all).", Buckets: lat}, []string{"event"})
	m.publishErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_admitter_publish_errors_total",
		Help: "Events Kafka did not acknowledge (the call answered 503)."}, []string{"event"})
	m.finishes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_admitter_finishes_total",
		Help: "Settled requests by status."}, []string{"status"})
	m.open = prometheus.NewGauge(prometheus.GaugeOpts{Name: "tally_admitter_inflight_requests",
		Help: "Admitted requests not yet finished nor expired."})
	m.httpInflight = prometheus.NewGauge(prometheus.GaugeOpts{Name: "tally_admitter_http_inflight",
		Help: "HTTP calls being served."})
	m.expired = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_expired_total",
		Help: "Open requests dropped locally because their hold timed out."})
	m.stateEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_admitter_state_events_total",
		Help: "balance.updated and limits.adjusted events applied, by topic."}, []string{"topic"})
	m.deadLettered = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_dead_lettered_total",
		Help: "Unreadable state events sent to the dead-letter topic."})
	m.replays = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_idempotent_replays_total",
		Help: "Repeated calls answered from the idempotency cache."})
	m.peerEvents = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_peer_events_total",
		Help: "Other admitters' request.started/finished events applied to the local balances."})
	m.revoked = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_revoked_total",
		Help: "Admissions cancelled because an earlier hold in the log took the funds (ADMITTER_CONFIRM_IN_LOG_ORDER)."})
	m.confirmTimeouts = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_confirm_timeouts_total",
		Help: "Admissions kept unconfirmed because the peer follower did not reach them in time."})
	m.logFinishes = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_log_finishes_total",
		Help: "Finishes of requests this admitter did not admit (started by a peer or an earlier incarnation), settled from the events log."})
	m.logIndexFull = prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_admitter_log_index_full_total",
		Help: "Started requests read from the events log but not kept: ADMITTER_LOG_OPEN_MAX reached."})
	m.reg.MustRegister(m.logFinishes, m.logIndexFull, m.peerEvents, m.revoked, m.confirmTimeouts, m.decisions, m.decisionSec, m.publishSec, m.publishErrors, m.finishes, m.open,
		m.httpInflight, m.expired, m.stateEvents, m.deadLettered, m.replays,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

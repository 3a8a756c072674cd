package engine

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	folded       prometheus.Counter
	published    prometheus.Counter
	deadLettered prometheus.Counter
	foldSeconds  prometheus.Histogram
	lag          *prometheus.GaugeVec
	anomalies    *prometheus.CounterVec
	stage        *prometheus.HistogramVec
	batchEvents  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		folded:       prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_events_folded_total", Help: "Events folded into the ledger."}),
		published:    prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_outputs_published_total", Help: "Journal, balance and limit messages published."}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_dead_lettered_total", Help: "Undecodable events sent to the dead-letter topic."}),
		foldSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_ledger_fold_seconds_per_event",
			Help: "Decode and fold time per event, averaged over each batch.", Buckets: prometheus.ExponentialBuckets(1e-7, 4, 10)}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tally_ledger_lag_events", Help: "Events behind the partition's high watermark after the last batch."}, []string{"partition"}),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tally_ledger_batch_stage_seconds",
			Help: "Time per batch in each stage: decode, fold, encode, publish, persist, commit.", Buckets: prometheus.ExponentialBuckets(1e-5, 4, 10)}, []string{"stage"}),
		batchEvents: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_ledger_batch_events", Help: "Events per batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9)}),
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_ledger_anomalies_total", Help: "Flagged oddities by kind (unknown_finish, late_finish, duplicate, ...)."}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.folded, m.published, m.deadLettered, m.foldSeconds, m.lag, m.anomalies, m.stage, m.batchEvents)
	}
	return m
}

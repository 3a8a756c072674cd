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
	// dedupe memory
	dedupeEvicted prometheus.Counter
	dedupeIDs     *prometheus.GaugeVec
	// clock ticks
	ticks      prometheus.Counter
	tickErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		folded:       prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_events_folded_total", Help: "Events folded into the ledger."}),
		published:    prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_outputs_published_total", Help: "Journal, balance and limit messages published."}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_dead_lettered_total", Help: "Events sent to the dead-letter topic: undecodable, or too late to be proven new."}),
		dedupeEvicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_dedupe_evicted_total",
			Help: "Remembered ids evicted by LEDGER_DEDUPE_PER_ACCOUNT_MAX before the window passed (each raises its account's dedupe floor)."}),
		dedupeIDs: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tally_ledger_dedupe_ids",
			Help: "Ids remembered for deduplication, per events-topic partition."}, []string{"partition"}),
		foldSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_ledger_fold_seconds_per_event",
			Help: "Decode and fold time per event, averaged over each batch.", Buckets: prometheus.ExponentialBuckets(1e-7, 4, 10)}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tally_ledger_lag_events", Help: "Events behind the partition's high watermark after the last batch."}, []string{"partition"}),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tally_ledger_batch_stage_seconds",
			Help: "Time per batch in each stage: decode, fold, encode, publish, persist, commit.", Buckets: prometheus.ExponentialBuckets(1e-5, 4, 10)}, []string{"stage"}),
		batchEvents: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_ledger_batch_events", Help: "Events per batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9)}),
		ticks: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_ticks_total",
			Help: "Clock ticks published into idle events-topic partitions (LEDGER_TICK_INTERVAL_MS)."}),
		tickErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_tick_errors_total",
			Help: "Clock ticks Kafka did not acknowledge (retried at the next interval)."}),
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_ledger_anomalies_total", Help: "Flagged oddities by kind (unknown_finish, late_finish, duplicate, ...)."}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.folded, m.published, m.deadLettered, m.foldSeconds, m.lag, m.anomalies, m.stage, m.batchEvents,
			m.dedupeEvicted, m.dedupeIDs, m.ticks, m.tickErrors)
	}
	return m
}

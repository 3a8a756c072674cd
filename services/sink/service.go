package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/detect"
	"github.com/tallyhq/tally/services/sink/httpapi"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Service is one sink process: migrations, the consumer pipeline, the detector and the
// operational HTTP endpoints.
type Service struct {
	cfg     Config
	brokers []string
	// kafkaTLS is the KAFKA_TLS_* client config, nil = plaintext.
	kafkaTLS *tls.Config
	log      *slog.Logger
	hooks    pipeline.Hooks

	ready    chan struct{}
	addr     atomic.Value // string
	pipe     atomic.Pointer[pipeline.Pipeline]
	detector atomic.Pointer[detect.Detector]
}

// New validates cfg. Nothing is opened until Run.
func New(cfg Config, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink: invalid settings: %w", err)
	}
	brokers, _ := kafkax.ParseBrokers(cfg.Brokers)
	kafkaTLS, err := cfg.KafkaTLS.Build()
	if err != nil {
		return nil, fmt.Errorf("sink: KAFKA_TLS_*: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Service{cfg: cfg, brokers: brokers, kafkaTLS: kafkaTLS, log: log.With("service", "sink"), ready: make(chan struct{})}, nil
}

// SetHooks installs test hooks on the pipeline; call before Run.
func (s *Service) SetHooks(h pipeline.Hooks) { s.hooks = h }

// Ready is closed once the schema is migrated, the HTTP endpoint listens and the consumer runs.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Addr is the bound HTTP address, valid once Ready is closed.
func (s *Service) Addr() string { v, _ := s.addr.Load().(string); return v }

// URL is the base URL of the operational endpoints (https:// with SINK_TLS_*), valid once
// Ready is closed.
func (s *Service) URL() string {
	if s.cfg.TLS.Enabled() {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// Pipeline is the running consumer (nil before Ready), for its Stats.
func (s *Service) Pipeline() *pipeline.Pipeline { return s.pipe.Load() }

// Detector is the running detector (nil before Ready or when disabled).
func (s *Service) Detector() *detect.Detector { return s.detector.Load() }

// Run starts everything and blocks until ctx is cancelled (nil) or a part fails (its error).
func (s *Service) Run(ctx context.Context) error {
	conn, err := chstore.Open(s.cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	mctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	applied, err := chstore.MigrateCluster(mctx, conn, chschema.Migrations, s.cfg.ClickHouse.Cluster)
	if err == nil {
		err = chstore.ApplyRetentionCluster(mctx, conn, s.cfg.RetentionDays, s.cfg.ClickHouse.Cluster)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("sink: schema: %w", err)
	}
	s.log.Info("schema ready", "applied", applied)
	store := chstore.NewStore(conn, time.Duration(s.cfg.ClickHouse.QueryTimeoutMs)*time.Millisecond)
	pipe, err := pipeline.New(s.cfg.pipelineConfig(s.brokers, s.kafkaTLS), store, store, s.log, s.hooks)
	if err != nil {
		return err
	}
	s.pipe.Store(pipe)
	var det *detect.Detector
	if s.cfg.Detect.IntervalMs > 0 {
		pub := detect.NewKafkaPublisherTLS(s.brokers, s.kafkaTLS, s.cfg.Topics().Events)
		defer pub.Close()
		if det, err = detect.New(s.cfg.Detect, conn, pub, s.log); err != nil {
			return err
		}
		s.detector.Store(det)
	}
	reg := prometheus.NewRegistry()
	registerMetrics(reg, pipe, det)
	ln, err := net.Listen("tcp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("sink: listen %s: %w", s.cfg.ListenAddr, err)
	}
	s.addr.Store(ln.Addr().String())
	srv := httpx.NewServer(s.cfg.ListenAddr, httpapi.Handler(reg, s.readiness), s.cfg.HTTPServer())

	rctx, stop := context.WithCancel(ctx)
	defer stop()
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	start := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(rctx); err != nil {
				errc <- fmt.Errorf("sink: %s: %w", name, err)
			}
		}()
	}
	start("pipeline", pipe.Run)
	if det != nil {
		start("detector", det.Run)
	}
	go func() {
		// HTTPS when SINK_TLS_CERT_FILE/KEY_FILE are set (validated in New).
		if err := tlsx.Serve(srv, ln, s.cfg.TLS); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("sink: http: %w", err)
		}
	}()
	close(s.ready)
	s.log.Info("sink running", "addr", s.Addr(), "group", s.cfg.GroupID)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		s.log.Error("sink stopping", "error", runErr)
	}
	stop()
	wg.Wait()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	return runErr
}

func (s *Service) readiness() error {
	p := s.pipe.Load()
	if p == nil {
		return errors.New("starting")
	}
	if !p.Healthy() {
		return errors.New("the last flush to ClickHouse failed")
	}
	if !p.Connected() {
		return errors.New("not connected to Kafka: joining the consumer group")
	}
	return nil
}

func registerMetrics(reg *prometheus.Registry, p *pipeline.Pipeline, d *detect.Detector) {
	counter := func(name, help string, f func() int64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "tally_sink", Name: name, Help: help},
			func() float64 { return float64(f()) }))
	}
	counter("messages_total", "Kafka messages consumed.", p.Stats.Messages.Load)
	counter("usage_rows_total", "Rows inserted into usage_events.", p.Stats.UsageRows.Load)
	counter("ledger_rows_total", "Rows inserted into ledger_entries.", p.Stats.LedgerRows.Load)
	counter("dead_letters_total", "Messages sent to the dead-letter topic.", p.Stats.DeadLetters.Load)
	counter("batches_total", "Batches inserted.", p.Stats.Batches.Load)
	counter("duplicates_total", "Messages not stored because an earlier message of the same partition within SINK_DEDUPE_WINDOW_MESSAGES offsets carried the same event id (a producer's retry).", p.Stats.Duplicates.Load)
	counter("dedupe_warmup_messages_total", "Messages read back to warm up the partitions' dedupe windows.", p.Stats.WarmupMessages.Load)
	counter("replayed_batches_total", "Recorded batches re-sent after a restart.", p.Stats.ReplayedBatches.Load)
	counter("insert_errors_total", "Failed insert attempts (retried).", p.Stats.InsertErrors.Load)
	counter("commit_errors_total", "Failed offset commits.", p.Stats.CommitErrors.Load)
	counter("kafka_errors_total", "Failed consumer-group joins and failed fetches (each followed by a rejoin after a backoff).", p.Stats.KafkaErrors.Load)
	counter("kafka_reconnects_total", "Consumer-group generations joined after the first (rejoins after a broker restart, coordinator change or rebalance).", p.Stats.KafkaReconnects.Load)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "tally_sink", Name: "kafka_connected", Help: "1 while the consumer is a member of a live consumer-group generation."},
		func() float64 {
			if p.Connected() {
				return 1
			}
			return 0
		}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "tally_sink", Name: "buffered_bytes", Help: "Message bytes buffered in batches."},
		func() float64 { return float64(p.Stats.BufferedBytes.Load()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "tally_sink", Name: "last_flush_timestamp_seconds", Help: "Unix time of the last successful flush."},
		func() float64 { return float64(p.Stats.LastFlushUnixMs.Load()) / 1000 }))
	if d != nil {
		counter("abuse_flags_total", "abuse.flagged events published.", d.Stats.Flags.Load)
		counter("detector_errors_total", "Failed detector runs.", d.Stats.Errors.Load)
	}
	reg.MustRegister(prometheus.NewGoCollector())
}

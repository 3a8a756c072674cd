package admitter

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
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/services/admitter/follow"
	"github.com/tallyhq/tally/services/admitter/idem"
	"github.com/tallyhq/tally/services/admitter/produce"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/pricebook"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Publisher makes one event durable on the events topic (acks=all) and reports where.
type Publisher = produce.Publisher

// HeaderSource carries the producing admitter's CloudEvents source on every message, so that
// the peer follower skips its own events without decoding them.
const HeaderSource = produce.HeaderSource

// Producers for the events topic (ADMITTER_PRODUCER); see package produce.
const (
	ProducerEager  = produce.Eager
	ProducerWriter = produce.Writer
)

// Service is one admitter: HTTP API, decision core, event publisher and state followers.
type Service struct {
	cfg Config
	// authThrottle counts failed authentications per client address, across key reloads.
	authThrottle *httpx.AuthThrottle
	log          *slog.Logger
	book         *pricebook.Book
	brokers      []string
	topics       kafkax.Topics
	// kafkaTLS is the KAFKA_TLS_* client config, nil = plaintext.
	kafkaTLS *tls.Config
	source   string

	mu    sync.Mutex // guards table, idem
	table *decide.Table
	idem  *idem.Store         // request_id → answers (idempotency), open requests
	peers map[string]peerOpen // requests started in the log by others (ADMITTER_FOLLOW_PEERS)
	// peerDone is a ring of the finished requests in peers, oldest at peerDoneHead, at most
	// ADMITTER_IDEMPOTENCY_MAX.
	peerDone     []string
	peerDoneHead int
	peerLog      *follow.Log // the peer follower's reader of the events topic, and its positions

	keys     atomic.Pointer[httpx.Keyring]
	keyStamp httpx.FileStamp

	// producer is the events-topic producer (ADMITTER_PRODUCER); pub is what publish calls:
	// the producer, or a test's Publisher.
	producer *produce.Producer
	pub      Publisher
	dlq      *kafka.Writer
	m        *metrics

	ln      net.Listener
	srv     *http.Server
	ready   atomic.Bool
	readyCh chan struct{}
	// stateLoaded is closed once the balances and limits topics are loaded: the peer follower
	// reads the events topic from then on, so that the accounts of the events it reads back
	// are known (their holds count, their settlements are quoted against their balances).
	stateLoaded chan struct{}
}

// New validates cfg, loads the price book (a bad one stops the service with the reason),
// binds the listen address and prepares the Kafka writers. Run starts it.
func New(cfg Config, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("admitter: settings: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	book, err := pricebook.LoadOrDefault(cfg.PriceBookPath)
	if err != nil {
		return nil, fmt.Errorf("admitter: price book: %w", err)
	}
	core := cfg.Core()
	core.OverageFromAvailable = book.ChargesExcessFromAvailable() // the policy is the price book's
	table, err := decide.NewTable(book, core)
	if err != nil {
		return nil, fmt.Errorf("admitter: %w", err)
	}
	brokers, _ := kafkax.ParseBrokers(cfg.KafkaBrokers)
	kafkaTLS, err := cfg.KafkaTLS.Build()
	if err != nil {
		return nil, fmt.Errorf("admitter: KAFKA_TLS_*: %w", err)
	}
	s := &Service{cfg: cfg, log: log, book: book, brokers: brokers, topics: kafkax.NewTopics(cfg.TopicPrefix), kafkaTLS: kafkaTLS,
		source: cfg.source(), table: table, idem: idem.New(cfg.IdempotencyMax), peers: map[string]peerOpen{},
		m: newMetrics(), readyCh: make(chan struct{}), stateLoaded: make(chan struct{})}
	if s.authThrottle, err = httpx.NewAuthThrottle(cfg.AuthFailuresMax, ms(cfg.AuthFailureWindowMs), cfg.AuthFailureClientsMax, nil); err != nil {
		return nil, fmt.Errorf("admitter: %w", err)
	}
	if err := s.ReloadKeys(); err != nil {
		return nil, err
	}
	wc := kafkax.WriterConfig{BatchTimeout: ms(cfg.BatchTimeoutMs), BatchSize: cfg.BatchMax,
		WriteTimeout: ms(cfg.PublishTimeoutMs), AttemptsMax: 3, TLS: kafkaTLS}
	s.dlq = kafkax.NewWriter(brokers, "", wc) // wc carries KAFKA_TLS_*
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("admitter: listen %s: %w", cfg.ListenAddr, err)
	}
	s.producer = produce.New(produce.Config{Kind: cfg.Producer, Brokers: brokers, Topic: s.topics.Events,
		Source: s.source, TLS: kafkaTLS, PublishTimeout: ms(cfg.PublishTimeoutMs), Linger: ms(cfg.LingerMs),
		InflightMax: cfg.InflightMax, BufferMax: cfg.ProduceBufferMax, Writers: cfg.Writers, Writer: wc})
	s.pub = s.producer
	s.ln = ln
	s.peerLog = s.newPeerLog()
	s.srv = httpx.NewServer(cfg.ListenAddr, s.Handler(), cfg.HTTPServer())
	return s, nil
}

// Addr is the bound HTTP address (useful with port 0).
func (s *Service) Addr() string { return s.ln.Addr().String() }

// URL is the base URL of the HTTP API: https://Addr when ADMITTER_TLS_* is set, else http://Addr.
func (s *Service) URL() string {
	if s.cfg.TLS.Enabled() {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// Ready is closed once the compacted balances and limits topics are loaded.
func (s *Service) Ready() <-chan struct{} { return s.readyCh }

// Metrics returns the Prometheus registry (served on /metrics).
func (s *Service) Metrics() *prometheus.Registry { return s.m.reg }

// Run serves until ctx is cancelled, then shuts down: stops accepting, waits for the
// in-flight calls (bounded by ADMITTER_SHUTDOWN_TIMEOUT_MS) and closes the producers.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	go func() {
		// HTTPS when ADMITTER_TLS_CERT_FILE/KEY_FILE are set (validated in New).
		if err := tlsx.Serve(s.srv, s.ln, s.cfg.TLS); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admitter: serve: %w", err)
		}
	}()
	var loaded sync.WaitGroup
	loaded.Add(2)
	if s.cfg.FollowPeers {
		loaded.Add(1)
		wg.Add(1)
		go func() { defer wg.Done(); s.peerLog.Run(ctx, loaded.Done, s.stateLoaded, s.applyPeer) }()
	}
	var stateLeft atomic.Int32 // the peer follower reads once the balances and limits are loaded
	stateLeft.Store(2)
	for _, topic := range []string{s.topics.Balances, s.topics.Limits} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			apply := func(ctx context.Context, msg kafka.Message) { s.applyState(ctx, topic, msg) }
			s.followSource().Compacted(ctx, topic, apply, func() {
				loaded.Done()
				if stateLeft.Add(-1) == 0 {
					close(s.stateLoaded)
				}
			})
		}()
	}
	go func() {
		loaded.Wait()
		if ctx.Err() == nil {
			s.ready.Store(true)
			close(s.readyCh)
			s.log.Info("admitter ready", "addr", s.Addr(), "accounts", s.accounts())
		}
	}()
	wg.Add(1)
	go func() { defer wg.Done(); s.housekeeping(ctx) }()

	s.log.Info("admitter started", "addr", s.Addr(), "source", s.source, "price_book", s.book.Version)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	sctx, scancel := context.WithTimeout(context.Background(), ms(s.cfg.ShutdownTimeoutMs))
	defer scancel()
	_ = s.srv.Shutdown(sctx)
	cancel()
	wg.Wait()
	s.producer.Close(sctx)
	_ = s.dlq.Close()
	s.log.Info("admitter stopped")
	return runErr
}

// housekeeping expires open requests whose hold timed out and polls the key file.
func (s *Service) housekeeping(ctx context.Context) {
	exp := time.NewTicker(ms(s.cfg.ExpireIntervalMs))
	defer exp.Stop()
	var poll <-chan time.Time
	if s.cfg.APIKeysFile != "" && s.cfg.APIKeysPollMs > 0 {
		t := time.NewTicker(ms(s.cfg.APIKeysPollMs))
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-exp.C:
			s.expire(now)
		case <-poll:
			if s.keyFileChanged() {
				if err := s.ReloadKeys(); err != nil {
					s.log.Error("api keys reload failed; previous keys stay", "err", err)
				} else {
					s.log.Info("api keys reloaded", "keys", s.keys.Load().Len())
				}
			}
		}
	}
}

func (s *Service) expire(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.table.Expire(now.UnixMilli(), s.cfg.ExpireBudget, func(h uint32) {
		if s.idem.Expire(h) {
			s.m.expired.Inc()
		}
	})
	s.expirePeersLocked(now.UnixMilli(), s.cfg.ExpireBudget)
	s.m.open.Set(float64(s.table.OpenRequests()))
}

func (s *Service) accounts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.table.Accounts()
}

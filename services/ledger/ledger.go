// Package ledger is Tally's credit ledger service: the settings, and the constructor that
// wires the pure fold (package fold), the Kafka engine (package engine) and the HTTP API
// (package api). See README.md for the design.
package ledger

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/webhook"
	"github.com/tallyhq/tally/shared/bounds"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/pricebook"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Config is every ledger setting, read from the environment with caarlos0/env.
type Config struct {
	Brokers       string `env:"KAFKA_BROKERS" envDefault:"127.0.0.1:9092"`
	TopicPrefix   string `env:"TALLY_TOPIC_PREFIX" envDefault:"tally."`
	PriceBookPath string `env:"TALLY_PRICEBOOK_PATH"`

	// ListenAddr is the HTTP address (port 0 picks a free port; see Service.Addr).
	ListenAddr string `env:"LEDGER_LISTEN_ADDR" envDefault:"127.0.0.1:8082"`
	// AdminKeys are the admin bearer keys, separate from edge keys: "id:hmac:<hex>,..." (the
	// HMAC-SHA256 of each token under KeyHashSecret, see `tallyctl hash-key`; such tokens
	// start with "ta_") or legacy "id:sha256hex". The id is recorded in every event a write
	// publishes (admin_key_id).
	AdminKeys string `env:"LEDGER_ADMIN_KEYS"`
	// CustomerKeysFile is the customer keys file (LEDGER_CUSTOMER_KEYS_FILE, default "" = no
	// customer keys: the /v1/customer routes refuse every token; at most 1 MiB): one key a
	// line, "id:hmac:<hex>:account=<id>" or "id:hmac:<hex>:org=<id>", the HMAC-SHA256 of a
	// "tcu_" token under LEDGER_KEY_HASH_SECRET (`tallyctl customer-key` appends one). Each key
	// reads only its account, or the accounts of its organisation. Reloaded when it changes
	// (LEDGER_CUSTOMER_KEYS_POLL_MS); a bad edit is logged and the previous keys stay.
	CustomerKeysFile string `env:"LEDGER_CUSTOMER_KEYS_FILE" envDefault:""`
	// CustomerKeysPollMs is how often the customer keys file is checked for a change
	// (LEDGER_CUSTOMER_KEYS_POLL_MS, default 5000, 0..3600000; 0 = read at start only).
	CustomerKeysPollMs int64 `env:"LEDGER_CUSTOMER_KEYS_POLL_MS" envDefault:"5000"`
	// Peers are the base URLs of the other ledger instances in the consumer group,
	// "http://ledger-1:8082,..." (LEDGER_PEERS, default "" = this instance is alone; at most
	// 64). Each instance folds only the partitions it owns; asked about an account it does not
	// know, it asks its peers, so any instance answers for every account.
	Peers string `env:"LEDGER_PEERS"`
	// PeerTimeoutMs bounds one request to a peer (LEDGER_PEER_TIMEOUT_MS, default 5000,
	// 1..600000).
	PeerTimeoutMs int64 `env:"LEDGER_PEER_TIMEOUT_MS" envDefault:"5000"`
	// KeyHashSecret is the server secret hmac key entries are made with (LEDGER_KEY_HASH_SECRET,
	// default "" = legacy entries only; else at least 32 bytes).
	KeyHashSecret string `env:"LEDGER_KEY_HASH_SECRET" envDefault:""`
	// AuthFailuresMax is how many failed authentications a client address may make per
	// AuthFailureWindowMs before it is answered 429 with Retry-After until the window ends
	// (LEDGER_AUTH_FAILURES_MAX, default 20, 1..1000000).
	AuthFailuresMax int `env:"LEDGER_AUTH_FAILURES_MAX" envDefault:"20"`
	// AuthFailureWindowMs is that window (LEDGER_AUTH_FAILURE_WINDOW_MS, default 60000, 1000..86400000).
	AuthFailureWindowMs int64 `env:"LEDGER_AUTH_FAILURE_WINDOW_MS" envDefault:"60000"`
	// AuthFailureClientsMax bounds the client addresses tracked, about 100 bytes each
	// (LEDGER_AUTH_FAILURE_CLIENTS_MAX, default 10000, 1..1000000); beyond it, new addresses
	// are not tracked until windows end.
	AuthFailureClientsMax int `env:"LEDGER_AUTH_FAILURE_CLIENTS_MAX" envDefault:"10000"`
	// Group is the consumer group of the events topic.
	Group string `env:"LEDGER_GROUP" envDefault:"tally-ledger"`
	// EnsureTopics creates missing topics at start with TopicPartitions partitions.
	EnsureTopics    bool `env:"LEDGER_ENSURE_TOPICS" envDefault:"true"`
	TopicPartitions int  `env:"LEDGER_TOPIC_PARTITIONS" envDefault:"4"`
	TopicReplicas   int  `env:"LEDGER_TOPIC_REPLICAS" envDefault:"1"`

	BatchMax           int   `env:"LEDGER_BATCH_MAX" envDefault:"5000"`
	BatchWaitMs        int64 `env:"LEDGER_BATCH_WAIT_MS" envDefault:"2"`
	FetchBytesMax      int   `env:"LEDGER_FETCH_MAX_BYTES" envDefault:"8388608"`
	FetchWaitMs        int64 `env:"LEDGER_FETCH_WAIT_MS" envDefault:"100"`
	QueueMax           int   `env:"LEDGER_QUEUE_MAX" envDefault:"10000"`
	WriteTimeoutMs     int64 `env:"LEDGER_WRITE_TIMEOUT_MS" envDefault:"10000"`
	WriteAttemptsMax   int   `env:"LEDGER_WRITE_ATTEMPTS_MAX" envDefault:"5"`
	RetryBackoffMs     int64 `env:"LEDGER_RETRY_BACKOFF_MS" envDefault:"1000"`
	JournalPerAccount  int   `env:"LEDGER_JOURNAL_PER_ACCOUNT" envDefault:"64"`
	JournalAccountsMax int   `env:"LEDGER_JOURNAL_ACCOUNTS_MAX" envDefault:"10000"`
	BodyBytesMax       int64 `env:"LEDGER_BODY_MAX_BYTES" envDefault:"65536"`
	PageMax            int   `env:"LEDGER_PAGE_MAX" envDefault:"500"`
	PublishTimeoutMs   int64 `env:"LEDGER_PUBLISH_TIMEOUT_MS" envDefault:"10000"`
	ShutdownTimeoutMs  int64 `env:"LEDGER_SHUTDOWN_TIMEOUT_MS" envDefault:"10000"`

	// Fold policy (see package fold).
	PartitionsTotal     int64 `env:"LEDGER_LOAD_PARTITIONS" envDefault:"4"`
	ParkTimeoutMs       int64 `env:"LEDGER_PARK_TIMEOUT_MS" envDefault:"3600000"`
	ParkedPerAccountMax int   `env:"LEDGER_PARKED_PER_ACCOUNT_MAX" envDefault:"8"`
	HoldsPerAccountMax  int   `env:"LEDGER_HOLDS_PER_ACCOUNT_MAX" envDefault:"1024"`
	GrantsPerAccountMax int   `env:"LEDGER_GRANTS_PER_ACCOUNT_MAX" envDefault:"64"`

	// AccountSharePermille (LEDGER_ACCOUNT_SHARE_PERMILLE, default 100, range [1, 1000]) bounds
	// one account's weight in the endpoint load estimate: per endpoint and priority, an
	// account's open holds are scaled by LEDGER_LOAD_PARTITIONS only up to this share of the
	// endpoint's capacity_inflight (at least one hold); beyond it they count one for one. All
	// of an account's holds sit on its own partition, so without the bound one account at its
	// admitter share (ADMITTER_ACCOUNT_SHARE_PERMILLE) would read as that share × partitions
	// and shed standard and batch traffic for everyone. Keep it at the admitter's share.
	AccountSharePermille int64 `env:"LEDGER_ACCOUNT_SHARE_PERMILLE" envDefault:"100"`

	// Dedupe: how long (log time) an applied id is remembered, and how many per account.
	DedupeWindowMs      int64 `env:"LEDGER_DEDUPE_WINDOW_MS" envDefault:"86400000"`
	DedupePerAccountMax int   `env:"LEDGER_DEDUPE_PER_ACCOUNT_MAX" envDefault:"4096"`
	// FutureSkewMsMax: how far an event's time may run ahead of its Kafka record timestamp;
	// an event further ahead is dead-lettered (future_time), never applied, so that it cannot
	// move the ledger's clock (hold expiry, the dedupe horizon) ahead.
	FutureSkewMsMax int64 `env:"LEDGER_FUTURE_SKEW_MAX_MS" envDefault:"300000"`
	// RenewalCatchUpMax (LEDGER_RENEWAL_CATCH_UP_MAX, default 12, range [1, 1200]) bounds the
	// billing periods a subscription catches up in order after a silence of its partition's
	// log; older missed periods are skipped (no allocation, nothing carried).
	RenewalCatchUpMax int `env:"LEDGER_RENEWAL_CATCH_UP_MAX" envDefault:"12"`
	// TickIntervalMs (LEDGER_TICK_INTERVAL_MS, default 1000, range [50, 3600000]) is how long an
	// events-topic partition this ledger owns may carry no message before the ledger publishes
	// a tally.clock.tick.v1 into it (acks=all). The tick moves the partition's log time, so an
	// expired grant is posted to breakage and an abandoned hold released within about its
	// expiry plus this interval, with no customer traffic.
	TickIntervalMs       int64 `env:"LEDGER_TICK_INTERVAL_MS" envDefault:"1000"`
	HistoryWindowMs      int64 `env:"LEDGER_HISTORY_WINDOW_MS" envDefault:"3600000"`
	RejectRequestsMin    int32 `env:"LEDGER_REJECT_MIN_REQUESTS" envDefault:"20"`
	RejectRatioPermille  int32 `env:"LEDGER_REJECT_RATIO_PERMILLE" envDefault:"500"`
	RejectFactorPermille int32 `env:"LEDGER_REJECT_FACTOR_PERMILLE" envDefault:"700"`
	FlagPenaltyPermille  int32 `env:"LEDGER_FLAG_PENALTY_PERMILLE" envDefault:"500"`
	FlagDecayMs          int64 `env:"LEDGER_FLAG_DECAY_MS" envDefault:"86400000"`
	BlockMs              int64 `env:"LEDGER_BLOCK_MS" envDefault:"86400000"`
	CleanRequestsMin     int64 `env:"LEDGER_CLEAN_MIN_REQUESTS" envDefault:"100"`
	CleanBonusPermille   int32 `env:"LEDGER_CLEAN_BONUS_PERMILLE" envDefault:"1200"`

	// HTTP is LEDGER_HTTP_*: the HTTP server's timeouts and header bound (httpx.ServerSettings).
	HTTP httpx.ServerSettings `envPrefix:"LEDGER_"`

	// TLS is LEDGER_TLS_*: HTTPS when LEDGER_TLS_CERT_FILE and LEDGER_TLS_KEY_FILE are set,
	// optionally requiring client certificates (see package tlsx).
	TLS tlsx.ServerConfig `envPrefix:"LEDGER_TLS_"`
	// KafkaTLS is KAFKA_TLS_*: TLS to the brokers for every writer, reader, the consumer
	// group and topic creation.
	KafkaTLS tlsx.ClientConfig `envPrefix:"KAFKA_TLS_"`
	// Webhook is LEDGER_WEBHOOK_*: the signed-webhook dispatcher of the notifications topic,
	// on when LEDGER_WEBHOOK_URL is set (see package webhook).
	Webhook WebhookSettings

	// Book overrides TALLY_PRICEBOOK_PATH when set in code (tests, tallyctl run).
	Book *pricebook.Book `env:"-"`
	// Logger defaults to slog.Default().
	Logger *slog.Logger `env:"-"`
	// FaultHook (tests only) injects a crash after a batch's write stage; see engine.Config.
	FaultHook func(stage string) error `env:"-"`
	// Now (tests only) is the admin API's clock: the time of the events it publishes (and of
	// their Kafka records). nil = time.Now. A test moves log time months ahead with it.
	Now func() time.Time `env:"-"`
}

// DefaultConfig returns the defaults (the envDefault values) for code-built configs. The fold
// policy's defaults are the fold's own (fold.DefaultConfig), but for PartitionsTotal.
func DefaultConfig() Config {
	f := fold.DefaultConfig(nil)
	ms := int64(time.Millisecond)
	return Config{Brokers: "127.0.0.1:9092", TopicPrefix: kafkax.DefaultPrefix, ListenAddr: "127.0.0.1:8082",
		Group: "tally-ledger", PeerTimeoutMs: 5000, CustomerKeysPollMs: 5000, EnsureTopics: true, TopicPartitions: 4, TopicReplicas: 1,
		BatchMax: 5000, BatchWaitMs: 2, FetchBytesMax: 8 << 20, FetchWaitMs: 100, QueueMax: 10_000,
		WriteTimeoutMs: 10_000, WriteAttemptsMax: 5, RetryBackoffMs: 1000, JournalPerAccount: 64, JournalAccountsMax: 10_000,
		BodyBytesMax: 64 << 10, PageMax: 500, PublishTimeoutMs: 10_000, ShutdownTimeoutMs: 10_000,
		PartitionsTotal: 4, AccountSharePermille: f.AccountSharePermille, ParkTimeoutMs: f.ParkTimeoutNs / ms,
		ParkedPerAccountMax: f.ParkedPerAccountMax, HoldsPerAccountMax: f.HoldsPerAccountMax, GrantsPerAccountMax: f.GrantsPerAccountMax,
		DedupeWindowMs: f.DedupeWindowNs / ms, DedupePerAccountMax: f.DedupePerAccountMax, FutureSkewMsMax: f.FutureSkewNsMax / ms,
		RenewalCatchUpMax: f.RenewalCatchUpMax, TickIntervalMs: 1000, HistoryWindowMs: f.HistoryWindowNs / ms, RejectRequestsMin: f.RejectRequestsMin,
		RejectRatioPermille: f.RejectRatioPermille, RejectFactorPermille: f.RejectFactorPermille,
		FlagPenaltyPermille: f.FlagPenaltyPermille, FlagDecayMs: f.FlagDecayNs / ms, BlockMs: f.BlockNs / ms,
		CleanRequestsMin: f.CleanRequestsMin, CleanBonusPermille: f.CleanBonusPermille,
		AuthFailuresMax: 20, AuthFailureWindowMs: 60_000, AuthFailureClientsMax: 10_000, Webhook: DefaultWebhookSettings,
		HTTP: httpx.DefaultServerSettings,
		TLS:  tlsx.ServerConfig{MinVersion: "1.2", ReloadCheckMs: tlsx.DefaultReloadCheckMs}}
}

// HTTPServer is the HTTP server's bounds from the LEDGER_HTTP_* settings.
func (c Config) HTTPServer() httpx.ServerConfig {
	return c.HTTP.Config()
}

// AdminKeyPrefix starts every admin token configured as an hmac entry.
const AdminKeyPrefix = "ta_"

// keyOptions are the keyring options of LEDGER_KEY_HASH_SECRET; th may be nil.
func (c Config) keyOptions(th *httpx.AuthThrottle) httpx.KeyringOptions {
	return httpx.KeyringOptions{HashSecret: []byte(c.KeyHashSecret), TokenPrefix: AdminKeyPrefix, Throttle: th}
}

// Validate reports every bad setting by its variable name, joined.
// peersMax bounds LEDGER_PEERS.
const peersMax = 64

// ParsePeers splits LEDGER_PEERS into base URLs (http or https, a host, no query), without a
// trailing slash.
func ParsePeers(s string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimRight(strings.TrimSpace(p), "/")
		if p == "" {
			continue
		}
		u, err := url.Parse(p)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("%q: want a base URL, http(s)://host:port", p)
		}
		out = append(out, p)
	}
	if len(out) > peersMax {
		return nil, fmt.Errorf("%d peers, at most %d", len(out), peersMax)
	}
	return out, nil
}

func (c Config) Validate() error {
	var errs []error
	if _, err := kafkax.ParseBrokers(c.Brokers); err != nil {
		errs = append(errs, fmt.Errorf("KAFKA_BROKERS: %w", err))
	}
	if c.TopicPrefix == "" || len(c.TopicPrefix) > 100 {
		errs = append(errs, errors.New("TALLY_TOPIC_PREFIX: required, at most 100 bytes"))
	}
	if c.Book == nil {
		if _, err := pricebook.LoadOrDefault(c.PriceBookPath); err != nil {
			errs = append(errs, fmt.Errorf("TALLY_PRICEBOOK_PATH: %w", err))
		}
	}
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		errs = append(errs, fmt.Errorf("LEDGER_LISTEN_ADDR: %w", err))
	}
	if c.KeyHashSecret != "" && len(c.KeyHashSecret) < httpx.HashSecretBytesMin {
		errs = append(errs, fmt.Errorf("LEDGER_KEY_HASH_SECRET: at least %d bytes", httpx.HashSecretBytesMin))
	}
	if k, err := httpx.ParseKeyringWith(c.AdminKeys, c.keyOptions(nil)); err != nil {
		errs = append(errs, fmt.Errorf("LEDGER_ADMIN_KEYS: %w", err))
	} else if k.Len() == 0 {
		errs = append(errs, errors.New("LEDGER_ADMIN_KEYS: at least one admin key (id:hmac:<hex> or id:sha256hex) required"))
	}
	if c.CustomerKeysFile != "" {
		if c.KeyHashSecret == "" {
			errs = append(errs, errors.New("LEDGER_CUSTOMER_KEYS_FILE: customer keys are hmac entries; set LEDGER_KEY_HASH_SECRET"))
		} else if _, err := api.LoadCustomerKeys(c.CustomerKeysFile, []byte(c.KeyHashSecret), nil); err != nil {
			errs = append(errs, fmt.Errorf("LEDGER_CUSTOMER_KEYS_FILE: %w", err))
		}
	}
	if err := events.CheckID("LEDGER_GROUP", c.Group); err != nil {
		errs = append(errs, err)
	}
	rng := bounds.Into[int64](&errs, "")
	rng("LEDGER_AUTH_FAILURES_MAX", int64(c.AuthFailuresMax), 1, 1_000_000)
	rng("LEDGER_AUTH_FAILURE_WINDOW_MS", c.AuthFailureWindowMs, 1000, 86_400_000)
	rng("LEDGER_AUTH_FAILURE_CLIENTS_MAX", int64(c.AuthFailureClientsMax), 1, 1_000_000)
	day := int64(86_400_000)
	rng("LEDGER_TOPIC_PARTITIONS", int64(c.TopicPartitions), 1, 10_000)
	if _, err := ParsePeers(c.Peers); err != nil {
		errs = append(errs, fmt.Errorf("LEDGER_PEERS: %w", err))
	}
	rng("LEDGER_PEER_TIMEOUT_MS", c.PeerTimeoutMs, 1, 600_000)
	rng("LEDGER_CUSTOMER_KEYS_POLL_MS", c.CustomerKeysPollMs, 0, 3_600_000)
	rng("LEDGER_TOPIC_REPLICAS", int64(c.TopicReplicas), 1, 16)
	rng("LEDGER_BATCH_MAX", int64(c.BatchMax), 1, 100_000)
	rng("LEDGER_BATCH_WAIT_MS", c.BatchWaitMs, 0, 10_000)
	rng("LEDGER_FETCH_MAX_BYTES", int64(c.FetchBytesMax), 1<<10, 256<<20)
	rng("LEDGER_FETCH_WAIT_MS", c.FetchWaitMs, 1, 60_000)
	rng("LEDGER_QUEUE_MAX", int64(c.QueueMax), 1, 1_000_000)
	rng("LEDGER_WRITE_TIMEOUT_MS", c.WriteTimeoutMs, 100, 600_000)
	rng("LEDGER_WRITE_ATTEMPTS_MAX", int64(c.WriteAttemptsMax), 1, 100)
	rng("LEDGER_RETRY_BACKOFF_MS", c.RetryBackoffMs, 1, 600_000)
	rng("LEDGER_JOURNAL_PER_ACCOUNT", int64(c.JournalPerAccount), 0, 100_000)
	rng("LEDGER_JOURNAL_ACCOUNTS_MAX", int64(c.JournalAccountsMax), 1, 10_000_000)
	rng("LEDGER_BODY_MAX_BYTES", c.BodyBytesMax, 256, 16<<20)
	rng("LEDGER_PAGE_MAX", int64(c.PageMax), 1, 100_000)
	rng("LEDGER_PUBLISH_TIMEOUT_MS", c.PublishTimeoutMs, 100, 600_000)
	rng("LEDGER_SHUTDOWN_TIMEOUT_MS", c.ShutdownTimeoutMs, 100, 600_000)
	rng("LEDGER_LOAD_PARTITIONS", c.PartitionsTotal, 1, 100_000)
	rng("LEDGER_ACCOUNT_SHARE_PERMILLE", c.AccountSharePermille, 1, 1000)
	rng("LEDGER_PARK_TIMEOUT_MS", c.ParkTimeoutMs, 1000, 7*day)
	rng("LEDGER_PARKED_PER_ACCOUNT_MAX", int64(c.ParkedPerAccountMax), 0, fold.ParkedPerAccountMaxLimit)
	rng("LEDGER_HOLDS_PER_ACCOUNT_MAX", int64(c.HoldsPerAccountMax), 1, fold.HoldsPerAccountMaxLimit)
	rng("LEDGER_GRANTS_PER_ACCOUNT_MAX", int64(c.GrantsPerAccountMax), 1, fold.GrantsPerAccountMaxLimit)
	rng("LEDGER_DEDUPE_WINDOW_MS", c.DedupeWindowMs, 1000, 31*day)
	rng("LEDGER_DEDUPE_PER_ACCOUNT_MAX", int64(c.DedupePerAccountMax), fold.DedupePerAccountMaxFloor, fold.DedupePerAccountMaxLimit)
	rng("LEDGER_FUTURE_SKEW_MAX_MS", c.FutureSkewMsMax, 1000, day)
	rng("LEDGER_RENEWAL_CATCH_UP_MAX", int64(c.RenewalCatchUpMax), 1, 1200)
	rng("LEDGER_TICK_INTERVAL_MS", c.TickIntervalMs, 50, 3_600_000)
	rng("LEDGER_HISTORY_WINDOW_MS", c.HistoryWindowMs, 60_000, 31*day)
	rng("LEDGER_REJECT_MIN_REQUESTS", int64(c.RejectRequestsMin), 1, 1_000_000)
	rng("LEDGER_REJECT_RATIO_PERMILLE", int64(c.RejectRatioPermille), 0, 1000)
	rng("LEDGER_REJECT_FACTOR_PERMILLE", int64(c.RejectFactorPermille), 0, events.MaxFactorPermille)
	rng("LEDGER_FLAG_PENALTY_PERMILLE", int64(c.FlagPenaltyPermille), 0, 1000)
	rng("LEDGER_FLAG_DECAY_MS", c.FlagDecayMs, 60_000, 365*day)
	rng("LEDGER_BLOCK_MS", c.BlockMs, 60_000, 365*day)
	rng("LEDGER_CLEAN_MIN_REQUESTS", c.CleanRequestsMin, 1, 1<<40)
	rng("LEDGER_CLEAN_BONUS_PERMILLE", int64(c.CleanBonusPermille), 1000, events.MaxFactorPermille)
	if err := c.HTTP.ValidateEnv("LEDGER_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.ValidateEnv("LEDGER_TLS_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.KafkaTLS.ValidateEnv("KAFKA_TLS_"); err != nil {
		errs = append(errs, err)
	}
	c.Webhook.validate(&errs)
	return errors.Join(errs...)
}

// FoldConfig is the fold policy these settings describe.
func (c Config) FoldConfig(book *pricebook.Book) fold.Config {
	ms := int64(time.Millisecond)
	return fold.Config{Book: book, PartitionsTotal: c.PartitionsTotal, AccountSharePermille: c.AccountSharePermille, ParkTimeoutNs: c.ParkTimeoutMs * ms,
		ParkedPerAccountMax: c.ParkedPerAccountMax, HoldsPerAccountMax: c.HoldsPerAccountMax, GrantsPerAccountMax: c.GrantsPerAccountMax,
		DedupeWindowNs: c.DedupeWindowMs * ms, DedupePerAccountMax: c.DedupePerAccountMax, FutureSkewNsMax: c.FutureSkewMsMax * ms,
		RenewalCatchUpMax: c.RenewalCatchUpMax, HistoryWindowNs: c.HistoryWindowMs * ms, RejectRequestsMin: c.RejectRequestsMin, RejectRatioPermille: c.RejectRatioPermille,
		RejectFactorPermille: c.RejectFactorPermille, FlagPenaltyPermille: c.FlagPenaltyPermille, FlagDecayNs: c.FlagDecayMs * ms,
		BlockNs: c.BlockMs * ms, CleanRequestsMin: c.CleanRequestsMin, CleanBonusPermille: c.CleanBonusPermille}
}

// Service is a wired ledger: engine, API server and the events publisher.
type Service struct {
	cfg     Config
	log     *slog.Logger
	brokers []string
	// kafkaTLS is the KAFKA_TLS_* client config, nil = plaintext.
	kafkaTLS *tls.Config
	topics   kafkax.Topics
	engine   *engine.Engine
	pub      *kafkaPublisher
	srv      *http.Server
	ln       net.Listener
	addr     chan string
	once     sync.Once
	// hooks is the webhook dispatcher (nil: LEDGER_WEBHOOK_URL unset).
	hooks *webhook.Dispatcher
	// customers are the customer keys in force; throttle is shared with the admin keyring.
	customers atomic.Pointer[api.CustomerKeys]
	throttle  *httpx.AuthThrottle
	// customersStamp is the keys file's version when last loaded.
	customersStamp httpx.FileStamp
}

// New validates cfg and wires the service. Nothing runs until Run.
func New(cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ledger: config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	peers, _ := ParsePeers(cfg.Peers) // validated above
	book := cfg.Book
	if book == nil {
		var err error
		if book, err = pricebook.LoadOrDefault(cfg.PriceBookPath); err != nil {
			return nil, fmt.Errorf("ledger: %w", err)
		}
	}
	fc := cfg.FoldConfig(book)
	if err := fc.Validate(); err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	brokers, _ := kafkax.ParseBrokers(cfg.Brokers)
	kafkaTLS, err := cfg.KafkaTLS.Build()
	if err != nil {
		return nil, fmt.Errorf("ledger: KAFKA_TLS_*: %w", err)
	}
	th, err := httpx.NewAuthThrottle(cfg.AuthFailuresMax, time.Duration(cfg.AuthFailureWindowMs)*time.Millisecond, cfg.AuthFailureClientsMax, nil)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	keys, _ := httpx.ParseKeyringWith(cfg.AdminKeys, cfg.keyOptions(th))
	svc := &Service{cfg: cfg, log: cfg.Logger, throttle: th}
	if err := svc.ReloadCustomerKeys(); err != nil {
		return nil, err
	}
	topics := kafkax.NewTopics(cfg.TopicPrefix)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	wc := kafkax.DefaultWriterConfig
	wc.WriteTimeout = time.Duration(cfg.WriteTimeoutMs) * time.Millisecond
	wc.AttemptsMax = cfg.WriteAttemptsMax
	wc.TLS = kafkaTLS
	eng := engine.New(engine.Config{
		Brokers: brokers, Topics: topics, Group: cfg.Group, Fold: fc,
		BatchMax: cfg.BatchMax, BatchWait: time.Duration(cfg.BatchWaitMs) * time.Millisecond,
		FetchBytesMax: cfg.FetchBytesMax, FetchWait: time.Duration(cfg.FetchWaitMs) * time.Millisecond, QueueMax: cfg.QueueMax,
		JournalPerAccount: cfg.JournalPerAccount, JournalAccountsMax: cfg.JournalAccountsMax,
		TickInterval: time.Duration(cfg.TickIntervalMs) * time.Millisecond,
		RetryBackoff: time.Duration(cfg.RetryBackoffMs) * time.Millisecond, Writer: wc, Logger: cfg.Logger, Registry: reg,
		FaultHook: cfg.FaultHook,
	})
	pwc := kafkax.DefaultWriterConfig
	pwc.TLS = kafkaTLS
	pub := &kafkaPublisher{w: kafkax.NewWriter(brokers, topics.Events, pwc)}
	h := api.Handler(api.Config{Admin: keys, Customers: svc.customers.Load, Book: book, BodyBytesMax: cfg.BodyBytesMax, PageMax: cfg.PageMax,
		PublishTimeout: time.Duration(cfg.PublishTimeoutMs) * time.Millisecond, Logger: cfg.Logger, Gatherer: reg, Now: cfg.Now,
		Peers: peers, PeerClient: &http.Client{Timeout: time.Duration(cfg.PeerTimeoutMs) * time.Millisecond}}, eng, pub)
	hooks, err := cfg.Webhook.dispatcher(brokers, kafkaTLS, topics, cfg.Logger, reg)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	svc.hooks = hooks
	svc.brokers, svc.kafkaTLS, svc.topics, svc.engine, svc.pub = brokers, kafkaTLS, topics, eng, pub
	svc.srv, svc.addr = httpx.NewServer(cfg.ListenAddr, h, cfg.HTTPServer()), make(chan string, 1)
	return svc, nil
}

// ReloadCustomerKeys reads LEDGER_CUSTOMER_KEYS_FILE again ("" = no customer keys). On error
// the keys in force stay (a bad edit never locks every customer out, nor lets anyone in).
func (s *Service) ReloadCustomerKeys() error {
	if s.cfg.CustomerKeysFile == "" {
		k, err := api.ParseCustomerKeys("", nil, s.throttle)
		if err != nil {
			return fmt.Errorf("ledger: customer keys: %w", err)
		}
		s.customers.Store(k)
		return nil
	}
	ver, err := httpx.FileVersion(s.cfg.CustomerKeysFile)
	if err != nil {
		return fmt.Errorf("ledger: customer keys: %w", err)
	}
	k, err := api.LoadCustomerKeys(s.cfg.CustomerKeysFile, []byte(s.cfg.KeyHashSecret), s.throttle)
	if err != nil {
		return fmt.Errorf("ledger: customer keys: %w", err)
	}
	s.customers.Store(k)
	s.customersStamp.Mark(ver)
	return nil
}

// CustomerKeys is the number of customer keys in force.
func (s *Service) CustomerKeys() int { return s.customers.Load().Len() }

// pollCustomerKeys reloads the customer keys file whenever its modification time or size
// changes, every LEDGER_CUSTOMER_KEYS_POLL_MS, until ctx ends.
func (s *Service) pollCustomerKeys(ctx context.Context) {
	if s.cfg.CustomerKeysFile == "" || s.cfg.CustomerKeysPollMs <= 0 {
		return
	}
	t := time.NewTicker(time.Duration(s.cfg.CustomerKeysPollMs) * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ver, changed := s.customersStamp.Changed(s.cfg.CustomerKeysFile)
			if !changed {
				continue
			}
			if err := s.ReloadCustomerKeys(); err != nil {
				// Logged once per change of the file, not at every poll.
				s.customersStamp.Mark(ver)
				s.log.Error("customer keys reload failed; previous keys stay", "err", err)
			} else {
				s.log.Info("customer keys reloaded", "keys", s.CustomerKeys())
			}
		}
	}
}

// Addr blocks until the HTTP server listens (or ctx ends) and returns its address, so a
// config with port 0 can be used in tests.
func (s *Service) Addr(ctx context.Context) (string, error) {
	select {
	case a := <-s.addr:
		s.addr <- a
		return a, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// URL blocks like Addr and returns the API's base URL: https:// when LEDGER_TLS_* is set.
func (s *Service) URL(ctx context.Context) (string, error) {
	a, err := s.Addr(ctx)
	if err != nil {
		return "", err
	}
	if s.cfg.TLS.Enabled() {
		return "https://" + a, nil
	}
	return "http://" + a, nil
}

// Ready reports whether the ledger state of the current assignment is restored.
func (s *Service) Ready() bool { return s.engine.Ready() }

// Webhooks is the webhook dispatcher, nil when LEDGER_WEBHOOK_URL is unset (tests read its Stats).
func (s *Service) Webhooks() *webhook.Dispatcher { return s.hooks }

// Engine exposes the engine (tests, benchmarks and the single-process stack).
func (s *Service) Engine() *engine.Engine { return s.engine }

// Run creates missing topics (if configured), serves HTTP and folds until ctx is cancelled,
// then stops in reverse order: HTTP server, engine, publisher.
func (s *Service) Run(ctx context.Context) error {
	if s.cfg.EnsureTopics {
		if err := kafkax.EnsureTopicsTLS(ctx, s.brokers, s.kafkaTLS, s.topics.Specs(s.cfg.TopicPartitions, s.cfg.TopicReplicas)); err != nil {
			return fmt.Errorf("ledger: %w", err)
		}
	}
	ln, err := net.Listen("tcp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("ledger: listen %s: %w", s.cfg.ListenAddr, err)
	}
	s.addr <- ln.Addr().String()
	s.log.Info("ledger: listening", "addr", ln.Addr().String(), "topics", s.topics.Events)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	engErr := make(chan error, 1)
	go func() { engErr <- s.engine.Run(runCtx) }()
	go s.pollCustomerKeys(runCtx)
	srvErr := make(chan error, 1)
	// HTTPS when LEDGER_TLS_CERT_FILE/KEY_FILE are set (validated in New).
	go func() { srvErr <- tlsx.Serve(s.srv, ln, s.cfg.TLS) }()
	var hookErr chan error // nil without webhooks: never ready in the select below
	if s.hooks != nil {
		hookErr = make(chan error, 1)
		go func() { hookErr <- s.hooks.Run(runCtx) }()
	}
	var first error
	select {
	case <-ctx.Done():
	case err := <-engErr:
		first = fmt.Errorf("ledger: engine: %w", err)
		engErr <- nil
	case err := <-hookErr:
		first = fmt.Errorf("ledger: webhooks stopped: %v", err)
		hookErr <- nil
	case err := <-srvErr:
		if !errors.Is(err, http.ErrServerClosed) {
			first = fmt.Errorf("ledger: http: %w", err)
		}
	}
	sctx, scancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.ShutdownTimeoutMs)*time.Millisecond)
	defer scancel()
	if err := s.srv.Shutdown(sctx); err != nil && first == nil {
		first = fmt.Errorf("ledger: http shutdown: %w", err)
	}
	cancel()
	if err := <-engErr; err != nil && first == nil {
		first = fmt.Errorf("ledger: engine: %w", err)
	}
	if hookErr != nil {
		if err := <-hookErr; err != nil && first == nil {
			first = fmt.Errorf("ledger: webhooks: %w", err)
		}
	}
	if err := s.pub.w.Close(); err != nil && first == nil {
		first = fmt.Errorf("ledger: close publisher: %w", err)
	}
	return first
}

// kafkaPublisher publishes input events keyed by account id, acks=all.
type kafkaPublisher struct{ w *kafka.Writer }

func (p *kafkaPublisher) Publish(ctx context.Context, ev events.Event) error {
	v, err := ev.Encode()
	if err != nil {
		return err
	}
	// The record's timestamp is the event's time (both are the API's clock): the fold bounds
	// how far an event's time may run ahead of its record's.
	return p.w.WriteMessages(ctx, kafka.Message{Key: []byte(ev.Subject), Value: v, Time: ev.Time})
}

var _ api.Publisher = (*kafkaPublisher)(nil)
var _ api.Reader = (*engine.Engine)(nil)

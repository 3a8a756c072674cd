// Package admitter is Tally's edge admitter: POST /v1/admit decides whether an expensive
// model request may start (and how it is funded), POST /v1/finish settles it. Decisions come
// from the pure core in package decide; this package wires it to HTTP and Kafka.
package admitter

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/bounds"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/pricebook"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Config is every setting of the admitter, read from the environment by ConfigFromEnv.
// See README.md for the table of settings.
type Config struct {
	KafkaBrokers  string `env:"KAFKA_BROKERS" envDefault:"127.0.0.1:9092"`
	TopicPrefix   string `env:"TALLY_TOPIC_PREFIX" envDefault:"tally."`
	PriceBookPath string `env:"TALLY_PRICEBOOK_PATH" envDefault:""`

	ListenAddr string `env:"ADMITTER_LISTEN_ADDR" envDefault:"127.0.0.1:8081"`
	// InstanceID names this admitter in events' source ("admitter/<id>"); "" = hostname-pid.
	InstanceID string `env:"ADMITTER_INSTANCE_ID" envDefault:""`
	// APIKeys is "id:hmac:<hex>,..." (the HMAC-SHA256 of each key under KeyHashSecret, see
	// `tallyctl hash-key`; such keys start with "tk_") or legacy "id:sha256hex"; APIKeysFile
	// holds more keys in the same format (commas or newlines), reloaded on SIGHUP and polled
	// every APIKeysPollMs (0 = no polling).
	APIKeys       string `env:"ADMITTER_API_KEYS" envDefault:""`
	APIKeysFile   string `env:"ADMITTER_API_KEYS_FILE" envDefault:""`
	APIKeysPollMs int64  `env:"ADMITTER_API_KEYS_POLL_MS" envDefault:"5000"`
	// KeyHashSecret is the server secret hmac key entries are made with (ADMITTER_KEY_HASH_SECRET,
	// default "" = legacy entries only; else at least 32 bytes). Keep it out of the keys' file.
	KeyHashSecret string `env:"ADMITTER_KEY_HASH_SECRET" envDefault:""`
	// AuthFailuresMax is how many failed authentications a client address may make per
	// AuthFailureWindowMs before it is answered 429 with Retry-After until the window ends
	// (ADMITTER_AUTH_FAILURES_MAX, default 20, 1..1000000).
	AuthFailuresMax int `env:"ADMITTER_AUTH_FAILURES_MAX" envDefault:"20"`
	// AuthFailureWindowMs is that window (ADMITTER_AUTH_FAILURE_WINDOW_MS, default 60000, 1000..86400000).
	AuthFailureWindowMs int64 `env:"ADMITTER_AUTH_FAILURE_WINDOW_MS" envDefault:"60000"`
	// AuthFailureClientsMax bounds the client addresses tracked, about 100 bytes each
	// (ADMITTER_AUTH_FAILURE_CLIENTS_MAX, default 10000, 1..1000000); beyond it, new addresses
	// are not tracked until windows end.
	AuthFailureClientsMax int `env:"ADMITTER_AUTH_FAILURE_CLIENTS_MAX" envDefault:"10000"`

	BodyBytesMax     int64 `env:"ADMITTER_BODY_MAX_BYTES" envDefault:"8192"`
	IdempotencyMax   int   `env:"ADMITTER_IDEMPOTENCY_MAX" envDefault:"200000"`
	PublishTimeoutMs int64 `env:"ADMITTER_PUBLISH_TIMEOUT_MS" envDefault:"2000"`
	// Producer is the events-topic producer: "eager" (default: kafka-go's Transport, a
	// request leaves when a request slot is free and its oldest event waited
	// ADMITTER_LINGER_MS, batches grow while a request is in flight) or "writer" (kafka-go's
	// Writer with ADMITTER_BATCH_TIMEOUT_MS, ADMITTER_BATCH_MAX and ADMITTER_WRITERS); see
	// package produce.
	Producer string `env:"ADMITTER_PRODUCER" envDefault:"eager"`
	// LingerMs is how long the eager producer lets the oldest waiting event wait for more
	// before a request leaves (0..100; 0 = as soon as a request slot is free). 1 halved the
	// broker's CPU per admit against 0 at 20k/s, for +0.5 ms at p50 (README).
	LingerMs int64 `env:"ADMITTER_LINGER_MS" envDefault:"1"`
	// InflightMax is the eager producer's produce requests in flight per broker (1..32); what
	// arrives meanwhile is batched into the next request. 1 keeps each partition's order.
	InflightMax int `env:"ADMITTER_INFLIGHT_MAX" envDefault:"1"`
	// ProduceBufferMax bounds the events held by the eager producer, queued or in flight
	// (1..10000000); beyond it Publish waits, within ADMITTER_PUBLISH_TIMEOUT_MS (then 503).
	ProduceBufferMax int `env:"ADMITTER_PRODUCE_BUFFER_MAX" envDefault:"20000"`
	// BatchTimeoutMs is the kafka-go Writer's BatchTimeout (ADMITTER_PRODUCER=writer; its 1 s
	// default would add a second to each call).
	BatchTimeoutMs int64 `env:"ADMITTER_BATCH_TIMEOUT_MS" envDefault:"2"`
	// BatchMax is the kafka-go Writer's messages per batch and partition.
	BatchMax int `env:"ADMITTER_BATCH_MAX" envDefault:"100"`
	// Writers is the number of kafka-go Writers (each keeps one request in flight per partition).
	Writers int `env:"ADMITTER_WRITERS" envDefault:"1"`

	ExpireIntervalMs  int64 `env:"ADMITTER_EXPIRE_INTERVAL_MS" envDefault:"100"`
	ExpireBudget      int   `env:"ADMITTER_EXPIRE_BUDGET" envDefault:"20000"`
	ShutdownTimeoutMs int64 `env:"ADMITTER_SHUTDOWN_TIMEOUT_MS" envDefault:"10000"`

	AccountsMax             int   `env:"ADMITTER_ACCOUNTS_MAX" envDefault:"2000000"`
	OpenMax                 int   `env:"ADMITTER_OPEN_MAX" envDefault:"1000000"`
	PendingMax              int   `env:"ADMITTER_PENDING_MAX" envDefault:"2000000"`
	Instances               int64 `env:"ADMITTER_INSTANCES" envDefault:"1"`
	CleanBurstBonusPermille int64 `env:"ADMITTER_CLEAN_BURST_BONUS_PERMILLE" envDefault:"1500"`
	BatchSharePermille      int64 `env:"ADMITTER_BATCH_SHARE_PERMILLE" envDefault:"750"`
	RetryBlockedMs          int64 `env:"ADMITTER_RETRY_BLOCKED_MS" envDefault:"3600000"`
	RetryOverloadedMs       int64 `env:"ADMITTER_RETRY_OVERLOADED_MS" envDefault:"1000"`
	RetryConcurrencyMs      int64 `env:"ADMITTER_RETRY_CONCURRENCY_MS" envDefault:"1000"`
	RetryInsufficientMs     int64 `env:"ADMITTER_RETRY_INSUFFICIENT_MS" envDefault:"60000"`
	// GCPercent is the Go garbage collector's target (debug.SetGCPercent), set by
	// cmd/admitter for the whole process; 0 = leave the runtime's (GOGC). The admitter keeps
	// a large live heap (open requests and answered ids, ≈ 1 KiB each), so at the runtime's
	// default of 100 it spends long mark phases at high rates; 400 collects 2.5× less often,
	// for a heap peaking near 5× the live set (cap it with GOMEMLIMIT if needed).
	GCPercent int `env:"ADMITTER_GC_PERCENT" envDefault:"400"`
	// HugePages asks Linux to back the account table and its index with transparent huge
	// pages (madvise; decisions read them at random, so 4 KiB pages cost a TLB miss each).
	HugePages bool `env:"ADMITTER_HUGE_PAGES" envDefault:"true"`
	// FollowPeers makes the admitter read the events topic and count the other admitters'
	// holds before the ledger folds them (needed for exact credits with ADMITTER_INSTANCES>1).
	FollowPeers bool `env:"ADMITTER_FOLLOW_PEERS" envDefault:"true"`
	// ConfirmInLogOrder (with FollowPeers and ADMITTER_INSTANCES>1): after its event is
	// durable, a credit or allowance admission waits until the peer follower has read up to
	// it and keeps it only if it is covered counting what precedes it in the log; otherwise it
	// is cancelled (request.finished, cost 0) and answered 429 insufficient_credits.
	ConfirmInLogOrder bool `env:"ADMITTER_CONFIRM_IN_LOG_ORDER" envDefault:"true"`
	// LogOpenMax bounds the requests started in the events log by another admitter or by an
	// earlier incarnation of this one that the peer follower keeps, so that this admitter can
	// settle their finish (default 1000000, range 1..10000000; a few hundred bytes each, not
	// measured). Open ones stay until their hold expiry; finished ones (kept to answer repeats)
	// count too and leave at their hold expiry or after ADMITTER_IDEMPOTENCY_MAX later ones.
	// Beyond it a start is not kept (tally_admitter_log_index_full_total) and its finish here
	// answers 404 unknown_request.
	LogOpenMax int `env:"ADMITTER_LOG_OPEN_MAX" envDefault:"1000000"`

	// AccountSharePermille is the most of an endpoint's current capacity (min of
	// capacity_inflight and the adaptive limit) one account may hold in flight on this
	// admitter, whatever its tier allows (default 100, range 1..1000); beyond it the account
	// is denied concurrency_limited, so one client's open requests cannot take the endpoint.
	// The ledger weighs one account's holds in its load estimate by the same share
	// (LEDGER_ACCOUNT_SHARE_PERMILLE), so they cannot shed the endpoint for everyone either.
	AccountSharePermille int64 `env:"ADMITTER_ACCOUNT_SHARE_PERMILLE" envDefault:"100"`

	// AdaptiveEnabled turns on the local adaptive (AIMD) concurrency limit per endpoint
	// (default true), fed by the latency the admitter measures from admission to finish.
	AdaptiveEnabled bool `env:"ADMITTER_ADAPTIVE_ENABLED" envDefault:"true"`
	// AdaptiveWindowSamples is the finishes per adaptation window (default 50, 1..1000000).
	AdaptiveWindowSamples int64 `env:"ADMITTER_ADAPTIVE_WINDOW_SAMPLES" envDefault:"50"`
	// AdaptiveTolerancePermille: a window mean above baseline × this is overload (default
	// 2000, 1001..100000).
	AdaptiveTolerancePermille int64 `env:"ADMITTER_ADAPTIVE_TOLERANCE_PERMILLE" envDefault:"2000"`
	// AdaptiveFailurePermille is the failed share of a window that counts as overload
	// (default 100, 1..1000).
	AdaptiveFailurePermille int64 `env:"ADMITTER_ADAPTIVE_FAILURE_PERMILLE" envDefault:"100"`
	// AdaptiveBackoffPermille is the multiplicative decrease (default 800, 1..999).
	AdaptiveBackoffPermille int64 `env:"ADMITTER_ADAPTIVE_BACKOFF_PERMILLE" envDefault:"800"`
	// AdaptiveIncreasePermille is the additive increase, ‰ of capacity_inflight, per good
	// window or recovery step (default 50, 1..1000).
	AdaptiveIncreasePermille int64 `env:"ADMITTER_ADAPTIVE_INCREASE_PERMILLE" envDefault:"50"`
	// AdaptiveDriftPermille is the baseline's drift up per window (default 10, 0..1000).
	AdaptiveDriftPermille int64 `env:"ADMITTER_ADAPTIVE_DRIFT_PERMILLE" envDefault:"10"`
	// AdaptiveInflightMin is the absolute floor of the adaptive limit (default 1,
	// 1..1000000); the floor is the larger of it and ADMITTER_ADAPTIVE_FLOOR_PERMILLE.
	AdaptiveInflightMin int64 `env:"ADMITTER_ADAPTIVE_MIN_INFLIGHT" envDefault:"1"`
	// AdaptiveFloorPermille is the floor of the adaptive limit, ‰ of capacity_inflight
	// (default 100, 1..1000): however slow or failing the finishes, the limit stays at or
	// above it, so an endpoint is never shut by its own limit.
	AdaptiveFloorPermille int64 `env:"ADMITTER_ADAPTIVE_FLOOR_PERMILLE" envDefault:"100"`
	// AdaptiveRebaseWindows: this many windows in a row above tolerance make the lowest of
	// their means the new baseline (default 3, 1..1000): backing off did not bring the
	// latency back, so the work got slower rather than the endpoint overloaded. 1 = latency
	// never backs off, only failures do.
	AdaptiveRebaseWindows int64 `env:"ADMITTER_ADAPTIVE_REBASE_WINDOWS" envDefault:"3"`
	// AdaptiveRecoveryMs: each interval of this length without any finish on an endpoint
	// grows its limit by one increase step (default 5000, 1..3600000), so that a limit cut
	// while nothing is admitted (hence nothing finishes) recovers by itself.
	AdaptiveRecoveryMs int64 `env:"ADMITTER_ADAPTIVE_RECOVERY_MS" envDefault:"5000"`

	// HTTP is ADMITTER_HTTP_*: the HTTP server's timeouts and header bound (httpx.ServerSettings).
	HTTP httpx.ServerSettings `envPrefix:"ADMITTER_"`

	// TLS is ADMITTER_TLS_*: HTTPS when ADMITTER_TLS_CERT_FILE and ADMITTER_TLS_KEY_FILE are
	// set, optionally requiring client certificates (see package tlsx).
	TLS tlsx.ServerConfig `envPrefix:"ADMITTER_TLS_"`
	// KafkaTLS is KAFKA_TLS_*: TLS to the brokers for every writer, reader and admin client.
	KafkaTLS tlsx.ClientConfig `envPrefix:"KAFKA_TLS_"`
}

// HTTPServer is the HTTP server's bounds from the ADMITTER_HTTP_* settings.
func (c Config) HTTPServer() httpx.ServerConfig {
	return c.HTTP.Config()
}

// ConfigFromEnv reads the settings from the environment (unset = the documented default).
func ConfigFromEnv() (Config, error) {
	var c Config
	if err := env.Parse(&c); err != nil {
		return Config{}, fmt.Errorf("admitter: settings: %w", err)
	}
	return c, nil
}

// DefaultConfig returns the defaults, as if no variable were set.
func DefaultConfig() Config {
	var c Config
	_ = env.ParseWithOptions(&c, env.Options{Environment: map[string]string{}})
	return c
}

// ApplyGC sets the process's garbage collector target from ADMITTER_GC_PERCENT (0 = leave
// it); cmd/admitter calls it, an embedding process decides for itself.
func (c Config) ApplyGC() {
	if c.GCPercent != 0 {
		debug.SetGCPercent(c.GCPercent)
	}
}

// Core returns the decision core's settings.
func (c Config) Core() decide.Config {
	return decide.Config{
		AccountsMax: c.AccountsMax, OpenMax: c.OpenMax, PendingMax: c.PendingMax, Instances: c.Instances,
		CleanBurstBonusPermille: c.CleanBurstBonusPermille, BatchSharePermille: c.BatchSharePermille,
		AccountSharePermille: c.AccountSharePermille,
		RetryBlockedMs:       c.RetryBlockedMs, RetryOverloadedMs: c.RetryOverloadedMs,
		RetryConcurrencyMs: c.RetryConcurrencyMs, RetryInsufficientMs: c.RetryInsufficientMs, HugePages: c.HugePages,
		Adaptive: decide.AdaptiveConfig{Enabled: c.AdaptiveEnabled, WindowSamples: c.AdaptiveWindowSamples,
			TolerancePermille: c.AdaptiveTolerancePermille, FailurePermille: c.AdaptiveFailurePermille,
			BackoffPermille: c.AdaptiveBackoffPermille, IncreasePermille: c.AdaptiveIncreasePermille,
			DriftPermille: c.AdaptiveDriftPermille, InflightMin: c.AdaptiveInflightMin,
			FloorPermille: c.AdaptiveFloorPermille, RebaseWindows: c.AdaptiveRebaseWindows,
			RecoveryMs: c.AdaptiveRecoveryMs},
	}
}

// Validate reports every bad setting, joined, each named by its variable.
func (c Config) Validate() error {
	var errs []error
	add := func(name string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	rng := bounds.Into[int64](&errs, "")
	_, err := kafkax.ParseBrokers(c.KafkaBrokers)
	add("KAFKA_BROKERS", err)
	if c.TopicPrefix == "" || len(c.TopicPrefix) > 100 {
		errs = append(errs, errors.New("TALLY_TOPIC_PREFIX: required, at most 100 bytes"))
	}
	if c.PriceBookPath != "" {
		_, err := pricebook.Load(c.PriceBookPath)
		add("TALLY_PRICEBOOK_PATH", err)
	}
	if c.ListenAddr == "" {
		errs = append(errs, errors.New("ADMITTER_LISTEN_ADDR: required"))
	}
	if len(c.InstanceID) > 64 {
		errs = append(errs, errors.New("ADMITTER_INSTANCE_ID: at most 64 bytes"))
	}
	if c.KeyHashSecret != "" && len(c.KeyHashSecret) < httpx.HashSecretBytesMin {
		errs = append(errs, fmt.Errorf("ADMITTER_KEY_HASH_SECRET: at least %d bytes", httpx.HashSecretBytesMin))
	}
	if _, err := parseKeys(c.APIKeys, c.keyOptions(nil)); err != nil {
		add("ADMITTER_API_KEYS", err)
	}
	rng("ADMITTER_AUTH_FAILURES_MAX", int64(c.AuthFailuresMax), 1, 1_000_000)
	rng("ADMITTER_AUTH_FAILURE_WINDOW_MS", c.AuthFailureWindowMs, 1000, 86_400_000)
	rng("ADMITTER_AUTH_FAILURE_CLIENTS_MAX", int64(c.AuthFailureClientsMax), 1, 1_000_000)
	if c.APIKeysFile != "" {
		if _, err := loadKeyFile(c.APIKeysFile, c.keyOptions(nil)); err != nil {
			add("ADMITTER_API_KEYS_FILE", err)
		}
	} else if c.APIKeys == "" {
		errs = append(errs, errors.New("ADMITTER_API_KEYS: at least one key (or ADMITTER_API_KEYS_FILE) required"))
	}
	rng("ADMITTER_API_KEYS_POLL_MS", c.APIKeysPollMs, 0, 3_600_000)
	rng("ADMITTER_BODY_MAX_BYTES", c.BodyBytesMax, 256, 1<<20)
	rng("ADMITTER_IDEMPOTENCY_MAX", int64(c.IdempotencyMax), 1, 100_000_000)
	rng("ADMITTER_PUBLISH_TIMEOUT_MS", c.PublishTimeoutMs, 10, 60_000)
	if c.Producer != ProducerEager && c.Producer != ProducerWriter {
		errs = append(errs, fmt.Errorf("ADMITTER_PRODUCER: want %s or %s, got %q", ProducerEager, ProducerWriter, c.Producer))
	}
	if c.GCPercent != 0 {
		rng("ADMITTER_GC_PERCENT", int64(c.GCPercent), 25, 10_000)
	}
	rng("ADMITTER_LINGER_MS", c.LingerMs, 0, 100)
	rng("ADMITTER_INFLIGHT_MAX", int64(c.InflightMax), 1, 32)
	rng("ADMITTER_PRODUCE_BUFFER_MAX", int64(c.ProduceBufferMax), 1, 10_000_000)
	rng("ADMITTER_BATCH_TIMEOUT_MS", c.BatchTimeoutMs, 1, 100)
	rng("ADMITTER_BATCH_MAX", int64(c.BatchMax), 1, 100_000)
	rng("ADMITTER_WRITERS", int64(c.Writers), 1, 16)
	rng("ADMITTER_EXPIRE_INTERVAL_MS", c.ExpireIntervalMs, 1, 60_000)
	rng("ADMITTER_EXPIRE_BUDGET", int64(c.ExpireBudget), 1, 10_000_000)
	rng("ADMITTER_SHUTDOWN_TIMEOUT_MS", c.ShutdownTimeoutMs, 1, 600_000)
	rng("ADMITTER_LOG_OPEN_MAX", int64(c.LogOpenMax), 1, 10_000_000)
	if err := c.HTTP.ValidateEnv("ADMITTER_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.ValidateEnv("ADMITTER_TLS_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.KafkaTLS.ValidateEnv("KAFKA_TLS_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.Core().Validate(); err != nil {
		errs = append(errs, errors.New(coreNames.Replace(err.Error())))
	}
	return errors.Join(errs...)
}

func (c Config) source() string {
	id := c.InstanceID
	if id == "" {
		h, _ := os.Hostname()
		if h == "" {
			h = "host"
		}
		id = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	return "admitter/" + id
}

// coreNames renames the core's field names to their variables in validation errors.
var coreNames = strings.NewReplacer(
	"Adaptive: WindowSamples:", "ADMITTER_ADAPTIVE_WINDOW_SAMPLES:",
	"Adaptive: TolerancePermille:", "ADMITTER_ADAPTIVE_TOLERANCE_PERMILLE:",
	"Adaptive: FailurePermille:", "ADMITTER_ADAPTIVE_FAILURE_PERMILLE:",
	"Adaptive: BackoffPermille:", "ADMITTER_ADAPTIVE_BACKOFF_PERMILLE:",
	"Adaptive: IncreasePermille:", "ADMITTER_ADAPTIVE_INCREASE_PERMILLE:",
	"Adaptive: DriftPermille:", "ADMITTER_ADAPTIVE_DRIFT_PERMILLE:",
	"Adaptive: InflightMin:", "ADMITTER_ADAPTIVE_MIN_INFLIGHT:",
	"Adaptive: FloorPermille:", "ADMITTER_ADAPTIVE_FLOOR_PERMILLE:",
	"Adaptive: RebaseWindows:", "ADMITTER_ADAPTIVE_REBASE_WINDOWS:",
	"Adaptive: RecoveryMs:", "ADMITTER_ADAPTIVE_RECOVERY_MS:",
	"WindowSamples:", "ADMITTER_ADAPTIVE_WINDOW_SAMPLES:",
	"TolerancePermille:", "ADMITTER_ADAPTIVE_TOLERANCE_PERMILLE:",
	"FailurePermille:", "ADMITTER_ADAPTIVE_FAILURE_PERMILLE:",
	"BackoffPermille:", "ADMITTER_ADAPTIVE_BACKOFF_PERMILLE:",
	"IncreasePermille:", "ADMITTER_ADAPTIVE_INCREASE_PERMILLE:",
	"DriftPermille:", "ADMITTER_ADAPTIVE_DRIFT_PERMILLE:",
	"InflightMin:", "ADMITTER_ADAPTIVE_MIN_INFLIGHT:",
	"FloorPermille:", "ADMITTER_ADAPTIVE_FLOOR_PERMILLE:",
	"RebaseWindows:", "ADMITTER_ADAPTIVE_REBASE_WINDOWS:",
	"RecoveryMs:", "ADMITTER_ADAPTIVE_RECOVERY_MS:",
	"AccountSharePermille:", "ADMITTER_ACCOUNT_SHARE_PERMILLE:",
	"AccountsMax:", "ADMITTER_ACCOUNTS_MAX:", "OpenMax:", "ADMITTER_OPEN_MAX:", "PendingMax:", "ADMITTER_PENDING_MAX:",
	"Instances:", "ADMITTER_INSTANCES:", "CleanBurstBonusPermille:", "ADMITTER_CLEAN_BURST_BONUS_PERMILLE:",
	"BatchSharePermille:", "ADMITTER_BATCH_SHARE_PERMILLE:", "RetryBlockedMs:", "ADMITTER_RETRY_BLOCKED_MS:",
	"RetryOverloadedMs:", "ADMITTER_RETRY_OVERLOADED_MS:", "RetryConcurrencyMs:", "ADMITTER_RETRY_CONCURRENCY_MS:",
	"RetryInsufficientMs:", "ADMITTER_RETRY_INSUFFICIENT_MS:")

func ms(v int64) time.Duration { return time.Duration(v) * time.Millisecond }

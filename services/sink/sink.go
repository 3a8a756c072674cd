// Package sink is Tally's ClickHouse sink: it stores every event of the events and journal
// topics exactly once in ClickHouse, applies the schema migrations at start-up, and runs the
// abuse detector over the rollups. This root package holds the settings (Config) and the
// wiring (New, Run); the parts live in subpackages:
//
//   - rows: pure mapping of events to rows, batches and dedup tokens, the Storage contract;
//   - chstore: ClickHouse connection, migrations and the batch writer;
//   - pipeline: the Kafka consumer, batching, dead-lettering, retries and commits;
//   - detect: the abuse rules and the abuse.flagged publisher;
//   - sqlcli: runs an analyst query and prints a table, CSV or JSON;
//   - httpapi: /metrics, /healthz, /readyz.
package sink

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/detect"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/shared/bounds"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Config is every sink setting, read from the environment with caarlos0/env.
type Config struct {
	// Brokers is the Kafka bootstrap list (KAFKA_BROKERS, default 127.0.0.1:9092).
	Brokers string `env:"KAFKA_BROKERS" envDefault:"127.0.0.1:9092"`
	// TopicPrefix prefixes every topic name (TALLY_TOPIC_PREFIX, default "tally.").
	TopicPrefix string `env:"TALLY_TOPIC_PREFIX" envDefault:"tally."`
	// PriceBookPath is common to every service; the sink stores prices as the events carry
	// them and does not read the book (TALLY_PRICEBOOK_PATH, default "").
	PriceBookPath string `env:"TALLY_PRICEBOOK_PATH"`
	// ListenAddr serves /metrics, /healthz and /readyz (SINK_LISTEN_ADDR, default
	// 127.0.0.1:8083; port 0 picks a free port, see Service.Addr).
	ListenAddr string `env:"SINK_LISTEN_ADDR" envDefault:"127.0.0.1:8083"`
	// GroupID is the Kafka consumer group (SINK_GROUP_ID, default "tally-sink").
	GroupID string `env:"SINK_GROUP_ID" envDefault:"tally-sink"`
	// BatchRowsMax flushes once this many rows are buffered (SINK_BATCH_ROWS_MAX, default
	// 100000, 1..1000000). Each flush is one insert per table, and each insert has a large
	// fixed cost in ClickHouse (40-45 ms of CPU with its materialized views, measured), so
	// larger flushes mean more rows per second under a backlog.
	BatchRowsMax int `env:"SINK_BATCH_ROWS_MAX" envDefault:"100000"`
	// BatchBytesMax flushes once this many message bytes are buffered (SINK_BATCH_BYTES_MAX,
	// default 67108864 = 64 MiB, 1 KiB..1 GiB).
	BatchBytesMax int64 `env:"SINK_BATCH_BYTES_MAX" envDefault:"67108864"`
	// BatchWaitMs flushes this long after the first buffered message, or, when an insert is
	// still in flight then, as soon as it ends (SINK_BATCH_WAIT_MS, default 250, 1..60000).
	BatchWaitMs int `env:"SINK_BATCH_WAIT_MS" envDefault:"250"`
	// FetchBytesMax bounds one Kafka fetch per partition (SINK_FETCH_BYTES_MAX, default
	// 4194304 = 4 MiB, 64 KiB..256 MiB).
	FetchBytesMax int `env:"SINK_FETCH_BYTES_MAX" envDefault:"4194304"`
	// QueueMessagesMax bounds prefetched messages (SINK_QUEUE_MESSAGES_MAX, default 10000,
	// 1..1000000).
	QueueMessagesMax int `env:"SINK_QUEUE_MESSAGES_MAX" envDefault:"10000"`
	// RetryBackoffMsMin and RetryBackoffMsMax bound the exponential backoff between insert
	// attempts (SINK_RETRY_BACKOFF_MIN_MS default 100, SINK_RETRY_BACKOFF_MAX_MS default 5000,
	// 1..600000, min <= max); RetryAttemptsMax bounds the attempts before Run fails
	// (SINK_RETRY_ATTEMPTS_MAX, default 30, 1..10000).
	RetryBackoffMsMin int `env:"SINK_RETRY_BACKOFF_MIN_MS" envDefault:"100"`
	RetryBackoffMsMax int `env:"SINK_RETRY_BACKOFF_MAX_MS" envDefault:"5000"`
	RetryAttemptsMax  int `env:"SINK_RETRY_ATTEMPTS_MAX" envDefault:"30"`
	// KafkaReconnectBackoffMsMin and KafkaReconnectBackoffMsMax bound the exponential backoff
	// before the consumer rejoins its group after a Kafka error (broker down or restarted,
	// coordinator moved, fetch failed): Kafka errors never stop the sink, it stays not ready
	// (/readyz 503) until it has rejoined (SINK_KAFKA_RECONNECT_BACKOFF_MIN_MS default 200,
	// SINK_KAFKA_RECONNECT_BACKOFF_MAX_MS default 5000, 1..600000, min <= max).
	KafkaReconnectBackoffMsMin int `env:"SINK_KAFKA_RECONNECT_BACKOFF_MIN_MS" envDefault:"200"`
	KafkaReconnectBackoffMsMax int `env:"SINK_KAFKA_RECONNECT_BACKOFF_MAX_MS" envDefault:"5000"`
	// KafkaSessionTimeoutMs is the consumer-group session timeout: a member silent that long
	// is dropped. After a broker restart the sink rejoins under a new member id and the
	// broker waits for the old one to expire, so this bounds the pause in consumption
	// (SINK_KAFKA_SESSION_TIMEOUT_MS, default 10000, 6000..300000 within the broker's
	// group.min/max.session.timeout.ms).
	KafkaSessionTimeoutMs int `env:"SINK_KAFKA_SESSION_TIMEOUT_MS" envDefault:"10000"`
	// KafkaRebalanceTimeoutMs bounds how long a rebalance waits for the members to rejoin; a
	// member first finishes its flush in flight (SINK_KAFKA_REBALANCE_TIMEOUT_MS, default
	// 30000, 1000..600000).
	KafkaRebalanceTimeoutMs int `env:"SINK_KAFKA_REBALANCE_TIMEOUT_MS" envDefault:"30000"`
	// IntentsMax bounds the recorded flushes recalled at once per partition after a restart;
	// more are recalled once these are passed (SINK_INTENTS_MAX, default 10000, 1..1000000).
	IntentsMax int `env:"SINK_INTENTS_MAX" envDefault:"10000"`
	// DedupeWindowMessages is W: a message whose CloudEvents id a stored message at one of
	// the previous W offsets of the same partition carried (a producer's retry) is not stored
	// and counted in tally_sink_duplicates_total; each partition's window is read back from Kafka when
	// the sink starts it (up to W messages per partition per generation, and per range of a
	// recorded flush it re-sends after a crash), and takes 2.65 MB
	// per assigned partition at the default (SINK_DEDUPE_WINDOW_MESSAGES, default 100000,
	// 0 = off, 0..1000000).
	DedupeWindowMessages int `env:"SINK_DEDUPE_WINDOW_MESSAGES" envDefault:"100000"`
	// DecodeWorkers decode messages in parallel, keeping each partition's order
	// (SINK_DECODE_WORKERS, default 2, 1..64).
	DecodeWorkers int `env:"SINK_DECODE_WORKERS" envDefault:"2"`
	// InsertsParallelMax bounds the inserts of one flush made at once: a flush is one insert
	// per table, usage_events and ledger_entries (SINK_INSERTS_PARALLEL_MAX, default 2,
	// 1..64; keep it <= CLICKHOUSE_CONNS_MAX).
	InsertsParallelMax int `env:"SINK_INSERTS_PARALLEL_MAX" envDefault:"2"`
	// RetentionDays is usage_events' TTL (SINK_RETENTION_DAYS, default 400, 1..36500).
	RetentionDays int `env:"SINK_RETENTION_DAYS" envDefault:"400"`
	// HTTP is SINK_HTTP_*: the HTTP server's timeouts and header bound (httpx.ServerSettings).
	HTTP httpx.ServerSettings `envPrefix:"SINK_"`
	// TLS is SINK_TLS_*: HTTPS for /metrics, /healthz and /readyz when SINK_TLS_CERT_FILE and
	// SINK_TLS_KEY_FILE are set (see package tlsx).
	TLS tlsx.ServerConfig `envPrefix:"SINK_TLS_"`
	// KafkaTLS is KAFKA_TLS_*: TLS to the brokers for the consumer, the dead-letter writer and
	// the detector's publisher.
	KafkaTLS tlsx.ClientConfig `envPrefix:"KAFKA_TLS_"`
	// ClickHouse is the CLICKHOUSE_* connection (CLICKHOUSE_TLS_* for its TLS).
	ClickHouse chstore.Config
	// Detect is the SINK_DETECT_* schedule and thresholds.
	Detect detect.Config
}

// DefaultConfig returns the defaults documented on each field.
func DefaultConfig() Config {
	return Config{Brokers: "127.0.0.1:9092", TopicPrefix: kafkax.DefaultPrefix, ListenAddr: "127.0.0.1:8083",
		GroupID: "tally-sink", BatchRowsMax: 100000, BatchBytesMax: 64 << 20, BatchWaitMs: 250, FetchBytesMax: 4 << 20,
		QueueMessagesMax: 10000, RetryBackoffMsMin: 100, RetryBackoffMsMax: 5000, RetryAttemptsMax: 30,
		KafkaReconnectBackoffMsMin: 200, KafkaReconnectBackoffMsMax: 5000, KafkaSessionTimeoutMs: 10000, KafkaRebalanceTimeoutMs: 30000,
		IntentsMax: 10000, DedupeWindowMessages: 100000, DecodeWorkers: 2, InsertsParallelMax: 2, RetentionDays: 400, ClickHouse: chstore.DefaultConfig(), Detect: detect.DefaultConfig(),
		HTTP: httpx.DefaultServerSettings,
		TLS:  tlsx.ServerConfig{MinVersion: "1.2", ReloadCheckMs: tlsx.DefaultReloadCheckMs}}
}

// HTTPServer is the HTTP server's bounds from the SINK_HTTP_* settings.
func (c Config) HTTPServer() httpx.ServerConfig {
	return c.HTTP.Config()
}

// Validate reports every invalid setting, joined, by variable name.
func (c Config) Validate() error {
	var errs []error
	if _, err := kafkax.ParseBrokers(c.Brokers); err != nil {
		errs = append(errs, fmt.Errorf("KAFKA_BROKERS: %w", err))
	}
	if len(c.TopicPrefix) > 100 {
		errs = append(errs, errors.New("TALLY_TOPIC_PREFIX: at most 100 bytes"))
	}
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		errs = append(errs, fmt.Errorf("SINK_LISTEN_ADDR: %w", err))
	}
	if c.GroupID == "" || len(c.GroupID) > 200 {
		errs = append(errs, errors.New("SINK_GROUP_ID: required, at most 200 bytes"))
	}
	in := bounds.Into[int64](&errs, "")
	in("SINK_BATCH_ROWS_MAX", int64(c.BatchRowsMax), 1, 1_000_000)
	in("SINK_BATCH_BYTES_MAX", c.BatchBytesMax, 1<<10, 1<<30)
	in("SINK_BATCH_WAIT_MS", int64(c.BatchWaitMs), 1, 60000)
	in("SINK_FETCH_BYTES_MAX", int64(c.FetchBytesMax), 64<<10, 256<<20)
	in("SINK_QUEUE_MESSAGES_MAX", int64(c.QueueMessagesMax), 1, 1_000_000)
	in("SINK_RETRY_BACKOFF_MIN_MS", int64(c.RetryBackoffMsMin), 1, 600000)
	in("SINK_RETRY_BACKOFF_MAX_MS", int64(c.RetryBackoffMsMax), 1, 600000)
	if c.RetryBackoffMsMax < c.RetryBackoffMsMin {
		errs = append(errs, errors.New("SINK_RETRY_BACKOFF_MAX_MS: below SINK_RETRY_BACKOFF_MIN_MS"))
	}
	in("SINK_RETRY_ATTEMPTS_MAX", int64(c.RetryAttemptsMax), 1, 10000)
	in("SINK_KAFKA_RECONNECT_BACKOFF_MIN_MS", int64(c.KafkaReconnectBackoffMsMin), 1, 600000)
	in("SINK_KAFKA_RECONNECT_BACKOFF_MAX_MS", int64(c.KafkaReconnectBackoffMsMax), 1, 600000)
	if c.KafkaReconnectBackoffMsMax < c.KafkaReconnectBackoffMsMin {
		errs = append(errs, errors.New("SINK_KAFKA_RECONNECT_BACKOFF_MAX_MS: below SINK_KAFKA_RECONNECT_BACKOFF_MIN_MS"))
	}
	in("SINK_KAFKA_SESSION_TIMEOUT_MS", int64(c.KafkaSessionTimeoutMs), 6000, 300000)
	in("SINK_KAFKA_REBALANCE_TIMEOUT_MS", int64(c.KafkaRebalanceTimeoutMs), 1000, 600000)
	in("SINK_INTENTS_MAX", int64(c.IntentsMax), 1, 1_000_000)
	in("SINK_RETENTION_DAYS", int64(c.RetentionDays), 1, 36500)
	in("SINK_DEDUPE_WINDOW_MESSAGES", int64(c.DedupeWindowMessages), 0, 1_000_000)
	in("SINK_DECODE_WORKERS", int64(c.DecodeWorkers), 1, 64)
	in("SINK_INSERTS_PARALLEL_MAX", int64(c.InsertsParallelMax), 1, 64)
	if c.InsertsParallelMax > c.ClickHouse.ConnsMax {
		errs = append(errs, fmt.Errorf("SINK_INSERTS_PARALLEL_MAX: %d exceeds CLICKHOUSE_CONNS_MAX %d", c.InsertsParallelMax, c.ClickHouse.ConnsMax))
	}
	if err := c.HTTP.ValidateEnv("SINK_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.ValidateEnv("SINK_TLS_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.KafkaTLS.ValidateEnv("KAFKA_TLS_"); err != nil {
		errs = append(errs, err)
	}
	if err := c.ClickHouse.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Detect.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Topics is the topic set under TopicPrefix.
func (c Config) Topics() kafkax.Topics { return kafkax.NewTopics(c.TopicPrefix) }

func (c Config) pipelineConfig(brokers []string, tc *tls.Config) pipeline.Config {
	t := c.Topics()
	return pipeline.Config{
		Brokers: brokers, Topics: []string{t.Events, t.Journal}, DeadLetterTopic: t.DeadLetter, GroupID: c.GroupID,
		BatchRowsMax: c.BatchRowsMax, BatchBytesMax: c.BatchBytesMax, BatchWait: time.Duration(c.BatchWaitMs) * time.Millisecond,
		FetchBytesMax: c.FetchBytesMax, QueueMessagesMax: c.QueueMessagesMax,
		RetryBackoffMin: time.Duration(c.RetryBackoffMsMin) * time.Millisecond, RetryBackoffMax: time.Duration(c.RetryBackoffMsMax) * time.Millisecond,
		RetryAttemptsMax: c.RetryAttemptsMax, IntentsMax: c.IntentsMax, DecodeWorkers: c.DecodeWorkers,
		InsertsParallelMax: c.InsertsParallelMax, DedupeWindow: c.DedupeWindowMessages, TLS: tc,
		ReconnectBackoffMin: time.Duration(c.KafkaReconnectBackoffMsMin) * time.Millisecond,
		ReconnectBackoffMax: time.Duration(c.KafkaReconnectBackoffMsMax) * time.Millisecond,
		SessionTimeout:      time.Duration(c.KafkaSessionTimeoutMs) * time.Millisecond,
		RebalanceTimeout:    time.Duration(c.KafkaRebalanceTimeoutMs) * time.Millisecond,
	}
}

-- usage_events: one row per event from the events and journal topics (every type but
-- ledger.entry, which goes to ledger_entries). Granular, append-only, the source of every
-- rollup. Money is Int64 micro-credits.
--
-- * ORDER BY (account_id, time, event_id): per-account time scans read one contiguous range;
--   event_id last makes the key unique so ReplacingMergeTree also folds an event that a
--   producer published twice (same id at two offsets).
-- * Per-endpoint time scans: the set index on endpoint skips granules without the endpoint,
--   and the per-minute rollup usage_1m answers per-endpoint aggregates without touching this
--   table. (A projection sorted by endpoint was measured: it halved insert throughput.)
-- * non_replicated_deduplication_window lets insert_deduplication_token work on a
--   non-replicated table: a batch the sink re-sends after a crash inserts nothing.
-- * TTL: 400 days here; the sink re-applies SINK_RETENTION_DAYS at start-up.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id           UUID,
    type               LowCardinality(String),
    time               DateTime64(3, 'UTC'),
    source             LowCardinality(String),
    account_id         String,
    request_id         String,
    key_id             String,
    client_addr        String,
    endpoint           LowCardinality(String),
    model              LowCardinality(String),
    tier               LowCardinality(String),
    priority           LowCardinality(String),
    funding            LowCardinality(String),
    status             LowCardinality(String),
    reason             String,
    estimate_micros    Int64,
    hold_micros        Int64,
    allowance_micros   Int64,
    cost_micros        Int64,
    amount_micros      Int64,
    hold_expires_at    DateTime64(3, 'UTC'),
    video_seconds      Int64,
    resolution         LowCardinality(String),
    tokens_in          Int64,
    tokens_out         Int64,
    compute_ms         Int64,
    duration_ms        Int64,
    retry_after_ms     Int64,
    score              Float64,
    price_book_version LowCardinality(String),
    attrs              Map(String, String),
    kafka_topic        LowCardinality(String),
    kafka_partition    Int32,
    kafka_offset       Int64,
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_request request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_type type TYPE set(64) GRANULARITY 4,
    INDEX idx_endpoint endpoint TYPE set(256) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (account_id, time, event_id)
TTL toDateTime(time) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

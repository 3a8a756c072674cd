-- ledger_entries: the ledger's double-entry journal, for finance. EntryID is deterministic
-- (DerivedID of the cause event), so a ledger replay re-publishes identical rows:
-- ReplacingMergeTree ordered by (account_id, entry_id) folds them; read with FINAL (or the
-- ledger_entries_v view) for exact sums.
CREATE TABLE IF NOT EXISTS ledger_entries
(
    entry_id        String,
    transaction_id  String,
    account_id      String,
    ledger_account  LowCardinality(String),
    amount_micros   Int64,
    kind            LowCardinality(String),
    cause_event_id  String,
    request_id      String,
    grant_id        String,
    effective_at    DateTime64(3, 'UTC'),
    event_id        UUID,
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(effective_at)
ORDER BY (account_id, entry_id)
SETTINGS non_replicated_deduplication_window = 1000;

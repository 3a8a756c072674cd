-- sink_intents: the sink records each batch's Kafka range here before inserting it. After a
-- crash, the messages of a recorded range are re-formed into exactly that batch and re-sent
-- with the same insert_deduplication_token, so ClickHouse drops what it already has.
CREATE TABLE IF NOT EXISTS sink_intents
(
    consumer_group String,
    topic          String,
    partition      Int32,
    first_offset   Int64,
    last_offset    Int64,
    token          String,
    written_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (consumer_group, topic, partition, first_offset)
TTL toDateTime(written_at) + INTERVAL 30 DAY;

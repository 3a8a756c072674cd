-- sink_intents: since 0008 one flush of the sink is one insert per table across every
-- partition it read, and all the ranges of that insert are recorded with its token. A sink
-- recovering a partition finds the pending inserts through the primary key (consumer_group,
-- topic, partition, first_offset), then every other range of the same inserts by token: this
-- bloom filter lets that second lookup skip the granules without the token instead of
-- reading every intent of the consumer group (up to 30 days of them, the table's TTL).
-- Intents recorded before 0008 carry their single range's token, which is also the token
-- the sink computes for a one-range insert, so they are recovered as before.
ALTER TABLE sink_intents ADD INDEX IF NOT EXISTS token_bf token TYPE bloom_filter(0.001) GRANULARITY 1;
ALTER TABLE sink_intents MATERIALIZE INDEX token_bf;

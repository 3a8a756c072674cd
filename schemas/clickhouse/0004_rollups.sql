-- Per-minute rollups, fed by materialized views on usage_events at insert time. The sink's
-- insert_deduplication_token reaches these views too (deduplicate_blocks_in_dependent_
-- materialized_views), so a re-sent batch is not counted twice.

-- usage_1m: per account and endpoint per minute. attempts = started + rejected. Per-endpoint
-- questions aggregate it across accounts (it is far smaller than usage_events).
-- cost_sq_sum is the sum of squared per-request costs, for the cost-anomaly z-score.
CREATE TABLE IF NOT EXISTS usage_1m
(
    minute           DateTime('UTC'),
    account_id       String,
    endpoint         LowCardinality(String),
    started          SimpleAggregateFunction(sum, UInt64),
    rejected         SimpleAggregateFunction(sum, UInt64),
    finished         SimpleAggregateFunction(sum, UInt64),
    failed           SimpleAggregateFunction(sum, UInt64),
    expired          SimpleAggregateFunction(sum, UInt64),
    credits_started  SimpleAggregateFunction(sum, UInt64),
    hold_micros      SimpleAggregateFunction(sum, Int64),
    allowance_micros SimpleAggregateFunction(sum, Int64),
    cost_micros      SimpleAggregateFunction(sum, Int64),
    cost_sq_sum      SimpleAggregateFunction(sum, Float64),
    duration_ms_sum  SimpleAggregateFunction(sum, Int64),
    duration_q       AggregateFunction(quantiles(0.5, 0.9, 0.99), Int64),
    clients          AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (account_id, endpoint, minute)
SETTINGS non_replicated_deduplication_window = 1000;

-- The source columns are renamed (e_*) in a subquery so that no output alias shadows an input.
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_1m_mv TO usage_1m AS
SELECT
    toStartOfMinute(e_time) AS minute,
    e_account AS account_id,
    e_endpoint AS endpoint,
    toUInt64(countIf(e_type = 'tally.request.started.v1')) AS started,
    toUInt64(countIf(e_type = 'tally.request.rejected.v1')) AS rejected,
    toUInt64(countIf(e_type = 'tally.request.finished.v1')) AS finished,
    toUInt64(countIf(e_type = 'tally.request.finished.v1' AND e_status != 'succeeded')) AS failed,
    toUInt64(countIf(e_type = 'tally.request.expired.v1')) AS expired,
    toUInt64(countIf(e_type = 'tally.request.started.v1' AND e_funding = 'credits')) AS credits_started,
    toInt64(sumIf(e_hold, e_type = 'tally.request.started.v1')) AS hold_micros,
    toInt64(sumIf(e_allowance, e_type = 'tally.request.started.v1')) AS allowance_micros,
    toInt64(sumIf(e_cost, e_type = 'tally.request.finished.v1')) AS cost_micros,
    toFloat64(sumIf(toFloat64(e_cost) * toFloat64(e_cost), e_type = 'tally.request.finished.v1')) AS cost_sq_sum,
    toInt64(sumIf(e_duration, e_type = 'tally.request.finished.v1')) AS duration_ms_sum,
    quantilesStateIf(0.5, 0.9, 0.99)(e_duration, e_type = 'tally.request.finished.v1') AS duration_q,
    uniqStateIf(e_client, e_client != '') AS clients
FROM
(
    SELECT time AS e_time, account_id AS e_account, endpoint AS e_endpoint, type AS e_type, status AS e_status,
           funding AS e_funding, hold_micros AS e_hold, allowance_micros AS e_allowance, cost_micros AS e_cost,
           duration_ms AS e_duration, client_addr AS e_client
    FROM usage_events
    WHERE request_id != ''
)
GROUP BY minute, account_id, endpoint;

-- rejections_1m: rejections per reason, endpoint and account per minute.
CREATE TABLE IF NOT EXISTS rejections_1m
(
    minute     DateTime('UTC'),
    reason     LowCardinality(String),
    endpoint   LowCardinality(String),
    account_id String,
    rejected   UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (reason, minute, endpoint, account_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS rejections_1m_mv TO rejections_1m AS
SELECT toStartOfMinute(time) AS minute, reason, endpoint, account_id, toUInt64(count()) AS rejected
FROM usage_events
WHERE type = 'tally.request.rejected.v1'
GROUP BY minute, reason, endpoint, account_id;

-- clients_1h: distinct client addresses per account and key per hour (key sharing).
CREATE TABLE IF NOT EXISTS clients_1h
(
    hour       DateTime('UTC'),
    account_id String,
    key_id     String,
    requests   SimpleAggregateFunction(sum, UInt64),
    clients    AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (account_id, key_id, hour)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS clients_1h_mv TO clients_1h AS
SELECT toStartOfHour(time) AS hour, account_id, key_id, toUInt64(count()) AS requests, uniqState(client_addr) AS clients
FROM usage_events
WHERE client_addr != '' AND type IN ('tally.request.started.v1', 'tally.request.rejected.v1')
GROUP BY hour, account_id, key_id;

-- requests: one row per request, folding its started / rejected / finished / expired events.
-- Every column is a max() over the events of the request: each field is set by exactly one
-- event type and is zero or '' in the others, so max() picks it. max() is idempotent, so a
-- duplicated event cannot change a request. Read through requests_v (GROUP BY) for exact,
-- merged rows; outcome and late_finish are derived there. It holds only what "duration, cost
-- and funding per request" needs: each extra max() column costs insert throughput (measured);
-- the other fields are one lookup away in usage_events (bloom-filter index on request_id).
CREATE TABLE IF NOT EXISTS requests
(
    account_id         String,
    request_id         String,
    endpoint           SimpleAggregateFunction(max, String),
    tier               SimpleAggregateFunction(max, String),
    funding            SimpleAggregateFunction(max, String),
    status             SimpleAggregateFunction(max, String),
    reject_reason      SimpleAggregateFunction(max, String),
    started_at         SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    rejected_at        SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    finished_at        SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    expired_at         SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    hold_expires_at    SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    hold_micros        SimpleAggregateFunction(max, Int64),
    allowance_micros   SimpleAggregateFunction(max, Int64),
    cost_micros        SimpleAggregateFunction(max, Int64),
    duration_ms        SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (account_id, request_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS requests_mv TO requests AS
SELECT
    account_id,
    request_id,
    toString(endpoint) AS endpoint,
    toString(tier) AS tier,
    toString(funding) AS funding,
    toString(status) AS status,
    if(type = 'tally.request.rejected.v1', reason, '') AS reject_reason,
    if(type = 'tally.request.started.v1', time, toDateTime64(0, 3, 'UTC')) AS started_at,
    if(type = 'tally.request.rejected.v1', time, toDateTime64(0, 3, 'UTC')) AS rejected_at,
    if(type = 'tally.request.finished.v1', time, toDateTime64(0, 3, 'UTC')) AS finished_at,
    if(type = 'tally.request.expired.v1', time, toDateTime64(0, 3, 'UTC')) AS expired_at,
    hold_expires_at,
    if(type = 'tally.request.started.v1', hold_micros, 0) AS hold_micros,
    allowance_micros,
    cost_micros,
    duration_ms
FROM usage_events
WHERE request_id != '';

CREATE VIEW IF NOT EXISTS requests_v AS
SELECT
    *,
    multiIf(
        toUnixTimestamp64Milli(finished_at) > 0, status,
        toUnixTimestamp64Milli(expired_at) > 0, 'expired',
        toUnixTimestamp64Milli(rejected_at) > 0, 'rejected',
        'in_flight') AS outcome,
    toUnixTimestamp64Milli(finished_at) > 0
        AND (toUnixTimestamp64Milli(expired_at) > 0
             OR (toUnixTimestamp64Milli(hold_expires_at) > 0 AND finished_at > hold_expires_at)) AS late_finish
FROM
(
    SELECT
        account_id,
        request_id,
        max(endpoint) AS endpoint,
        max(tier) AS tier,
        max(funding) AS funding,
        max(status) AS status,
        max(reject_reason) AS reject_reason,
        max(started_at) AS started_at,
        max(rejected_at) AS rejected_at,
        max(finished_at) AS finished_at,
        max(expired_at) AS expired_at,
        max(hold_expires_at) AS hold_expires_at,
        max(hold_micros) AS hold_micros,
        max(allowance_micros) AS allowance_micros,
        max(cost_micros) AS cost_micros,
        max(duration_ms) AS duration_ms
    FROM requests
    GROUP BY account_id, request_id
);

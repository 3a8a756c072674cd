-- requests: one row per request, folding its started / rejected / finished / expired events.
-- Every column is a max() over the events of the request: each field is set by exactly one
-- event type and is zero or '' in the others, so max() picks it. max() is idempotent, so a
-- duplicated event cannot change a request. Read through requests_v (GROUP BY) for exact,
-- merged rows; outcome and late_finish are derived there.
CREATE TABLE IF NOT EXISTS requests
(
    account_id         String,
    request_id         String,
    endpoint           SimpleAggregateFunction(max, String),
    model              SimpleAggregateFunction(max, String),
    tier               SimpleAggregateFunction(max, String),
    priority           SimpleAggregateFunction(max, String),
    funding            SimpleAggregateFunction(max, String),
    key_id             SimpleAggregateFunction(max, String),
    client_addr        SimpleAggregateFunction(max, String),
    status             SimpleAggregateFunction(max, String),
    reject_reason      SimpleAggregateFunction(max, String),
    price_book_version SimpleAggregateFunction(max, String),
    started_at         SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    rejected_at        SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    finished_at        SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    expired_at         SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    hold_expires_at    SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    estimate_micros    SimpleAggregateFunction(max, Int64),
    hold_micros        SimpleAggregateFunction(max, Int64),
    allowance_micros   SimpleAggregateFunction(max, Int64),
    cost_micros        SimpleAggregateFunction(max, Int64),
    released_micros    SimpleAggregateFunction(max, Int64),
    duration_ms        SimpleAggregateFunction(max, Int64),
    tokens_in          SimpleAggregateFunction(max, Int64),
    tokens_out         SimpleAggregateFunction(max, Int64),
    video_seconds      SimpleAggregateFunction(max, Int64),
    compute_ms         SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (account_id, request_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS requests_mv TO requests AS
SELECT
    account_id,
    request_id,
    toString(endpoint) AS endpoint,
    toString(model) AS model,
    toString(tier) AS tier,
    toString(priority) AS priority,
    toString(funding) AS funding,
    key_id,
    client_addr,
    toString(status) AS status,
    if(type = 'tally.request.rejected.v1', reason, '') AS reject_reason,
    toString(price_book_version) AS price_book_version,
    if(type = 'tally.request.started.v1', time, toDateTime64(0, 3, 'UTC')) AS started_at,
    if(type = 'tally.request.rejected.v1', time, toDateTime64(0, 3, 'UTC')) AS rejected_at,
    if(type = 'tally.request.finished.v1', time, toDateTime64(0, 3, 'UTC')) AS finished_at,
    if(type = 'tally.request.expired.v1', time, toDateTime64(0, 3, 'UTC')) AS expired_at,
    hold_expires_at,
    estimate_micros,
    if(type = 'tally.request.started.v1', hold_micros, 0) AS hold_micros,
    allowance_micros,
    cost_micros,
    if(type = 'tally.request.expired.v1', amount_micros, 0) AS released_micros,
    duration_ms,
    if(type = 'tally.request.finished.v1', tokens_in, 0) AS tokens_in,
    if(type = 'tally.request.finished.v1', tokens_out, 0) AS tokens_out,
    if(type = 'tally.request.finished.v1', video_seconds, 0) AS video_seconds,
    if(type = 'tally.request.finished.v1', compute_ms, 0) AS compute_ms
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
        max(model) AS model,
        max(tier) AS tier,
        max(priority) AS priority,
        max(funding) AS funding,
        max(key_id) AS key_id,
        max(client_addr) AS client_addr,
        max(status) AS status,
        max(reject_reason) AS reject_reason,
        max(price_book_version) AS price_book_version,
        max(started_at) AS started_at,
        max(rejected_at) AS rejected_at,
        max(finished_at) AS finished_at,
        max(expired_at) AS expired_at,
        max(hold_expires_at) AS hold_expires_at,
        max(estimate_micros) AS estimate_micros,
        max(hold_micros) AS hold_micros,
        max(allowance_micros) AS allowance_micros,
        max(cost_micros) AS cost_micros,
        max(released_micros) AS released_micros,
        max(duration_ms) AS duration_ms,
        max(tokens_in) AS tokens_in,
        max(tokens_out) AS tokens_out,
        max(video_seconds) AS video_seconds,
        max(compute_ms) AS compute_ms
    FROM requests
    GROUP BY account_id, request_id
);

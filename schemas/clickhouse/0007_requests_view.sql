-- requests_v reads usage_events directly; the requests table and its materialized view go.
--
-- requests_mv wrote one 16-column row into requests for every event with a request id, so
-- before merges requests held as many rows as usage_events, and every insert into
-- usage_events paid for one more view, one more part and its merges. Measured: dropping it
-- cut the engine's CPU per inserted row and per insert (services/sink/README.md). The
-- per-request answer is the same GROUP BY over the same expressions, now evaluated at read
-- time over usage_events:
-- * WHERE account_id = ... and WHERE request_id = ... are pushed below the GROUP BY onto
--   usage_events' primary key (account_id first) and its bloom-filter index on request_id;
-- * questions over all requests (by finish time) scanned the whole requests table before as
--   well (it has no time key); they now read the request events of usage_events;
-- * max() is idempotent, so a producer's duplicate event (two rows until a merge folds
--   them) still cannot change a request;
-- * requests older than usage_events' TTL (SINK_RETENTION_DAYS) are no longer kept.
-- Columns, their types and order, outcome and late_finish are those of 0003.
DROP VIEW IF EXISTS requests_mv;

-- The source columns are renamed (e_*) in a subquery so that no output alias shadows an input.
CREATE OR REPLACE VIEW requests_v AS
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
        e_account AS account_id,
        e_request AS request_id,
        max(toString(e_endpoint)) AS endpoint,
        max(toString(e_tier)) AS tier,
        max(toString(e_funding)) AS funding,
        max(toString(e_status)) AS status,
        max(if(e_type = 'tally.request.rejected.v1', e_reason, '')) AS reject_reason,
        max(if(e_type = 'tally.request.started.v1', e_time, toDateTime64(0, 3, 'UTC'))) AS started_at,
        max(if(e_type = 'tally.request.rejected.v1', e_time, toDateTime64(0, 3, 'UTC'))) AS rejected_at,
        max(if(e_type = 'tally.request.finished.v1', e_time, toDateTime64(0, 3, 'UTC'))) AS finished_at,
        max(if(e_type = 'tally.request.expired.v1', e_time, toDateTime64(0, 3, 'UTC'))) AS expired_at,
        max(e_hold_expires_at) AS hold_expires_at,
        max(if(e_type = 'tally.request.started.v1', e_hold, toInt64(0))) AS hold_micros,
        max(e_allowance) AS allowance_micros,
        max(e_cost) AS cost_micros,
        max(e_duration) AS duration_ms
    FROM
    (
        SELECT account_id AS e_account, request_id AS e_request, type AS e_type, time AS e_time,
               endpoint AS e_endpoint, tier AS e_tier, funding AS e_funding, status AS e_status,
               reason AS e_reason, hold_expires_at AS e_hold_expires_at, hold_micros AS e_hold,
               allowance_micros AS e_allowance, cost_micros AS e_cost, duration_ms AS e_duration
        FROM usage_events
        WHERE request_id != ''
    )
    GROUP BY account_id, request_id
);

DROP TABLE IF EXISTS requests;

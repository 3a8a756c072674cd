-- The funding waterfall's split of each finished request's cost (request.finished carries it
-- since split funding): paid_allowance_micros by the included allowance, paid_credits_micros
-- from credits (the hold, then the available balance), overage_micros what could not be paid.
-- The three sum to cost_micros on request.finished rows written by a producer that says;
-- older rows (and every other type) have 0 in all three. requests_v gains the three columns
-- at its end; its other columns, their types and order are those of 0009 (duration_ms from the
-- event times when the client sent none).
ALTER TABLE usage_events
    ADD COLUMN IF NOT EXISTS paid_allowance_micros Int64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS paid_credits_micros Int64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS overage_micros Int64 DEFAULT 0;

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
        max(if(e_type = 'tally.request.started.v1', e_allowance, toInt64(0))) AS allowance_micros,
        max(e_cost) AS cost_micros,
        -- The client's duration when it sent one; else from the start's to the finish's event
        -- time (both stored), never negative; 0 without both events (as in 0009).
        toInt64(if(max(e_duration) > 0, max(e_duration),
            if(toUnixTimestamp64Milli(started_at) > 0 AND toUnixTimestamp64Milli(finished_at) > 0,
               greatest(toUnixTimestamp64Milli(finished_at) - toUnixTimestamp64Milli(started_at), 0), 0))) AS duration_ms,
        max(e_paid_allowance) AS paid_allowance_micros,
        max(e_paid_credits) AS paid_credits_micros,
        max(e_overage) AS overage_micros
    FROM
    (
        SELECT account_id AS e_account, request_id AS e_request, type AS e_type, time AS e_time,
               endpoint AS e_endpoint, tier AS e_tier, funding AS e_funding, status AS e_status,
               reason AS e_reason, hold_expires_at AS e_hold_expires_at, hold_micros AS e_hold,
               allowance_micros AS e_allowance, cost_micros AS e_cost, duration_ms AS e_duration,
               paid_allowance_micros AS e_paid_allowance, paid_credits_micros AS e_paid_credits,
               overage_micros AS e_overage
        FROM usage_events
        WHERE request_id != ''
    )
    GROUP BY account_id, request_id
);

-- Organizations: an account (a project) may be funded by another account (its organization),
-- whose balance pays for the project's requests. request.started / finished / expired of a
-- funded request carry funding_account_id (the organization, also their envelope subject and
-- Kafka key) while account_id stays the project; the sink stores account_id = the project and
-- funding_account_id = the organization ('' when the account funds itself, on every other
-- event type, and on rows written before 0011). The paying account of a request is
-- if(funding_account_id = '', account_id, funding_account_id).
-- LowCardinality: organizations are few next to accounts, and most rows hold ''.
-- usage_events' key (account_id, time, event_id) and requests_v's GROUP BY (account_id,
-- request_id) are unchanged: account_id is the project, whose request ids are its own, so two
-- projects of one organization that use the same request id stay two requests.
-- requests_v gains funding_account_id at the end of 0010's columns (max(): the start and the
-- finish of a request name the same organization; a rejection names none); its other
-- columns, their types and order are those of 0010. 0010 is applied and never edited.
ALTER TABLE usage_events
    ADD COLUMN IF NOT EXISTS funding_account_id LowCardinality(String) DEFAULT '' AFTER account_id;

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
        max(e_overage) AS overage_micros,
        max(toString(e_funding_account)) AS funding_account_id
    FROM
    (
        SELECT account_id AS e_account, request_id AS e_request, type AS e_type, time AS e_time,
               endpoint AS e_endpoint, tier AS e_tier, funding AS e_funding, status AS e_status,
               reason AS e_reason, hold_expires_at AS e_hold_expires_at, hold_micros AS e_hold,
               allowance_micros AS e_allowance, cost_micros AS e_cost, duration_ms AS e_duration,
               paid_allowance_micros AS e_paid_allowance, paid_credits_micros AS e_paid_credits,
               overage_micros AS e_overage, funding_account_id AS e_funding_account
        FROM usage_events
        WHERE request_id != ''
    )
    GROUP BY account_id, request_id
);

-- requests_credits_v (0006) is requests_v's columns plus the credit ones: the engine expands
-- its * when the view is created, so it is created again to carry the columns requests_v
-- gained since (0010's paid_* and funding_account_id).
CREATE OR REPLACE VIEW requests_credits_v AS
SELECT *, toDecimal64(toDecimal128(cost_micros, 6) / 1000000, 6) AS cost_credits,
       toDecimal64(toDecimal128(hold_micros, 6) / 1000000, 6) AS hold_credits
FROM requests_v;

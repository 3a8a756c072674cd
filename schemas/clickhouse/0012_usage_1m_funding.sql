-- usage_1m by paying account: the per-minute rollup gains funding_account_id (0011: the
-- organization whose balance paid a project's requests, '' when the account funds itself), as
-- the last column of its key, so that per-organization totals over time come from the rollup
-- (GROUP BY if(funding_account_id = '', account_id, funding_account_id)) instead of
-- usage_events. A project's funding seldom changes, so the rollup keeps about one row per
-- account, endpoint and minute, as before.
-- * The column is added and appended to the sorting key in one ALTER (the engine allows only
--   a column added by the same ALTER there; the primary key stays (account_id, endpoint,
--   minute)). Rows rolled up before 0012 read ''.
-- * usage_1m_mv (0004) is dropped and created again with the column (the form the cluster
--   rewrite knows; it has no form for an ALTER of a view). Only the sink inserts into
--   usage_events and a sink migrates before it inserts; but another member of the group that
--   still runs an older sink could insert between the two statements, and those rows would
--   miss usage_1m (not usage_events or requests_v): stop the group's members for this upgrade.
--   Everything else is 0004's view, expression for expression. 0004 is applied and never
--   edited.
ALTER TABLE usage_1m
    ADD COLUMN IF NOT EXISTS funding_account_id LowCardinality(String) AFTER account_id,
    MODIFY ORDER BY (account_id, endpoint, minute, funding_account_id);

DROP VIEW IF EXISTS usage_1m_mv;

-- The source columns are renamed (e_*) in a subquery so that no output alias shadows an input.
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_1m_mv TO usage_1m AS
SELECT
    toStartOfMinute(e_time) AS minute,
    e_account AS account_id,
    e_funding_account AS funding_account_id,
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
           duration_ms AS e_duration, client_addr AS e_client,
           funding_account_id AS e_funding_account
    FROM usage_events
    WHERE request_id != ''
)
GROUP BY minute, account_id, endpoint, funding_account_id;

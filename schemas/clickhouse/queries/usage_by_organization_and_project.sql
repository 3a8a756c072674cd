-- question: What did each organization and each of its projects use and cost in a month?
-- params: month Date (any day of it: the UTC calendar month, on the finish time)
-- paying_account_id is the account whose balance paid: the organization that funds a project
-- (funding_account_id, migration 0011) or, for an account that funds itself, the account:
-- if(funding_account_id = '', account_id, funding_account_id). account_id is the project, the
-- account that made the requests. One row per paying account and project, and before them one
-- total row per paying account with account_id '' (an account id is never ''). An
-- organization's own requests count under its own id as a project.
-- Finished requests only, by finish time (when the cost is settled: the month a project
-- budget counts them in); the paid_* columns are the cost's split (0010; 0 from producers that
-- did not report it). requests_v keeps one row per (account_id, request_id): two projects that
-- use the same request id are two requests.
SELECT
    if(funding_account_id = '', account_id, funding_account_id) AS paying_account_id,
    account_id,
    count() AS requests,
    sum(cost_micros) AS cost_micros,
    sum(paid_allowance_micros) AS paid_allowance_micros,
    sum(paid_credits_micros) AS paid_credits_micros,
    sum(overage_micros) AS overage_micros,
    toDecimal64(toDecimal128(sum(r.cost_micros), 6) / 1000000, 6) AS cost_credits
FROM requests_v AS r
WHERE toUnixTimestamp64Milli(finished_at) > 0
  AND finished_at >= toDateTime(toStartOfMonth({month:Date}), 'UTC')
  AND finished_at < toDateTime(toStartOfMonth({month:Date}) + toIntervalMonth(1), 'UTC')
GROUP BY GROUPING SETS ((paying_account_id, account_id), (paying_account_id))
ORDER BY paying_account_id, account_id

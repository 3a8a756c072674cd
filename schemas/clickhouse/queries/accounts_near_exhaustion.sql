-- question: Which accounts will run out of credits soon at their recent burn rate?
-- params: now DateTime, lookback_hours UInt32, runway_hours Float64
-- Balance: the sum of the journal's customer.available lines (replays folded by FINAL).
-- Burn: the price of credit-funded requests finished in the lookback window, counted against
-- the account that pays: a funded project's requests burn its organization's balance
-- (funding_account_id, migration 0011), so they count under the organization; a project
-- itself has no balance of its own to run out of.
WITH
    balances AS
    (
        SELECT account_id, sum(amount_micros) AS available_micros
        FROM ledger_entries FINAL
        WHERE ledger_account = 'customer.available'
        GROUP BY account_id
    ),
    burn AS
    (
        SELECT if(funding_account_id = '', account_id, funding_account_id) AS paying_account_id,
               sum(cost_micros) AS burned_micros
        FROM requests_v
        WHERE funding = 'credits'
          AND finished_at >= {now:DateTime} - toIntervalHour({lookback_hours:UInt32})
          AND finished_at < {now:DateTime}
        GROUP BY paying_account_id
    )
SELECT
    balances.account_id AS account_id,
    balances.available_micros AS available_micros,
    burn.burned_micros AS burned_micros,
    round(burn.burned_micros / {lookback_hours:UInt32}) AS burn_per_hour_micros,
    round(balances.available_micros / (burn.burned_micros / {lookback_hours:UInt32}), 2) AS runway_hours
FROM balances
INNER JOIN burn ON balances.account_id = burn.paying_account_id
WHERE burn.burned_micros > 0
  AND balances.available_micros / (burn.burned_micros / {lookback_hours:UInt32}) < {runway_hours:Float64}
ORDER BY runway_hours, account_id

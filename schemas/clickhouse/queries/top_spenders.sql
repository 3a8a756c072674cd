-- question: Which accounts spent the most (price of finished requests) between from and to?
-- params: from DateTime, to DateTime (half-open), limit UInt32
SELECT
    account_id,
    sum(cost_micros) AS spent_micros,
    sum(finished) AS requests,
    toDecimal64(toDecimal128(sum(cost_micros), 6) / 1000000, 6) AS spent_credits
FROM usage_1m
WHERE minute >= {from:DateTime} AND minute < {to:DateTime}
GROUP BY account_id
HAVING spent_micros > 0
ORDER BY spent_micros DESC, account_id
LIMIT {limit:UInt32}

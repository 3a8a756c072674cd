-- question: How much usage is funded by the tiers' included allowance versus bought credits?
-- params: from DateTime, to DateTime (half-open, on the finish time)
SELECT
    toDate(finished_at) AS day,
    tier,
    countIf(funding = 'allowance') AS allowance_requests,
    sumIf(cost_micros, funding = 'allowance') AS allowance_funded_micros,
    countIf(funding = 'credits') AS credits_requests,
    sumIf(cost_micros, funding = 'credits') AS credits_funded_micros,
    round(if(sum(cost_micros) = 0, 0, sumIf(cost_micros, funding = 'credits') / sum(cost_micros)), 4) AS credits_share
FROM requests_v
WHERE finished_at >= {from:DateTime} AND finished_at < {to:DateTime}
GROUP BY day, tier
ORDER BY day, tier

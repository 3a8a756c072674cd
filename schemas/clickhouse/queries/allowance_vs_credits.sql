-- question: How much usage is funded by the tiers' included allowance versus bought credits?
-- params: from DateTime, to DateTime (half-open, on the finish time)
-- Requests are counted by their funding at admission (allowance, credits, or split: both);
-- the paid_* columns are the money split of the cost at settlement (0009: the allowance, then
-- credits, then overage), which also counts what an allowance-funded request spilled to
-- credits. Requests finished by producers that did not report the split add 0 to them.
SELECT
    toDate(finished_at) AS day,
    tier,
    countIf(funding = 'allowance') AS allowance_requests,
    sumIf(cost_micros, funding = 'allowance') AS allowance_funded_micros,
    countIf(funding = 'credits') AS credits_requests,
    sumIf(cost_micros, funding = 'credits') AS credits_funded_micros,
    round(if(sum(cost_micros) = 0, 0, sumIf(cost_micros, funding = 'credits') / sum(cost_micros)), 4) AS credits_share,
    countIf(funding = 'split') AS split_requests,
    sum(paid_allowance_micros) AS paid_allowance_micros,
    sum(paid_credits_micros) AS paid_credits_micros,
    sum(overage_micros) AS overage_micros
FROM requests_v
WHERE finished_at >= {from:DateTime} AND finished_at < {to:DateTime}
GROUP BY day, tier
ORDER BY day, tier

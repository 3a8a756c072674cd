-- question: How many credits were burned per day, by tier and endpoint?
-- params: from DateTime, to DateTime (half-open, on the finish time)
-- Tier is known only from the request's start; requests_v joins start and finish per request.
SELECT
    toDate(finished_at) AS day,
    tier,
    endpoint,
    count() AS requests,
    sum(cost_micros) AS total_micros,
    sumIf(cost_micros, funding = 'credits') AS credits_micros,
    sumIf(cost_micros, funding = 'allowance') AS allowance_funded_micros
FROM requests_v
WHERE finished_at >= {from:DateTime} AND finished_at < {to:DateTime}
GROUP BY day, tier, endpoint
ORDER BY day, tier, endpoint

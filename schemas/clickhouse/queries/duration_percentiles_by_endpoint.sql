-- question: What are the p50 and p99 request durations per endpoint?
-- params: from DateTime, to DateTime (half-open)
SELECT
    endpoint,
    sum(finished) AS requests,
    round(quantilesMerge(0.5, 0.9, 0.99)(duration_q)[1]) AS p50_ms,
    round(quantilesMerge(0.5, 0.9, 0.99)(duration_q)[3]) AS p99_ms
FROM usage_1m
WHERE minute >= {from:DateTime} AND minute < {to:DateTime}
GROUP BY endpoint
HAVING requests > 0
ORDER BY endpoint

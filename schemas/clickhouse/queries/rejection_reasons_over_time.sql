-- question: Why were requests rejected, and when?
-- params: from DateTime, to DateTime (half-open), bucket_minutes UInt32
SELECT
    toStartOfInterval(minute, toIntervalMinute({bucket_minutes:UInt32})) AS bucket,
    reason,
    sum(rejected) AS rejected
FROM rejections_1m
WHERE minute >= {from:DateTime} AND minute < {to:DateTime}
GROUP BY bucket, reason
ORDER BY bucket, rejected DESC, reason

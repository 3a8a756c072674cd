package detect

// Rule names, as published in abuse.flagged's rule field.
const (
	RuleBurst          = "burst"
	RuleKeySharing     = "key_sharing"
	RuleCostAnomaly    = "cost_anomaly"
	RuleRejectionStorm = "rejection_storm"
	RuleExpiryAbuse    = "expiry_abuse"
)

// Each rule's query returns rows of (account_id String, key_id String, score Float64,
// evidence Map(String, String)) for the accounts to flag, worst first. Parameters: ws/we
// (window start/end), hs (history start), and the rule's thresholds.

// burstSQL: an account's busiest minute in the window against k × its own p99 attempts per
// active minute over the history (floored, so a quiet or new account is not flagged for
// modest traffic).
const burstSQL = `
WITH
    win AS
    (
        SELECT account_id, minute, sum(started) + sum(rejected) AS attempts
        FROM usage_1m
        WHERE minute >= {ws:DateTime} AND minute < {we:DateTime}
        GROUP BY account_id, minute
    ),
    peak AS
    (
        SELECT account_id, max(attempts) AS peak, argMax(minute, attempts) AS peak_minute
        FROM win
        GROUP BY account_id
    ),
    hist AS
    (
        SELECT account_id, quantileExact(0.99)(attempts) AS p99, count() AS minutes
        FROM
        (
            SELECT account_id, minute, sum(started) + sum(rejected) AS attempts
            FROM usage_1m
            WHERE minute >= {hs:DateTime} AND minute < {ws:DateTime}
              AND account_id IN (SELECT account_id FROM peak)
            GROUP BY account_id, minute
        )
        GROUP BY account_id
    )
SELECT
    peak.account_id AS account_id,
    '' AS key_id,
    peak.peak / greatest(toFloat64(hist.p99), {floor:Float64}) AS score,
    map('peak_per_minute', toString(peak.peak), 'peak_minute', toString(peak.peak_minute),
        'history_p99_per_minute', toString(hist.p99), 'history_minutes', toString(hist.minutes),
        'factor', toString({k:Float64})) AS evidence
FROM peak
LEFT JOIN hist ON peak.account_id = hist.account_id
WHERE peak.peak > {k:Float64} * greatest(toFloat64(hist.p99), {floor:Float64})
ORDER BY score DESC, account_id
LIMIT {n:UInt32}`

// keySharingSQL: distinct client addresses per account in the hour window, with the key
// that saw the most; the key is named in the flag when it alone is over the limit.
const keySharingSQL = `
WITH
    per_key AS
    (
        SELECT account_id, key_id, uniqMerge(clients) AS clients
        FROM clients_1h
        WHERE hour >= {ws:DateTime} AND hour < {we:DateTime}
        GROUP BY account_id, key_id
    ),
    per_account AS
    (
        SELECT account_id, uniqMerge(clients) AS clients, sum(requests) AS requests
        FROM clients_1h
        WHERE hour >= {ws:DateTime} AND hour < {we:DateTime}
        GROUP BY account_id
        HAVING clients > {max:UInt64}
    ),
    worst AS
    (
        SELECT account_id, argMax(key_id, clients) AS worst_key, max(clients) AS worst_clients
        FROM per_key
        WHERE account_id IN (SELECT account_id FROM per_account)
        GROUP BY account_id
    )
SELECT
    a.account_id AS account_id,
    if(w.worst_clients > {max:UInt64}, w.worst_key, '') AS key_id,
    a.clients / {max:UInt64} AS score,
    map('distinct_clients', toString(a.clients), 'requests', toString(a.requests),
        'worst_key', w.worst_key, 'worst_key_clients', toString(w.worst_clients), 'limit', toString({max:UInt64})) AS evidence
FROM per_account AS a
LEFT JOIN worst AS w ON a.account_id = w.account_id
ORDER BY score DESC, account_id
LIMIT {n:UInt32}`

// costAnomalySQL: the window's mean price per finished request against the mean and standard
// deviation of the account's own history. The deviation is floored at 5% of the mean (and 1
// micro) so that an account whose requests always cost the same is not flagged for a small
// change.
const costAnomalySQL = `
WITH
    win AS
    (
        SELECT account_id, sum(finished) AS n, sum(cost_micros) AS cost
        FROM usage_1m
        WHERE minute >= {ws:DateTime} AND minute < {we:DateTime}
        GROUP BY account_id
        HAVING n >= {wmin:UInt64}
    ),
    hist AS
    (
        SELECT account_id, sum(finished) AS n, sum(cost_micros) AS cost, sum(cost_sq_sum) AS sq
        FROM usage_1m
        WHERE minute >= {hs:DateTime} AND minute < {ws:DateTime}
          AND account_id IN (SELECT account_id FROM win)
        GROUP BY account_id
        HAVING n >= {hmin:UInt64}
    ),
    scored AS
    (
        SELECT
            win.account_id AS account_id,
            win.n AS n_window,
            hist.n AS n_history,
            win.cost / win.n AS mean_window,
            hist.cost / hist.n AS mean_history,
            sqrt(greatest(hist.sq / hist.n - pow(hist.cost / hist.n, 2), 0)) AS std_history,
            (win.cost / win.n - hist.cost / hist.n) / greatest(sqrt(greatest(hist.sq / hist.n - pow(hist.cost / hist.n, 2), 0)), 0.05 * (hist.cost / hist.n), 1) AS z
        FROM win
        INNER JOIN hist ON win.account_id = hist.account_id
    )
SELECT
    account_id,
    '' AS key_id,
    z AS score,
    map('mean_micros_window', toString(round(mean_window)), 'mean_micros_history', toString(round(mean_history)),
        'std_micros_history', toString(round(std_history)), 'requests_window', toString(n_window),
        'requests_history', toString(n_history), 'zscore_max', toString({zmax:Float64})) AS evidence
FROM scored
WHERE z > {zmax:Float64}
ORDER BY score DESC, account_id
LIMIT {n:UInt32}`

// rejectionStormSQL: every active minute of the window (at least amin attempts) rejects at
// least the share, over at least mmin minutes.
const rejectionStormSQL = `
SELECT
    account_id,
    '' AS key_id,
    min(share) AS score,
    map('minutes', toString(count()), 'rejected', toString(sum(rej)), 'attempts', toString(sum(att)),
        'min_share', toString(round(min(share), 3)), 'share_limit', toString({share:Float64})) AS evidence
FROM
(
    SELECT account_id, minute, sum(rejected) AS rej, sum(started) + sum(rejected) AS att, rej / att AS share
    FROM usage_1m
    WHERE minute >= {ws:DateTime} AND minute < {we:DateTime}
    GROUP BY account_id, minute
    HAVING att >= {amin:UInt64}
)
GROUP BY account_id
HAVING count() >= {mmin:UInt64} AND min(share) >= {share:Float64}
ORDER BY score DESC, account_id
LIMIT {n:UInt32}`

// expiryAbuseSQL: in the hour window, many expired holds relative to starts, or finishes of
// requests whose hold had already expired (the ledger published request.expired first).
const expiryAbuseSQL = `
SELECT
    account_id,
    '' AS key_id,
    greatest(sum(expired) / greatest(sum(started), 1), toFloat64(sum(late))) AS score,
    map('expired', toString(sum(expired)), 'started', toString(sum(started)), 'late_finishes', toString(sum(late))) AS evidence
FROM
(
    SELECT account_id, sum(expired) AS expired, sum(started) AS started, toUInt64(0) AS late
    FROM usage_1m
    WHERE minute >= {ws:DateTime} AND minute < {we:DateTime}
    GROUP BY account_id
    UNION ALL
    SELECT account_id, toUInt64(0) AS expired, toUInt64(0) AS started, toUInt64(count()) AS late
    FROM usage_events
    WHERE type = 'tally.request.finished.v1'
      AND time >= {ws:DateTime} AND time < {we:DateTime}
      AND (account_id, request_id) IN
      (
          SELECT account_id, request_id
          FROM usage_events
          WHERE type = 'tally.request.expired.v1'
            AND time >= {ws:DateTime} - INTERVAL 1 DAY AND time < {we:DateTime}
      )
    GROUP BY account_id
)
GROUP BY account_id
HAVING (sum(expired) >= {emin:UInt64} AND sum(expired) * 1000 >= {eshare:UInt64} * sum(started))
    OR sum(late) >= {lmin:UInt64}
ORDER BY score DESC, account_id
LIMIT {n:UInt32}`

package detect_test

import (
	"context"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/detect"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
)

// seedSQL inserts 1,000,000 usage_events rows per call (materialized views included): 10,000
// accounts, three endpoints, 45% started, 45% finished, 8% rejected, 2% expired, spread over
// the 8 days before {end}.
const seedSQL = `INSERT INTO usage_events (event_id, type, time, account_id, request_id, key_id, client_addr,
    endpoint, tier, funding, status, reason, hold_micros, cost_micros, duration_ms, hold_expires_at,
    kafka_topic, kafka_partition, kafka_offset)
SELECT
    generateUUIDv4(),
    multiIf(number % 100 < 45, 'tally.request.started.v1', number % 100 < 90, 'tally.request.finished.v1',
            number % 100 < 98, 'tally.request.rejected.v1', 'tally.request.expired.v1'),
    toDateTime64({end:DateTime}, 3, 'UTC') - toIntervalMillisecond((number * 7919) % 691200000),
    concat('acct-', toString(number % 10000)),
    concat('req-', toString(intDiv(number, 2))),
    concat('key-', toString(number % 10000)),
    concat('10.', toString(number % 7), '.', toString(intDiv(number, 10000) % 5), '.1'),
    ['video.generate', 'chat', 'image'][number % 3 + 1],
    ['free', 'pro', 'enterprise'][(number % 10000) % 3 + 1],
    'credits', 'succeeded', if(number % 100 >= 90 AND number % 100 < 98, 'rate_limited', ''),
    1000, 1000 + number % 500, number % 3000, toDateTime64(0, 3, 'UTC'), 'bench', 0, number
FROM numbers({from:UInt64}, 1000000)`

// BenchmarkRules10M times each rule's query over 10M usage_events rows (and the rollups the
// materialized views built from them). Seeding is not timed.
func BenchmarkRules10M(b *testing.B) {
	_, conn := chtest.Open(b)
	end := time.Date(2026, 3, 20, 12, 0, 0, 0, time.UTC)
	ctx := context.Background()
	t0 := time.Now()
	for i := 0; i < 10; i++ {
		q := clickhouseCtx(ctx, map[string]string{"end": "2026-03-20 12:00:00", "from": itoa(i * 1_000_000)})
		if err := conn.Exec(q, seedSQL); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("seeded 10M rows in %s; usage_1m rows: %d", time.Since(t0).Round(time.Millisecond), chtest.Count(b, conn, "SELECT count() FROM usage_1m"))
	d, err := detect.New(detect.DefaultConfig(), conn, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, rule := range []string{detect.RuleBurst, detect.RuleKeySharing, detect.RuleCostAnomaly, detect.RuleRejectionStorm, detect.RuleExpiryAbuse} {
		b.Run(rule, func(b *testing.B) {
			for b.Loop() {
				if _, err := d.Evaluate(ctx, rule, end.Add(time.Minute)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

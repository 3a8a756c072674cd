package sqlcli_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/sqlcli"
)

// benchSeedSQL inserts 1,000,000 usage_events rows per call (materialized views included):
// 10,000 accounts, three endpoints, 45% started, 45% finished, 8% rejected, 2% expired (two
// events per request id), spread over the 8 days before {end}.
const benchSeedSQL = `INSERT INTO usage_events (event_id, type, time, account_id, request_id, key_id, client_addr,
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
    '10.0.0.1',
    ['video.generate', 'chat', 'image'][number % 3 + 1],
    ['free', 'pro', 'enterprise'][(number % 10000) % 3 + 1],
    ['credits', 'allowance'][number % 2 + 1], 'succeeded', if(number % 100 >= 90 AND number % 100 < 98, 'rate_limited', ''),
    1000, 1000 + number % 500, number % 3000, toDateTime64(0, 3, 'UTC'), 'bench', 0, number
FROM numbers({from:UInt64}, 1000000)`

// BenchmarkNamedQueries: each analyst query (and requests_v looked up by account and by
// request) over BENCH_MROWS million usage_events rows (default 4), merged by OPTIMIZE FINAL
// as a long-running store would be. Seeding is not timed.
func BenchmarkNamedQueries(b *testing.B) {
	_, conn := chtest.Open(b)
	ctx := context.Background()
	m := 4
	if v, err := strconv.Atoi(os.Getenv("BENCH_MROWS")); err == nil && v > 0 {
		m = v
	}
	for i := 0; i < m; i++ {
		q := clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters{"end": "2026-03-20 12:00:00", "from": strconv.Itoa(i * 1_000_000)}))
		if err := conn.Exec(q, benchSeedSQL); err != nil {
			b.Fatal(err)
		}
	}
	var tables []string
	rs, err := conn.Query(ctx, "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'")
	if err != nil {
		b.Fatal(err)
	}
	for rs.Next() {
		var t string
		if err := rs.Scan(&t); err != nil {
			b.Fatal(err)
		}
		tables = append(tables, t)
	}
	rs.Close()
	for _, t := range tables {
		if err := conn.Exec(ctx, "OPTIMIZE TABLE "+t+" FINAL"); err != nil {
			b.Fatal(err)
		}
	}
	span := map[string]string{"from": "2026-03-12 12:00:00", "to": "2026-03-20 12:00:00"}
	cases := []struct {
		name, sql string
		params    map[string]string
	}{
		{"requests_v_by_account", "SELECT * FROM requests_v WHERE account_id = 'acct-42'", nil},
		{"requests_v_by_request", "SELECT * FROM requests_v WHERE request_id = 'req-123456'", nil},
		{"credits_by_tier_endpoint_daily", "", span},
		{"allowance_vs_credits", "", span},
		{"accounts_near_exhaustion", "", map[string]string{"now": "2026-03-20 12:00:00", "lookback_hours": "24", "runway_hours": "100"}},
		{"top_spenders", "", map[string]string{"from": span["from"], "to": span["to"], "limit": "10"}},
		{"duration_percentiles_by_endpoint", "", span},
	}
	for _, c := range cases {
		q := c.sql
		if q == "" {
			if q, err = sqlcli.Named(c.name); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := sqlcli.Query(ctx, conn, q, sqlcli.Options{Format: "table", RowsMax: 10_000_000, Params: c.params}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

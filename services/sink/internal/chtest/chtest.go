// Package chtest opens a connection to a fresh database on the test process's embedded
// ClickHouse endpoint, with Tally's migrations applied.
package chtest

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
)

// Open returns the ClickHouse config of a fresh migrated database and a connection to it.
func Open(tb testing.TB) (chstore.Config, clickhouse.Conn) {
	tb.Helper()
	cfg := Config(tb)
	conn, err := chstore.Open(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := chstore.Migrate(ctx, conn, chschema.Migrations); err != nil {
		tb.Fatal(err)
	}
	return cfg, conn
}

// Config returns the config of a fresh, empty database.
func Config(tb testing.TB) chstore.Config {
	tb.Helper()
	s := chembedtest.Start(tb)
	cfg := chstore.DefaultConfig()
	cfg.Addr, cfg.Database = s.Addr(), chembedtest.NewDatabase(tb, s)
	return cfg
}

// Count runs a single-number query.
func Count(tb testing.TB, conn clickhouse.Conn, q string, args ...any) uint64 {
	tb.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	return n
}

// seedSQL inserts 1,000,000 usage_events rows per call (materialized views included): 10,000
// accounts, three endpoints, 45% started, 45% finished, 8% rejected, 2% expired (two events
// per request id), spread over the 8 days before {end}; {client} and {funding} are the
// client address and funding expressions (SQL over number).
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
    {client},
    ['video.generate', 'chat', 'image'][number % 3 + 1],
    ['free', 'pro', 'enterprise'][(number % 10000) % 3 + 1],
    {funding}, 'succeeded', if(number % 100 >= 90 AND number % 100 < 98, 'rate_limited', ''),
    1000, 1000 + number % 500, number % 3000, toDateTime64(0, 3, 'UTC'), 'bench', 0, number
FROM numbers({from:UInt64}, 1000000)`

// SeedUsage inserts millions × 1,000,000 synthetic usage_events rows for benchmarks (see
// seedSQL), ending at end ("2006-01-02 15:04:05"); clientExpr and fundingExpr are SQL over the
// row number for client_addr and funding.
func SeedUsage(tb testing.TB, conn clickhouse.Conn, end string, millions int, clientExpr, fundingExpr string) {
	tb.Helper()
	q := strings.NewReplacer("{client}", clientExpr, "{funding}", fundingExpr).Replace(seedSQL)
	for i := 0; i < millions; i++ {
		ctx := clickhouse.Context(context.Background(), clickhouse.WithParameters(clickhouse.Parameters{
			"end": end, "from": strconv.Itoa(i * 1_000_000)}))
		if err := conn.Exec(ctx, q); err != nil {
			tb.Fatal(err)
		}
	}
}

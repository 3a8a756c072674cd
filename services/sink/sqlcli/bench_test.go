package sqlcli_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/sqlcli"
)

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
	chtest.SeedUsage(b, conn, "2026-03-20 12:00:00", m, "'10.0.0.1'", "['credits', 'allowance'][number % 2 + 1]")
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
		{"usage_by_organization_and_project", "", map[string]string{"month": "2026-03-01"}},
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

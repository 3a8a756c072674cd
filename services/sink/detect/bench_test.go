package detect_test

import (
	"context"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/detect"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
)

// BenchmarkRules10M times each rule's query over 10M usage_events rows (and the rollups the
// materialized views built from them). Seeding is not timed.
func BenchmarkRules10M(b *testing.B) {
	_, conn := chtest.Open(b)
	end := time.Date(2026, 3, 20, 12, 0, 0, 0, time.UTC)
	ctx := context.Background()
	t0 := time.Now()
	chtest.SeedUsage(b, conn, "2026-03-20 12:00:00", 10,
		"concat('10.', toString(number % 7), '.', toString(intDiv(number, 10000) % 5), '.1')", "'credits'")
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

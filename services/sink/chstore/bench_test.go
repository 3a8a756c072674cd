package chstore_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

// BenchmarkBatchInsert: one 30,000-row batch (BENCH_ROWS rows) of usage_events (half
// started, half finished) per op into the embedded engine, materialized views included;
// rows/s is the engine's ceiling for the sink's writer, cpu_us/row the process's CPU time
// per row (BENCH_ROWS=1 shows the fixed cost of one insert). BENCH_DDL (statements
// separated by ';') is run first, to measure what a view or index costs, e.g.
// BENCH_DDL='DROP VIEW usage_1m_mv'.
func BenchmarkBatchInsert(b *testing.B) {
	_, conn := chtest.Open(b)
	st := chstore.NewStore(conn, time.Minute)
	for _, q := range strings.Split(os.Getenv("BENCH_DDL"), ";") {
		if strings.TrimSpace(q) != "" {
			if err := conn.Exec(context.Background(), q); err != nil {
				b.Fatal(err)
			}
		}
	}
	n := 30_000
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROWS")); err == nil && v > 0 {
		n = v
	}
	at := time.Now().UTC()
	proto := make([]*rows.Usage, n)
	for i := range proto {
		typ := events.TypeRequestStarted
		if i%2 == 1 {
			typ = events.TypeRequestFinished
		}
		proto[i] = &rows.Usage{EventID: "0190f5e4-7d3c-7b8e-9a57-7a1e11e7a11e", Type: typ, Time: at.Add(time.Duration(i) * time.Millisecond),
			Source: "bench", AccountID: fmt.Sprintf("acct-%d", i%1000), RequestID: fmt.Sprintf("req-%d", i/2), KeyID: "k", ClientAddr: "10.0.0.1",
			Endpoint: "video.generate", Model: "m1", Tier: "pro", Priority: "standard", Funding: "credits", Status: "succeeded",
			CostMicros: 1000, DurationMs: int64(i % 500), HoldExpiresAt: at, PriceBookVersion: "v1"}
	}
	b.ReportAllocs()
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		batch := &rows.Batch{Range: rows.Range{Topic: "bench", Partition: 0, First: int64(i * n), Last: int64(i*n + n - 1)}, Usage: proto}
		if err := st.BatchInsert(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "rows/s")
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(cpu)/1e3/float64(n*b.N), "cpu_us/row")
}

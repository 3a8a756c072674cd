package chstore_test

import (
	"context"
	"testing"
	"testing/fstest"
	"time"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

func TestSplitStatements(t *testing.T) {
	got := chstore.SplitStatements("-- c\nCREATE TABLE a\n(x UInt8);\n\n  -- d\nSELECT 1;\nSELECT 2")
	want := []string{"CREATE TABLE a\n(x UInt8)", "SELECT 1", "SELECT 2"}
	if len(got) != len(want) {
		t.Fatalf("got %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("statement %d: got %q want %q", i, got[i], want[i])
		}
	}
}

func TestMigrateIdempotentAndRecorded(t *testing.T) {
	_, conn := chtest.Open(t)
	ctx := context.Background()
	done, err := chstore.Migrate(ctx, conn, chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 0 {
		t.Fatalf("second run applied %v, want nothing", done)
	}
	ms, err := chstore.LoadMigrations(chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM schema_migrations FINAL"); n != uint64(len(ms)) {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(ms))
	}
	for _, tbl := range []string{"usage_events", "ledger_entries", "requests", "usage_1m", "rejections_1m", "clients_1h", "sink_intents"} {
		if n := chtest.Count(t, conn, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?", tbl); n != 1 {
			t.Errorf("table %s missing", tbl)
		}
	}
	// A changed file under a recorded version is refused.
	changed := fstest.MapFS{ms[0].Name: {Data: []byte("SELECT 1;")}}
	if _, err := chstore.Migrate(ctx, conn, changed); err == nil {
		t.Fatal("a changed applied migration was accepted")
	}
	if err := chstore.ApplyRetention(ctx, conn, 30); err != nil {
		t.Fatal(err)
	}
	var full string
	if err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = 'usage_events'").Scan(&full); err != nil {
		t.Fatal(err)
	}
	if !contains(full, "toIntervalDay(30)") {
		t.Fatalf("TTL not applied: %s", full)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func sampleBatch(t *testing.T, topic string, partition int32, first int64) *rows.Batch {
	t.Helper()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &rows.Batch{}
	mk := func(d events.Data, off int64) {
		ev, err := events.New("test", at.Add(time.Duration(off)*time.Second), d)
		if err != nil {
			t.Fatal(err)
		}
		pos := rows.Position{Topic: topic, Partition: partition, Offset: off}
		u, l, ok := rows.FromEvent(ev, pos)
		if !ok {
			t.Fatalf("no row for %s", ev.Type)
		}
		b.Add(pos, 100, u, l)
	}
	mk(events.RequestStarted{RequestID: "r1", AccountID: "a1", Endpoint: "video", Tier: "pro", Priority: "standard",
		Funding: "credits", EstimateMicros: 500, HoldMicros: 500, HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v1",
		ClientAddr: "10.0.0.1", KeyID: "k1"}, first)
	mk(events.RequestFinished{RequestID: "r1", AccountID: "a1", Endpoint: "video", Status: "succeeded", CostMicros: 420,
		DurationMs: 1500, PriceBookVersion: "v1", Usage: events.Units{VideoSeconds: 4}}, first+1)
	mk(events.LedgerEntry{EntryID: events.DerivedID("x", "1"), TransactionID: "t1", AccountID: "a1", LedgerAccount: events.LedgerRevenue,
		AmountMicros: 420, Kind: "charge", CauseEventID: "c1", EffectiveAt: at}, first+2)
	return b
}

func TestBatchInsertDeduplicatesRedelivery(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	b := sampleBatch(t, "tally.events", 3, 10)
	for i := 0; i < 3; i++ {
		if err := st.BatchInsert(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM usage_events"); n != 2 {
		t.Fatalf("usage_events has %d rows after 3 identical sends, want 2", n)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM ledger_entries"); n != 1 {
		t.Fatalf("ledger_entries has %d rows, want 1", n)
	}
	if n := chtest.Count(t, conn, "SELECT toUInt64(sum(started)) FROM usage_1m"); n != 1 {
		t.Fatalf("usage_1m counted %d starts, want 1 (rollup double-counted a re-sent batch)", n)
	}
	var cost, dur int64
	var outcome string
	if err := conn.QueryRow(ctx, "SELECT cost_micros, duration_ms, outcome FROM requests_v WHERE request_id = 'r1'").Scan(&cost, &dur, &outcome); err != nil {
		t.Fatal(err)
	}
	if cost != 420 || dur != 1500 || outcome != "succeeded" {
		t.Fatalf("requests_v: cost %d duration %d outcome %q", cost, dur, outcome)
	}
	// A different range is a different batch: it is inserted.
	b2 := sampleBatch(t, "tally.events", 3, 13)
	if err := st.BatchInsert(ctx, b2); err != nil {
		t.Fatal(err)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM usage_events"); n != 4 {
		t.Fatalf("usage_events has %d rows, want 4", n)
	}
}

func TestIntents(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	rs := []rows.Range{{Topic: "e", Partition: 1, First: 0, Last: 9}, {Topic: "e", Partition: 1, First: 10, Last: 19}, {Topic: "e", Partition: 2, First: 0, Last: 4}}
	if err := st.RecordIntents(ctx, "g", rs); err != nil {
		t.Fatal(err)
	}
	got, err := st.PendingIntents(ctx, "g", "e", 1, 5, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != rs[0] || got[1] != rs[1] {
		t.Fatalf("pending from 5: %v", got)
	}
	got, _ = st.PendingIntents(ctx, "g", "e", 1, 20, 10)
	if len(got) != 0 {
		t.Fatalf("pending from 20: %v", got)
	}
	got, _ = st.PendingIntents(ctx, "other", "e", 1, 0, 10)
	if len(got) != 0 {
		t.Fatalf("other group: %v", got)
	}
}

package chstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

// projectJournalBatch is the organization org's journal lines of three requests "r1": p1's
// and p2's (funded by org: the lines name the project) and org's own; each a hold and a
// charge.
func projectJournalBatch(t *testing.T, first int64) *rows.Batch {
	t.Helper()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &rows.Batch{}
	off := first
	line := func(cause, project, ledger, kind string, micros int64, sec int) {
		ev, err := events.New("ledger", at.Add(time.Duration(sec)*time.Second), events.LedgerEntry{EntryID: events.DerivedID(cause, ledger),
			TransactionID: events.DerivedID(cause, "tx"), AccountID: "org", LedgerAccount: ledger, AmountMicros: micros, Kind: kind,
			CauseEventID: cause, RequestID: "r1", ProjectID: project, EffectiveAt: at.Add(time.Duration(sec) * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		pos := rows.Position{Topic: "tally.journal", Partition: 0, Offset: off}
		off++
		u, l, ok := rows.FromEvent(ev, pos)
		if !ok || u != nil || l == nil {
			t.Fatalf("no ledger row for %s", ev.Type)
		}
		b.Add(pos, 100, u, l)
	}
	for i, p := range []string{"p1", "p2", ""} {
		cost := int64(100 * (i + 1))
		start, finish := events.DerivedID("start", p), events.DerivedID("finish", p)
		line(start, p, events.LedgerAvailable, "hold", -cost, i)
		line(start, p, events.LedgerHeld, "hold", cost, i)
		line(finish, p, events.LedgerHeld, "charge", -cost, 10+i)
		line(finish, p, events.LedgerRevenue, "charge", cost, 10+i)
	}
	b.Range = rows.Range{Topic: "tally.journal", Partition: 0, First: first, Last: off - 1}
	return b
}

// projectRevenueSQL is the revenue of each (account, project, request) in ledger_entries_v.
const projectRevenueSQL = `SELECT concatWithSeparator('|', account_id, project_id, request_id, toString(sum(amount_micros)), toString(count()))
FROM ledger_entries_v WHERE ledger_account = 'system.revenue' GROUP BY account_id, project_id, request_id ORDER BY project_id, account_id`

// TestLedgerEntriesProject: ledger_entries stores each line's project (0013), so an
// organization's journal tells its projects' requests of one id apart, in the table and in
// ledger_entries_v.
func TestLedgerEntriesProject(t *testing.T) {
	_, conn := chtest.Open(t)
	if err := chstore.NewStore(conn, time.Minute).BatchInsert(context.Background(), projectJournalBatch(t, 0)); err != nil {
		t.Fatal(err)
	}
	got := queryLines(t, conn, projectRevenueSQL)
	if want := "org||r1|300|1;org|p1|r1|100|1;org|p2|r1|200|1"; strings.Join(got, ";") != want {
		t.Fatalf("revenue by project and request: %q, want %q", got, want)
	}
}

// TestLedgerProjectColumnUpgrade: a store migrated up to 0012 with journal rows in it is
// migrated to the latest schema: the old rows read project_id ” (they name none), 0013 run a
// second time changes nothing, and lines written after the upgrade keep their project.
func TestLedgerProjectColumnUpgrade(t *testing.T) {
	_, conn := migratedUpTo(t, 12)
	ctx := context.Background()
	// A line as a sink of 0012 wrote it (its column list; no project_id).
	if err := conn.Exec(ctx, `INSERT INTO ledger_entries (entry_id, transaction_id, account_id, ledger_account, amount_micros, kind,
cause_event_id, request_id, grant_id, effective_at, event_id, kafka_topic, kafka_partition, kafka_offset) VALUES
('e-old', 't-old', 'old', 'system.revenue', 250, 'charge', 'c-old', 'r1', '', '2026-02-01 10:00:05', generateUUIDv4(), 'tally.journal', 0, 1)`); err != nil {
		t.Fatal(err)
	}
	done, err := chstore.Migrate(ctx, conn, chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) == 0 || done[0] != 13 {
		t.Fatalf("upgrade applied %v, want 13 first", done)
	}
	runAgain(t, conn, 13)
	if err := chstore.NewStore(conn, time.Minute).BatchInsert(ctx, projectJournalBatch(t, 0)); err != nil {
		t.Fatal(err)
	}
	got := queryLines(t, conn, projectRevenueSQL)
	if want := "old||r1|250|1;org||r1|300|1;org|p1|r1|100|1;org|p2|r1|200|1"; strings.Join(got, ";") != want {
		t.Fatalf("revenue by project and request after the upgrade: %q, want %q", got, want)
	}
}

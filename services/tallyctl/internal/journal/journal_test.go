package journal_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/services/tallyctl/internal/journal"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/events"
)

// TestDoubleChargesTellProjectsApart: an organization's journal holds the charges of two
// projects it funds and of its own request, all with request id r1, and of another account's
// r1: one charge each is no double charge. A request charged by two transactions (p1's r2)
// is reported, with its account and project.
func TestDoubleChargesTellProjectsApart(t *testing.T) {
	s := chembedtest.Start(t)
	cfg := chstore.DefaultConfig()
	cfg.Addr, cfg.Database = s.Addr(), chembedtest.NewDatabase(t, s)
	conn, err := chstore.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := chstore.Migrate(ctx, conn, chschema.Migrations); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var ls []*rows.Ledger
	charge := func(cause, account, project, request string, cost int64) {
		tx := events.DerivedID(cause, "tx")
		for _, l := range []struct {
			ledger string
			micros int64
		}{{events.LedgerAvailable, -cost}, {events.LedgerRevenue, cost}} {
			ls = append(ls, &rows.Ledger{EntryID: events.DerivedID(cause, l.ledger), TransactionID: tx, AccountID: account,
				LedgerAccount: l.ledger, AmountMicros: l.micros, Kind: "charge", CauseEventID: cause, RequestID: request,
				ProjectID: project, EffectiveAt: at, EventID: events.DerivedID(cause, l.ledger),
				Pos: rows.Position{Topic: "tally.journal", Offset: int64(len(ls))}})
		}
	}
	charge("c1", "org", "p1", "r1", 100)
	charge("c2", "org", "p2", "r1", 200)
	charge("c3", "org", "", "r1", 300)
	charge("c4", "solo", "", "r1", 400)
	charge("c5", "org", "p1", "r2", 500)
	charge("c6", "org", "p1", "r2", 500)
	b := &rows.Batch{Range: rows.Range{Topic: "tally.journal", First: 0, Last: int64(len(ls) - 1)}, Ledger: ls}
	if err := chstore.NewStore(conn, time.Minute).BatchInsert(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, err := journal.DoubleCharges(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	want := []journal.DoubleCharge{{AccountID: "org", ProjectID: "p1", RequestID: "r2", Transactions: 2}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("double charges %v, want %v", got, want)
	}
}

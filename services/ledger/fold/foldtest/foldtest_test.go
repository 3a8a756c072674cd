package foldtest_test

import (
	"strings"
	"testing"

	"github.com/tallyhq/tally/services/ledger/fold/foldtest"
	"github.com/tallyhq/tally/shared/events"
)

// TestCheckJournal: a balanced journal passes with its per-account sums; an unbalanced
// transaction, a repeated line and a hold released twice (of the account's own request or of one
// of the projects it funds) are each reported.
func TestCheckJournal(t *testing.T) {
	line := func(cause, ledger, req string, micros int64) events.LedgerEntry {
		return events.LedgerEntry{EntryID: events.DerivedID(cause, ledger), TransactionID: events.DerivedID(cause, "tx"),
			AccountID: "acme", LedgerAccount: ledger, AmountMicros: micros, CauseEventID: cause, RequestID: req}
	}
	project := func(le events.LedgerEntry, p string) events.LedgerEntry { le.ProjectID = p; return le }
	ok := []events.LedgerEntry{
		line("grant", events.LedgerAvailable, "", 100), line("grant", events.LedgerGrantsIssued, "", -100),
		line("start", events.LedgerAvailable, "r1", -30), line("start", events.LedgerHeld, "r1", 30),
		line("finish", events.LedgerHeld, "r1", -30), line("finish", events.LedgerAvailable, "r1", -20),
		line("finish", events.LedgerOverageReceivable, "r1", -10), line("finish", events.LedgerRevenue, "r1", 60),
	}
	tot, err := foldtest.CheckJournal(ok)
	if err != nil {
		t.Fatalf("balanced journal: %v", err)
	}
	if got := tot["acme"]; got != (foldtest.JournalTotals{Available: 50, Held: 0, Overage: 10}) {
		t.Fatalf("totals %+v, want available 50, held 0, overage 10", got)
	}
	for _, tc := range []struct {
		name, want string
		lines      []events.LedgerEntry
	}{
		{"unbalanced", "sums to 5", append(ok[:2:2], line("bad", events.LedgerAvailable, "", 5))},
		{"repeated line", "duplicate line", append(ok[:2:2], ok[0])},
		{"released twice", "released or posted more than once", append(ok[:6:6],
			line("again", events.LedgerHeld, "r1", -30), line("again", events.LedgerAvailable, "r1", 30))},
		// Two projects of the organization acme use request id r1: p1's hold released twice
		// is reported although p2's hold of the same request id would cover it.
		{"a project's hold released twice", "released or posted more than once", append(ok[:2:2],
			project(line("s1", events.LedgerAvailable, "r1", -30), "p1"), project(line("s1", events.LedgerHeld, "r1", 30), "p1"),
			project(line("s2", events.LedgerAvailable, "r1", -30), "p2"), project(line("s2", events.LedgerHeld, "r1", 30), "p2"),
			project(line("f1", events.LedgerHeld, "r1", -30), "p1"), project(line("f1", events.LedgerAvailable, "r1", 30), "p1"),
			project(line("f2", events.LedgerHeld, "r1", -30), "p1"), project(line("f2", events.LedgerAvailable, "r1", 30), "p1"))},
	} {
		if _, err := foldtest.CheckJournal(tc.lines); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

package finance_test

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/internal/gen"
	"github.com/tallyhq/tally/shared/events"
)

// TestStatementCheckCatchesCorruption: Check verifies what building the statement does not
// compute, the double entry (every transaction's lines sum to zero), so a statement built
// from a corrupted or incomplete journal (a line's amount altered, a line lost) fails it,
// although its closing balance is opening + its entries by construction.
func TestStatementCheckCatchesCorruption(t *testing.T) {
	log := gen.RandomLog(5, 5_000, 10, t0, 2000)
	_, journal := foldLog(t, log)
	end := log[len(log)-1].Time.Add(24 * time.Hour)
	const id = "acct-3"
	good, err := finance.NewStatement(journal, id, t0.Add(-time.Hour), end)
	if err != nil || len(good.Entries) < 2 {
		t.Fatalf("statement: %v, %d entries", err, len(good.Entries))
	}
	if err := good.Check(); err != nil {
		t.Fatalf("an intact statement fails Check: %v", err)
	}
	var victim int = -1
	for i := range journal {
		if journal[i].AccountID == id && journal[i].LedgerAccount == events.LedgerAvailable {
			victim = i
			break
		}
	}
	if victim < 0 {
		t.Fatal("no customer.available line")
	}
	altered := append([]events.LedgerEntry(nil), journal...)
	altered[victim].AmountMicros += 1_000
	lost := append(append([]events.LedgerEntry(nil), journal[:victim]...), journal[victim+1:]...)
	for name, j := range map[string][]events.LedgerEntry{"amount altered": altered, "line lost": lost} {
		st, err := finance.NewStatement(j, id, t0.Add(-time.Hour), end)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Check(); err == nil {
			t.Errorf("%s: Check passed a corrupted statement (opening %d, closing %d)", name, st.OpeningMicros, st.ClosingMicros)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

package finance

import (
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// TestAddJournalLine: ReadJournal's deduplication by entry id drops an identical copy and
// refuses a copy with other content, except a copy that adds the project an earlier copy of a
// funded request's line lacked (re-emitted across the upgrade that named projects): that one
// replaces it. A copy that drops or changes the project is refused.
func TestAddJournalLine(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	old := events.LedgerEntry{EntryID: "e1", TransactionID: "t1", AccountID: "org", LedgerAccount: events.LedgerRevenue,
		AmountMicros: 5, Kind: "charge", CauseEventID: "c1", RequestID: "r1", EffectiveAt: at}
	other := old
	other.EntryID, other.CauseEventID = "e2", "c2"
	withProject := old
	withProject.ProjectID = "p1"
	seen := map[string]events.LedgerEntry{}
	var out []events.LedgerEntry
	var err error
	for _, le := range []events.LedgerEntry{old, other, old, withProject, withProject} {
		if out, err = addJournalLine(seen, out, le); err != nil {
			t.Fatal(err)
		}
	}
	if len(out) != 2 || out[0] != withProject || out[1] != other {
		t.Fatalf("journal %+v, want the line with its project, then e2", out)
	}
	for _, bad := range []func(*events.LedgerEntry){
		func(le *events.LedgerEntry) { le.ProjectID = "" },
		func(le *events.LedgerEntry) { le.ProjectID = "p2" },
		func(le *events.LedgerEntry) { le.AmountMicros++ },
	} {
		le := withProject
		bad(&le)
		if _, err := addJournalLine(seen, out, le); err == nil || !strings.Contains(err.Error(), "different content") {
			t.Errorf("copy %+v: %v, want different content", le, err)
		}
	}
	// Without the earlier copy's project, a changed amount is refused even with a project.
	seen, out = map[string]events.LedgerEntry{}, nil
	out, _ = addJournalLine(seen, out, old)
	le := withProject
	le.AmountMicros++
	if _, err := addJournalLine(seen, out, le); err == nil {
		t.Error("a copy with a project and another amount was accepted")
	}
}

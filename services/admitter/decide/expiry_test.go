package decide

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// TestExpiredGrantNotCounted: the ledger's view says 3 credits available, 2.5 of them in a
// promotion that expires at t0+1s. Before the expiry the admitter may fund a 2-credit hold
// from it; from the expiry on (wall clock), it counts only the 0.5 credit that does not
// expire, even though the ledger has published nothing since (its partition may be idle).
// It used to count the expired promotion until the ledger's next view.
func TestExpiredGrantNotCounted(t *testing.T) {
	tb := newTable(t, nil)
	b := balance("a", "enterprise", 3_000_000, 0, 10)
	exp := time.UnixMilli(t0 + 1000).UTC()
	b.Expiring = []events.ExpiringGrant{{ExpiresAt: exp, RemainingMicros: 2_500_000}}
	tb.ApplyBalance(b)
	d := admit(t, tb, video10s720("a"), t0)
	if !d.Allowed || d.Funding != FundingCredits || d.AvailableMicros != 1_000_000 {
		t.Fatalf("before the expiry: %+v", d)
	}
	tb.Abort(d.Handle)
	if !tb.FundedInLogOrder("a", 2_000_000, 0, 0, 11, t0+999) {
		t.Fatal("FundedInLogOrder refuses before the expiry")
	}
	d = admit(t, tb, video10s720("a"), t0+1000)
	if d.Allowed || d.Reason != ReasonInsufficientCredits || d.AvailableMicros != 500_000 {
		t.Fatalf("at the expiry: %+v", d)
	}
	if tb.FundedInLogOrder("a", 2_000_000, 0, 0, 11, t0+1000) {
		t.Fatal("FundedInLogOrder counts the expired grant")
	}
	// The ledger's next view (the grant posted to breakage) lists no expiring grant.
	tb.ApplyBalance(balance("a", "enterprise", 500_000, 0, 12))
	if _, ok := tb.expiring[tb.mustKnown(t, "a")]; ok {
		t.Fatal("expiring grants kept after a view without any")
	}
	d = admit(t, tb, code1k("a"), t0+2000)
	if !d.Allowed || d.AvailableMicros != 500_000-7_500 {
		t.Fatalf("after the ledger's view: %+v", d)
	}
}

// TestExpiringEntriesStopCountingInTurn: the first entry stops counting at its expiry, the
// others (merged into the table's second slot) at the second's, earlier than their own; a
// cutoff is rounded down to the second; an expired remainder larger than the local balance
// leaves nothing, never a negative.
func TestExpiringEntriesStopCountingInTurn(t *testing.T) {
	tb := newTable(t, nil)
	b := balance("a", "enterprise", 10_000_000, 0, 1)
	b.Expiring = []events.ExpiringGrant{
		{ExpiresAt: time.UnixMilli(t0 + 1000).UTC(), RemainingMicros: 1_000_000},
		{ExpiresAt: time.UnixMilli(t0 + 2500).UTC(), RemainingMicros: 2_000_000},
		{ExpiresAt: time.UnixMilli(t0 + 3000).UTC(), RemainingMicros: 3_000_000},
		{ExpiresAt: time.UnixMilli(t0 + 4000).UTC(), RemainingMicros: 5_000_000},
	}
	tb.ApplyBalance(b)
	for _, c := range []struct{ at, want int64 }{{t0 + 999, 10_000_000}, {t0 + 1000, 9_000_000}, {t0 + 1999, 9_000_000}, {t0 + 2000, 0}, {t0 + 5000, 0}} {
		var d Decision
		if err := tb.Admit(code1k("a"), c.at, &d); err != nil {
			t.Fatal(err)
		}
		got := d.AvailableMicros
		if d.Allowed {
			got += d.HoldMicros
			tb.Abort(d.Handle)
		}
		if got != c.want {
			t.Fatalf("at t0+%d ms: available %d, want %d", c.at-t0, got, c.want)
		}
	}
}

func (t *Table) mustKnown(tb testing.TB, id string) uint32 {
	tb.Helper()
	i, ok := t.known(id)
	if !ok {
		tb.Fatalf("account %s not cached", id)
	}
	return i
}

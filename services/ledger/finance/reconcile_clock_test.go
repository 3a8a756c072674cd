package finance_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
)

// TestReconcileComparesWhatTheClockCannotChange: a live ledger whose partition clock moved on
// past the replay's (its ticks) is compared for an account with nothing due before the live
// clock, and not compared ("moved") for one whose hold expires in between, or whose newer
// events it has folded.
func TestReconcileComparesWhatTheClockCannotChange(t *testing.T) {
	ev := func(at time.Time, d events.Data) events.Event {
		e, err := events.New("urn:tally:test", at, d)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	log := []events.Event{
		ev(t0, events.CreditsGranted{GrantID: "g-quiet", AccountID: "quiet", AmountMicros: 5_000_000, Source: events.GrantPurchase, Priority: 100}),
		ev(t0, events.CreditsGranted{GrantID: "g-held", AccountID: "held", AmountMicros: 5_000_000, Source: events.GrantPurchase, Priority: 100}),
		ev(t0.Add(time.Second), events.RequestStarted{RequestID: "r1", AccountID: "held", Endpoint: "codex.responses", Tier: "pro",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, EstimateMicros: 1_000_000, HoldMicros: 1_000_000,
			HoldExpiresAt: t0.Add(time.Minute), PriceBookVersion: "v"}),
	}
	s, _ := foldLog(t, log)
	rep := &finance.Replayed{States: map[int32]*fold.State{0: s}}
	byID := map[string]finance.Balance{}
	for _, b := range rep.Balances() {
		byID[b.AccountID] = b
	}
	if byID["quiet"].NextDueNs != math.MaxInt64 {
		t.Fatalf("quiet account: next due %d, want none", byID["quiet"].NextDueNs)
	}
	if got := byID["held"].NextDueNs; got != t0.Add(time.Minute).UnixNano() {
		t.Fatalf("held account: next due %d, want the hold's expiry %d", got, t0.Add(time.Minute).UnixNano())
	}
	for _, c := range []struct {
		name       string
		liveClock  time.Time
		liveOffset map[string]int64
		moved      int
	}{
		{"clock unchanged", s.Watermark(), nil, 0},
		{"clock moved on, before the hold's expiry", t0.Add(30 * time.Second), nil, 0},
		{"clock moved past the hold's expiry", t0.Add(2 * time.Minute), nil, 1},
		{"newer events for quiet", s.Watermark(), map[string]int64{"quiet": 99}, 1},
	} {
		live := func(_ context.Context, id string) (view.Account, bool, error) {
			b := byID[id]
			off := b.Offset
			if o, ok := c.liveOffset[id]; ok {
				off = o
			}
			return view.Account{AccountID: id, AvailableMicros: b.AvailableMicros, HeldMicros: b.HeldMicros, OverageMicros: b.OverageMicros,
				Position: view.Position{Offset: off, Watermark: c.liveClock}}, true, nil
		}
		r, err := finance.Reconcile(context.Background(), rep, live, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Moved != c.moved || !r.OK() || r.Accounts != 2 {
			t.Errorf("%s: moved %d (want %d), differences %v", c.name, r.Moved, c.moved, r.Differences)
		}
	}
}

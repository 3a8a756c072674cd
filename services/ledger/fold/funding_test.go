package fold

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// allowanceStart is a request.started of the given split: allow from the allowance windows,
// hold from credits.
func allowanceStart(acct, req string, allow, hold int64, at time.Time) events.RequestStarted {
	st := start(acct, req, hold, at)
	st.AllowanceMicros, st.EstimateMicros = allow, allow+hold
	switch {
	case hold == 0:
		st.Funding = events.FundingAllowance
	case allow != 0:
		st.Funding = events.FundingSplit
	}
	return st
}

func windowUsed(s *State, a *Account, at time.Time) []int64 {
	var used []int64
	for _, w := range s.AllowanceWindows(a, at.UnixNano(), nil) {
		used = append(used, w.UsedMicros)
	}
	return used
}

// TestSplitFundingAllowanceAndCredits: an account with 1 credit of allowance left and 1.5
// credits of balance runs a 2-credit request funded by both: the allowance
// takes 1 credit, the credits the other.
func TestSplitFundingAllowanceAndCredits(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "a", Tier: "free", Priority: events.PriorityStandard}) // 5h window: 2 credits
	l.add(t0, grant("a", "g1", 1_500_000, 0, nil))
	l.add(t0, allowanceStart("a", "r0", 1_000_000, 0, t0))
	l.add(t0.Add(time.Second), finish("a", "r0", 1_000_000)) // 1 credit of the window left
	l.add(t0.Add(2*time.Second), allowanceStart("a", "r1", 1_000_000, 1_000_000, t0.Add(2*time.Second)))
	l.add(t0.Add(3*time.Second), finish("a", "r1", 2_000_000))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	a := s.Account("a")
	if a.AvailableMicros != 500_000 || a.HeldMicros != 0 || a.OverageMicros != 0 || a.ChargedMicros != 1_000_000 {
		t.Fatalf("available %d held %d overage %d charged %d, want 500000 0 0 1000000", a.AvailableMicros, a.HeldMicros, a.OverageMicros, a.ChargedMicros)
	}
	if used := windowUsed(s, a, t0.Add(3*time.Second)); used[0] != 2_000_000 {
		t.Fatalf("windows used %v, want the 5h window full (2000000)", used)
	}
}

// TestAllowanceOverrunSpillsToCredits: an allowance-funded job that cost 240 credits against
// a 20-credit window is charged 20 to the allowance and 220 to credits, then
// overage.
func TestAllowanceOverrunSpillsToCredits(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "a", Tier: "plus", Priority: events.PriorityStandard}) // 5h window: 20 credits
	l.add(t0, grant("a", "g1", 100_000_000, 0, nil))
	l.add(t0, allowanceStart("a", "r1", 20_000_000, 0, t0))
	l.add(t0.Add(time.Second), finish("a", "r1", 240_000_000))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	a := s.Account("a")
	if a.AvailableMicros != 0 || a.ChargedMicros != 100_000_000 || a.OverageMicros != 120_000_000 {
		t.Fatalf("available %d charged %d overage %d, want 0, 100000000, 120000000 (220 credits spilled)", a.AvailableMicros, a.ChargedMicros, a.OverageMicros)
	}
	if used := windowUsed(s, a, t0.Add(time.Second)); used[0] != 20_000_000 || used[1] != 20_000_000 {
		t.Fatalf("windows used %v, want 20000000 each", used)
	}
	var revenue int64
	for _, e := range out.Entries {
		if e.LedgerAccount == events.LedgerRevenue {
			revenue += e.AmountMicros
		}
	}
	if revenue != 220_000_000 {
		t.Fatalf("revenue %d, want 220000000", revenue)
	}
}

// TestAllowanceCoversOverrunWithinWindow: a cost above the reservation is still covered by
// the allowance while the windows have room at settlement.
func TestAllowanceCoversOverrunWithinWindow(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "a", Tier: "plus", Priority: events.PriorityStandard})
	l.add(t0, grant("a", "g1", 100_000_000, 0, nil))
	l.add(t0, allowanceStart("a", "r1", 5_000_000, 0, t0))
	l.add(t0.Add(time.Second), finish("a", "r1", 12_000_000))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	a := s.Account("a")
	if a.AvailableMicros != 100_000_000 || a.OverageMicros != 0 {
		t.Fatalf("available %d overage %d, want 100000000 0", a.AvailableMicros, a.OverageMicros)
	}
	if used := windowUsed(s, a, t0.Add(time.Second)); used[0] != 12_000_000 {
		t.Fatalf("windows used %v, want 12000000", used)
	}
}

// TestReleasedHoldReturnsToItsGrant: a hold funded by a purchase grant, released after a
// promotional grant was spent, goes back to the purchase grant, so the promotion's expiry
// takes none of it.
func TestReleasedHoldReturnsToItsGrant(t *testing.T) {
	exp := t0.Add(time.Hour)
	l := &logb{t: t}
	l.add(t0, grant("a", "promo", 5_000_000, 0, &exp)) // burns first: earliest expiry
	l.add(t0, grant("a", "buy", 10_000_000, 0, nil))
	l.add(t0, start("a", "r1", 5_000_000, t0)) // takes the promotion
	l.add(t0, start("a", "r2", 5_000_000, t0)) // takes half of the purchase
	l.add(t0.Add(time.Second), finish("a", "r1", 5_000_000))
	l.add(t0.Add(2*time.Second), finish("a", "r2", 0)) // released
	l.add(exp.Add(time.Second), grant("b", "g", 1, 0, nil))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	a := s.Account("a")
	if a.BreakageMicros != 0 || a.AvailableMicros != 10_000_000 {
		t.Fatalf("breakage %d available %d, want 0 and 10000000 (the purchase is intact)", a.BreakageMicros, a.AvailableMicros)
	}
}

// TestReleaseOfExpiredGrantIsBreakage: a part whose grant expired while it was held is
// breakage when the hold is released (at settlement and at hold expiry), not unexpiring
// credit; a part of the pool returns to the pool; the consumed part is charged first, in
// burn order.
func TestReleaseOfExpiredGrantIsBreakage(t *testing.T) {
	exp := t0.Add(2 * time.Minute)
	for _, tc := range []struct {
		name     string
		end      func(l *logb)
		breakage int64 // of the promotion's held 3 credits, what the release could not return
		extra    int64
		charged  int64
	}{
		// The hold of 5 took 3 from the promotion and 2 from the pool; a cost of 1 consumes
		// 1 of the promotion's part, so 2 of it (gone) and 2 of the pool come back.
		{"settled", func(l *logb) { l.add(exp.Add(time.Minute), finish("a", "r1", 1_000_000)) }, 2_000_000, 2_000_000, 1_000_000},
		{"expired", func(l *logb) { l.add(t0.Add(10*time.Minute), grant("b", "g", 1, 0, nil)) }, 3_000_000, 2_000_000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &logb{t: t}
			l.add(t0, grant("a", "promo", 3_000_000, 0, &exp))
			l.add(t0, events.CreditsAdjusted{AdjustmentID: "x", AccountID: "a", AmountMicros: 2_000_000, Reason: "goodwill"}) // the pool
			l.add(t0, start("a", "r1", 5_000_000, t0))
			l.add(exp.Add(time.Second), grant("b", "g0", 1, 0, nil)) // the promotion expires while held
			tc.end(l)
			s, out := run(t, l.evs)
			mustCheck(t, s, out)
			a := s.Account("a")
			if a.BreakageMicros != tc.breakage || a.ExtraMicros != tc.extra || a.AvailableMicros != tc.extra || a.ChargedMicros != tc.charged {
				t.Fatalf("breakage %d extra %d available %d charged %d, want %d %d %d %d", a.BreakageMicros, a.ExtraMicros,
					a.AvailableMicros, a.ChargedMicros, tc.breakage, tc.extra, tc.extra, tc.charged)
			}
		})
	}
}

// TestHoldPartsFollowBurnOrder: a hold over three grants records three parts in burn order;
// a charge consumes the first, the others go back to their own grants.
func TestHoldPartsFollowBurnOrder(t *testing.T) {
	e1, e2 := t0.Add(time.Hour), t0.Add(2*time.Hour)
	l := &logb{t: t}
	l.add(t0, grant("a", "late", 1_000_000, 0, &e2))
	l.add(t0, grant("a", "early", 1_000_000, 0, &e1))
	l.add(t0, grant("a", "never", 1_000_000, 0, nil))
	l.add(t0, start("a", "r1", 2_500_000, t0))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	h := s.Account("a").Holds[0]
	if h.NumParts() != 3 || h.Part(0).Micros != 1_000_000 || h.Part(1).Micros != 1_000_000 || h.Part(2).Micros != 500_000 {
		t.Fatalf("parts %+v %+v", h.Part(0), h.MoreParts)
	}
	l.add(t0.Add(time.Second), finish("a", "r1", 1_200_000))
	s, out = run(t, l.evs)
	mustCheck(t, s, out)
	got := map[string]int64{}
	for _, g := range s.Account("a").Grants {
		got[g.ID] = g.Remaining
	}
	if got["early"] != 0 || got["late"] != 800_000 || got["never"] != 1_000_000 {
		t.Fatalf("grants %v, want early 0, late 800000, never 1000000", got)
	}
}

// TestCodecVersion2Holds: a version-2 record (holds without parts) still decodes; its hold's
// release goes to the unexpiring pool; the re-encoded record is version 3 and round-trips.
func TestCodecVersion2Holds(t *testing.T) {
	exp := t0.Add(time.Hour)
	l := &logb{t: t}
	l.add(t0, grant("a", "promo", 1_000_000, 0, &exp))
	l.add(t0, start("a", "r1", 600_000, t0))
	s, _ := run(t, l.evs)
	a := s.Account("a")
	if a.Billing != nil {
		t.Fatal("billing section on an account never charged")
	}
	v5 := a.AppendBinary(nil)
	// Version 4 had no project after the hold's parts (one 0 byte: the account's own) and no
	// organization section (two 0 bytes): the record ends with the hold's parts, its project,
	// the parked count, the billing section, the funding account and the budget count.
	if !bytes.HasSuffix(v5, []byte{0, 0, 0, 0, 0}) {
		t.Fatalf("unexpected v5 tail % x", v5[len(v5)-5:])
	}
	v4 := append(append([]byte{codecVersionV4}, v5[1:len(v5)-5]...), 0, 0)
	if got, err := DecodeAccount(v4); err != nil || money(got) != money(a) || got.Holds[0].Part(0) != a.Holds[0].Part(0) {
		t.Fatalf("v4 decoded %v: %+v", err, got)
	}
	v3 := v4[:len(v4)-1] // version 3 had no billing section (here one 0 byte)
	h := a.Holds[0]
	if h.NumParts() != 1 {
		t.Fatalf("parts %d", h.NumParts())
	}
	// The v3 record ends with the hold's parts (count, grant, micros) and the parked count 0.
	partsLen := 1 + 16 + len(binary.AppendVarint(nil, h.Part(0).Micros))
	v2 := append([]byte{codecVersionV2}, v3[1:len(v3)-1-partsLen]...)
	v2 = append(v2, 0)
	got, err := DecodeAccount(v2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Holds) != 1 || got.Holds[0].NumParts() != 0 || got.Holds[0].HoldMicros != 600_000 || got.Grants[0].Remaining != 400_000 {
		t.Fatalf("v2 decoded %+v", got.Holds)
	}
	if err := CheckAccount(got); err != nil {
		t.Fatal(err)
	}
	s2 := New(DefaultConfig(pricebook.Default()), 0)
	restore(s2, s.Snapshot(), []*Account{got})
	l2 := &logb{t: t, seq: 100}
	l2.add(t0.Add(time.Second), finish("a", "r1", 100_000))
	l2.add(exp.Add(time.Second), grant("b", "g", 1, 0, nil))
	var out Output
	for i, e := range l2.evs {
		s2.Apply(Input{Offset: int64(100 + i), Event: e}, &out)
	}
	if err := s2.Check(); err != nil {
		t.Fatal(err)
	}
	b := s2.Account("a")
	// 500,000 released to the pool, the promotion's 400,000 left expire.
	if b.ExtraMicros != 500_000 || b.AvailableMicros != 500_000 || b.BreakageMicros != 400_000 {
		t.Fatalf("extra %d available %d breakage %d, want 500000 500000 400000", b.ExtraMicros, b.AvailableMicros, b.BreakageMicros)
	}
	if c := roundTrip(t, b); c.AppendBinary(nil)[0] != codecVersion || c.AvailableMicros != b.AvailableMicros ||
		c.ExtraMicros != b.ExtraMicros || c.BreakageMicros != b.BreakageMicros || len(c.Grants)+len(c.Holds) != 0 {
		t.Fatalf("re-encoded record differs: %s, want %s", money(c), money(b))
	}
	// A v3 hold with parts round-trips them.
	if c := roundTrip(t, a); money(c) != money(a) || c.Holds[0].Part(0) != h.Part(0) {
		t.Fatalf("v3 round trip: %+v", c.Holds)
	}
}

// TestClosedWindowGivesNoRoom: a finish stamped in an allowance window that log time has
// already left (its admitter's clock runs behind; another admitter's request started in the
// next window) gets no more than the request's reservation from the allowance: the closed
// window's room is unknown (the fold tracks the current window only) and must not read as
// the whole limit.
func TestClosedWindowGivesNoRoom(t *testing.T) {
	const fiveH = 5 * time.Hour
	b := time.UnixMilli((t0.UnixMilli()/fiveH.Milliseconds() + 1) * fiveH.Milliseconds()).UTC() // a 5 h boundary, same week as t0
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "a", Tier: "free", Priority: events.PriorityStandard}) // 5h: 2 credits
	l.add(t0, grant("a", "g1", 10_000_000, 0, nil))
	l.add(b.Add(-10*time.Second), allowanceStart("a", "r0", 1_500_000, 0, b.Add(-10*time.Second)))
	l.add(b.Add(-9*time.Second), finish("a", "r0", 1_500_000))
	l.add(b.Add(-5*time.Second), allowanceStart("a", "r1", 500_000, 2_000_000, b.Add(-5*time.Second))) // the window's last 0.5
	l.add(b.Add(time.Second), allowanceStart("a", "r2", 100_000, 0, b.Add(time.Second)))               // the next window
	l.add(b.Add(-time.Second), finish("a", "r1", 2_500_000))                                           // stamped 2 s behind
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	a := s.Account("a")
	// The allowance pays r1's reservation (0.5), the hold the other 2 credits.
	if a.ChargedMicros != 2_000_000 || a.AvailableMicros != 8_000_000 || a.OverageMicros != 0 {
		t.Fatalf("charged %d available %d overage %d, want 2000000 8000000 0 (the closed window paid only the reservation)",
			a.ChargedMicros, a.AvailableMicros, a.OverageMicros)
	}
}

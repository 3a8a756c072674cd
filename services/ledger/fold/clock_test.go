package fold

import (
	"reflect"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestTickSweepsIdlePartition: on a partition with no customer traffic, a clock tick moves
// the log time, so a promotion that expired is posted to breakage and an abandoned hold is
// released, without any event of the account. The tick is not an anomaly, touches no other
// account, and replaying the same log gives the same state and outputs.
func TestTickSweepsIdlePartition(t *testing.T) {
	l := &logb{t: t}
	exp := t0.Add(10 * time.Minute)
	l.add(t0, grant("a", "promo", 1_000_000, 0, &exp))
	l.add(t0, grant("b", "paid", 500_000, 0, nil))
	l.add(t0, start("b", "r1", 200_000, t0)) // abandoned: its hold expires at t0+5m
	tick := events.ClockTick{Partition: 0}
	l.add(t0.Add(6*time.Minute), tick) // releases b's hold; the promotion is still live
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	if b := s.Account("b"); b.HeldMicros != 0 || b.AvailableMicros != 500_000 || len(out.Expired) != 1 {
		t.Fatalf("after the first tick: b held %d available %d, expired %d", b.HeldMicros, b.AvailableMicros, len(out.Expired))
	}
	if a := s.Account("a"); a.AvailableMicros != 1_000_000 {
		t.Fatalf("the promotion expired early: available %d", a.AvailableMicros)
	}
	l.add(t0.Add(11*time.Minute), tick)
	s, out = run(t, l.evs)
	mustCheck(t, s, out)
	a := s.Account("a")
	if a.AvailableMicros != 0 || a.BreakageMicros != 1_000_000 || len(a.Grants) != 0 {
		t.Fatalf("after the second tick: available %d breakage %d grants %d", a.AvailableMicros, a.BreakageMicros, len(a.Grants))
	}
	if len(out.Anomalies) != 0 {
		t.Fatalf("anomalies: %+v", out.Anomalies)
	}
	if !s.Watermark().Equal(t0.Add(11 * time.Minute)) {
		t.Fatalf("watermark %v", s.Watermark())
	}
	bu := s.Balance(a)
	if len(bu.Expiring) != 0 || bu.AvailableMicros != 0 {
		t.Fatalf("balance after breakage: %+v", bu)
	}
	s2, out2 := run(t, l.evs)
	for _, st := range []*State{s, s2} {
		st.Accounts(func(a *Account) { a.touched = 0 }) // the Output generation, not state
	}
	if !reflect.DeepEqual(out.Entries, out2.Entries) || !reflect.DeepEqual(out.Expired, out2.Expired) ||
		!reflect.DeepEqual(*s.Account("a"), *s2.Account("a")) || !reflect.DeepEqual(*s.Account("b"), *s2.Account("b")) {
		t.Fatal("replaying the log with ticks changed the state or the outputs")
	}
}

// TestTickTimeCheckedAgainstRecord: a tick's time is checked against its Kafka record
// timestamp like any event's: one stamped too far ahead is refused and does not move the
// clock (it would otherwise expire every hold of the partition at once).
func TestTickTimeCheckedAgainstRecord(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("a", "g", 1_000_000, 0, nil))
	l.add(t0, start("a", "r1", 100_000, t0))
	tick := l.add(t0.Add(time.Hour), events.ClockTick{})
	s := New(DefaultConfig(pricebook.Default()), 0)
	var out Output
	s.Apply(Input{Offset: 0, Event: l.evs[0], RecordTimeNs: t0.UnixNano()}, &out)
	s.Apply(Input{Offset: 1, Event: l.evs[1], RecordTimeNs: t0.UnixNano()}, &out)
	s.Apply(Input{Offset: 2, Event: tick, RecordTimeNs: t0.UnixNano()}, &out)
	if len(out.Anomalies) != 1 || out.Anomalies[0].Kind != AnomalyFutureTime || out.Anomalies[0].Offset != 2 {
		t.Fatalf("anomalies %+v", out.Anomalies)
	}
	if !s.Watermark().Equal(t0) || s.Account("a").HeldMicros != 100_000 || s.Offset() != 2 {
		t.Fatalf("a refused tick moved the clock: watermark %v held %d offset %d", s.Watermark(), s.Account("a").HeldMicros, s.Offset())
	}
}

// TestGrantsCannotOverflowBalance: each grant is at most MaxAmountMicros, but 9,300 of them
// sum past int64. The fold refuses (anomaly overflow, with the event's offset) the first
// grant that would overflow the balance or the granted total, instead of wrapping it
// negative; a replay refuses the same one.
func TestGrantsCannotOverflowBalance(t *testing.T) {
	l := &logb{t: t}
	const n = 9300
	for i := range n {
		l.add(t0, grant("rich", "g"+itoa(i), events.MaxAmountMicros, 0, nil))
	}
	cfg := DefaultConfig(pricebook.Default())
	cfg.GrantsPerAccountMax = 10_000
	s := New(cfg, 0)
	var out Output
	for i, e := range l.evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	a := s.Account("rich")
	want := int64((1<<63 - 1) / events.MaxAmountMicros) // grants that fit
	if a.AvailableMicros != want*events.MaxAmountMicros || a.GrantedMicros != a.AvailableMicros {
		t.Fatalf("available %d granted %d, want %d", a.AvailableMicros, a.GrantedMicros, want*events.MaxAmountMicros)
	}
	over := 0
	for _, an := range out.Anomalies {
		if an.Kind == AnomalyOverflow {
			if over == 0 && an.Offset != want {
				t.Fatalf("first overflow at offset %d, want %d", an.Offset, want)
			}
			over++
		}
	}
	if over != n-int(want) {
		t.Fatalf("%d overflow anomalies, want %d", over, n-int(want))
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	if _, err := checkJournal(out.Entries); err != nil {
		t.Fatal(err)
	}
}

// TestAdjustmentsCannotOverflow: credits past int64 and debits whose unpaid rest would push
// the overage past int64 are refused, not wrapped.
func TestAdjustmentsCannotOverflow(t *testing.T) {
	l := &logb{t: t}
	for i := range 9300 {
		l.add(t0, events.CreditsAdjusted{AdjustmentID: "c" + itoa(i), AccountID: "up", AmountMicros: events.MaxAmountMicros, Reason: "r"})
		l.add(t0, events.CreditsAdjusted{AdjustmentID: "d" + itoa(i), AccountID: "down", AmountMicros: -events.MaxAmountMicros, Reason: "r"})
	}
	cfg := DefaultConfig(pricebook.Default())
	cfg.DedupePerAccountMax = 1 << 20 // every adjustment id is remembered: none is too late
	s := New(cfg, 0)
	var out Output
	for i, e := range l.evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	up, down := s.Account("up"), s.Account("down")
	if up.AvailableMicros <= 0 || up.ExtraMicros != up.AvailableMicros || down.OverageMicros <= 0 {
		t.Fatalf("wrapped: up available %d extra %d, down overage %d", up.AvailableMicros, up.ExtraMicros, down.OverageMicros)
	}
	over := 0
	for _, an := range out.Anomalies {
		if an.Kind == AnomalyOverflow {
			over++
		}
	}
	if over == 0 {
		t.Fatal("no overflow anomaly")
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	if _, err := checkJournal(out.Entries); err != nil {
		t.Fatal(err)
	}
}

// TestPastExpiryBreakageNotBeforeGrant: a grant that is already expired in log time is all
// breakage at once, but the breakage is dated no earlier than the grant: a breakage dated at
// a past expires_at put a debit before its credit, and a statement over that span closed
// negative.
func TestPastExpiryBreakageNotBeforeGrant(t *testing.T) {
	l := &logb{t: t}
	past := t0.Add(-24 * time.Hour)
	l.add(t0, grant("a", "old", 1_000_000, 0, &past))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	for _, e := range out.Entries {
		if e.At.Before(t0) {
			t.Fatalf("%s line dated %v, before its grant at %v", e.Kind, e.At, t0)
		}
	}
	if a := s.Account("a"); a.BreakageMicros != 1_000_000 || a.AvailableMicros != 0 {
		t.Fatalf("breakage %d available %d", a.BreakageMicros, a.AvailableMicros)
	}
}

// TestBalanceListsExpiringGrants: balance.updated carries the earliest-expiring grants with
// their remainders, in expiry order; beyond MaxExpiringGrants the last entry carries the rest.
func TestBalanceListsExpiringGrants(t *testing.T) {
	l := &logb{t: t}
	for i, m := range []int{50, 10, 40, 20, 60, 30} { // minutes to expiry, out of order
		exp := t0.Add(time.Duration(m) * time.Minute)
		l.add(t0, grant("a", "g"+itoa(i), int64(m)*1000, int32(i%2), &exp))
	}
	l.add(t0, grant("a", "forever", 7, 0, nil))
	l.add(t0, start("a", "r", 5_000, t0)) // burns g2 (priority 0, then earliest: 40 min) partly
	s, _ := run(t, l.evs)
	got := s.Balance(s.Account("a")).Expiring
	want := []events.ExpiringGrant{
		{ExpiresAt: t0.Add(10 * time.Minute), RemainingMicros: 10_000},
		{ExpiresAt: t0.Add(20 * time.Minute), RemainingMicros: 20_000},
		{ExpiresAt: t0.Add(30 * time.Minute), RemainingMicros: 30_000},
		{ExpiresAt: t0.Add(40 * time.Minute), RemainingMicros: 35_000 + 50_000 + 60_000},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("expiring\n got %+v\nwant %+v", got, want)
	}
	bu := s.Balance(s.Account("a"))
	if err := bu.Validate(); err != nil {
		t.Fatal(err)
	}
}

func itoa(i int) string { return time.Duration(i).String() }

// TestRestoreReplayOfFoldedEventsSweepsAsStraight: a restore whose committed offset is older
// than its snapshot (the engine stopped after writing the snapshot, before committing)
// replays events the snapshot already folded. They must not sweep: a hold placed already
// expired (its start stamped by a clock behind the log time) is swept at the next new event
// in the straight fold; sweeping it at a replayed one remembers its expiry earlier, so a late
// finish a day later is forgotten and charged as unknown an hour later instead: another
// balance (here overage instead of credits).
func TestRestoreReplayOfFoldedEventsSweepsAsStraight(t *testing.T) {
	tick := events.ClockTick{Partition: 0}
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
	l.add(t0.Add(10*time.Minute), tick)
	l.add(t0, start("a", "r1", 1_000_000, t0)) // its hold expires at t0+5m: already past
	cut := len(l.evs)
	l.add(t0.Add(2*time.Hour), tick)
	l.add(t0.Add(2*time.Hour), events.CreditsAdjusted{AdjustmentID: "x", AccountID: "a", AmountMicros: -1_000_000, Reason: "r"})
	l.add(t0.Add(24*time.Hour+30*time.Minute), finish("a", "r1", 500_000))
	l.add(t0.Add(24*time.Hour+40*time.Minute), grant("a", "g2", 2_000_000, 0, nil))
	l.add(t0.Add(26*time.Hour), tick)
	straight, sOut := run(t, l.evs)
	mustCheck(t, straight, sOut)

	cfg := DefaultConfig(pricebook.Default())
	s1 := New(cfg, 0)
	var out Output
	for i, e := range l.evs[:cut] {
		s1.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	s2 := New(cfg, 0)
	restore(s2, s1.Snapshot(), []*Account{roundTrip(t, s1.Account("a"))})
	for i, e := range l.evs { // from an old committed offset
		s2.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	a, b := straight.Account("a"), s2.Account("a")
	if money(a) != money(b) {
		t.Fatalf("restored and replayed:\n%s\nstraight:\n%s", money(b), money(a))
	}
}

// TestFinishesCannotOverflowOverage: finishes that cost more than the account can pay add to
// its overage receivable; about 9,220 of them at 10^15 µ would wrap the int64 total negative.
// The finish that would overflow it is refused as an overflow anomaly (dead-lettered by the
// engine, not applied), like a grant or an adjustment.
func TestFinishesCannotOverflowOverage(t *testing.T) {
	l := &logb{t: t}
	for i := range 9300 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		l.add(at, start("debtor", "r"+itoa(i), 0, at))
		l.add(at, finish("debtor", "r"+itoa(i), events.MaxAmountMicros))
	}
	cfg := DefaultConfig(pricebook.Default())
	cfg.DedupePerAccountMax = 1 << 20
	s := New(cfg, 0)
	var out Output
	for i, e := range l.evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	a := s.Account("debtor")
	over := 0
	for _, an := range out.Anomalies {
		if an.Kind == AnomalyOverflow {
			over++
		}
	}
	if a.OverageMicros <= 0 || over == 0 {
		t.Fatalf("overage %d after 9300 finishes of %d µ, %d overflow anomalies", a.OverageMicros, events.MaxAmountMicros, over)
	}
	if want := int64(9300-over) * events.MaxAmountMicros; a.OverageMicros != want {
		t.Fatalf("overage %d, want %d (%d finishes applied)", a.OverageMicros, want, 9300-over)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

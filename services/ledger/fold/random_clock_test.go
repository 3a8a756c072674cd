package fold

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// randomLogClock is randomLog with what the money-safety changes added: clock ticks (some
// behind the watermark, some repeated), jumps of hours (allowance windows roll over, holds
// and grants expire while requests are open), split-funded starts on tiers with allowance
// windows, adjustments while holds are open, many grants per account (the pool) and event
// times a little out of order (admitters' clocks differ).
func randomLogClock(t testing.TB, seed uint64, n, accounts int) []*events.Event {
	r := rand.New(rand.NewPCG(seed, seed^0x51ed))
	l := &logb{t: t}
	now := t0
	type open struct {
		acct, req string
		at        time.Time
	}
	var opens []open
	tiers := []string{"free", "plus", "pro", "enterprise"}
	for len(l.evs) < n {
		switch r.IntN(40) {
		case 0:
			now = now.Add(time.Duration(1+r.IntN(6*3600)) * time.Second) // a jump of hours
		default:
			now = now.Add(time.Duration(r.IntN(3000)) * time.Millisecond)
		}
		skew := time.Duration(r.IntN(20_000)-10_000) * time.Millisecond // another admitter's clock
		acct := fmt.Sprint("acct-", r.IntN(accounts))
		switch k := r.IntN(100); {
		case k < 12:
			var exp *time.Time
			if r.IntN(3) != 0 {
				e := now.Add(time.Duration(1+r.IntN(1800)) * time.Second)
				exp = &e
			}
			l.add(now, grant(acct, fmt.Sprint("g", len(l.evs)), int64(1+r.IntN(3_000_000)), int32(r.IntN(3)), exp))
		case k < 45:
			req := fmt.Sprint("r", len(l.evs))
			at := now.Add(skew)
			st := start(acct, req, int64(r.IntN(400_000)), at)
			st.HoldExpiresAt = at.Add(time.Duration(1+r.IntN(600)) * time.Second)
			switch r.IntN(4) {
			case 0:
				st.Funding, st.HoldMicros, st.AllowanceMicros = events.FundingAllowance, 0, int64(1+r.IntN(2_000_000))
			case 1, 2:
				if st.HoldMicros > 0 {
					st.Funding, st.AllowanceMicros = events.FundingSplit, int64(1+r.IntN(2_000_000))
				}
			}
			if r.IntN(15) == 0 { // finish first
				l.add(at, finish(acct, req, int64(r.IntN(3_000_000))))
			}
			l.add(at, st)
			opens = append(opens, open{acct, req, at})
		case k < 75 && len(opens) > 0:
			i := r.IntN(len(opens))
			o := opens[i]
			opens = append(opens[:i], opens[i+1:]...)
			e := l.add(now.Add(skew), finish(o.acct, o.req, int64(r.IntN(3_000_000))))
			if r.IntN(10) == 0 { // finished at two admitters at once
				l.add(now.Add(skew/2), e.Payload)
			}
		case k < 82:
			l.add(now, events.CreditsAdjusted{AdjustmentID: fmt.Sprint("adj", len(l.evs)), AccountID: acct, AmountMicros: int64(r.IntN(2_000_000) - 1_000_000 + 1), Reason: "fuzz"})
		case k < 85:
			l.add(now, events.AccountUpdated{AccountID: acct, Tier: tiers[r.IntN(4)], Priority: events.PriorityStandard})
		case k < 92:
			tick := events.ClockTick{Partition: 0}
			switch r.IntN(3) {
			case 0:
				l.add(now.Add(-time.Duration(r.IntN(600))*time.Second), tick) // behind
			case 1:
				l.add(now.Add(time.Duration(r.IntN(600))*time.Second), tick) // an idle stretch
			default:
				l.add(now, tick)
			}
		case k < 97 && len(l.evs) > 0:
			j := len(l.evs) - 1 - r.IntN(min(5, len(l.evs)))
			l.evs = append(l.evs, l.evs[j])
		}
	}
	return l.evs
}

func runCfg(t testing.TB, cfg Config, evs []*events.Event) (*State, *Output) {
	t.Helper()
	s := New(cfg, 0)
	var out Output
	for i, e := range evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	return s, &out
}

func randomClockCfg() Config {
	cfg := DefaultConfig(pricebook.Default())
	cfg.GrantsPerAccountMax = 3 // the pool is used
	return cfg
}

// TestRandomClockLogInvariantsReplayRestore: the clock log keeps every invariant and the
// journal, replays identically, and a restore from the persisted form at any point resumes
// to the same state.
func TestRandomClockLogInvariantsReplayRestore(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		checkClockLog(t, seed, 8_000, 12)
	}
}

func FuzzFoldClock(f *testing.F) {
	f.Add(uint64(1), uint16(500), uint8(5), uint16(200))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16, accounts uint8, cut uint16) {
		evs := randomLogClock(t, seed, int(n%3000)+1, int(accounts%10)+1)
		checkClockLogEvs(t, seed, evs, int(cut)%len(evs))
	})
}

func checkClockLog(t *testing.T, seed uint64, n, accounts int) {
	evs := randomLogClock(t, seed, n, accounts)
	checkClockLogEvs(t, seed, evs, len(evs)/3)
}

func checkClockLogEvs(t *testing.T, seed uint64, evs []*events.Event, cut int) {
	t.Helper()
	cfg := randomClockCfg()
	s1, out1 := runCfg(t, cfg, evs)
	if err := s1.Check(); err != nil {
		t.Fatalf("seed %d: invariants: %v", seed, err)
	}
	tot, err := checkJournal(out1.Entries)
	if err != nil {
		t.Fatalf("seed %d: journal: %v", seed, err)
	}
	for id, jt := range tot {
		a := s1.Account(id)
		if jt.Available != a.AvailableMicros || jt.Held != a.HeldMicros || jt.Overage != a.OverageMicros {
			t.Fatalf("seed %d: account %s: journal %+v, state available %d held %d overage %d", seed, id, jt, a.AvailableMicros, a.HeldMicros, a.OverageMicros)
		}
	}
	s2, out2 := runCfg(t, cfg, evs)
	if !reflect.DeepEqual(out1.Entries, out2.Entries) || !reflect.DeepEqual(out1.Expired, out2.Expired) {
		t.Fatalf("seed %d: replay differs", seed)
	}
	_ = s2
	// Restore at cut through the binary codec, then resume from the start.
	s3 := New(cfg, 0)
	var o3 Output
	for i, e := range evs[:cut] {
		s3.Apply(Input{Offset: int64(i), Event: e}, &o3)
	}
	s4 := New(cfg, 0)
	var accts []*Account
	s3.Accounts(func(a *Account) { accts = append(accts, roundTrip(t, a)) })
	restore(s4, s3.Snapshot(), accts)
	o4 := o3
	o4.Entries = append([]Entry(nil), o3.Entries...)
	for i, e := range evs {
		s4.Apply(Input{Offset: int64(i), Event: e}, &o4)
	}
	if err := s4.Check(); err != nil {
		t.Fatalf("seed %d: restored invariants: %v", seed, err)
	}
	s1.Accounts(func(a *Account) {
		b := s4.Account(a.ID)
		if b == nil || moneyN(a) != moneyN(b) {
			t.Fatalf("seed %d cut %d: account %s: restored\n%s\nstraight\n%s", seed, cut, a.ID, moneyN(b), moneyN(a))
		}
	})
	if !reflect.DeepEqual(out1.Entries, o4.Entries) {
		t.Fatalf("seed %d cut %d: restored journal differs (%d vs %d lines)", seed, cut, len(o4.Entries), len(out1.Entries))
	}
}

// moneyN is money with an empty grant list read as none.
func moneyN(a *Account) string {
	if a == nil {
		return "nil"
	}
	c := *a
	if len(c.Grants) == 0 {
		c.Grants = nil
	}
	return money(&c)
}

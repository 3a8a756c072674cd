package fold

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/fold/foldtest"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

var t0 = time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)

const ep = "codex.responses"

type logb struct {
	t   testing.TB
	evs []*events.Event
	seq int
}

func (l *logb) add(at time.Time, d events.Data) *events.Event {
	l.t.Helper()
	l.seq++
	id := events.DerivedID("test", fmt.Sprint(l.seq)) // deterministic UUIDv5 ids
	e, err := events.NewWithID(id, "test", at, d)
	if err != nil {
		l.t.Fatalf("event: %v", err)
	}
	l.evs = append(l.evs, &e)
	return &e
}

func grant(acct, id string, amt int64, prio int32, exp *time.Time) events.CreditsGranted {
	return events.CreditsGranted{GrantID: id, AccountID: acct, AmountMicros: amt, Source: events.GrantPurchase, Priority: prio, ExpiresAt: exp}
}

func start(acct, req string, hold int64, at time.Time) events.RequestStarted {
	return events.RequestStarted{RequestID: req, AccountID: acct, Endpoint: ep, Tier: "plus", Priority: events.PriorityStandard,
		Funding: events.FundingCredits, HoldMicros: hold, EstimateMicros: hold, HoldExpiresAt: at.Add(5 * time.Minute), PriceBookVersion: "v1"}
}

func rejected(acct, id string) events.RequestRejected {
	return events.RequestRejected{RequestID: id, AccountID: acct, Endpoint: ep, Tier: "free", Priority: events.PriorityBatch, Reason: "rate", PriceBookVersion: "v1"}
}

func finish(acct, req string, cost int64) events.RequestFinished {
	return events.RequestFinished{RequestID: req, AccountID: acct, Endpoint: ep, Status: events.StatusSucceeded, CostMicros: cost, PriceBookVersion: "v1"}
}

// run folds the log and returns the state and all outputs.
func run(t testing.TB, evs []*events.Event) (*State, *Output) {
	t.Helper()
	s := New(DefaultConfig(pricebook.Default()), 0)
	var out Output
	for i, e := range evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	return s, &out
}

func mustCheck(t *testing.T, s *State, out *Output) map[string]foldtest.JournalTotals {
	t.Helper()
	if err := s.Check(); err != nil {
		t.Fatalf("invariants: %v", err)
	}
	tot, err := checkJournal(out.Entries)
	if err != nil {
		t.Fatalf("journal: %v", err)
	}
	for id, jt := range tot {
		a := s.Account(id)
		if a == nil {
			t.Fatalf("journal names unknown account %s", id)
		}
		if jt.Available != a.AvailableMicros || jt.Held != a.HeldMicros || jt.Overage != a.OverageMicros {
			t.Fatalf("account %s: journal %+v, state available %d held %d overage %d", id, jt, a.AvailableMicros, a.HeldMicros, a.OverageMicros)
		}
	}
	return tot
}

func TestFoldTable(t *testing.T) {
	exp := t0.Add(time.Hour)
	cases := []struct {
		name                     string
		build                    func(l *logb)
		available, held, overage int64
		anomalies                []string
		expired                  int
		breakage                 int64
	}{
		{"grant start finish under hold", func(l *logb) {
			l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
			l.add(t0, start("a", "r1", 300_000, t0))
			l.add(t0.Add(time.Second), finish("a", "r1", 120_000))
		}, 880_000, 0, 0, nil, 0, 0},
		{"charge above hold from available", func(l *logb) {
			l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
			l.add(t0, start("a", "r1", 100_000, t0))
			l.add(t0.Add(time.Second), finish("a", "r1", 400_000))
		}, 600_000, 0, 0, nil, 0, 0},
		{"unpayable charge becomes overage", func(l *logb) {
			l.add(t0, grant("a", "g1", 100_000, 0, nil))
			l.add(t0, start("a", "r1", 100_000, t0))
			l.add(t0.Add(time.Second), finish("a", "r1", 250_000))
		}, 0, 0, 150_000, nil, 0, 0},
		{"hold short of balance is capped", func(l *logb) {
			l.add(t0, grant("a", "g1", 50_000, 0, nil))
			l.add(t0, start("a", "r1", 100_000, t0))
		}, 0, 50_000, 0, []string{AnomalyHoldShort}, 0, 0},
		{"finish before start is parked and matched", func(l *logb) {
			l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
			l.add(t0, finish("a", "r1", 70_000))
			l.add(t0, start("a", "r1", 300_000, t0))
		}, 930_000, 0, 0, nil, 0, 0},
		{"duplicates change nothing", func(l *logb) {
			g := l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
			l.evs = append(l.evs, g)                       // same event re-sent
			l.add(t0, grant("a", "g1", 1_000_000, 0, nil)) // same grant id, new event
			l.add(t0, start("a", "r1", 300_000, t0))
			l.add(t0, start("a", "r1", 300_000, t0))
			l.add(t0, finish("a", "r1", 100_000))
			l.add(t0, finish("a", "r1", 100_000))
			adj := events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "a", AmountMicros: 5, Reason: "fix"}
			l.add(t0, adj)
			l.add(t0, adj)
		}, 900_005, 0, 0, []string{AnomalyDuplicate, AnomalyDuplicate, AnomalyDuplicate, AnomalyDuplicate, AnomalyDuplicate}, 0, 0},
		{"hold expires in log time, late finish charged", func(l *logb) {
			l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
			l.add(t0, start("a", "r1", 300_000, t0))
			l.add(t0.Add(6*time.Minute), grant("b", "g2", 1, 0, nil)) // another account moves the clock
			l.add(t0.Add(7*time.Minute), finish("a", "r1", 200_000))
		}, 800_000, 0, 0, []string{AnomalyLateFinish}, 1, 0},
		{"grant expiry is breakage, burn order by priority then expiry", func(l *logb) {
			l.add(t0, grant("a", "never", 500_000, 0, nil))
			l.add(t0, grant("a", "soon", 300_000, 0, &exp))
			l.add(t0, grant("a", "low", 200_000, 5, nil))
			l.add(t0, start("a", "r1", 100_000, t0)) // burns "soon" first
			l.add(t0, finish("a", "r1", 100_000))
			l.add(exp.Add(time.Second), grant("b", "g2", 1, 0, nil))
		}, 700_000, 0, 0, nil, 0, 200_000},
		{"negative adjustment beyond balance is overage", func(l *logb) {
			l.add(t0, grant("a", "g1", 100, 0, nil))
			l.add(t0, events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "a", AmountMicros: -300, Reason: "refund reversal"})
		}, 0, 0, 200, nil, 0, 0},
		{"unknown finish charged after park timeout", func(l *logb) {
			l.add(t0, grant("a", "g1", 1_000, 0, nil))
			l.add(t0, finish("a", "ghost", 400))
			l.add(t0.Add(2*time.Hour), grant("b", "g2", 1, 0, nil))
		}, 600, 0, 0, []string{AnomalyUnknownFinish}, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := &logb{t: t}
			c.build(l)
			s, out := run(t, l.evs)
			mustCheck(t, s, out)
			a := s.Account("a")
			if a.AvailableMicros != c.available || a.HeldMicros != c.held || a.OverageMicros != c.overage {
				t.Fatalf("available %d held %d overage %d, want %d %d %d", a.AvailableMicros, a.HeldMicros, a.OverageMicros, c.available, c.held, c.overage)
			}
			var kinds []string
			for _, an := range out.Anomalies {
				kinds = append(kinds, an.Kind)
			}
			if len(kinds) != len(c.anomalies) || (len(kinds) > 0 && !reflect.DeepEqual(kinds, c.anomalies)) {
				t.Fatalf("anomalies %v, want %v", kinds, c.anomalies)
			}
			if len(out.Expired) != c.expired {
				t.Fatalf("expired %d, want %d", len(out.Expired), c.expired)
			}
			if a.BreakageMicros != c.breakage {
				t.Fatalf("breakage %d, want %d", a.BreakageMicros, c.breakage)
			}
		})
	}
}

func TestBurnOrder(t *testing.T) {
	exp1, exp2 := t0.Add(time.Hour), t0.Add(2*time.Hour)
	l := &logb{t: t}
	l.add(t0, grant("a", "p0-never", 100, 0, nil))
	l.add(t0, grant("a", "p0-late", 100, 0, &exp2))
	l.add(t0, grant("a", "p0-early", 100, 0, &exp1))
	l.add(t0, grant("a", "p1", 100, 1, &exp1))
	l.add(t0, grant("a", "p0-early-b", 100, 0, &exp1))
	s, _ := run(t, l.evs)
	var got []string
	for _, g := range s.Account("a").Grants {
		got = append(got, g.ID)
	}
	want := []string{"p0-early", "p0-early-b", "p0-late", "p0-never", "p1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("burn order %v, want %v", got, want)
	}
}

func TestExpiredOutputIsDeterministic(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
	st := l.add(t0, start("a", "r1", 300_000, t0))
	l.add(t0.Add(10*time.Minute), grant("b", "g2", 1, 0, nil))
	_, out := run(t, l.evs)
	if len(out.Expired) != 1 || out.Expired[0].ID != events.DerivedID(st.ID, "expired") {
		t.Fatalf("expired %+v", out.Expired)
	}
	x := out.Expired[0].Data
	if x.ReleasedMicros != 300_000 || x.StartedEventID != st.ID || !x.ExpiredAt.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("expired data %+v", x)
	}
	if err := x.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestAllowanceWindows(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "a", Tier: "plus", Priority: events.PriorityStandard})
	st := start("a", "r1", 0, t0)
	st.Funding, st.AllowanceMicros = events.FundingAllowance, 500_000
	l.add(t0, st)
	l.add(t0.Add(time.Second), finish("a", "r1", 200_000))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	w := s.AllowanceWindows(s.Account("a"), t0.Add(time.Second).UnixNano(), nil)
	if len(w) != 2 || w[0].UsedMicros != 200_000 || w[1].UsedMicros != 200_000 {
		t.Fatalf("windows %+v", w)
	}
	if len(out.Entries) != 0 {
		t.Fatalf("allowance moved credits: %+v", out.Entries)
	}
}

func TestHistoryFactor(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 1_000_000_000, 0, nil))
	l.add(t0, events.AbuseFlagged{FlagID: "f1", AccountID: "a", Rule: "r", Score: 1, Action: events.ActionThrottle, WindowStart: t0.Add(-time.Minute), WindowEnd: t0})
	l.add(t0.Add(time.Second), events.AbuseFlagged{FlagID: "f2", AccountID: "a", Rule: "r", Score: 1, Action: events.ActionBlock, WindowStart: t0.Add(-time.Minute), WindowEnd: t0})
	l.add(t0.Add(25*time.Hour), grant("a", "g2", 1, 0, nil))
	_, out := run(t, l.evs)
	var got []int32
	for _, x := range out.Limits {
		if x.Scope == events.ScopeAccount {
			got = append(got, x.FactorPermille)
		}
	}
	// throttle: 1000-500; block: 0; after decay and block end: neutral.
	if want := []int32{500, 0, 1000}; !reflect.DeepEqual(got, want) {
		t.Fatalf("account factors %v, want %v", got, want)
	}
}

func TestLoadFactorShedsBatchFirst(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 1_000_000_000, 0, nil))
	// codex capacity 4096, reserve 10 %: batch sheds from 1843 in flight.
	for i := 0; i < 2600; i++ {
		l.add(t0, start("a", fmt.Sprint("r", i), 1, t0))
	}
	cfg := DefaultConfig(pricebook.Default())
	cfg.HoldsPerAccountMax = 10_000
	s := New(cfg, 0)
	var out Output
	for i, e := range l.evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	b, st, c := s.EndpointFactor(ep, events.PriorityBatch), s.EndpointFactor(ep, events.PriorityStandard), s.EndpointFactor(ep, events.PriorityCritical)
	if !(b < st && st == 1000 && c == 1000) || b >= 1000 {
		t.Fatalf("factors batch %d standard %d critical %d", b, st, c)
	}
	if len(out.Limits) == 0 {
		t.Fatal("no limits.adjusted emitted")
	}
}

// randomLog builds a long randomized log: grants (some expiring), starts, finishes (some
// before their start, some after expiry, some never), adjustments, account updates, flags,
// and duplicates of events and business ids.
func randomLog(t testing.TB, seed uint64, n, accounts int) []*events.Event {
	r := rand.New(rand.NewPCG(seed, seed^0x9e37))
	l := &logb{t: t}
	now := t0
	type open struct {
		acct, req string
		at        time.Time
	}
	var opens []open
	var pendingFinish []*events.Event
	for len(l.evs) < n {
		now = now.Add(time.Duration(r.IntN(4000)) * time.Millisecond)
		acct := fmt.Sprint("acct-", r.IntN(accounts))
		switch k := r.IntN(100); {
		case k < 10:
			var exp *time.Time
			if r.IntN(2) == 0 {
				e := now.Add(time.Duration(r.IntN(3600)) * time.Second)
				exp = &e
			}
			l.add(now, grant(acct, fmt.Sprint("g", len(l.evs)), int64(1+r.IntN(5_000_000)), int32(r.IntN(3)), exp))
		case k < 45:
			req := fmt.Sprint("r", len(l.evs))
			st := start(acct, req, int64(r.IntN(400_000)), now)
			switch r.IntN(10) {
			case 0, 1:
				st.Funding, st.HoldMicros, st.AllowanceMicros = events.FundingAllowance, 0, int64(r.IntN(100_000))
			case 2:
				if st.HoldMicros > 0 { // split: both sources
					st.Funding, st.AllowanceMicros = events.FundingSplit, int64(1+r.IntN(1_000_000))
				}
			}
			if r.IntN(10) == 0 { // finish first
				f := finish(acct, req, int64(r.IntN(500_000)))
				l.add(now, f)
			}
			l.add(now, st)
			opens = append(opens, open{acct, req, now})
		case k < 80 && len(opens) > 0:
			i := r.IntN(len(opens))
			o := opens[i]
			opens = append(opens[:i], opens[i+1:]...)
			l.add(now, finish(o.acct, o.req, int64(r.IntN(500_000))))
		case k < 85:
			l.add(now, events.CreditsAdjusted{AdjustmentID: fmt.Sprint("adj", len(l.evs)), AccountID: acct, AmountMicros: int64(r.IntN(200_000) - 100_000 + 1), Reason: "fuzz"})
		case k < 87:
			tiers := []string{"free", "plus", "pro", "enterprise"}
			l.add(now, events.AccountUpdated{AccountID: acct, Tier: tiers[r.IntN(4)], Priority: events.PriorityBatch})
		case k < 88:
			l.add(now, events.AbuseFlagged{FlagID: fmt.Sprint("f", len(l.evs)), AccountID: acct, Rule: "r", Score: 1, Action: events.ActionThrottle, WindowStart: now.Add(-time.Minute), WindowEnd: now})
		case k < 92:
			l.add(now, events.RequestRejected{RequestID: fmt.Sprint("x", len(l.evs)), AccountID: acct, Endpoint: ep, Tier: "free", Priority: events.PriorityBatch, Reason: "rate", PriceBookVersion: "v1"})
		case k < 97 && len(l.evs) > 0:
			// Duplicate: the same event again (a producer retry), shortly after.
			j := len(l.evs) - 1 - r.IntN(min(5, len(l.evs)))
			l.evs = append(l.evs, l.evs[j])
		default:
			if len(pendingFinish) > 0 {
				l.evs = append(l.evs, pendingFinish[0])
				pendingFinish = pendingFinish[1:]
			}
		}
	}
	return l.evs
}

func TestRandomLogInvariantsAndReplay(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		evs := randomLog(t, seed, 20_000, 50)
		s1, out1 := run(t, evs)
		tot := mustCheck(t, s1, out1)
		if len(tot) == 0 {
			t.Fatal("no journal")
		}
		s2, out2 := run(t, evs)
		if !reflect.DeepEqual(out1.Entries, out2.Entries) || !reflect.DeepEqual(out1.Expired, out2.Expired) || !reflect.DeepEqual(out1.Limits, out2.Limits) {
			t.Fatalf("seed %d: replay outputs differ", seed)
		}
		s1.Accounts(func(a *Account) {
			b := s2.Account(a.ID)
			if money(a) != money(b) {
				t.Fatalf("seed %d: account %s differs on replay", seed, a.ID)
			}
		})
		if len(out1.Expired) == 0 {
			t.Fatalf("seed %d: log exercised no expiry", seed)
		}
	}
}

func FuzzFold(f *testing.F) {
	f.Add(uint64(1), uint16(500), uint8(5))
	f.Add(uint64(7), uint16(3000), uint8(2))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16, accounts uint8) {
		evs := randomLog(t, seed, int(n%4000)+1, int(accounts%20)+1)
		// Reorder inside the rules: swap neighbours of different accounts (per-account
		// order is what a partition guarantees).
		r := rand.New(rand.NewPCG(seed, 3))
		for i := 0; i+1 < len(evs); i++ {
			if r.IntN(4) == 0 && evs[i].Subject != evs[i+1].Subject {
				evs[i], evs[i+1] = evs[i+1], evs[i]
			}
		}
		s1, out1 := run(t, evs)
		mustCheck(t, s1, out1)
		s2, out2 := run(t, evs)
		if !reflect.DeepEqual(out1.Entries, out2.Entries) || !reflect.DeepEqual(out1.Expired, out2.Expired) {
			t.Fatal("replay differs")
		}
		if s1.Len() != s2.Len() {
			t.Fatal("replay account count differs")
		}
		// Late copies of a random half of the log, in random order, move no money.
		var copies []*events.Event
		for _, e := range evs {
			if r.IntN(2) == 0 {
				copies = append(copies, e)
			}
		}
		r.Shuffle(len(copies), func(i, j int) { copies[i], copies[j] = copies[j], copies[i] })
		s3, out3 := run(t, append(append([]*events.Event(nil), evs...), copies...))
		mustCheck(t, s3, out3)
		if len(out3.Entries) != len(out1.Entries) {
			t.Fatalf("late copies added %d journal lines", len(out3.Entries)-len(out1.Entries))
		}
		s1.Accounts(func(a *Account) {
			if money(a) != money(s3.Account(a.ID)) {
				t.Fatalf("late copies changed account %s", a.ID)
			}
		})
	})
}

// TestRestoreResumes folds a prefix, snapshots every account through the binary codec (the
// persisted form), restores into a fresh state, replays the whole log (the already-folded prefix is
// skipped by offset) and compares with a straight fold.
func TestRestoreResumes(t *testing.T) {
	evs := randomLog(t, 42, 10_000, 30)
	full, fullOut := run(t, evs)
	cut := 6_000
	s1 := New(DefaultConfig(pricebook.Default()), 0)
	var out Output
	for i, e := range evs[:cut] {
		s1.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	s2 := New(DefaultConfig(pricebook.Default()), 0)
	var accts []*Account
	s1.Accounts(func(a *Account) { accts = append(accts, roundTrip(t, a)) })
	restore(s2, s1.Snapshot(), accts)
	// Resume from the start (an old committed offset): events at or below each account's
	// stored offset must be skipped by offset, not reported as duplicates.
	for i := 0; i < len(evs); i++ {
		s2.Apply(Input{Offset: int64(i), Event: evs[i]}, &out)
	}
	full.Accounts(func(a *Account) {
		b := s2.Account(a.ID)
		if b == nil || a.AvailableMicros != b.AvailableMicros || a.HeldMicros != b.HeldMicros || a.OverageMicros != b.OverageMicros || a.BreakageMicros != b.BreakageMicros {
			t.Fatalf("account %s: restored %+v, straight %+v", a.ID, b, a)
		}
	})
	_ = fullOut
}

func TestFoldAllocs(t *testing.T) {
	s, c := steadyState(t, 1000)
	var out Output
	off := int64(1_000_000)
	allocs := testing.AllocsPerRun(2000, func() {
		s.Apply(Input{Offset: off, Event: c.next()}, &out)
		off++
		if len(out.Entries) > 4096 {
			out.Reset()
		}
	})
	if allocs != 0 {
		t.Fatalf("steady-state fold allocates %.2f per event", allocs)
	}
	if len(out.Anomalies) != 0 {
		t.Fatalf("steady state has anomalies: %+v", out.Anomalies[0])
	}
}

// cycle re-feeds a log forever: each lap moves every event time forward by the log's span,
// so the watermark keeps advancing. The dedupe window is shorter than a lap, so the request
// ids of the previous lap have been forgotten when they come again.
type cycle struct {
	evs  []*events.Event
	base []time.Time
	span time.Duration
	i    int
	lap  int
}

func (c *cycle) next() *events.Event {
	if c.i == len(c.evs) {
		c.i = 0
		c.lap++
		d := time.Duration(c.lap) * c.span
		for j, e := range c.evs {
			e.Time = c.base[j].Add(d)
		}
	}
	e := c.evs[c.i]
	c.i++
	return e
}

// steadyStateStep is the log time between two events of the steady-state log.
const steadyStateStep = 40 * time.Microsecond

// steadyState returns a warmed state and a cyclic log of start/finish pairs, 25 requests
// per account over accts accounts, with event times advancing by steadyStateStep. The dedupe
// window is half a lap, so each account remembers about 12 settled requests, and every id
// is forgotten before it comes again.
func steadyState(t testing.TB, accts int) (*State, *cycle) {
	const reqs = 25
	l := &logb{t: t}
	for a := 0; a < accts; a++ {
		l.add(t0, grant(fmt.Sprint("acct-", a), "g", 1_000_000_000_000, 0, nil))
	}
	cfg := DefaultConfig(pricebook.Default())
	span := time.Duration(2*reqs*accts) * steadyStateStep
	cfg.DedupeWindowNs = int64(span / 2)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s := New(cfg, 0)
	var out Output
	for i, e := range l.evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	l.evs = l.evs[:0]
	at := t0
	far := t0.Add(1000 * time.Hour) // holds settle long before they could expire
	for r := 0; r < reqs; r++ {
		for a := 0; a < accts; a++ {
			acct := fmt.Sprint("acct-", a)
			req := fmt.Sprint("r", r)
			at = at.Add(steadyStateStep)
			l.add(at, start(acct, req, 1000, far.Add(-5*time.Minute)))
			at = at.Add(steadyStateStep)
			l.add(at, finish(acct, req, 900))
		}
	}
	c := &cycle{evs: l.evs, span: span}
	for _, e := range c.evs {
		c.base = append(c.base, e.Time)
	}
	c.lap = 0
	for k := 0; k < 3*len(c.evs); k++ {
		s.Apply(Input{Offset: int64(100_000 + k), Event: c.next()}, &out)
		if len(out.Anomalies) != 0 {
			t.Fatalf("warm-up: anomaly %+v", out.Anomalies[0])
		}
		out.Reset()
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	return s, c
}

func BenchmarkFold(b *testing.B) {
	s, c := steadyState(b, 10_000)
	var out Output
	b.ReportAllocs()
	b.ResetTimer()
	off := int64(10_000_000)
	for i := 0; i < b.N; i++ {
		s.Apply(Input{Offset: off, Event: c.next()}, &out)
		off++
		if len(out.Entries) > 4096 {
			out.Reset()
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(s.DedupeEntries())/float64(s.Len()), "ids/account")
}

// TestMemoryPerAccount measures retained heap bytes per account (state, remembered ids and
// the expiry index) for 100k accounts in two profiles:
//   - "grant+settled+open": each account has one grant, one settled request and one open hold;
//   - "1M mix": a day's mix of a large population, where 90 % of the accounts were last
//     active more than two windows ago (one grant, one settled request), and 10 % are
//     active, with one grant, 20 settled requests and 2 rejections in the window;
//   - "all active" (reported, not bounded): every account as the active ones above.
//
// busyDay logs an active account's day at: a grant, 20 settled requests and 2 rejections
// (22 ids in its dedupe window).
func busyDay(l *logb, at time.Time, acct string) {
	l.add(at, grant(acct, "grant-"+acct, 1_000_000, 0, nil))
	for r := 0; r < 20; r++ {
		rid := fmt.Sprintf("req-%d-%s", r, acct)
		l.add(at, start(acct, rid, 1000, at))
		l.add(at, finish(acct, rid, 900))
	}
	l.add(at, rejected(acct, "rej-1-"+acct))
	l.add(at, rejected(acct, "rej-2-"+acct))
}

func TestMemoryPerAccount(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k accounts")
	}
	const n = 100_000
	profiles := []struct {
		name  string
		limit float64
		build func(l *logb, a int, acct string)
		later func(l *logb, a int, acct string) // after the clock moved two windows on
	}{
		{"grant+settled+open", 1024, func(l *logb, _ int, acct string) {
			l.add(t0, grant(acct, "grant-"+acct, 1_000_000, 0, nil))
			l.add(t0, start(acct, "req-1-"+acct, 1000, t0))
			l.add(t0, finish(acct, "req-1-"+acct, 900))
			l.add(t0, start(acct, "req-2-"+acct, 1000, t0))
		}, nil},
		{"1M mix", 1024, func(l *logb, a int, acct string) {
			if a%10 != 0 {
				l.add(t0, grant(acct, "grant-"+acct, 1_000_000, 0, nil))
				l.add(t0, start(acct, "req-1-"+acct, 1000, t0))
				l.add(t0, finish(acct, "req-1-"+acct, 900))
			}
		}, func(l *logb, a int, acct string) {
			if a%10 == 0 {
				busyDay(l, t0.Add(49*time.Hour), acct)
			}
		}},
		{"all active", 0, func(l *logb, a int, acct string) { busyDay(l, t0, acct) }, nil},
	}
	for _, p := range profiles {
		t.Run(p.name, func(t *testing.T) {
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			s := New(DefaultConfig(pricebook.Default()), 0)
			var out Output
			l := &logb{t: t}
			off := int64(0)
			feed := func(fn func(l *logb, a int, acct string)) {
				for a := 0; a < n; a++ {
					acct := fmt.Sprintf("acct-%07d", a)
					fn(l, a, acct)
					for _, e := range l.evs {
						s.Apply(Input{Offset: off, Event: e}, &out)
						off++
					}
					l.evs = l.evs[:0]
					out.Reset()
				}
			}
			feed(p.build)
			if p.later != nil {
				feed(p.later)
			}
			if err := s.Check(); err != nil {
				t.Fatal(err)
			}
			ids := s.DedupeEntries()
			l, out = nil, Output{}
			runtime.GC()
			runtime.ReadMemStats(&m1)
			per := float64(m1.HeapAlloc-m0.HeapAlloc) / n
			t.Logf("%s: retained heap per account: %.0f bytes (state, its ids and the expiry index); %.1f ids per account",
				p.name, per, float64(ids)/n)
			runtime.KeepAlive(s)
			if p.limit > 0 && per > p.limit {
				t.Fatalf("%.0f bytes per account, want ≤ %.0f", per, p.limit)
			}
		})
	}
}

func roundTrip(t testing.TB, a *Account) *Account {
	t.Helper()
	c, err := DecodeAccount(a.AppendBinary(nil)) // the persisted form
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTwoOutputsTakeTurns: the engine folds consecutive batches into two Outputs in turn;
// an account touched in both batches must be listed in both.
func TestTwoOutputsTakeTurns(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 10, 0, nil))
	l.add(t0, grant("a", "g2", 10, 0, nil))
	l.add(t0, grant("a", "g3", 10, 0, nil))
	s := New(DefaultConfig(pricebook.Default()), 0)
	var outs [2]Output
	for i, e := range l.evs {
		o := &outs[i%2]
		o.Reset()
		s.Apply(Input{Offset: int64(i), Event: e}, o)
		if len(o.Touched) != 1 || o.Touched[0].ID != "a" {
			t.Fatalf("batch %d: touched %v", i, o.Touched)
		}
	}
}

// checkJournal runs foldtest.CheckJournal over entries as published (Entry.Event).
func checkJournal(entries []Entry) (map[string]foldtest.JournalTotals, error) {
	lines := make([]events.LedgerEntry, len(entries))
	for i := range entries {
		lines[i] = entries[i].Event()
	}
	return foldtest.CheckJournal(lines)
}

// restore installs persisted records on a new state as the engine does: every account, then
// the partition snapshot.
func restore(s *State, snap Snapshot, accounts []*Account) {
	for _, a := range accounts {
		s.RestoreAccount(a)
	}
	s.RestoreSnapshot(snap)
}

package fold

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// codex.responses in the default book: capacity 4096, critical reserve 100 ‰. The
// admitter's default per-account share (ADMITTER_ACCOUNT_SHARE_PERMILLE 100) is 409 of it.
const (
	codexCapacity = 4096
	codexShare    = codexCapacity * 100 / 1000
)

// loadLog is a log of accounts opening holds on ep: holds[i] holds for account i, all at
// priority prio, each account funded first.
func loadLog(t testing.TB, prefix, prio string, holds []int) *logb {
	l := &logb{t: t}
	for i := range holds {
		l.add(t0, grant(fmt.Sprint(prefix, i), "g", 1_000_000_000_000, 0, nil))
	}
	at := t0
	for i, n := range holds {
		for j := 0; j < n; j++ {
			at = at.Add(time.Millisecond)
			st := start(fmt.Sprint(prefix, i), fmt.Sprint("r-", i, "-", j), 1, at)
			st.Priority = prio
			l.add(at, st)
		}
	}
	return l
}

func repeat(v, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = v
	}
	return s
}

// factors returns the endpoint's batch, standard and critical factors.
func factors(s *State) [3]int32 {
	return [3]int32{s.EndpointFactor(ep, events.PriorityBatch), s.EndpointFactor(ep, events.PriorityStandard),
		s.EndpointFactor(ep, events.PriorityCritical)}
}

// loadShed lists the limits.adjusted of scope endpoint below 1000 in out.
func loadShed(out *Output) []events.LimitsAdjusted {
	var shed []events.LimitsAdjusted
	for _, l := range out.Limits {
		if l.Scope == events.ScopeEndpoint && l.FactorPermille < 1000 {
			shed = append(shed, l)
		}
	}
	return shed
}

// TestOneAccountCannotShedEndpoint: on 8 partitions one account
// that opens holds up to its admitter share (10 % of capacity: 409 of 4096), whatever its
// priority, is one account's 10 %, not 80 %: no load factor drops for anyone, and no
// limits.adjusted sheds. The same 409 holds spread over 409 accounts are the typical load of a
// partition (×8 = 3272, 80 % of capacity): batch is shed and standard reduced, so the load
// signal still works.
func TestOneAccountCannotShedEndpoint(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.PartitionsTotal = 8
	for _, prio := range []string{events.PriorityStandard, events.PriorityBatch, events.PriorityCritical} {
		t.Run("one account "+prio, func(t *testing.T) {
			l := loadLog(t, "heavy", prio, []int{codexShare})
			s, out := foldWith(t, cfg, l.evs, 0)
			mustCheck(t, s, out)
			if n := len(s.Account("heavy0").Holds); n != codexShare {
				t.Fatalf("heavy account holds %d, want %d", n, codexShare)
			}
			if f := factors(s); f != [3]int32{1000, 1000, 1000} {
				t.Fatalf("one account at its share: factors batch/standard/critical %v, want all 1000", f)
			}
			if shed := loadShed(out); len(shed) != 0 {
				t.Fatalf("one account at its share published %d shedding limits.adjusted, first %+v", len(shed), shed[0])
			}
		})
	}
	t.Run("spread over accounts", func(t *testing.T) {
		l := loadLog(t, "user", events.PriorityStandard, repeat(1, codexShare))
		s, out := foldWith(t, cfg, l.evs, 0)
		mustCheck(t, s, out)
		// u = 409 × 8 × 1000 / 4096 = 798 ‰; open = 900: batch sheds fully above 720, standard
		// falls over 720..900: 1000 − 78 × 1000 / 180 = 567, quantised to 500.
		if f := factors(s); f != [3]int32{0, 500, 1000} {
			t.Fatalf("409 accounts with one hold each: factors batch/standard/critical %v, want [0 500 1000]", f)
		}
		if len(loadShed(out)) == 0 {
			t.Fatal("no shedding limits.adjusted published")
		}
	})
}

// TestOneAccountCountsWhatItHolds: beyond its share an account's holds count one for one,
// so an account that really holds most of the endpoint (several admitters, each granting its
// share) still sheds, and the typical accounts beside a heavy one are still scaled.
func TestOneAccountCountsWhatItHolds(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.PartitionsTotal = 8
	cfg.HoldsPerAccountMax = 4000
	for _, tc := range []struct {
		name  string
		holds []int
		want  [3]int32 // batch, standard, critical
	}{
		// capLocal = 100 × 4096 / 8000 = 51, capSystem = 408.
		// 2 × its share (two admitters): max(51 × 8, 818) = 818, u = 199 ‰: nothing sheds.
		{"two shares", []int{2 * codexShare}, [3]int32{1000, 1000, 1000}},
		// 3000 of 4096: u = 732 ‰: batch is shed, standard 1000 − 12 × 1000 / 180 → 900.
		{"most of the endpoint", []int{3000}, [3]int32{0, 900, 1000}},
		// 409 + 200 × 8 = 2009, u = 490 ‰: batch 1000 − 40 × 1000 / 270 → 800.
		{"heavy beside typical", append([]int{codexShare}, repeat(1, 200)...), [3]int32{800, 1000, 1000}},
		// 51 holds each (capLocal) scale fully: 8 × 51 × 8 = 3264, u = 796 ‰.
		{"eight accounts at their partition share", repeat(51, 8), [3]int32{0, 500, 1000}},
		// Beyond capLocal up to capSystem an account adds nothing: 8 × 408 holds count as
		// 8 × 408 (= 8 × 51 × 8), the same as above.
		{"eight accounts at their share", repeat(408, 8), [3]int32{0, 500, 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := loadLog(t, "a", events.PriorityStandard, tc.holds)
			s, out := foldWith(t, cfg, l.evs, 0)
			mustCheck(t, s, out)
			if f := factors(s); f != tc.want {
				t.Fatalf("factors batch/standard/critical %v, want %v", f, tc.want)
			}
		})
	}
}

// TestAccountShareSetting: AccountSharePermille is the bound of one account's weight, and
// it is validated.
func TestAccountShareSetting(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.PartitionsTotal = 8
	l := loadLog(t, "heavy", events.PriorityStandard, []int{codexShare})
	// At 1000 ‰ one account may weigh the whole capacity: 409 holds × 8 shed as before.
	cfg.AccountSharePermille = 1000
	if s, _ := foldWith(t, cfg, l.evs, 0); factors(s) != [3]int32{0, 500, 1000} {
		t.Fatalf("share 1000: factors %v, want [0 500 1000]", factors(s))
	}
	// At 1 ‰ (capLocal 1, capSystem 8) the account counts 409: u = 99 ‰.
	cfg.AccountSharePermille = 1
	if s, _ := foldWith(t, cfg, l.evs, 0); factors(s) != [3]int32{1000, 1000, 1000} {
		t.Fatalf("share 1: factors %v, want all 1000", factors(s))
	}
	for _, v := range []int64{0, -1, 1001} {
		cfg.AccountSharePermille = v
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "AccountSharePermille") {
			t.Fatalf("AccountSharePermille %d: Validate %v", v, err)
		}
	}
}

// TestLoadReturnsWhenHoldsClose: settling and expiring the holds takes every count back to
// zero and publishes the factors back to 1000.
func TestLoadReturnsWhenHoldsClose(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.PartitionsTotal = 8
	// 600 (one for one beyond capSystem 408) + 300 × 2 × 8 = 5400, u = 1318 ‰: even
	// critical drops, to 1000 − 318 × 1000 / 500 → 300.
	holds := append([]int{600}, repeat(2, 300)...)
	l := loadLog(t, "a", events.PriorityStandard, holds)
	at := l.evs[len(l.evs)-1].Time
	s, out := foldWith(t, cfg, l.evs, 0)
	if f := factors(s); f != [3]int32{0, 0, 300} {
		t.Fatalf("loaded: factors %v, want [0 0 300]", f)
	}
	// The typical accounts finish; the heavy one's holds expire.
	for i := 1; i < len(holds); i++ {
		for j := 0; j < holds[i]; j++ {
			at = at.Add(time.Millisecond)
			l.add(at, finish(fmt.Sprint("a", i), fmt.Sprint("r-", i, "-", j), 1))
		}
	}
	l.add(at.Add(10*time.Minute), events.ClockTick{})
	s, out = foldWith(t, cfg, l.evs, 0)
	mustCheck(t, s, out)
	if len(out.Expired) != 600 {
		t.Fatalf("%d holds expired, want 600", len(out.Expired))
	}
	e := s.endpoints[ep]
	if e.scaled != [3]int64{} || e.excess != [3]int64{} || factors(s) != [3]int32{1000, 1000, 1000} {
		t.Fatalf("after every hold closed: scaled %v excess %v factors %v", e.scaled, e.excess, factors(s))
	}
	last := map[string]int32{}
	for _, x := range out.Limits {
		last[x.Priority] = x.FactorPermille
	}
	if last[events.PriorityBatch] != 1000 || last[events.PriorityStandard] != 1000 || last[events.PriorityCritical] != 1000 {
		t.Fatalf("last published factors %v, want all 1000", last)
	}
}

// TestLoadCountsSurviveRestore: the partition snapshot carries no in-flight count; a
// restore recounts the restored holds by the same rule, so the restored state counts exactly
// as the straight fold at every cut (also for records written by an earlier version, which
// are the same account records), the counts go back to zero as the holds close, and a
// random log with heavy accounts keeps the counts equal to a recount from the holds (Check)
// through starts, settlements, finishes before starts and expiries. A restore publishes the
// endpoint's factors again at the next in-flight change, since what was published before
// (perhaps by the previous rule) is not known.
func TestLoadCountsSurviveRestore(t *testing.T) {
	for _, share := range []int64{1, 20, 100} {
		cfg := DefaultConfig(pricebook.Default())
		cfg.PartitionsTotal = 8
		cfg.AccountSharePermille = share // capLocal 1, 10, 51
		evs := heavyLog(t, uint64(share), 6000)
		straight, out := foldWith(t, cfg, evs, 0)
		mustCheck(t, straight, out)
		var most int
		straight.Accounts(func(a *Account) { most = max(most, len(a.Holds)) })
		if most <= 10 {
			t.Fatalf("share %d: the log leaves at most %d holds per account: no account beyond the cap", share, most)
		}
		for _, cut := range []int{1000, 3000, 5000} {
			s, out := foldWith(t, cfg, evs, cut)
			mustCheck(t, s, out)
			a, b := straight.endpoints[ep], s.endpoints[ep]
			if a.scaled != b.scaled || a.excess != b.excess || a.factor != b.factor {
				t.Fatalf("share %d, restored at %d: scaled %v excess %v factors %v; straight %v %v %v",
					share, cut, b.scaled, b.excess, b.factor, a.scaled, a.excess, a.factor)
			}
		}
	}

	// Republish after a restore, and RestoreAccount replacing an account.
	cfg := DefaultConfig(pricebook.Default())
	cfg.PartitionsTotal = 8
	l := loadLog(t, "a", events.PriorityStandard, []int{100, 1})
	s1, _ := foldWith(t, cfg, l.evs, 0)
	var accts []*Account
	s1.Accounts(func(a *Account) { accts = append(accts, roundTrip(t, a)) })
	s2 := New(cfg, 0)
	restore(s2, s1.Snapshot(), accts)
	if err := s2.Check(); err != nil {
		t.Fatal(err)
	}
	at := l.evs[len(l.evs)-1].Time.Add(time.Millisecond)
	var out Output
	s2.Apply(Input{Offset: int64(len(l.evs)), Event: l.add(at, start("a1", "r-new", 1, at))}, &out)
	if len(loadLimits(&out)) != 3 {
		t.Fatalf("first in-flight change after a restore published %d endpoint factors, want 3: %+v", len(loadLimits(&out)), out.Limits)
	}
	out.Reset()
	s2.Apply(Input{Offset: int64(len(l.evs)), Event: l.add(at, finish("a1", "r-new", 1))}, &out)
	if n := len(loadLimits(&out)); n != 0 {
		t.Fatalf("unchanged factors published again: %+v", out.Limits)
	}
	// The engine's restore reads a key's records in order: an older record of a0 (50 holds)
	// is replaced by the newer one (100 holds).
	s0, _ := foldWith(t, cfg, l.evs[:2+50], 0)
	s3 := New(cfg, 0)
	s3.RestoreAccount(roundTrip(t, s0.Account("a0")))
	s3.RestoreAccount(roundTrip(t, s1.Account("a0")))
	s3.RestoreAccount(roundTrip(t, s1.Account("a1")))
	s3.RestoreSnapshot(s1.Snapshot())
	if err := s3.Check(); err != nil {
		t.Fatal(err)
	}
	if a, b := s1.endpoints[ep], s3.endpoints[ep]; a.scaled != b.scaled || a.excess != b.excess || a.factor != b.factor {
		t.Fatalf("replaced record: scaled %v excess %v factors %v; straight %v %v %v", b.scaled, b.excess, b.factor, a.scaled, a.excess, a.factor)
	}
}

func loadLimits(out *Output) []events.LimitsAdjusted {
	var r []events.LimitsAdjusted
	for _, x := range out.Limits {
		if x.Scope == events.ScopeEndpoint {
			r = append(r, x)
		}
	}
	return r
}

// heavyLog is a random log of three heavy accounts (most starts, at every priority) and
// twenty light ones: starts, settlements, finishes before their start, duplicates, and
// holds left to expire (time moves about 100 ms per event; holds expire after 5 min).
func heavyLog(t testing.TB, seed uint64, n int) []*events.Event {
	r := rand.New(rand.NewPCG(seed, 7))
	l := &logb{t: t}
	for i := 0; i < 23; i++ {
		l.add(t0, grant(fmt.Sprint("acct-", i), "g", 1_000_000_000_000, 0, nil))
	}
	prios := []string{events.PriorityCritical, events.PriorityStandard, events.PriorityBatch}
	type open struct{ acct, req string }
	var opens []open
	now := t0
	for len(l.evs) < n {
		now = now.Add(time.Duration(r.IntN(200)) * time.Millisecond)
		acct := fmt.Sprint("acct-", 3+r.IntN(20))
		if r.IntN(10) < 7 {
			acct = fmt.Sprint("acct-", r.IntN(3))
		}
		req := fmt.Sprint("r", len(l.evs))
		st := start(acct, req, int64(1+r.IntN(1000)), now)
		st.Priority = prios[r.IntN(3)]
		switch k := r.IntN(100); {
		case k < 55:
			l.add(now, st)
			opens = append(opens, open{acct, req})
		case k < 60: // the finish first
			l.add(now, finish(acct, req, int64(r.IntN(1000))))
			l.add(now, st)
		case k < 90 && len(opens) > 0:
			i := r.IntN(len(opens))
			o := opens[i]
			opens = append(opens[:i], opens[i+1:]...)
			l.add(now, finish(o.acct, o.req, int64(r.IntN(1000))))
		case k < 95 && len(l.evs) > 0:
			l.evs = append(l.evs, l.evs[len(l.evs)-1]) // a producer retry
		default:
			l.add(now, events.ClockTick{})
		}
	}
	return l.evs
}

// heavyCycle returns a state where one account holds 1000 open standard holds on 8
// partitions (capLocal 51, capSystem 408: every start and settlement of it scans its holds),
// and a cyclic log of 2000 start/finish pairs of that account, each pair settling at once.
// The dedupe window is half a lap, so the ids of a lap are forgotten when they come again;
// the holds never expire.
func heavyCycle(t testing.TB) (*State, *cycle) {
	const pairs = 2000
	step := time.Millisecond
	cfg := DefaultConfig(pricebook.Default())
	cfg.PartitionsTotal = 8
	cfg.DedupeWindowNs = int64(pairs * step / 2)
	far := t0.Add(1000 * time.Hour)
	l := &logb{t: t}
	l.add(t0, grant("heavy", "g", 1_000_000_000_000, 0, nil))
	for j := 0; j < 1000; j++ {
		l.add(t0, start("heavy", fmt.Sprint("open", j), 1, far))
	}
	s := New(cfg, 0)
	var out Output
	for i, e := range l.evs {
		s.Apply(Input{Offset: int64(i), Event: e}, &out)
	}
	l.evs = l.evs[:0]
	at := t0
	for i := 0; i < pairs; i++ {
		at = at.Add(step)
		req := fmt.Sprint("c", i)
		l.add(at, start("heavy", req, 1, far))
		l.add(at, finish("heavy", req, 1))
	}
	c := &cycle{evs: l.evs, span: pairs * step}
	for _, e := range c.evs {
		c.base = append(c.base, e.Time)
	}
	return s, c
}

// TestFoldAllocsHeavyAccount: the capped in-flight count of an account with many open holds
// (the scan of its holds) allocates nothing per event.
func TestFoldAllocsHeavyAccount(t *testing.T) {
	s, c := heavyCycle(t)
	var out Output
	off := int64(1_000_000)
	apply := func() {
		s.Apply(Input{Offset: off, Event: c.next()}, &out)
		off++
		if len(out.Entries) > 4096 {
			out.Reset()
		}
	}
	for k := 0; k < 3*len(c.evs); k++ {
		apply()
	}
	out.Reset()
	if allocs := testing.AllocsPerRun(4000, apply); allocs != 0 {
		t.Fatalf("fold of a heavy account allocates %.2f per event", allocs)
	}
	if len(out.Anomalies) != 0 {
		t.Fatalf("anomalies: %+v", out.Anomalies[0])
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Account("heavy").Holds); n != 1000 && n != 1001 {
		t.Fatalf("%d open holds, want 1000 (1001 between a start and its finish)", n)
	}
	if f := factors(s); f != [3]int32{1000, 1000, 1000} { // 1000 holds count 1000: u = 244 ‰
		t.Fatalf("factors %v", f)
	}
}

// BenchmarkFoldHeavyAccount: start and finish of an account with 1000 open holds (near the
// worst case of the capped count's scan, with the default HoldsPerAccountMax 1024).
func BenchmarkFoldHeavyAccount(b *testing.B) {
	s, c := heavyCycle(b)
	var out Output
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Apply(Input{Offset: int64(1_000_000 + i), Event: c.next()}, &out)
		if len(out.Entries) > 4096 {
			out.Reset()
		}
	}
	if len(out.Anomalies) != 0 {
		b.Fatalf("anomalies: %+v", out.Anomalies[0])
	}
}

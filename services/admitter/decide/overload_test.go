package decide

import (
	"fmt"
	"testing"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Overload: the adaptive limit must not lock up, and open holds of one client must not shut
// an endpoint for everyone.

// floorSora is the adaptive floor of sora.video (capacity 256) at the default 100 ‰.
const floorSora = 25

// wideTable is a table over the default book plus "wide", a tier whose own limits never bind
// (one account may ask for the whole endpoint).
func wideTable(t testing.TB, mut func(*Config)) *Table {
	t.Helper()
	book := pricebook.Default()
	book.Tiers["wide"] = pricebook.Tier{RatePerMinute: 1_000_000, Burst: 100_000, ConcurrentMax: 100_000}
	cfg := DefaultConfig
	if mut != nil {
		mut(&cfg)
	}
	tb, err := NewTable(book, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func wideAccount(tb *Table, id string, prio string) {
	b := balance(id, "wide", 1e15, 0, 1)
	b.Priority = prio
	tb.ApplyBalance(b)
}

// finishAt settles open request d, admitted at admitMs, at finishMs with the given status.
// clientDurationMs is the duration_ms the client reported (0 = none): the core measures
// finishMs − admitMs itself, and the client's figure must not reach its latency sample.
func finishAt(tb *Table, d Decision, admitMs, finishMs int64, status string, clientDurationMs int64, offset int64) {
	_, _ = admitMs, clientDurationMs
	tb.Published(d.Handle, 0, offset)
	s, _ := tb.Quote(d.Handle, 0, finishMs)
	_ = tb.Finish(d.Handle, s, finishMs, FinishOutcome(status), 0, offset+1)
}

// simStats is what a simulated stretch of traffic saw.
type simStats struct {
	admits, shed, minCapacity, lastCapacity int64
}

// sim drives steady standard traffic on sora.video: one admit every tickMs from a rotating
// set of 1,000 accounts, each finished latency(i) ms later (i counts finishes), from fromMs
// to toMs. open carries the requests still running across calls.
type sim struct {
	tb      *Table
	open    []simOpen
	offset  int64
	fin     int64
	clientD func(i int64, latencyMs int64) int64 // duration_ms the client reports
}

type simOpen struct {
	d                 Decision
	admitMs, finishMs int64
}

func (s *sim) run(t *testing.T, fromMs, toMs, tickMs int64, latency func(i int64) int64) simStats {
	t.Helper()
	st := simStats{minCapacity: 1 << 62}
	for now := fromMs; now < toMs; now += tickMs {
		// Finish what is due (in admission order; latencies only grow in these tests).
		k := 0
		for ; k < len(s.open) && s.open[k].finishMs <= now; k++ {
			o := s.open[k]
			cd := o.finishMs - o.admitMs
			if s.clientD != nil {
				cd = s.clientD(s.fin, cd)
			}
			finishAt(s.tb, o.d, o.admitMs, o.finishMs, events.StatusSucceeded, cd, s.offset)
			s.offset += 2
			s.fin++
		}
		s.open = s.open[k:]
		d := admit(t, s.tb, video10s720(fmt.Sprintf("acct-%d", st.admits%1000)), now)
		st.admits++
		st.minCapacity = min(st.minCapacity, d.EndpointCapacity)
		st.lastCapacity = d.EndpointCapacity
		if !d.Allowed {
			if d.Reason != ReasonOverloaded {
				t.Fatalf("denied for another reason than overload: %+v", d)
			}
			st.shed++
			continue
		}
		s.open = append(s.open, simOpen{d: d, admitMs: now, finishMs: now + latency(s.fin+int64(len(s.open)))})
	}
	return st
}

func newSim(t *testing.T) *sim {
	tb := wideTable(t, nil)
	for i := 0; i < 1000; i++ {
		wideAccount(tb, fmt.Sprintf("acct-%d", i), events.PriorityStandard)
	}
	return &sim{tb: tb}
}

// TestAdaptiveRecoversAfterLatencyShift: 50 finishes at 2 s, then healthy 8 s finishes (the
// workload changed, nothing is overloaded). The limit may back off for a few windows, but
// never below the floor, and it must come back to the endpoint's capacity by itself.
func TestAdaptiveRecoversAfterLatencyShift(t *testing.T) {
	s := newSim(t)
	lat := func(i int64) int64 {
		if i < 50 {
			return 2000
		}
		return 8000
	}
	// 20 admits a second: 160 in flight at 8 s, well inside standard's 204 of 256.
	shift := s.run(t, t0, t0+20*60_000, 50, lat)
	if shift.minCapacity < floorSora {
		t.Errorf("capacity fell to %d, below the floor %d", shift.minCapacity, floorSora)
	}
	late := s.run(t, t0+20*60_000, t0+25*60_000, 50, lat)
	if late.shed != 0 || late.lastCapacity != 256 {
		t.Errorf("20 min after the shift: %d of %d standard admits shed, capacity %d (want 0 shed, capacity 256)",
			late.shed, late.admits, late.lastCapacity)
	}
}

// TestAdaptiveIgnoresMissingClientDuration: finishes without duration_ms must not set a
// 1 ms baseline that makes every later finish look overloaded.
func TestAdaptiveIgnoresMissingClientDuration(t *testing.T) {
	s := newSim(t)
	s.clientD = func(i, latencyMs int64) int64 {
		if i < 50 {
			return 0 // no duration_ms
		}
		return latencyMs
	}
	lat := func(int64) int64 { return 1000 }
	first := s.run(t, t0, t0+10*60_000, 50, lat)
	if first.minCapacity < floorSora {
		t.Errorf("capacity fell to %d, below the floor %d", first.minCapacity, floorSora)
	}
	late := s.run(t, t0+10*60_000, t0+15*60_000, 50, lat)
	if late.shed != 0 || late.lastCapacity != 256 {
		t.Errorf("after 10 min: %d of %d standard admits shed, capacity %d (want 0 shed, capacity 256)",
			late.shed, late.admits, late.lastCapacity)
	}
}

// failWindows runs n windows of failed requests from a critical account (admitted while
// standard is shed) at nowMs, each finished at once.
func failWindows(t *testing.T, tb *Table, acct string, n int, nowMs int64, offset *int64) {
	t.Helper()
	for i := 0; i < n*int(tb.cfg.Adaptive.WindowSamples); i++ {
		d := admit(t, tb, video10s720(acct), nowMs)
		if !d.Allowed {
			t.Fatalf("failing request %d: %+v", i, d)
		}
		finishAt(tb, d, nowMs, nowMs+100, events.StatusFailed, 100, *offset)
		*offset += 2
	}
}

// TestAdaptiveFloor: however many windows fail, the limit stays at or above the floor.
func TestAdaptiveFloor(t *testing.T) {
	tb := wideTable(t, func(c *Config) { c.Adaptive.WindowSamples = 10 })
	wideAccount(tb, "crit", events.PriorityCritical)
	var off int64 = 10
	failWindows(t, tb, "crit", 100, t0, &off)
	d := admit(t, tb, video10s720("crit"), t0)
	if d.EndpointCapacity < floorSora || !d.Allowed {
		t.Fatalf("after 100 failing windows: capacity %d (floor %d), %+v", d.EndpointCapacity, floorSora, d)
	}
}

// TestAdaptiveRecoversWithoutFinishes: a limit cut by failures must grow back with time
// alone: once nothing is admitted, nothing finishes, and no window will ever close again.
func TestAdaptiveRecoversWithoutFinishes(t *testing.T) {
	tb := wideTable(t, func(c *Config) { c.Adaptive.WindowSamples = 10 })
	wideAccount(tb, "crit", events.PriorityCritical)
	wideAccount(tb, "std", events.PriorityStandard)
	var off int64 = 10
	failWindows(t, tb, "crit", 12, t0, &off)
	low := admit(t, tb, video10s720("std"), t0)
	if low.EndpointCapacity >= 256 {
		t.Fatalf("failures did not cut the limit: %+v", low)
	}
	if low.Allowed {
		tb.Abort(low.Handle)
	}
	d := admit(t, tb, video10s720("std"), t0+3_600_000)
	if d.EndpointCapacity != 256 {
		t.Fatalf("an hour without finishes: capacity %d, want 256 (it was %d)", d.EndpointCapacity, low.EndpointCapacity)
	}
}

// TestCriticalKeepsReserveUnderOpenHolds: standard holds fill standard's share, then the
// adaptive limit shrinks below them. Standard is shed, but critical keeps its reserve.
func TestCriticalKeepsReserveUnderOpenHolds(t *testing.T) {
	tb := wideTable(t, func(c *Config) { c.Adaptive.WindowSamples = 10 })
	for i := 0; i < 204; i++ {
		id := fmt.Sprintf("std-%d", i)
		wideAccount(tb, id, events.PriorityStandard)
		if d := admit(t, tb, video10s720(id), t0); !d.Allowed {
			t.Fatalf("standard hold %d: %+v", i, d)
		}
	}
	wideAccount(tb, "failing", events.PriorityCritical)
	var off int64 = 10
	failWindows(t, tb, "failing", 2, t0, &off) // limit 256 → 204 → 163
	if d := admit(t, tb, video10s720("std-0"), t0); d.Allowed || d.Reason != ReasonOverloaded {
		t.Fatalf("standard with 204 open at a limit of %d: %+v", d.EndpointCapacity, d)
	}
	// Critical: its reserve (200 ‰ of the current capacity 163 = 32) is its own.
	allowed := 0
	var last Decision
	for i := 0; i < 100; i++ {
		id := fmt.Sprintf("crit-%d", i)
		wideAccount(tb, id, events.PriorityCritical)
		last = admit(t, tb, video10s720(id), t0)
		if !last.Allowed {
			break
		}
		allowed++
	}
	if allowed != 163*200/1000 || last.Reason != ReasonOverloaded {
		t.Fatalf("critical admitted %d with 204 standard holds open at capacity %d, want the reserve %d; last %+v",
			allowed, last.EndpointCapacity, 163*200/1000, last)
	}
}

// TestAccountShareOfEndpoint: one account whose tier would let it hold everything gets at
// most its share of the endpoint; the others, of every class, are still admitted.
func TestAccountShareOfEndpoint(t *testing.T) {
	tb := wideTable(t, func(c *Config) { c.Adaptive.Enabled = false })
	wideAccount(tb, "hog", events.PriorityStandard)
	wideAccount(tb, "other", events.PriorityStandard)
	wideAccount(tb, "crit", events.PriorityCritical)
	wideAccount(tb, "hogcrit", events.PriorityCritical)
	n := 0
	var last Decision
	for ; n < 300; n++ {
		if last = admit(t, tb, video10s720("hog"), t0); !last.Allowed {
			break
		}
	}
	share := 256 * DefaultConfig.AccountSharePermille / 1000
	if int64(n) != share || last.Reason != ReasonConcurrency || last.ConcurrencyLimit != share {
		t.Errorf("one account held %d of 256, want its share %d (denied concurrency_limited); last %+v", n, share, last)
	}
	for _, id := range []string{"other", "crit"} {
		if d := admit(t, tb, video10s720(id), t0); !d.Allowed {
			t.Errorf("%s after one account's burst: %+v", id, d)
		}
	}
	// The same for a critical account: its share, not the reserve and all the rest.
	n = 0
	for ; n < 300; n++ {
		if last = admit(t, tb, video10s720("hogcrit"), t0); !last.Allowed {
			break
		}
	}
	if int64(n) != share || last.Reason != ReasonConcurrency {
		t.Errorf("one critical account held %d, want its share %d; last %+v", n, share, last)
	}
}

// TestAdaptiveDecisionAllocatesNothing: the decision with the adaptive limit on (samples,
// window closes, back-offs and time recovery) allocates nothing either.
func TestAdaptiveDecisionAllocatesNothing(t *testing.T) {
	tb := wideTable(t, func(c *Config) { c.Adaptive.WindowSamples = 5; c.Adaptive.RecoveryMs = 10 })
	for i := 0; i < 100; i++ {
		wideAccount(tb, fmt.Sprintf("acct-%d", i), events.PriorityCritical)
	}
	req := video10s720("acct-0")
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("acct-%d", i)
	}
	var d Decision
	now, i := t0, 0
	allocs := testing.AllocsPerRun(2000, func() {
		req.AccountID = ids[i%len(ids)]
		i++
		now += int64(i % 50) // every so often a gap longer than RecoveryMs
		_ = tb.Admit(req, now, &d)
		if d.Allowed {
			tb.Published(d.Handle, 0, int64(i))
			s, _ := tb.Quote(d.Handle, 5000, now)
			_ = tb.Finish(d.Handle, s, now+int64(i%7)*100, Outcome(1+i%2), 0, int64(i))
		}
	})
	if allocs != 0 {
		t.Fatalf("admit+finish with the adaptive limit allocates %.1f per run", allocs)
	}
}

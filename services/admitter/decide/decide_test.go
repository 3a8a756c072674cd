package decide

import (
	"fmt"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// t0 is a fixed decision time: 2026-11-25T10:00:00Z.
var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).UnixMilli()

func newTable(t testing.TB, mut func(*Config)) *Table {
	t.Helper()
	cfg := DefaultConfig
	cfg.AccountsMax = 2_000_000
	if mut != nil {
		mut(&cfg)
	}
	tb, err := NewTable(pricebook.Default(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// video10s720 costs 10 s × 100000 µ/s × 2.0 (720p) × 1.0 (sora-2) = 2,000,000 µ.
func video10s720(acct string) *Request {
	return &Request{AccountID: acct, Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 10, Resolution: "720p"}}
}

// code1k costs 1k in (1500) + 1k out (6000) = 7,500 µ.
func code1k(acct string) *Request {
	return &Request{AccountID: acct, Endpoint: "codex.responses", Estimate: events.Units{TokensIn: 1000, TokensOut: 1000}}
}

func balance(acct, tier string, availMicros int64, partition int32, offset int64) *events.BalanceUpdated {
	return &events.BalanceUpdated{AccountID: acct, Tier: tier, Priority: events.PriorityStandard,
		AvailableMicros: availMicros, Partition: partition, Offset: offset}
}

func admit(t *testing.T, tb *Table, r *Request, nowMs int64) Decision {
	t.Helper()
	var d Decision
	if err := tb.Admit(r, nowMs, &d); err != nil {
		t.Fatalf("admit: %v", err)
	}
	return d
}

func TestAllowanceThenCreditsThenInsufficient(t *testing.T) {
	tb := newTable(t, nil)
	// "free": 5h window 2,000,000 µ, week 10,000,000 µ, max_concurrent 1.
	tb.ApplyBalance(balance("a", "free", 3_000_000, 0, 10))
	d := admit(t, tb, video10s720("a"), t0)
	if !d.Allowed || d.Funding != FundingAllowance || d.AllowanceMicros != 2_000_000 || d.HoldMicros != 0 {
		t.Fatalf("first: %+v", d)
	}
	if d.Windows[0].Name != "5h" || d.Windows[0].RemainingMicros != 0 || d.Windows[1].RemainingMicros != 8_000_000 {
		t.Fatalf("windows after allowance: %+v", d.Windows[:2])
	}
	tb.Published(d.Handle, 0, 11)
	s, err := tb.Quote(d.Handle, 2_000_000, t0)
	if err != nil || s.ChargedMicros != 2_000_000 || s.ReleasedMicros != 0 {
		t.Fatalf("quote: %+v %v", s, err)
	}
	if err := tb.Finish(d.Handle, s, t0+1000, OutcomeSucceeded, 0, 12); err != nil {
		t.Fatal(err)
	}
	// The 5h window is used up: the second request is a credit hold.
	d = admit(t, tb, video10s720("a"), t0+1)
	if !d.Allowed || d.Funding != FundingCredits || d.HoldMicros != 2_000_000 || d.AvailableMicros != 1_000_000 {
		t.Fatalf("second: %+v", d)
	}
	tb.Published(d.Handle, 0, 13)
	s, _ = tb.Quote(d.Handle, 1_500_000, t0)
	if s.ChargedMicros != 1_500_000 || s.ReleasedMicros != 500_000 || s.OverageMicros != 0 {
		t.Fatalf("settle under hold: %+v", s)
	}
	if err := tb.Finish(d.Handle, s, t0+1000, OutcomeSucceeded, 0, 14); err != nil {
		t.Fatal(err)
	}
	// Local available: 3,000,000 - 1,500,000 = 1,500,000 < 2,000,000: insufficient, and the
	// retry is when the 5h window (aligned to the Unix epoch) resets.
	d = admit(t, tb, video10s720("a"), t0+2)
	if d.Allowed || d.Reason != ReasonInsufficientCredits || d.AvailableMicros != 1_500_000 {
		t.Fatalf("third: %+v", d)
	}
	start5h := t0 - t0%18_000_000
	if want := start5h + 18_000_000 - (t0 + 2); d.RetryAfterMs != want {
		t.Fatalf("retry after %d, want %d", d.RetryAfterMs, want)
	}
	// The ledger folds everything up to offset 14: the pending changes are dropped, not
	// subtracted twice.
	b := balance("a", "free", 1_500_000, 0, 14)
	b.Allowance = []events.AllowanceWindow{{Window: "5h", Start: time.UnixMilli(start5h), UsedMicros: 2_000_000},
		{Window: "week", Start: time.UnixMilli(t0 - t0%604_800_000), UsedMicros: 2_000_000}}
	tb.ApplyBalance(b)
	snap, _ := tb.Account("a")
	if snap.Pending != 0 || snap.PendingAvailMicros != 0 || snap.PendingAllowMicros != 0 || snap.AvailableMicros != 1_500_000 {
		t.Fatalf("after fold: %+v", snap)
	}
	d = admit(t, tb, video10s720("a"), t0+3)
	if d.Reason != ReasonInsufficientCredits || d.AvailableMicros != 1_500_000 || d.Windows[1].RemainingMicros != 8_000_000 {
		t.Fatalf("after fold decision: %+v", d)
	}
}

func TestOverageAndPolicy(t *testing.T) {
	for _, fromAvail := range []bool{true, false} {
		t.Run(fmt.Sprint(fromAvail), func(t *testing.T) {
			tb := newTable(t, func(c *Config) { c.OverageFromAvailable = fromAvail })
			tb.ApplyBalance(balance("e", "enterprise", 10_000, 1, 5))
			d := admit(t, tb, code1k("e"), t0)
			if !d.Allowed || d.Funding != FundingCredits || d.HoldMicros != 7_500 {
				t.Fatalf("%+v", d)
			}
			tb.Published(d.Handle, 1, 6)
			// Actual 15,000: 7,500 from the hold, 2,500 from available (if policy), rest overage.
			s, _ := tb.Quote(d.Handle, 15_000, t0)
			wantCharged, wantOver := int64(10_000), int64(5_000)
			if !fromAvail {
				wantCharged, wantOver = 7_500, 7_500
			}
			if s.ChargedMicros != wantCharged || s.OverageMicros != wantOver || s.ReleasedMicros != 0 {
				t.Fatalf("settle: %+v", s)
			}
			_ = tb.Finish(d.Handle, s, t0+10, OutcomeSucceeded, 1, 7)
			snap, _ := tb.Account("e")
			if got := snap.AvailableMicros + snap.PendingAvailMicros; got != 10_000-wantCharged {
				t.Fatalf("local available %d, want %d", got, 10_000-wantCharged)
			}
		})
	}
}

func TestDenialOrder(t *testing.T) {
	cases := []struct {
		name  string
		setup func(tb *Table)
		req   *Request
		want  Reason
	}{
		{"suspended beats everything", func(tb *Table) {
			b := balance("x", "pro", 1e9, 0, 1)
			b.Suspended = true
			tb.ApplyBalance(b)
		}, code1k("x"), ReasonSuspended},
		{"blocked by history factor 0", func(tb *Table) {
			tb.ApplyBalance(balance("x", "pro", 1e9, 0, 1))
			tb.ApplyLimits(&events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: "x", Reason: "abuse"})
		}, code1k("x"), ReasonBlocked},
		{"load factor 0 sheds the class", func(tb *Table) {
			tb.ApplyBalance(balance("x", "pro", 1e9, 0, 1))
			tb.ApplyLimits(&events.LimitsAdjusted{Scope: events.ScopeEndpoint, Endpoint: "codex.responses",
				Priority: "standard", FactorPermille: 0, Reason: "overload"})
		}, code1k("x"), ReasonOverloaded},
		{"no funds", func(tb *Table) { tb.ApplyBalance(balance("x", "enterprise", 0, 0, 1)) }, code1k("x"), ReasonInsufficientCredits},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := newTable(t, nil)
			c.setup(tb)
			d := admit(t, tb, c.req, t0)
			if d.Allowed || d.Reason != c.want || d.RetryAfterMs <= 0 {
				t.Fatalf("got %+v, want %s", d, c.want)
			}
			if tb.OpenRequests() != 0 || tb.PendingChanges() != 0 {
				t.Fatalf("a denial reserved something: open %d pending %d", tb.OpenRequests(), tb.PendingChanges())
			}
		})
	}
}

func TestConcurrencyLimit(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("c", "free", 1e9, 0, 1)) // free: max_concurrent 1
	d1 := admit(t, tb, code1k("c"), t0)
	d2 := admit(t, tb, code1k("c"), t0)
	if !d1.Allowed || d2.Allowed || d2.Reason != ReasonConcurrency || d2.ConcurrencyLimit != 1 || d2.InFlight != 1 {
		t.Fatalf("d1 %+v\nd2 %+v", d1, d2)
	}
	// Another endpoint has its own count.
	if d := admit(t, tb, video10s720("c"), t0); !d.Allowed {
		t.Fatalf("other endpoint: %+v", d)
	}
	tb.Published(d1.Handle, 0, 2)
	s, _ := tb.Quote(d1.Handle, 100, t0)
	_ = tb.Finish(d1.Handle, s, t0+5, OutcomeSucceeded, 0, 3)
	if d := admit(t, tb, code1k("c"), t0+6000); !d.Allowed {
		t.Fatalf("after finish: %+v", d)
	}
}

func TestRateLimitGCRAWithCleanBurstBonus(t *testing.T) {
	tb := newTable(t, func(c *Config) { c.Adaptive.Enabled = false })
	// enterprise: 6000/min (one per 10 ms), burst 500 × 1.5 clean bonus = 750.
	tb.ApplyBalance(balance("r", "enterprise", 1e12, 0, 1))
	n, d := burst(tb, "r", 2000, 2)
	if n < 2000 && (d.Reason != ReasonRateLimited || d.RetryAfterMs != 10 || d.Burst != 750) {
		t.Fatalf("at %d: %+v", n, d)
	}
	if n != 750 {
		t.Fatalf("burst admitted %d, want 750", n)
	}
	// 10 ms later exactly one more.
	if d := admit(t, tb, code1k("r"), t0+10); !d.Allowed || d.RateRemaining != 0 {
		t.Fatalf("after 10ms: %+v", d)
	}
	// A flagged account (history 500‰) loses the bonus and half the limits.
	tb.ApplyBalance(balance("f", "enterprise", 1e12, 0, 1))
	tb.ApplyLimits(&events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: "f", FactorPermille: 500, Reason: "flagged"})
	d = admit(t, tb, code1k("f"), t0)
	if d.Burst != 250 || d.RatePerMinute != 3000 || d.ConcurrencyLimit != 64 || d.HistoryFactorPermille != 500 {
		t.Fatalf("flagged: %+v", d)
	}
}

func TestInstancesDivideLimits(t *testing.T) {
	tb := newTable(t, func(c *Config) { c.Instances = 3 })
	tb.ApplyBalance(balance("i", "plus", 1e12, 0, 1))
	d := admit(t, tb, code1k("i"), t0)
	// plus: 60/min → 20, burst 10×1.5=15 → 5, concurrency 4 → 2 (rounded up).
	if d.RatePerMinute != 20 || d.Burst != 5 || d.ConcurrencyLimit != 2 {
		t.Fatalf("%+v", d)
	}
}

func TestOverloadSheddingByClass(t *testing.T) {
	tb := newTable(t, func(c *Config) { c.Adaptive.Enabled = false })
	// sora.video: capacity 256, reserve 200‰ → standard sheds at 204, batch at 153 (75%).
	for i := 0; i < 300; i++ {
		acct := fmt.Sprintf("crit%d", i)
		b := balance(acct, "pro", 1e12, 0, 1)
		b.Priority = events.PriorityCritical
		tb.ApplyBalance(b)
	}
	tb.ApplyBalance(balance("std", "pro", 1e12, 0, 1))
	fill := func(n int) {
		for i := 0; i < n; i++ {
			if d := admit(t, tb, video10s720(fmt.Sprintf("crit%d", i)), t0); !d.Allowed {
				t.Fatalf("critical %d: %+v", i, d)
			}
		}
	}
	fill(153)
	batch := video10s720("std")
	batch.Priority = "batch"
	if d := admit(t, tb, batch, t0); d.Reason != ReasonOverloaded || d.EndpointInFlight != 153 {
		t.Fatalf("batch at 153: %+v", d)
	}
	// A standard account asking for critical is held to standard.
	crit := video10s720("std")
	crit.Priority = "critical"
	if d := admit(t, tb, crit, t0); !d.Allowed || d.Priority != PriorityStandard {
		t.Fatalf("standard at 153: %+v", d)
	}
	for i := 153; i < 203; i++ {
		fill1 := video10s720(fmt.Sprintf("crit%d", i))
		if d := admit(t, tb, fill1, t0); !d.Allowed {
			t.Fatalf("critical %d: %+v", i, d)
		}
	}
	// In flight: 204. Standard is shed, critical still admitted up to 256.
	if d := admit(t, tb, video10s720("std"), t0+60_000); d.Reason != ReasonOverloaded {
		t.Fatalf("standard at 204: %+v", d)
	}
	for i := 203; i < 255; i++ {
		if d := admit(t, tb, video10s720(fmt.Sprintf("crit%d", i)), t0); !d.Allowed {
			t.Fatalf("critical %d: %+v", i, d)
		}
	}
	if d := admit(t, tb, video10s720("crit299"), t0); d.Reason != ReasonOverloaded || d.EndpointInFlight != 256 {
		t.Fatalf("critical at capacity: %+v", d)
	}
}

func TestAdaptiveLimitSheds(t *testing.T) {
	tb := newTable(t, func(c *Config) { c.Adaptive.WindowSamples = 10 })
	tb.ApplyBalance(balance("s", "enterprise", 1e12, 0, 1))
	finish := func(ms int64, failed bool) {
		d := admit(t, tb, code1k("s"), t0)
		if !d.Allowed {
			t.Fatalf("%+v", d)
		}
		s, _ := tb.Quote(d.Handle, 0, t0)
		out := OutcomeSucceeded
		if failed {
			out = OutcomeFailed
		}
		_ = tb.Finish(d.Handle, s, t0+ms, out, 0, 2)
	}
	ep := &tb.endpoints[tb.epIdx["codex.responses"]]
	for i := 0; i < 10; i++ {
		finish(100, false)
	}
	if ep.adaptive.Limit(t0) != 4096 {
		t.Fatalf("limit after a good window %d", ep.adaptive.Limit(t0))
	}
	for i := 0; i < 10; i++ {
		finish(500, false) // 5× the baseline
	}
	if got := ep.adaptive.Limit(t0); got != 4096*800/1000 {
		t.Fatalf("limit after a slow window %d", got)
	}
	for i := 0; i < 10; i++ {
		finish(100, true) // all failed
	}
	if got := ep.adaptive.Limit(t0); got != 4096*800/1000*800/1000 {
		t.Fatalf("limit after a failing window %d", got)
	}
}

func TestPendingNeverTwiceNeverForgotten(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("p", "enterprise", 100_000, 2, 40))
	d := admit(t, tb, code1k("p"), t0)
	// The ledger folds our request.started (offset 41) before our ack arrives.
	tb.ApplyBalance(balance("p", "enterprise", 92_500, 2, 41))
	snap, _ := tb.Account("p")
	if snap.PendingAvailMicros != -7_500 {
		t.Fatalf("unacked hold must stay pending until its offset is known: %+v", snap)
	}
	tb.Published(d.Handle, 2, 41) // the ack names offset 41: already folded, dropped now
	snap, _ = tb.Account("p")
	if snap.PendingAvailMicros != 0 || snap.Pending != 0 || snap.AvailableMicros != 92_500 {
		t.Fatalf("hold subtracted twice or kept: %+v", snap)
	}
	// An old view (offset 30) is ignored; a view on another partition does not drop changes.
	d2 := admit(t, tb, code1k("p"), t0+1000)
	tb.Published(d2.Handle, 2, 50)
	tb.ApplyBalance(balance("p", "enterprise", 1, 2, 30))
	tb.ApplyBalance(balance("p", "enterprise", 92_500, 3, 60))
	snap, _ = tb.Account("p")
	if snap.PendingAvailMicros != -7_500 || snap.Pending != 1 {
		t.Fatalf("pending hold forgotten: %+v", snap)
	}
	// Abort gives everything back.
	d3 := admit(t, tb, code1k("p"), t0+2000)
	tb.Abort(d3.Handle)
	snap, _ = tb.Account("p")
	if snap.PendingAvailMicros != -7_500 || tb.OpenRequests() != 2 {
		t.Fatalf("abort: %+v open %d", snap, tb.OpenRequests())
	}
}

func TestExpireFreesInflight(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("x", "free", 1e9, 0, 1))
	d := admit(t, tb, code1k("x"), t0)
	var freed []uint32
	if n := tb.Expire(t0+299_999, 100, func(h uint32) { freed = append(freed, h) }); n != 0 {
		t.Fatalf("expired early: %d", n)
	}
	if n := tb.Expire(t0+300_000, 100, func(h uint32) { freed = append(freed, h) }); n != 1 || freed[0] != d.Handle {
		t.Fatalf("expire: %d %v", n, freed)
	}
	if _, ok := tb.OpenInfo(d.Handle); ok {
		t.Fatal("still open")
	}
	if d := admit(t, tb, code1k("x"), t0+300_001); !d.Allowed {
		t.Fatalf("%+v", d)
	}
}

func TestInputErrorsAndTableFull(t *testing.T) {
	tb := newTable(t, func(c *Config) { c.AccountsMax = 1 })
	var d Decision
	if err := tb.Admit(&Request{AccountID: "a", Endpoint: "nope"}, t0, &d); err != ErrUnknownEndpoint {
		t.Fatal(err)
	}
	if err := tb.Admit(&Request{AccountID: "a", Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 1, Resolution: "8k"}}, t0, &d); err != pricebook.ErrUnknownResolution {
		t.Fatal(err)
	}
	if err := tb.Admit(&Request{AccountID: "a", Endpoint: "codex.responses", Model: "gpt-9"}, t0, &d); err != pricebook.ErrUnknownModel {
		t.Fatal(err)
	}
	_ = admit(t, tb, code1k("a"), t0)
	if d := admit(t, tb, code1k("b"), t0); d.Reason != ReasonTableFull {
		t.Fatalf("%+v", d)
	}
	if err := NewTableErr(); err == nil {
		t.Fatal("bad config accepted")
	}
}

func NewTableErr() error {
	cfg := DefaultConfig
	cfg.Instances = 0
	cfg.RetryBlockedMs = -1
	_, err := NewTable(pricebook.Default(), cfg)
	return err
}

// load1M fills a table with n accounts spread over tiers, each with a ledger view.
func load1M(tb testing.TB, n int) (*Table, []string) {
	t := newTable(tb, func(c *Config) { c.Adaptive.Enabled = false })
	ids := make([]string, n)
	tiers := []string{"free", "plus", "pro", "enterprise"}
	for i := range ids {
		ids[i] = fmt.Sprintf("acct-%08d", i)
		t.ApplyBalance(balance(ids[i], tiers[i%4], 1e12, int32(i%4), int64(i)))
	}
	return t, ids
}

func TestDecisionAllocatesNothing(t *testing.T) {
	tb, ids := load1M(t, 10_000)
	req := code1k(ids[0])
	var d Decision
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		req.AccountID = ids[i%len(ids)]
		i++
		_ = tb.Admit(req, t0+int64(i), &d)
		if d.Allowed {
			tb.Published(d.Handle, 0, int64(i))
			s, _ := tb.Quote(d.Handle, 5000, t0)
			_ = tb.Finish(d.Handle, s, t0+int64(i)+3, OutcomeSucceeded, 0, int64(i))
		}
	})
	if allocs != 0 {
		t.Fatalf("admit+publish+finish allocates %.1f per run", allocs)
	}
}

func TestMemoryPerAccount(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 1M accounts")
	}
	per := measurePerAccount(t, 1_000_000)
	t.Logf("%.1f bytes per cached account (1M accounts)", per)
	if per > 300 {
		t.Fatalf("%.1f bytes per account exceeds 300", per)
	}
}

func measurePerAccount(tb testing.TB, n int) float64 { return measurePerAccountWith(tb, n, 0) }

// measurePerAccountWith is measurePerAccount with every account's view listing expiring
// expiring grants (the worst case: most accounts have none).
func measurePerAccountWith(tb testing.TB, n, expiring int) float64 {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("acct-%08d", i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	t := newTable(tb, nil)
	var exp []events.ExpiringGrant
	for i := range expiring {
		exp = append(exp, events.ExpiringGrant{ExpiresAt: time.UnixMilli(t0 + int64(i+1)*1000).UTC(), RemainingMicros: 1e6})
	}
	for i, id := range ids {
		b := balance(id, "plus", 1e12, 0, int64(i))
		b.Expiring = exp
		t.ApplyBalance(b)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(t)
	runtime.KeepAlive(ids)
	// The ids slice is the caller's; the table holds its own copy of each key string header
	// but shares the bytes (Go strings are immutable), so the key bytes are counted here.
	var keyBytes int
	for _, id := range ids {
		keyBytes += len(id)
	}
	return float64(after.HeapAlloc-before.HeapAlloc+uint64(keyBytes)) / float64(n)
}

func BenchmarkDecide1M(b *testing.B) {
	tb, ids := load1M(b, 1_000_000)
	req := code1k(ids[0])
	var d Decision
	allowed := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.AccountID = ids[(i*7919)%len(ids)]
		_ = tb.Admit(req, t0+int64(i/1000), &d)
		if d.Allowed {
			allowed++
			tb.Abort(d.Handle)
		}
	}
	// Every decision runs the full order (an early denial would be cheaper).
	b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
}

func BenchmarkAdmitFinish1M(b *testing.B) {
	tb, ids := load1M(b, 1_000_000)
	admitFinishLoop(b, tb, ids)
}

// admitFinishLoop is the timed loop of the AdmitFinish benchmarks: b.N admits spread over ids,
// each allowed one published, quoted and finished at once. It returns how many were allowed.
func admitFinishLoop(b *testing.B, tb *Table, ids []string) (allowed int) {
	req := code1k(ids[0])
	var d Decision
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.AccountID = ids[(i*7919)%len(ids)]
		_ = tb.Admit(req, t0+int64(i/1000), &d)
		if d.Allowed {
			allowed++
			tb.Published(d.Handle, 0, int64(i))
			s, _ := tb.Quote(d.Handle, 5000, t0)
			_ = tb.Finish(d.Handle, s, t0+int64(i)+3, OutcomeSucceeded, 0, int64(i))
		}
	}
	return allowed
}

func BenchmarkMemoryPerAccount(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.ReportMetric(measurePerAccount(b, 1_000_000), "bytes/account")
	}
}

// BenchmarkMemoryPerAccountAllExpiring is BenchmarkMemoryPerAccount with every account
// holding the most expiring grants a balance.updated lists (reported, not bounded: accounts
// with expiring promotions are a minority).
func BenchmarkMemoryPerAccountAllExpiring(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.ReportMetric(measurePerAccountWith(b, 1_000_000, events.MaxExpiringGrants), "bytes/account")
	}
}

// BenchmarkDecide1MHot is BenchmarkDecide1M with the traffic on 10,000 of the 1M loaded
// accounts (the active set fits in the CPU caches, as live traffic mostly does).
func BenchmarkDecide1MHot(b *testing.B) {
	tb, ids := load1M(b, 1_000_000)
	req := code1k(ids[0])
	var d Decision
	allowed := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.AccountID = ids[(i*7919)%10_000*100]
		_ = tb.Admit(req, t0+int64(i/1000), &d)
		if d.Allowed {
			allowed++
			tb.Abort(d.Handle)
		}
	}
	// Every decision runs the full order (an early denial would be cheaper).
	b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
}

func TestFundedInLogOrder(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("m", "enterprise", 10_000, 0, 5))
	// Two admitters each hold 7,500 of 10,000: the peer's event is at 7, ours at 8.
	d := admit(t, tb, code1k("m"), t0)
	tb.ApplyPeerStart(&Peer{AccountID: "m", Funding: FundingCredits, HoldMicros: 7_500}, 0, 7)
	tb.Published(d.Handle, 0, 8)
	if tb.FundedInLogOrder("m", 7_500, 0, 0, 8, t0) {
		t.Fatal("the later hold in the log is covered")
	}
	if !tb.FundedInLogOrder("m", 7_500, 0, 0, 7, t0) {
		t.Fatal("the earlier hold in the log is not covered")
	}
	// Once the ledger folded past our event, the ledger decided.
	tb.ApplyBalance(balance("m", "enterprise", 0, 0, 8))
	if !tb.FundedInLogOrder("m", 7_500, 0, 0, 8, t0) {
		t.Fatal("folded event judged again")
	}
	// Allowance: tiny window (free 5h: 2,000,000) with a peer's 1,500,000 before ours.
	tb.ApplyBalance(balance("f", "free", 0, 1, 1))
	tb.ApplyPeerStart(&Peer{AccountID: "f", Funding: FundingAllowance, AllowanceMicros: 1_500_000}, 1, 2)
	if tb.FundedInLogOrder("f", 0, 1_000_000, 1, 3, t0) || !tb.FundedInLogOrder("f", 0, 500_000, 1, 3, t0) {
		t.Fatal("allowance in log order")
	}
}

// TestEndpointsBeyondInline: endpoints past the two kept inline in the account record have
// their own, independent state.
func TestEndpointsBeyondInline(t *testing.T) {
	book := pricebook.Default()
	for _, n := range []string{"x.extra", "y.extra"} {
		e := book.Endpoints["codex.responses"]
		book.Endpoints[n] = e
	}
	tb, err := NewTable(book, DefaultConfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		tb.ApplyBalance(balance(id, "free", 1e9, 0, 1)) // free: max_concurrent 1
	}
	for _, ep := range []string{"codex.responses", "sora.video", "x.extra", "y.extra"} {
		for _, id := range []string{"a", "b"} {
			r := &Request{AccountID: id, Endpoint: ep, Estimate: events.Units{VideoSeconds: 1, Resolution: "480p", TokensIn: 1}}
			if d := admit(t, tb, r, t0); !d.Allowed {
				t.Fatalf("%s on %s: %+v", id, ep, d)
			}
			if d := admit(t, tb, r, t0); d.Reason != ReasonConcurrency {
				t.Fatalf("%s on %s second: %+v", id, ep, d)
			}
		}
	}
	if len(tb.eps) != 2*2 || tb.OpenRequests() != 8 {
		t.Fatalf("overflow slots %d, open %d", len(tb.eps), tb.OpenRequests())
	}
}

// BenchmarkDecide1MHotRequest is BenchmarkDecide1M (uniform over 1M accounts) with the
// request's account id built in a reused buffer, as it is after decoding an HTTP body, instead
// of read from a 1M-entry slice of strings: it leaves out the benchmark's own two cache misses.
func BenchmarkDecide1MHotRequest(b *testing.B) {
	tb, ids := load1M(b, 1_000_000)
	req := code1k(ids[0])
	var d Decision
	buf := []byte("acct-00000000")
	allowed := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := (i * 7919) % len(ids)
		for j, n := len(buf)-1, k; j >= 5; j-- {
			buf[j] = byte('0' + n%10)
			n /= 10
		}
		// Every id is loaded, so Admit never stores this (reused) string.
		req.AccountID = unsafe.String(&buf[0], len(buf))
		_ = tb.Admit(req, t0+int64(i/1000), &d)
		if d.Allowed {
			allowed++
			tb.Abort(d.Handle)
		}
	}
	// Every decision runs the full order (an early denial would be cheaper).
	b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
}

// TestTierChangeResetsRateDebt: an account that used up its free-tier burst is not held back
// by that debt once the ledger reports it on pro; a repeated view with the same tier keeps it.
func TestTierChangeResetsRateDebt(t *testing.T) {
	tb := newTable(t, func(c *Config) { c.Adaptive.Enabled = false })
	tb.ApplyBalance(balance("u", "free", 1e12, 0, 1))
	n, d := burst(tb, "u", 100, 10)
	if n < 100 && d.Reason != ReasonRateLimited {
		t.Fatalf("free at %d: %+v", n, d)
	}
	if n == 0 || n == 100 {
		t.Fatalf("free burst admitted %d", n)
	}
	// The same tier again: the debt stays.
	tb.ApplyBalance(balance("u", "free", 1e12, 0, 5))
	if d := admit(t, tb, code1k("u"), t0); d.Allowed || d.Reason != ReasonRateLimited {
		t.Fatalf("same tier: %+v", d)
	}
	// Upgraded: pro's whole burst (50 × 1.5 clean bonus) is there at once.
	tb.ApplyBalance(balance("u", "pro", 1e12, 0, 6))
	m, _ := burst(tb, "u", 200, 1000)
	if m != 75 {
		t.Fatalf("pro burst after upgrade admitted %d, want 75", m)
	}
}

// burst admits code1k requests for acct at t0 until one is denied (at most max), settling
// each allowed one at log positions from offset on. It returns how many were allowed and the
// last decision (the denial when fewer than max were allowed).
func burst(tb *Table, acct string, max int, offset int64) (int, Decision) {
	var d Decision
	n := 0
	for ; n < max; n++ {
		d = Decision{}
		_ = tb.Admit(code1k(acct), t0, &d)
		if !d.Allowed {
			break
		}
		finish(tb, d, offset+int64(n))
	}
	return n, d
}

// finish publishes and settles an allowed decision at its quote (offset: its log position).
func finish(tb *Table, d Decision, offset int64) {
	tb.Published(d.Handle, 0, offset)
	s, _ := tb.Quote(d.Handle, 0, t0)
	_ = tb.Finish(d.Handle, s, t0+1, OutcomeSucceeded, 0, offset+1)
}

// TestSplitFunding: 1 credit of allowance left and 1.5 credits of balance fund a 2-credit
// request from both; denied only when both together fall short.
func TestSplitFunding(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("a", "free", 1_500_000, 0, 10)) // free: 5h window 2,000,000 µ
	half := &Request{AccountID: "a", Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 5, Resolution: "720p"}}
	d := admit(t, tb, half, t0)
	if !d.Allowed || d.Funding != FundingAllowance || d.AllowanceMicros != 1_000_000 {
		t.Fatalf("first: %+v", d)
	}
	finish(tb, d, 11) // cost 0: the reservation comes back
	d = admit(t, tb, half, t0+1)
	tb.Published(d.Handle, 0, 13)
	s, _ := tb.Quote(d.Handle, 1_000_000, t0+1)
	_ = tb.Finish(d.Handle, s, t0+2, OutcomeSucceeded, 0, 14) // 1 credit of the window used
	d = admit(t, tb, video10s720("a"), t0+2)
	if !d.Allowed || d.Funding != FundingSplit || d.AllowanceMicros != 1_000_000 || d.HoldMicros != 1_000_000 ||
		d.AvailableMicros != 500_000 || d.Windows[0].RemainingMicros != 0 {
		t.Fatalf("split: %+v", d)
	}
	tb.Published(d.Handle, 0, 15)
	// Both parts must be covered in log order.
	if !tb.FundedInLogOrder("a", d.HoldMicros, d.AllowanceMicros, 0, 15, t0+2) {
		t.Fatal("split admission not covered in log order")
	}
	// Finish at 1.8 credits: the allowance pays 1, the hold 0.8, 0.2 is released.
	s, _ = tb.Quote(d.Handle, 1_800_000, t0+3)
	if s.Funding != FundingSplit || s.AllowanceMicros != 1_000_000 || s.CreditsMicros != 800_000 || s.OverageMicros != 0 ||
		s.ReleasedMicros != 200_000 || s.ChargedMicros != 1_800_000 {
		t.Fatalf("split settlement: %+v", s)
	}
	_ = tb.Finish(d.Handle, s, t0+4, OutcomeSucceeded, 0, 16)
	snap, _ := tb.Account("a")
	if snap.AvailableMicros+snap.PendingAvailMicros != 700_000 || snap.PendingAllowMicros != 2_000_000 {
		t.Fatalf("local view: %+v", snap)
	}
	// 2 credits with 0.7 of balance and no allowance left: denied until the 5h window resets.
	d = admit(t, tb, video10s720("a"), t0+4)
	if d.Allowed || d.Reason != ReasonInsufficientCredits {
		t.Fatalf("fourth: %+v", d)
	}
	start5h := t0 - t0%18_000_000
	if want := start5h + 18_000_000 - (t0 + 4); d.RetryAfterMs != want {
		t.Fatalf("retry after %d, want %d", d.RetryAfterMs, want)
	}
}

// TestAllowanceOverrunSettlement: an allowance-funded job that cost 240 credits against a
// 20-credit window pays 20 from the allowance, then credits, then overage;
// a cost above the reservation within the windows' room stays on the allowance.
func TestAllowanceOverrunSettlement(t *testing.T) {
	for _, tc := range []struct {
		name                               string
		avail, reserve, cost               int64
		allowance, credits, overage, relsd int64
	}{
		{"240 against 20", 100_000_000, 20_000_000, 240_000_000, 20_000_000, 100_000_000, 120_000_000, 0},
		{"room left", 100_000_000, 10_000_000, 15_000_000, 15_000_000, 0, 0, 0},
		{"under the reservation", 0, 10_000_000, 4_000_000, 4_000_000, 0, 0, 6_000_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(t, nil)
			tb.ApplyBalance(balance("p", "plus", tc.avail, 0, 10)) // plus: 5h window 20,000,000 µ
			r := &Request{AccountID: "p", Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: tc.reserve / 200_000, Resolution: "720p"}}
			d := admit(t, tb, r, t0)
			if !d.Allowed || d.Funding != FundingAllowance || d.AllowanceMicros != tc.reserve {
				t.Fatalf("admit: %+v", d)
			}
			tb.Published(d.Handle, 0, 11)
			s, _ := tb.Quote(d.Handle, tc.cost, t0+1000)
			if s.AllowanceMicros != tc.allowance || s.CreditsMicros != tc.credits || s.OverageMicros != tc.overage || s.ReleasedMicros != tc.relsd {
				t.Fatalf("settlement %+v", s)
			}
			_ = tb.Finish(d.Handle, s, t0+1001, OutcomeSucceeded, 0, 12)
			snap, _ := tb.Account("p")
			if snap.AvailableMicros+snap.PendingAvailMicros != tc.avail-tc.credits || snap.PendingAllowMicros != tc.allowance {
				t.Fatalf("local view %+v", snap)
			}
		})
	}
	// A request whose window closed before its finish gets no more than its reservation.
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("p", "plus", 100_000_000, 0, 10))
	d := admit(t, tb, &Request{AccountID: "p", Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 10, Resolution: "720p"}}, t0)
	tb.Published(d.Handle, 0, 11)
	next5h := t0 - t0%18_000_000 + 18_000_000
	s, _ := tb.Quote(d.Handle, 5_000_000, next5h+1)
	if s.AllowanceMicros != 2_000_000 || s.CreditsMicros != 3_000_000 {
		t.Fatalf("straddling settlement %+v", s)
	}
}

// TestClosedWindowQuote: a finish stamped in a window that the ledger's log time has already
// left (the ledger's view names the next window) gets no more than the reservation from the
// allowance, as the ledger settles it: the closed window's use is not known any more.
func TestClosedWindowQuote(t *testing.T) {
	next5h := t0 - t0%18_000_000 + 18_000_000
	week := next5h - next5h%604_800_000
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("p", "plus", 100_000_000, 0, 10))
	d := admit(t, tb, &Request{AccountID: "p", Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 10, Resolution: "720p"}}, next5h-5000)
	if !d.Allowed || d.AllowanceMicros != 2_000_000 {
		t.Fatalf("admit: %+v", d)
	}
	tb.Published(d.Handle, 0, 11)
	b := balance("p", "plus", 100_000_000, 0, 10)
	b.Allowance = []events.AllowanceWindow{{Window: "5h", Start: time.UnixMilli(next5h).UTC(), UsedMicros: 100_000},
		{Window: "week", Start: time.UnixMilli(week).UTC(), UsedMicros: 2_100_000}}
	tb.ApplyBalance(b)
	s, _ := tb.Quote(d.Handle, 5_000_000, next5h-1000)
	if s.AllowanceMicros != 2_000_000 || s.CreditsMicros != 3_000_000 {
		t.Fatalf("settlement in a closed window %+v, want allowance 2000000 credits 3000000", s)
	}
}

// TestClosedWindowAdmit: an admitter whose clock is still in a window the ledger's view has
// already left (it names the next one) does not fund from that window's allowance: its use
// is no longer known, and the ledger counts no reservation in it (the allowance would pay
// beyond the limit). The request is funded by credits.
func TestClosedWindowAdmit(t *testing.T) {
	next5h := t0 - t0%18_000_000 + 18_000_000
	week := next5h - next5h%604_800_000
	tb := newTable(t, nil)
	b := balance("p", "plus", 100_000_000, 0, 10)
	b.Allowance = []events.AllowanceWindow{{Window: "5h", Start: time.UnixMilli(next5h).UTC(), UsedMicros: 0},
		{Window: "week", Start: time.UnixMilli(week).UTC(), UsedMicros: 20_000_000}}
	tb.ApplyBalance(b)
	d := admit(t, tb, &Request{AccountID: "p", Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 10, Resolution: "720p"}}, next5h-1000)
	if !d.Allowed || d.AllowanceMicros != 0 || d.HoldMicros != 2_000_000 || d.Funding != FundingCredits {
		t.Fatalf("admit in a closed window: %+v", d)
	}
	// In the ledger's window the allowance funds it.
	d = admit(t, tb, &Request{AccountID: "p", Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 10, Resolution: "720p"}}, next5h+1000)
	if !d.Allowed || d.AllowanceMicros != 2_000_000 || d.Funding != FundingAllowance {
		t.Fatalf("admit in the open window: %+v", d)
	}
}

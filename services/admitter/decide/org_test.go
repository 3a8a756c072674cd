package decide

import (
	"fmt"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// funded is the balance.updated of project p funded by org (its own balance 0, tier tier).
func funded(p, tier, org string, partition int32, offset int64) *events.BalanceUpdated {
	b := balance(p, tier, 0, partition, offset)
	b.FundingAccountID = org
	return b
}

// orgWith is org's balance.updated listing project budgets.
func orgWith(org, tier string, avail int64, partition int32, offset int64, budgets ...events.ProjectSpend) *events.BalanceUpdated {
	b := balance(org, tier, avail, partition, offset)
	b.Projects = budgets
	return b
}

// monthOf is the first instant of the UTC month of ms.
func monthOf(ms int64) time.Time {
	y, m, _ := time.UnixMilli(ms).UTC().Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
}

func budget(p string, budgetMicros, spentMicros int64, period time.Time) events.ProjectSpend {
	return events.ProjectSpend{ProjectID: p, BudgetMicros: budgetMicros, SpentMicros: spentMicros, PeriodStart: period}
}

// TestFundedProjectsShareTheFundersBalance: two projects funded by one organization draw on
// its one balance: the hold, the pending change and the settlement are the organization's,
// the projects' own (empty) balances are not used.
func TestFundedProjectsShareTheFundersBalance(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("org", "enterprise", 10_000, 2, 5))
	tb.ApplyBalance(funded("p1", "enterprise", "org", 0, 1))
	tb.ApplyBalance(funded("p2", "enterprise", "org", 1, 1))
	d := admit(t, tb, code1k("p1"), t0)
	if !d.Allowed || d.FundingAccountID != "org" || d.Funding != FundingCredits || d.HoldMicros != 7_500 || d.AvailableMicros != 2_500 {
		t.Fatalf("p1: %+v", d)
	}
	if info, _ := tb.OpenInfo(d.Handle); info.FundingAccountID != "org" {
		t.Fatalf("open: %+v", info)
	}
	d2 := admit(t, tb, code1k("p2"), t0)
	if d2.Allowed || d2.Reason != ReasonInsufficientCredits || d2.AvailableMicros != 2_500 || d2.FundingAccountID != "org" {
		t.Fatalf("p2 after p1's hold: %+v", d2)
	}
	org, _ := tb.Account("org")
	p1, _ := tb.Account("p1")
	if org.PendingAvailMicros != -7_500 || org.Pending != 1 || p1.Pending != 0 || p1.FundingAccountID != "org" || p1.BudgetReservedMicros != 7_500 {
		t.Fatalf("org %+v, p1 %+v", org, p1)
	}
	// The start is on the org's partition (2): a view of p1 at that position drops nothing,
	// the org's does.
	tb.Published(d.Handle, 2, 6)
	tb.ApplyBalance(funded("p1", "enterprise", "org", 2, 6))
	if org, _ = tb.Account("org"); org.Pending != 1 {
		t.Fatalf("the project's view dropped the org's pending change: %+v", org)
	}
	tb.ApplyBalance(balance("org", "enterprise", 2_500, 2, 6))
	if org, _ = tb.Account("org"); org.Pending != 0 || org.AvailableMicros != 2_500 {
		t.Fatalf("org after its view: %+v", org)
	}
	// The finish settles on the org: 5,000 of the 7,500 hold, 2,500 released to it.
	s, err := tb.Quote(d.Handle, 5_000, t0)
	if err != nil || s.CreditsMicros != 5_000 || s.ReleasedMicros != 2_500 {
		t.Fatalf("quote: %+v %v", s, err)
	}
	if err := tb.Finish(d.Handle, s, t0+10, OutcomeSucceeded, 2, 7); err != nil {
		t.Fatal(err)
	}
	org, _ = tb.Account("org")
	p1, _ = tb.Account("p1")
	if org.PendingAvailMicros != 2_500 || p1.PendingAvailMicros != 0 || p1.BudgetReservedMicros != 0 {
		t.Fatalf("after finish: org %+v, p1 %+v", org, p1)
	}
	// The org has 2,500 + the 2,500 released: still short of 7,500 for p2.
	if d2 = admit(t, tb, code1k("p2"), t0+1); d2.Allowed || d2.AvailableMicros != 5_000 {
		t.Fatalf("p2 after the finish released 2,500: %+v", d2)
	}
}

// TestFundedProjectKeepsItsOwnLimits: rate limit, concurrency, tier and priority are the
// project's; the allowance windows are the funder's tier's.
func TestFundedProjectKeepsItsOwnLimits(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("org", "plus", 1e9, 0, 1)) // plus: 5h 20 credits, week 100
	b := funded("p", "free", "org", 1, 1)              // free: max_concurrent 1, no priority above standard
	tb.ApplyBalance(b)
	d := admit(t, tb, code1k("p"), t0)
	if !d.Allowed || d.Tier != "free" || d.ConcurrencyLimit != 1 || d.NumWindows != 2 ||
		d.Windows[0].LimitMicros != 20_000_000 || d.Funding != FundingAllowance || d.AllowanceMicros != 7_500 {
		t.Fatalf("funded admit: %+v", d)
	}
	if d = admit(t, tb, code1k("p"), t0); d.Allowed || d.Reason != ReasonConcurrency {
		t.Fatalf("the project's concurrency: %+v", d)
	}
	// Another project of the same org is not limited by p's in-flight request, and sees
	// the org's window with p's reservation in it.
	tb.ApplyBalance(funded("q", "enterprise", "org", 1, 2))
	if d = admit(t, tb, code1k("q"), t0); !d.Allowed || d.Windows[0].UsedMicros != 15_000 || d.Tier != "enterprise" {
		t.Fatalf("q: %+v", d)
	}
}

// TestSuspendedFunderDenies: a suspended organization blocks its projects; a suspended
// project is blocked whoever funds it.
func TestSuspendedFunderDenies(t *testing.T) {
	tb := newTable(t, nil)
	o := balance("org", "enterprise", 1e9, 0, 1)
	o.Suspended = true
	tb.ApplyBalance(o)
	tb.ApplyBalance(funded("p", "enterprise", "org", 1, 1))
	if d := admit(t, tb, code1k("p"), t0); d.Allowed || d.Reason != ReasonSuspended {
		t.Fatalf("suspended funder: %+v", d)
	}
	o.Suspended, o.Offset = false, 2
	tb.ApplyBalance(o)
	if d := admit(t, tb, code1k("p"), t0); !d.Allowed {
		t.Fatalf("funder back: %+v", d)
	}
}

// TestFundingIsOneLevel: the funder's own funding is not followed; a project's own balance
// is used again once its funding is removed; an unknown funder has nothing.
func TestFundingIsOneLevel(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("top", "enterprise", 1e9, 0, 1))
	tb.ApplyBalance(funded("org", "enterprise", "top", 0, 2)) // org's own balance: 0
	tb.ApplyBalance(funded("p", "enterprise", "org", 0, 3))
	if d := admit(t, tb, code1k("p"), t0); d.Allowed || d.Reason != ReasonInsufficientCredits || d.FundingAccountID != "org" {
		t.Fatalf("two levels followed: %+v", d)
	}
	own := balance("p", "enterprise", 10_000, 0, 4) // funding removed ("" in the ledger's view)
	tb.ApplyBalance(own)
	if d := admit(t, tb, code1k("p"), t0); !d.Allowed || d.FundingAccountID != "" || d.AvailableMicros != 2_500 {
		t.Fatalf("own balance again: %+v", d)
	}
	tb.ApplyBalance(funded("u", "enterprise", "nobody-yet", 0, 5))
	if _, ok := tb.Account("nobody-yet"); !ok {
		t.Fatal("the unknown funder has no record")
	}
	// Like any account the ledger has not published: no balance, the default tier's windows.
	if d := admit(t, tb, code1k("u"), t0); d.FundingAccountID != "nobody-yet" || d.AvailableMicros != 0 ||
		d.Funding != FundingAllowance || d.Windows[0].Name != "5h" {
		t.Fatalf("unknown funder: %+v", d)
	}
}

// TestFundingFixedAtAdmission: a request admitted while p was funded by org settles on org
// (and gives back org's reservation) even after p's funding moved to org2.
func TestFundingFixedAtAdmission(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(balance("org", "enterprise", 10_000, 0, 1))
	tb.ApplyBalance(balance("org2", "enterprise", 10_000, 1, 1))
	tb.ApplyBalance(funded("p", "enterprise", "org", 2, 1))
	d := admit(t, tb, code1k("p"), t0)
	tb.Published(d.Handle, 0, 2)
	tb.ApplyBalance(funded("p", "enterprise", "org2", 2, 2))
	if d2 := admit(t, tb, code1k("p"), t0); !d2.Allowed || d2.FundingAccountID != "org2" || d2.AvailableMicros != 2_500 {
		t.Fatalf("after the move: %+v", d2)
	} else {
		tb.Abort(d2.Handle)
	}
	s, _ := tb.Quote(d.Handle, 5_000, t0)
	if s.ReleasedMicros != 2_500 {
		t.Fatalf("quote: %+v", s)
	}
	if err := tb.Finish(d.Handle, s, t0, OutcomeSucceeded, 0, 3); err != nil {
		t.Fatal(err)
	}
	org, _ := tb.Account("org")
	org2, _ := tb.Account("org2")
	p, _ := tb.Account("p")
	if org.PendingAvailMicros != -5_000 || org.Pending != 2 || org2.Pending != 0 || p.BudgetReservedMicros != 0 {
		t.Fatalf("org %+v, org2 %+v, p %+v", org, org2, p)
	}
}

// TestBudgetExhausted is the budget rule, case by case: spent this month + the project's
// open estimates + this estimate against the budget its funder's view lists, and the retry:
// the next month when spent and the estimate alone exceed it, soon when open requests do.
func TestBudgetExhausted(t *testing.T) {
	thisMonth := monthOf(t0)
	lastMonth := monthOf(thisMonth.UnixMilli() - 1)
	nextMonth := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	cases := []struct {
		name      string
		budgets   []events.ProjectSpend
		funder    string // p's funding account
		open      int    // p's requests admitted (and left open) first
		wantAllow bool
	}{
		{"no budget", nil, "org", 0, true},
		{"room for one", []events.ProjectSpend{budget("p", 10_000, 2_500, thisMonth)}, "org", 0, true},
		{"exactly the budget", []events.ProjectSpend{budget("p", 10_000, 2_500, thisMonth)}, "org", 0, true},
		{"spent leaves too little", []events.ProjectSpend{budget("p", 10_000, 2_501, thisMonth)}, "org", 0, false},
		{"open estimates count", []events.ProjectSpend{budget("p", 20_000, 5_001, thisMonth)}, "org", 1, false},
		{"open estimates within", []events.ProjectSpend{budget("p", 20_000, 5_000, thisMonth)}, "org", 1, true},
		{"zero budget stops it", []events.ProjectSpend{budget("p", 0, 0, thisMonth)}, "org", 0, false},
		{"last month's spend is not this month's", []events.ProjectSpend{budget("p", 10_000, 10_000, lastMonth)}, "org", 0, true},
		{"another project's budget", []events.ProjectSpend{budget("other", 0, 0, thisMonth)}, "org", 0, true},
		{"budget of a former funder", []events.ProjectSpend{budget("p", 0, 0, thisMonth)}, "org2", 0, true},
		{"spent far beyond the budget", []events.ProjectSpend{budget("p", 10_000, 1<<62, thisMonth)}, "org", 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := newTable(t, nil)
			tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 1, c.budgets...))
			tb.ApplyBalance(balance("org2", "enterprise", 1e9, 1, 1))
			tb.ApplyBalance(funded("p", "enterprise", c.funder, 2, 1))
			for range c.open {
				if d := admit(t, tb, code1k("p"), t0); !d.Allowed {
					t.Fatalf("open request: %+v", d)
				}
			}
			d := admit(t, tb, code1k("p"), t0)
			if d.Allowed != c.wantAllow {
				t.Fatalf("allowed %v, want %v: %+v", d.Allowed, c.wantAllow, d)
			}
			// The month's spent and the estimate alone over the budget: retry next month; the
			// open requests' estimates: retry as they finish (the concurrency retry).
			wantRetry := min(nextMonth-t0, retryMsMax)
			if c.open > 0 {
				wantRetry = DefaultConfig.RetryConcurrencyMs
			}
			if !c.wantAllow && (d.Reason != ReasonBudgetExhausted || d.RetryAfterMs != wantRetry) {
				t.Fatalf("denial: %+v, want retry after %d ms", d, wantRetry)
			}
		})
	}
	// Near a month's end the retry is the time to the next month.
	tb := newTable(t, nil)
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 1, budget("p", 0, 0, thisMonth)))
	tb.ApplyBalance(funded("p", "enterprise", "org", 2, 1))
	late := nextMonth - 90_000
	if d := admit(t, tb, code1k("p"), late); d.Reason != ReasonBudgetExhausted || d.RetryAfterMs != 90_000 {
		t.Fatalf("retry near the month's end: %+v", d)
	}
	// Once in the next month, the budget's period (this month) is over: spent counts 0.
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 2, budget("p", 10_000, 10_000, thisMonth)))
	if d := admit(t, tb, code1k("p"), nextMonth); !d.Allowed {
		t.Fatalf("new month: %+v", d)
	}
}

// TestBudgetFollowsTheFundersView: a view without the entry removes the budget; a finished
// request gives its reservation back; a denial takes nothing.
func TestBudgetFollowsTheFundersView(t *testing.T) {
	tb := newTable(t, nil)
	month := monthOf(t0)
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 1, budget("p", 10_000, 0, month), budget("q", 1, 0, month)))
	tb.ApplyBalance(funded("p", "enterprise", "org", 2, 1))
	d := admit(t, tb, code1k("p"), t0)
	if !d.Allowed {
		t.Fatalf("first: %+v", d)
	}
	if d2 := admit(t, tb, code1k("p"), t0); d2.Reason != ReasonBudgetExhausted {
		t.Fatalf("second (7,500 reserved of 10,000): %+v", d2)
	}
	if p, _ := tb.Account("p"); p.BudgetReservedMicros != 7_500 {
		t.Fatalf("reserved after a denial: %+v", p)
	}
	tb.Published(d.Handle, 0, 2)
	s, _ := tb.Quote(d.Handle, 1_000, t0)
	_ = tb.Finish(d.Handle, s, t0, OutcomeSucceeded, 0, 3)
	// Finished, not yet in the ledger's spent: the reservation is gone.
	if d2 := admit(t, tb, code1k("p"), t0); !d2.Allowed {
		t.Fatalf("after the finish: %+v", d2)
	} else {
		tb.Abort(d2.Handle)
	}
	// The ledger folds the finish: 3,000 spent leaves no room for 7,500.
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 3, budget("p", 10_000, 3_000, month)))
	if d2 := admit(t, tb, code1k("p"), t0); d2.Reason != ReasonBudgetExhausted {
		t.Fatalf("after the fold: %+v", d2)
	}
	// The next view lists no budget for p: no cap.
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 4))
	if d2 := admit(t, tb, code1k("p"), t0); !d2.Allowed {
		t.Fatalf("budget removed: %+v", d2)
	}
	if n := len(tb.budgetsOf); n != 0 {
		t.Fatalf("budget lists left: %d", n)
	}
	// A stale view of the org (lower offset, same partition) is ignored, budgets included.
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 3, budget("p", 0, 0, month)))
	if d2 := admit(t, tb, code1k("p"), t0); !d2.Allowed {
		t.Fatalf("stale view applied: %+v", d2)
	}
}

// TestFundedPeers: another admitter's funded start holds on the funder (pending at the
// funder's position) and reserves the project's budget; its finish settles on the funder and
// gives the reservation back.
func TestFundedPeers(t *testing.T) {
	tb := newTable(t, nil)
	month := monthOf(t0)
	tb.ApplyBalance(orgWith("org", "enterprise", 10_000, 0, 1, budget("p", 10_000, 0, month)))
	tb.ApplyBalance(funded("p", "enterprise", "org", 3, 1))
	peer := &Peer{AccountID: "p", FundingAccountID: "org", Funding: FundingCredits, HoldMicros: 7_500, StartedMs: t0}
	if !tb.ApplyPeerStart(peer, 0, 2) {
		t.Fatal("peer start")
	}
	org, _ := tb.Account("org")
	p, _ := tb.Account("p")
	if org.PendingAvailMicros != -7_500 || p.Pending != 0 || p.BudgetReservedMicros != 7_500 {
		t.Fatalf("org %+v, p %+v", org, p)
	}
	if d := admit(t, tb, code1k("p"), t0); d.Reason != ReasonBudgetExhausted {
		t.Fatalf("peer's reservation not counted: %+v", d)
	}
	// In log order: our hold at 3 follows the peer's at 2 on the org's partition.
	if tb.FundedInLogOrder("org", 7_500, 0, 0, 3, t0) {
		t.Fatal("covered in log order")
	}
	q := tb.QuotePeer(peer, 9_000, t0)
	if q.CreditsMicros != 9_000 || q.OverageMicros != 0 { // 7,500 hold + 1,500 of the org's 2,500 available
		t.Fatalf("peer quote: %+v", q)
	}
	tb.ApplyPeerFinish(peer, 9_000, 0, 3, t0)
	org, _ = tb.Account("org")
	p, _ = tb.Account("p")
	if org.PendingAvailMicros != -9_000 || p.BudgetReservedMicros != 0 {
		t.Fatalf("after the peer's finish: org %+v, p %+v", org, p)
	}
	// A start that is not kept (or expires) gives its reservation back.
	tb.ApplyPeerStart(peer, 0, 4)
	tb.ApplyPeerEnd(peer)
	if p, _ = tb.Account("p"); p.BudgetReservedMicros != 0 {
		t.Fatalf("after the end: %+v", p)
	}
	// The org's view past every event drops them all.
	tb.ApplyBalance(orgWith("org", "enterprise", 1_000, 0, 4, budget("p", 10_000, 9_000, month)))
	if org, _ = tb.Account("org"); org.Pending != 0 {
		t.Fatalf("org after its view: %+v", org)
	}
}

// TestFundedDecisionAllocatesNothing: the hot path stays free of allocations for a funded
// project with a budget.
func TestFundedDecisionAllocatesNothing(t *testing.T) {
	tb := newTable(t, nil)
	tb.ApplyBalance(orgWith("org", "enterprise", 1e15, 0, 1, budget("p", 1e15, 0, monthOf(t0))))
	tb.ApplyBalance(funded("p", "enterprise", "org", 1, 1))
	req := code1k("p")
	var d Decision
	i := int64(0)
	allocs := testing.AllocsPerRun(1000, func() {
		i++
		_ = tb.Admit(req, t0+i*1000, &d)
		if d.Allowed {
			tb.Published(d.Handle, 0, i)
			s, _ := tb.Quote(d.Handle, 5000, t0)
			_ = tb.Finish(d.Handle, s, t0+i*1000+3, OutcomeSucceeded, 0, i)
		}
	})
	if allocs != 0 || !d.Allowed || d.FundingAccountID != "org" {
		t.Fatalf("funded admit+publish+finish allocates %.1f per run (last %+v)", allocs, d)
	}
}

// TestBudgetCountsFinishedUntilFolded: a finished request's cost counts against the budget
// from its finish until the funder's view includes it (its spent), so that a ledger behind
// (or stopped) does not let a project past its budget; a view behind the finish keeps it.
func TestBudgetCountsFinishedUntilFolded(t *testing.T) {
	tb := newTable(t, nil)
	month := monthOf(t0)
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 1, budget("p", 20_000, 0, month)))
	tb.ApplyBalance(funded("p", "enterprise", "org", 2, 1))
	d := admit(t, tb, code1k("p"), t0)
	tb.Published(d.Handle, 0, 2)
	s, _ := tb.Quote(d.Handle, 9_000, t0) // costs more than its 7,500 estimate
	_ = tb.Finish(d.Handle, s, t0, OutcomeSucceeded, 0, 3)
	// 9,000 finished + 7,500 ≤ 20,000; a second 7,500 would be 24,000.
	d = admit(t, tb, code1k("p"), t0)
	if !d.Allowed {
		t.Fatalf("second: %+v", d)
	}
	if d2 := admit(t, tb, code1k("p"), t0); d2.Reason != ReasonBudgetExhausted {
		t.Fatalf("third (9,000 finished, 7,500 open): %+v", d2)
	}
	tb.Abort(d.Handle)
	// A view of the org before the finish (offset 2) keeps the finished cost.
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 2, budget("p", 20_000, 0, month)))
	if p, _ := tb.Account("p"); p.BudgetSettledMicros != 9_000 {
		t.Fatalf("after a view behind the finish: %+v", p)
	}
	// The view that folds it carries it as spent: counted once.
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 3, budget("p", 20_000, 9_000, month)))
	if p, _ := tb.Account("p"); p.BudgetSettledMicros != 0 {
		t.Fatalf("after the fold: %+v", p)
	}
	if d = admit(t, tb, code1k("p"), t0); !d.Allowed {
		t.Fatalf("after the fold (9,000 + 7,500): %+v", d)
	}
	// A peer's finish counts the same way; one the view already passed does not.
	peer := &Peer{AccountID: "p", FundingAccountID: "org", Funding: FundingCredits, HoldMicros: 1_000, StartedMs: t0}
	tb.ApplyPeerStart(peer, 0, 4)
	tb.ApplyPeerFinish(peer, 2_000, 0, 5, t0)
	if p, _ := tb.Account("p"); p.BudgetSettledMicros != 2_000 || p.BudgetReservedMicros != 7_500 {
		t.Fatalf("after the peer's finish: %+v", p)
	}
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 7, budget("p", 20_000, 11_000, month)))
	tb.ApplyPeerStart(peer, 0, 6)
	tb.ApplyPeerFinish(peer, 2_000, 0, 7, t0)
	if p, _ := tb.Account("p"); p.BudgetSettledMicros != 0 {
		t.Fatalf("a finish the view passed counted: %+v", p)
	}
	// A view without p's budget drops what was counted for it.
	s, _ = tb.Quote(d.Handle, 100, t0)
	_ = tb.Finish(d.Handle, s, t0, OutcomeSucceeded, 0, 8)
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 7)) // same offset: not stale
	if p, _ := tb.Account("p"); p.BudgetSettledMicros != 0 || len(tb.settling) != 0 {
		t.Fatalf("budget removed: %+v", p)
	}
}

// BenchmarkAdmitFinishFunded1M is BenchmarkAdmitFinish1M where every account is a project
// funded by one of 20,000 organizations (50 projects each, each with a monthly budget it does
// not reach), so that every decision takes the funded path: the project's limits, the
// organization's money, the budget check, the reservation. The organizations' views are ahead
// of every event (their pending changes and finished costs are dropped when acknowledged).
func BenchmarkAdmitFinishFunded1M(b *testing.B) {
	tb, ids := load1M(b, 1_000_000)
	month := monthOf(t0)
	const perOrg = 50
	for o := 0; o < len(ids)/perOrg; o++ {
		org := fmt.Sprintf("org-%06d", o)
		var budgets []events.ProjectSpend
		for _, p := range ids[o*perOrg : (o+1)*perOrg] {
			budgets = append(budgets, budget(p, 1e15, 0, month))
			tb.ApplyBalance(funded(p, "enterprise", org, 1, 1))
		}
		tb.ApplyBalance(orgWith(org, "enterprise", 1e15, 0, 1<<62, budgets...))
	}
	allowed := admitFinishLoop(b, tb, ids)
	b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
}

// TestSettlingBounded: while the funding account's view stays behind (a stopped ledger), a
// project's finished costs are kept until the view passes them, but in at most settlingMax
// entries: later ones merge into the last (counted until the view passes the later position,
// never less), so the budget still counts every micro-credit and the memory stays bounded. The
// sums saturate instead of wrapping.
func TestSettlingBounded(t *testing.T) {
	tb := newTable(t, nil)
	month := monthOf(t0)
	tb.ApplyBalance(orgWith("org", "enterprise", 1e12, 0, 1, budget("p", 10_000_000, 0, month)))
	tb.ApplyBalance(funded("p", "enterprise", "org", 2, 1))
	off := int64(2)
	now := t0
	for i := 0; i < 1000; i++ {
		now += 10 // the enterprise tier's rate: 6,000 a minute
		d := admit(t, tb, code1k("p"), now)
		if !d.Allowed {
			t.Fatalf("admit %d: %+v", i, d)
		}
		tb.Published(d.Handle, 0, off)
		s, _ := tb.Quote(d.Handle, 7_500, now)
		_ = tb.Finish(d.Handle, s, now, OutcomeSucceeded, 0, off+1)
		off += 2
	}
	ai, _ := tb.known("p")
	if n := len(tb.settling[ai]); n > settlingMax {
		t.Fatalf("%d settled-cost entries for one project, bound %d", n, settlingMax)
	}
	p, _ := tb.Account("p")
	if p.BudgetSettledMicros != 7_500_000 {
		t.Fatalf("settled %d µ, want every finish counted (7,500,000)", p.BudgetSettledMicros)
	}
	// 7,500,000 finished: 333 more requests of 7,500 fit in 10,000,000, the 334th does not.
	for i := 0; ; i++ {
		now += 10
		d := admit(t, tb, code1k("p"), now)
		if !d.Allowed {
			if d.Reason != ReasonBudgetExhausted || i != 333 {
				t.Fatalf("denied after %d more: %+v", i, d)
			}
			break
		}
		tb.Published(d.Handle, 0, off)
		s, _ := tb.Quote(d.Handle, 7_500, now)
		_ = tb.Finish(d.Handle, s, now, OutcomeSucceeded, 0, off+1)
		off += 2
	}
	if n := len(tb.settling[ai]); n > settlingMax {
		t.Fatalf("%d settled-cost entries for one project, bound %d", n, settlingMax)
	}
	// A view that folds everything clears it.
	tb.ApplyBalance(orgWith("org", "enterprise", 1e12, 0, off, budget("p", 10_000_000, 9_997_500, month)))
	if p, _ := tb.Account("p"); p.BudgetSettledMicros != 0 || len(tb.settling[ai]) != 0 {
		t.Fatalf("after the fold: %+v, %d entries", p, len(tb.settling[ai]))
	}
	// Peers' reservations saturate rather than wrap to a negative sum (which would admit).
	big := &Peer{AccountID: "p", FundingAccountID: "org", Funding: FundingCredits, HoldMicros: events.MaxAmountMicros, StartedMs: t0}
	for i := 0; i < 10_000; i++ {
		tb.ApplyPeerStart(big, 0, off+int64(i))
	}
	if p, _ := tb.Account("p"); p.BudgetReservedMicros < 0 {
		t.Fatalf("reserved wrapped: %+v", p)
	}
	if d := admit(t, tb, code1k("p"), now+10); d.Allowed {
		t.Fatalf("admitted with 10,000 peers' billion-credit estimates open: %+v", d)
	}
}

// TestBudgetOfTheCurrentFunderStands: a project moved from org1 to org2 keeps org2's budget
// when org1 (or any account) later lists a budget for it: another account's list does not
// take the project's budget over and leave it unchecked.
func TestBudgetOfTheCurrentFunderStands(t *testing.T) {
	tb := newTable(t, nil)
	month := monthOf(t0)
	tb.ApplyBalance(orgWith("org2", "enterprise", 1e9, 1, 1, budget("p", 0, 0, month))) // stops p
	tb.ApplyBalance(funded("p", "enterprise", "org2", 2, 1))
	tb.ApplyBalance(orgWith("org1", "enterprise", 1e9, 0, 1, budget("p", 1e12, 0, month)))
	if d := admit(t, tb, code1k("p"), t0); d.Allowed || d.Reason != ReasonBudgetExhausted {
		t.Fatalf("org2's zero budget no longer applied once org1 listed one: %+v", d)
	}
	// org2 drops the budget: p is capped by org2's balance only; org1's list still does not apply.
	tb.ApplyBalance(orgWith("org2", "enterprise", 1e9, 1, 2))
	tb.ApplyBalance(orgWith("org1", "enterprise", 1e9, 0, 2, budget("p", 0, 0, month)))
	if d := admit(t, tb, code1k("p"), t0); !d.Allowed || d.FundingAccountID != "org2" {
		t.Fatalf("after org2 dropped the budget: %+v", d)
	}
}

// TestFunderNotFittingStillAppliesTheAccount: when the table is full and a project's view
// names a funding account it cannot hold, the project's own fields still apply (a
// suspension takes effect) and it is denied table_full, never served on its own balance.
func TestFunderNotFittingStillAppliesTheAccount(t *testing.T) {
	tb := newTable(t, func(c *Config) { c.AccountsMax = 2 })
	tb.ApplyBalance(balance("p", "enterprise", 1e9, 0, 1))
	tb.ApplyBalance(balance("q", "enterprise", 1e9, 0, 1)) // the table is full
	b := funded("p", "enterprise", "org-new", 0, 2)
	b.AvailableMicros = 1e9
	if tb.ApplyBalance(b) {
		t.Fatal("ApplyBalance reported success with the funding account left out")
	}
	if d := admit(t, tb, code1k("p"), t0); d.Allowed || d.Reason != ReasonTableFull {
		t.Fatalf("a project whose funder did not fit: %+v, want table_full", d)
	}
	s := funded("p", "enterprise", "org-new", 0, 3)
	s.Suspended = true
	tb.ApplyBalance(s)
	if snap, _ := tb.Account("p"); !snap.Suspended {
		t.Fatalf("the suspension in the view was not applied: %+v", snap)
	}
	// Back on its own balance: served again.
	tb.ApplyBalance(balance("p", "enterprise", 1e9, 0, 4))
	if d := admit(t, tb, code1k("p"), t0); !d.Allowed || d.FundingAccountID != "" {
		t.Fatalf("back on its own balance: %+v", d)
	}
}

// TestPeerFinishGivesBackOnlyWhatItsStartCounted: a peer's finish (or end) whose start was
// never counted (it was not applied) leaves the other open requests' reservations alone.
func TestPeerFinishGivesBackOnlyWhatItsStartCounted(t *testing.T) {
	tb := newTable(t, nil)
	month := monthOf(t0)
	tb.ApplyBalance(orgWith("org", "enterprise", 1e9, 0, 1, budget("p", 1e9, 0, month)))
	tb.ApplyBalance(funded("p", "enterprise", "org", 2, 1))
	if d := admit(t, tb, code1k("p"), t0); !d.Allowed {
		t.Fatalf("admit: %+v", d)
	}
	uncounted := &Peer{AccountID: "p", FundingAccountID: "org", Funding: FundingCredits, HoldMicros: 5_000, StartedMs: t0}
	tb.ApplyPeerFinish(uncounted, 5_000, 0, 5, t0)
	tb.ApplyPeerEnd(&Peer{AccountID: "p", FundingAccountID: "org", Funding: FundingCredits, HoldMicros: 2_000, StartedMs: t0})
	if p, _ := tb.Account("p"); p.BudgetReservedMicros != 7_500 {
		t.Fatalf("reserved %d µ, want the open request's 7,500 alone", p.BudgetReservedMicros)
	}
	// A counted start is given back once, whichever of finish and end comes (twice: once).
	counted := &Peer{AccountID: "p", FundingAccountID: "org", Funding: FundingCredits, HoldMicros: 1_000, StartedMs: t0}
	tb.ApplyPeerStart(counted, 0, 6)
	tb.ApplyPeerFinish(counted, 1_000, 0, 7, t0)
	tb.ApplyPeerEnd(counted)
	if p, _ := tb.Account("p"); p.BudgetReservedMicros != 7_500 {
		t.Fatalf("reserved %d µ after a counted peer finished and ended, want 7,500", p.BudgetReservedMicros)
	}
}

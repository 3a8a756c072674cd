package fold

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// fundedStart is start of project proj's request req funded by org.
func fundedStart(org, proj, req string, hold int64, at time.Time) events.RequestStarted {
	st := start(proj, req, hold, at)
	st.FundingAccountID = org
	return st
}

// fundedFinish is finish of project proj's request req funded by org.
func fundedFinish(org, proj, req string, cost int64) events.RequestFinished {
	f := finish(proj, req, cost)
	f.FundingAccountID = org
	return f
}

// TestProjectsShareRequestIDs: two projects funded by one organization both use request id
// "r1". Their holds are the organization's, keyed by (project, request): neither start is a
// duplicate of the other, and each finish settles its own project's hold.
func TestProjectsShareRequestIDs(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("org", "g1", 1_000_000, 0, nil))
	l.add(t0, fundedStart("org", "p1", "r1", 100_000, t0))
	l.add(t0, fundedStart("org", "p2", "r1", 200_000, t0))
	l.add(t0.Add(time.Second), fundedFinish("org", "p2", "r1", 150_000))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	if len(out.Anomalies) != 0 {
		t.Fatalf("anomalies %v, want none", kinds(out))
	}
	o := s.Account("org")
	if o.AvailableMicros != 750_000 || o.HeldMicros != 100_000 {
		t.Fatalf("org available %d held %d, want 750000 100000 (p1's hold open, p2's settled at 150000)", o.AvailableMicros, o.HeldMicros)
	}
	if len(o.Holds) != 1 || o.Holds[0].ProjectID != "p1" || o.Holds[0].RequestID != "r1" {
		t.Fatalf("open holds %+v, want p1's r1", o.Holds)
	}
	if s.Account("p1") != nil || s.Account("p2") != nil {
		t.Fatal("a funded request folded on its project's account")
	}
}

func budgetUpdate(org, proj string, micros int64, remove bool) events.BudgetChanged {
	return events.BudgetChanged{AccountID: org, ProjectID: proj, BudgetMicros: micros, Remove: remove}
}

// TestFundedRequestPaysFromOrg: a project's funded request takes the organization's
// allowance windows (the organization's tier), credits and overage; the project's own
// account (its tier "pro", its grant) is untouched.
func TestFundedRequestPaysFromOrg(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "org", Tier: "free", Priority: events.PriorityStandard}) // 5h window: 2 credits
	l.add(t0, events.AccountUpdated{AccountID: "p1", Tier: "pro", Priority: events.PriorityStandard, FundingAccountID: ptr("org")})
	l.add(t0, grant("org", "g1", 1_000_000, 0, nil))
	l.add(t0, grant("p1", "gp", 50_000_000, 0, nil))
	st := allowanceStart("p1", "r1", 1_500_000, 0, t0)
	st.FundingAccountID = "org"
	l.add(t0, st)
	f := fundedFinish("org", "p1", "r1", 4_000_000) // 2 credits of window, 1 of credits, 1 overage
	l.add(t0.Add(time.Second), f)
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	o, p := s.Account("org"), s.Account("p1")
	if o.AvailableMicros != 0 || o.HeldMicros != 0 || o.OverageMicros != 1_000_000 || o.ChargedMicros != 1_000_000 {
		t.Fatalf("org available %d held %d overage %d charged %d, want 0 0 1000000 1000000", o.AvailableMicros, o.HeldMicros, o.OverageMicros, o.ChargedMicros)
	}
	if used := windowUsed(s, o, t0.Add(time.Second)); used[0] != 2_000_000 {
		t.Fatalf("org windows %v, want the 5h window full", used)
	}
	if p.AvailableMicros != 50_000_000 || p.Windows != nil || p.FundingAccountID != "org" {
		t.Fatalf("project account changed: available %d windows %v funding %q", p.AvailableMicros, p.Windows, p.FundingAccountID)
	}
	for _, e := range out.Entries {
		if e.AccountID != "org" && e.Cause != l.evs[3].ID {
			t.Fatalf("journal line of a funded request on %s: %+v", e.AccountID, e)
		}
		if e.Cause == l.evs[5].ID && e.RequestID != "r1" {
			t.Fatalf("journal line names request %q", e.RequestID)
		}
	}
	if bu := s.Balance(p); bu.FundingAccountID != "org" || bu.Validate() != nil {
		t.Fatalf("project balance funding %q: %v", bu.FundingAccountID, bu.Validate())
	}
	if bu := s.Balance(o); bu.FundingAccountID != "" || bu.Projects != nil {
		t.Fatalf("org balance funding %q projects %v", bu.FundingAccountID, bu.Projects)
	}
	// Back to its own balance.
	var out2 Output
	s.Apply(Input{Offset: 100, Event: l.add(t0.Add(2*time.Second), events.AccountUpdated{AccountID: "p1", Tier: "pro",
		Priority: events.PriorityStandard, FundingAccountID: ptr("")})}, &out2)
	if p.FundingAccountID != "" || s.Balance(p).FundingAccountID != "" {
		t.Fatalf("funding not cleared: %q", p.FundingAccountID)
	}
	// Absent: unchanged.
	s.Apply(Input{Offset: 101, Event: l.add(t0.Add(2*time.Second), events.AccountUpdated{AccountID: "p1", Tier: "pro",
		Priority: events.PriorityStandard, FundingAccountID: ptr("org2")})}, &out2)
	s.Apply(Input{Offset: 102, Event: l.add(t0.Add(2*time.Second), events.AccountUpdated{AccountID: "p1", Tier: "plus",
		Priority: events.PriorityStandard})}, &out2)
	if p.FundingAccountID != "org2" || p.Tier != "plus" {
		t.Fatalf("funding %q tier %q, want org2 plus", p.FundingAccountID, p.Tier)
	}
}

// TestFundedExpiryNamesProject: a funded hold that expires gives request.expired with the
// project as account_id and the organization as funding_account_id (so it is keyed by the
// organization); the late finish is charged on the organization and its anomaly names the
// project.
func TestFundedExpiryNamesProject(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("org", "g1", 1_000_000, 0, nil))
	l.add(t0, fundedStart("org", "p1", "r1", 300_000, t0))
	l.add(t0, fundedStart("org", "p2", "r1", 100_000, t0.Add(2*time.Minute)))
	l.add(t0.Add(6*time.Minute), grant("b", "gb", 1, 0, nil)) // the clock passes p1's expiry only
	l.add(t0.Add(7*time.Minute), fundedFinish("org", "p1", "r1", 200_000))
	l.add(t0.Add(7*time.Minute), fundedFinish("org", "p2", "r1", 50_000))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	if len(out.Expired) != 1 {
		t.Fatalf("expired %d, want 1", len(out.Expired))
	}
	x := out.Expired[0].Data
	if x.AccountID != "p1" || x.FundingAccountID != "org" || x.RequestID != "r1" || x.HoldMicros != 300_000 {
		t.Fatalf("expired %+v", x)
	}
	if err := x.Validate(); err != nil || x.Subject() != "org" {
		t.Fatalf("expired subject %q: %v", x.Subject(), err)
	}
	if k := kinds(out); len(k) != 1 || k[0] != AnomalyLateFinish || out.Anomalies[0].ProjectID != "p1" || out.Anomalies[0].AccountID != "org" {
		t.Fatalf("anomalies %+v, want p1's late finish on org", out.Anomalies)
	}
	if o := s.Account("org"); o.AvailableMicros != 750_000 || o.HeldMicros != 0 {
		t.Fatalf("org available %d held %d, want 750000 0", o.AvailableMicros, o.HeldMicros)
	}
	// A copy of either finish is a duplicate of its own project's request only.
	var out2 Output
	s.Apply(Input{Offset: 100, Event: l.evs[4]}, &out2)
	s.Apply(Input{Offset: 101, Event: l.add(t0.Add(8*time.Minute), fundedFinish("org", "p2", "r1", 50_000))}, &out2)
	if k := kinds(&out2); len(k) != 2 || k[0] != AnomalyDuplicate || k[1] != AnomalyDuplicate || len(out2.Entries) != 0 {
		t.Fatalf("copies: anomalies %v, %d lines", k, len(out2.Entries))
	}
}

// TestParkedFinishMatchesItsProject: a funded finish that comes before its start is parked
// under its project: another project's start of the same request id does not settle it.
func TestParkedFinishMatchesItsProject(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("org", "g1", 1_000_000, 0, nil))
	l.add(t0, fundedFinish("org", "p1", "r1", 70_000))
	l.add(t0, fundedStart("org", "p2", "r1", 300_000, t0))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	o := s.Account("org")
	if len(o.Parked) != 1 || o.Parked[0].ProjectID != "p1" || len(o.Holds) != 1 || o.Holds[0].ProjectID != "p2" {
		t.Fatalf("parked %+v holds %+v", o.Parked, o.Holds)
	}
	s.Apply(Input{Offset: 10, Event: l.add(t0, fundedStart("org", "p1", "r1", 100_000, t0))}, out)
	if len(o.Parked) != 0 || len(o.Holds) != 1 || o.AvailableMicros != 700_000-70_000 {
		t.Fatalf("after p1's start: parked %d holds %d available %d", len(o.Parked), len(o.Holds), o.AvailableMicros)
	}
}

// TestProjectBudgets: an organization's budgets: set, spending of its projects' finished
// requests (cost, by the month of the finish's time), other spending not counted, a new
// month from 0, change, removal; balance.updated lists them in project order.
func TestProjectBudgets(t *testing.T) {
	nov := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
	dec := nov.Add(2 * time.Hour)
	l := &logb{t: t}
	l.add(nov, grant("org", "g1", 100_000_000, 0, nil))
	l.add(nov, budgetUpdate("org", "p2", 5_000_000, false))
	l.add(nov, budgetUpdate("org", "p1", 1_000_000, false))
	spendFunded := func(at time.Time, proj, req string, cost int64) {
		l.add(at, fundedStart("org", proj, req, cost, at))
		l.add(at, fundedFinish("org", proj, req, cost))
	}
	spendFunded(nov, "p1", "r1", 400_000)
	spendFunded(nov, "p2", "r1", 300_000)
	spendFunded(nov, "p3", "r1", 900_000)               // no budget: not tracked
	spend(l, nov, "org", "r1", 800_000)                 // the organization's own request
	l.add(nov, fundedFinish("org", "p1", "ghost", 100)) // parked, then unknown: counts at its time
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	o := s.Account("org")
	want := []Budget{{"p1", 1_000_000, monthOf(nov.UnixNano()), 400_000}, {"p2", 5_000_000, monthOf(nov.UnixNano()), 300_000}}
	if !reflect.DeepEqual(o.Budgets, want) {
		t.Fatalf("budgets %+v, want %+v", o.Budgets, want)
	}
	bu := s.Balance(o)
	if err := bu.Validate(); err != nil || len(bu.Projects) != 2 || bu.Projects[0].ProjectID != "p1" || bu.Projects[0].SpentMicros != 400_000 ||
		!bu.Projects[0].PeriodStart.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("balance projects %+v: %v", bu.Projects, err)
	}
	// December: the parked finish times out (counted in November, its time), a December
	// finish starts p1's month again, a late November finish counts in no month.
	more := &logb{t: t, seq: 1000}
	more.add(dec, fundedStart("org", "p1", "r2", 10, dec))
	more.add(dec, fundedFinish("org", "p1", "r2", 250_000))
	more.add(dec, fundedStart("org", "p1", "r3", 10, dec))
	more.add(nov.Add(30*time.Minute), fundedFinish("org", "p1", "r3", 70_000))
	more.add(dec, budgetUpdate("org", "p1", 2_000_000, false)) // changed: keeps month and spending
	more.add(dec, budgetUpdate("org", "p2", 0, true))
	more.add(dec, budgetUpdate("org", "p9", 0, true)) // no such budget: nothing
	for i, e := range more.evs {
		s.Apply(Input{Offset: int64(1000 + i), Event: e}, out)
	}
	mustCheck(t, s, out)
	want = []Budget{{"p1", 2_000_000, monthOf(dec.UnixNano()), 250_000}}
	if !reflect.DeepEqual(o.Budgets, want) {
		t.Fatalf("December budgets %+v, want %+v", o.Budgets, want)
	}
	if k := kinds(out); len(k) != 1 || k[0] != AnomalyUnknownFinish {
		t.Fatalf("anomalies %v, want the ghost's unknown finish", k)
	}
	if c := roundTrip(t, o); !reflect.DeepEqual(c.Budgets, o.Budgets) {
		t.Fatalf("budgets round trip %+v", c.Budgets)
	}
}

// TestTooManyBudgets: the 65th budget of an organization is refused (not applied), while
// changing or removing one of the 64 is applied.
func TestTooManyBudgets(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "org", Tier: "free", Priority: events.PriorityStandard})
	for i := range events.MaxProjectBudgets {
		l.add(t0, budgetUpdate("org", fmt.Sprintf("p%02d", i), int64(i), false))
	}
	l.add(t0, budgetUpdate("org", "q", 5, false))
	l.add(t0, budgetUpdate("org", "p07", 70, false))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	o := s.Account("org")
	if k := kinds(out); len(k) != 1 || k[0] != AnomalyTooManyBudgets || out.Anomalies[0].ProjectID != "q" ||
		out.Anomalies[0].Offset != int64(events.MaxProjectBudgets+1) {
		t.Fatalf("anomalies %+v", out.Anomalies)
	}
	if len(o.Budgets) != events.MaxProjectBudgets || o.Tier != "free" || o.Budgets[7].BudgetMicros != 70 {
		t.Fatalf("%d budgets, tier %q, p07 %d", len(o.Budgets), o.Tier, o.Budgets[7].BudgetMicros)
	}
	// After a removal there is room; the refused event was not remembered, so it counts now.
	s.Apply(Input{Offset: 200, Event: l.add(t0, budgetUpdate("org", "p00", 0, true))}, out)
	s.Apply(Input{Offset: 201, Event: l.evs[events.MaxProjectBudgets+1]}, out)
	if _, ok := o.findBudget("q"); !ok || o.Tier != "free" || len(o.Budgets) != events.MaxProjectBudgets {
		t.Fatalf("q not applied after a removal: %d budgets, tier %q", len(o.Budgets), o.Tier)
	}
	if err := s.Balance(o).Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestBudgetLeavesSettings: a budget.changed sets the budget and nothing else: the funding
// account's tier, priority, suspension and funding stay as account.updated set them, also
// when an account.updated with a new tier comes just before it, and an account that never
// had a tier or priority (known by a grant only) gets none.
func TestBudgetLeavesSettings(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "org", Tier: "free", Priority: events.PriorityBatch, Suspended: true, FundingAccountID: ptr("top")})
	l.add(t0, events.AccountUpdated{AccountID: "org", Tier: "pro", Priority: events.PriorityBatch, Suspended: true})
	l.add(t0, budgetUpdate("org", "p1", 7, false))
	l.add(t0, grant("bare", "g1", 1_000, 0, nil))
	l.add(t0, budgetUpdate("bare", "p1", 9, false))
	l.add(t0, budgetUpdate("bare", "p1", 0, true))
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	if len(out.Anomalies) != 0 {
		t.Fatalf("anomalies %v", kinds(out))
	}
	o := s.Account("org")
	if o.Tier != "pro" || o.Priority != events.PriorityBatch || !o.Suspended || o.FundingAccountID != "top" ||
		len(o.Budgets) != 1 || o.Budgets[0].BudgetMicros != 7 {
		t.Fatalf("org: tier %q priority %q suspended %v funding %q budgets %+v", o.Tier, o.Priority, o.Suspended, o.FundingAccountID, o.Budgets)
	}
	b := s.Account("bare")
	if b.Tier != "" || b.Priority != "" || b.Suspended || len(b.Budgets) != 0 || b.AvailableMicros != 1_000 {
		t.Fatalf("bare: tier %q priority %q suspended %v budgets %+v available %d", b.Tier, b.Priority, b.Suspended, b.Budgets, b.AvailableMicros)
	}
}

// randomOrgLog is a random log of organizations and their projects: funded and own requests
// (request ids shared between projects, finishes before starts, never finished, late, copied),
// allowance- and credit-funded, grants, funding changes, budgets set, changed and removed
// (beyond the bound too), and clock ticks jumping across months.
func randomOrgLog(t testing.TB, seed uint64, n int) []*events.Event {
	r := rand.New(rand.NewPCG(seed, seed^0x0e9))
	l := &logb{t: t}
	now := date(2027, time.January, 30, 12, 0)
	orgs := []string{"org-0", "org-1"}
	type open struct {
		org, proj, req string
	}
	var opens []open
	budgetMax := 3 + r.IntN(events.MaxProjectBudgets)
	for len(l.evs) < n {
		now = now.Add(time.Duration(r.IntN(90)) * time.Second)
		org := orgs[r.IntN(len(orgs))]
		proj := fmt.Sprint("p-", r.IntN(budgetMax+2))
		req := fmt.Sprint("r", r.IntN(40)) // few ids: projects share them
		switch k := r.IntN(100); {
		case k < 8:
			l.add(now, grant(org, fmt.Sprint("g", len(l.evs)), int64(1+r.IntN(20_000_000)), int32(r.IntN(3)), nil))
		case k < 12:
			tiers := []string{"free", "plus", "pro"}
			au := events.AccountUpdated{AccountID: proj, Tier: tiers[r.IntN(3)], Priority: events.PriorityStandard, FundingAccountID: ptr(org)}
			if r.IntN(4) == 0 {
				au.FundingAccountID = ptr("")
			}
			l.add(now, au)
		case k < 18:
			l.add(now, budgetUpdate(org, proj, int64(r.IntN(5_000_000)), false))
		case k < 20:
			l.add(now, budgetUpdate(org, proj, 0, true))
		case k < 55:
			acct := proj
			if r.IntN(5) == 0 {
				acct = org // the organization's own request
			}
			st := start(acct, req, int64(r.IntN(400_000)), now)
			if acct != org {
				st.FundingAccountID = org
			}
			if r.IntN(4) == 0 {
				st.Funding, st.HoldMicros, st.AllowanceMicros = events.FundingAllowance, 0, int64(r.IntN(300_000))
			}
			if r.IntN(10) == 0 { // finish first
				f := finish(acct, req, int64(r.IntN(500_000)))
				f.FundingAccountID = st.FundingAccountID
				l.add(now, f)
			}
			l.add(now, st)
			opens = append(opens, open{st.FundingAccountID, acct, req})
		case k < 85 && len(opens) > 0:
			i := r.IntN(len(opens))
			o := opens[i]
			opens = append(opens[:i], opens[i+1:]...)
			f := finish(o.proj, o.req, int64(r.IntN(500_000)))
			f.FundingAccountID = o.org
			at := now
			if r.IntN(8) == 0 {
				at = now.Add(-time.Duration(r.IntN(3600)) * time.Second) // a clock behind
			}
			l.add(at, f)
		case k < 92:
			jump := time.Duration(r.IntN(600)) * time.Second
			if r.IntN(6) == 0 {
				jump = time.Duration(1+r.IntN(20*24)) * time.Hour // across a month
			}
			now = now.Add(jump)
			l.add(now, events.ClockTick{Partition: 0})
		case len(l.evs) > 0:
			j := len(l.evs) - 1 - r.IntN(min(5, len(l.evs)))
			l.evs = append(l.evs, l.evs[j])
		}
	}
	return l.evs
}

// checkOrgLog folds evs straight, again, and restored through the codec at cut, and wants
// the same accounts, journal, expiries and balance.updated views from all three.
func checkOrgLog(t *testing.T, evs []*events.Event, cut int) {
	t.Helper()
	checkBillingLog(t, evs, cut) // accounts (budgets, holds' projects), journal, notices
	cfg := DefaultConfig(pricebook.Default())
	cfg.GrantsPerAccountMax = 4
	cfg.RenewalCatchUpMax = 3
	views := func(s *State) string {
		var ids []string
		s.Accounts(func(a *Account) { ids = append(ids, a.ID) })
		sort.Strings(ids)
		var bus []events.BalanceUpdated
		for _, id := range ids {
			bu := s.Balance(s.Account(id))
			if err := bu.Validate(); err != nil {
				t.Fatalf("balance of %s: %v", id, err)
			}
			bus = append(bus, bu)
		}
		b, _ := json.Marshal(bus)
		return string(b)
	}
	straight, live := newFolder(t, cfg), newFolder(t, cfg)
	straight.fold(evs)
	live.fold(evs[:cut])
	r := New(cfg, 0)
	var accts []*Account
	live.s.Accounts(func(a *Account) { accts = append(accts, roundTrip(t, a)) })
	restore(r, live.s.Snapshot(), accts)
	live.s = r
	live.fold(evs[cut:])
	expStraight, expLive := straight.all.Expired, live.all.Expired
	if !reflect.DeepEqual(expStraight, expLive) {
		t.Fatalf("cut %d: expiries differ", cut)
	}
	for _, x := range expStraight {
		if err := x.Data.Validate(); err != nil {
			t.Fatalf("expired %+v: %v", x.Data, err)
		}
	}
	if v1, v2 := views(straight.s), views(live.s); v1 != v2 {
		t.Fatalf("cut %d: balance views differ:\n%s\n%s", cut, v1, v2)
	}
}

// TestRandomOrgLogReplayRestore: random logs with funded requests and budgets keep the
// invariants and replay and restore to the same state, journal, expiries and views; they
// exercise shared request ids, budgets, a month's roll and expiries of funded holds.
func TestRandomOrgLogReplayRestore(t *testing.T) {
	var funded, budgets, rolled, expired int
	for seed := uint64(1); seed <= 4; seed++ {
		evs := randomOrgLog(t, seed, 3000)
		checkOrgLog(t, evs, len(evs)/3)
		s, out := run(t, evs)
		mustCheck(t, s, out)
		for _, x := range out.Expired {
			if x.Data.FundingAccountID != "" {
				expired++
			}
		}
		s.Accounts(func(a *Account) {
			for _, h := range a.Holds {
				if h.ProjectID != "" {
					funded++
				}
			}
			budgets += len(a.Budgets)
			for _, b := range a.Budgets {
				if b.PeriodStartNs > monthOf(evs[0].Time.UnixNano()) {
					rolled++
				}
			}
		})
	}
	if funded == 0 || budgets == 0 || rolled == 0 || expired == 0 {
		t.Fatalf("the logs exercised %d open funded holds, %d budgets, %d rolled, %d funded expiries", funded, budgets, rolled, expired)
	}
}

func FuzzOrgLog(f *testing.F) {
	f.Add(uint64(1), uint16(400), uint16(100))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16, cut uint16) {
		evs := randomOrgLog(t, seed, int(n%1500)+1)
		checkOrgLog(t, evs, int(cut)%len(evs))
	})
}

// TestCodecRoundTripOrg: records with funded holds, parked finishes and budgets round-trip.
func TestCodecRoundTripOrg(t *testing.T) {
	s, _ := run(t, randomOrgLog(t, 5, 4000))
	n := 0
	s.Accounts(func(a *Account) {
		b := a.AppendBinary(nil)
		got, err := DecodeAccount(b)
		if err != nil {
			t.Fatalf("%s: %v", a.ID, err)
		}
		want, _ := json.Marshal(a)
		have, _ := json.Marshal(got)
		if string(want) != string(have) {
			t.Fatalf("%s: round trip differs:\n%s\n%s", a.ID, want, have)
		}
		if len(a.Budgets) > 0 || a.FundingAccountID != "" {
			n++
		}
	})
	if n == 0 {
		t.Fatal("no account with organization fields")
	}
}

// TestFundedProjectRejectionRatio: a funded project's admitted requests are folded on its
// funding account's partition, its rejections on its own: a ratio of the two halves would
// read every project with 20 rejections as rejected 100% of the time. So neither counts: the
// project is not penalised for a ratio the ledger cannot see, and the organization's ratio is
// its own requests'.
func TestFundedProjectRejectionRatio(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, events.AccountUpdated{AccountID: "p1", Tier: "pro", Priority: events.PriorityStandard, FundingAccountID: ptr("org")})
	l.add(t0, grant("org", "g1", 100_000_000, 0, nil))
	for i := range 100 {
		req := fmt.Sprint("r", i)
		l.add(t0, fundedStart("org", "p1", req, 1000, t0))
		l.add(t0, fundedFinish("org", "p1", req, 1000))
	}
	for i := range 30 {
		l.add(t0, rejected("p1", fmt.Sprint("x", i)))
		l.add(t0, rejected("org", fmt.Sprint("y", i)))
	}
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	for _, lim := range out.Limits {
		if lim.Scope == events.ScopeAccount && lim.FactorPermille < 1000 && lim.AccountID == "p1" {
			t.Fatalf("funded project penalised: %+v", lim)
		}
	}
	if o := s.Account("org"); o.HistoryFactor() != 700 {
		t.Fatalf("org history factor %d, want 700 (its own 30 requests all rejected)", o.HistoryFactor())
	}
}

// TestFundedJournalNamesProject: every journal line a funded request causes on the
// organization (hold, charge, release, breakage of a held grant, expiry, late charge, the
// charge of a parked finish that timed out) names the project; lines of the organization's
// own request and lines that are no request's name none, and publish no project_id key (the
// bytes of an unfunded request's lines are unchanged). Two projects' requests "r1" and the
// organization's own "r1" are three requests in the journal, each adding up on its own.
func TestFundedJournalNamesProject(t *testing.T) {
	l := &logb{t: t}
	exp := t0.Add(3 * time.Minute)
	l.add(t0, grant("org", "g1", 500_000, 0, &exp))
	l.add(t0, grant("org", "g2", 5_000_000, 0, nil))
	l.add(t0, fundedStart("org", "p1", "r1", 300_000, t0))
	l.add(t0, fundedStart("org", "p2", "r1", 100_000, t0))
	l.add(t0, start("org", "r1", 50_000, t0))
	l.add(t0.Add(time.Second), fundedFinish("org", "p3", "r9", 20_000)) // parked: its start never comes
	l.add(t0.Add(4*time.Minute), fundedFinish("org", "p1", "r1", 400_000))
	l.add(t0.Add(4*time.Minute), finish("org", "r1", 10_000))
	l.add(t0.Add(6*time.Minute), grant("b", "gb", 1, 0, nil)) // the clock passes p2's hold expiry
	l.add(t0.Add(7*time.Minute), fundedFinish("org", "p2", "r1", 50_000))
	l.add(t0.Add(2*time.Hour), grant("b", "gb2", 1, 0, nil)) // and p3's park timeout
	s, out := run(t, l.evs)
	mustCheck(t, s, out)
	// The project each cause's lines must name.
	want := map[string]string{}
	for _, e := range l.evs {
		switch p := e.Payload.(type) {
		case events.RequestStarted:
			if p.FundingAccountID != "" {
				want[e.ID] = p.AccountID
			}
		case events.RequestFinished:
			if p.FundingAccountID != "" {
				want[e.ID] = p.AccountID
			}
		}
	}
	for _, x := range out.Expired {
		if x.Data.FundingAccountID != "" {
			want[x.ID] = x.Data.AccountID
		}
	}
	type req struct{ project, request string }
	held := map[req]int64{}
	kindsOf := map[req][]string{}
	breakageOfHold := false
	for i := range out.Entries {
		le := out.Entries[i].Event()
		w := ""
		if le.RequestID != "" {
			w = want[le.CauseEventID]
		}
		if le.ProjectID != w {
			t.Errorf("line %s %s %s of request %q names project %q, want %q", le.AccountID, le.Kind, le.LedgerAccount, le.RequestID, le.ProjectID, w)
		}
		b, err := json.Marshal(le)
		if err != nil {
			t.Fatal(err)
		}
		if has := strings.Contains(string(b), `"project_id"`); has != (w != "") {
			t.Errorf("line %s: project_id key present %v, want %v", b, has, w != "")
		}
		if le.RequestID == "" {
			continue
		}
		k := req{le.ProjectID, le.RequestID}
		if le.LedgerAccount == events.LedgerHeld {
			held[k] += le.AmountMicros
		}
		if le.LedgerAccount == events.LedgerBreakage && le.ProjectID != "" {
			breakageOfHold = true
		}
		if ks := kindsOf[k]; len(ks) == 0 || ks[len(ks)-1] != le.Kind {
			kindsOf[k] = append(ks, le.Kind)
		}
	}
	wantKinds := map[req][]string{
		{"p1", "r1"}: {"hold", "charge"},
		{"p2", "r1"}: {"hold", "expiry", "late_charge"},
		{"", "r1"}:   {"hold", "charge"},
		{"p3", "r9"}: {"unknown_finish_charge"},
	}
	if fmt.Sprint(kindsOf) != fmt.Sprint(wantKinds) {
		t.Errorf("requests in the journal %v\nwant %v", kindsOf, wantKinds)
	}
	for k, h := range held {
		if h != 0 {
			t.Errorf("request %v: %d still held", k, h)
		}
	}
	if !breakageOfHold {
		t.Error("no breakage line of a funded request's held grant")
	}
}

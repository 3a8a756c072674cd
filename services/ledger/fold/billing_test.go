package fold

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// The default book's plans: starter (plus, 20 credits, cap 10), pro (pro, 200 credits, cap
// 100), scale (enterprise, 2,000 credits, no rollover).
const (
	starterAlloc = 20_000_000
	proAlloc     = 200_000_000
	proCap       = 100_000_000
)

func date(y int, m time.Month, d, h, mi int) time.Time {
	return time.Date(y, m, d, h, mi, 0, 0, time.UTC)
}

func subscribe(acct, plan string, anchor time.Time) events.SubscriptionChanged {
	return events.SubscriptionChanged{AccountID: acct, PlanID: plan, AnchorAt: anchor}
}

func tick(at time.Time, l *logb) { l.add(at, events.ClockTick{Partition: 0}) }

// spend settles one request of cost on account acct at at.
func spend(l *logb, at time.Time, acct, req string, cost int64) {
	l.add(at, start(acct, req, cost, at))
	l.add(at, finish(acct, req, cost))
}

// folder folds a log incrementally, keeping every output.
type folder struct {
	t   *testing.T
	s   *State
	out Output
	off int64
	all Output // every batch's outputs, appended
}

func newFolder(t *testing.T, cfg Config) *folder {
	return &folder{t: t, s: New(cfg, 0)}
}

func (f *folder) fold(evs []*events.Event) {
	f.t.Helper()
	for _, e := range evs {
		f.out.Reset()
		f.s.Apply(Input{Offset: f.off, Event: e}, &f.out)
		f.off++
		f.all.Entries = append(f.all.Entries, f.out.Entries...)
		f.all.Notices = append(f.all.Notices, f.out.Notices...)
		f.all.Anomalies = append(f.all.Anomalies, f.out.Anomalies...)
		f.all.Expired = append(f.all.Expired, f.out.Expired...)
	}
	if err := f.s.Check(); err != nil {
		f.t.Fatalf("invariants: %v", err)
	}
	tot, err := checkJournal(f.all.Entries)
	if err != nil {
		f.t.Fatalf("journal: %v", err)
	}
	for id, jt := range tot {
		if a := f.s.Account(id); jt.Available != a.AvailableMicros || jt.Held != a.HeldMicros {
			f.t.Fatalf("account %s: journal %+v, state available %d held %d", id, jt, a.AvailableMicros, a.HeldMicros)
		}
	}
}

func grantsOf(a *Account) map[string][2]int64 { // id -> remaining, expiry (unix s)
	m := map[string][2]int64{}
	for _, g := range a.Grants {
		m[g.ID] = [2]int64{g.Remaining, g.ExpiresNs / 1e9}
	}
	return m
}

func TestMonthStartCalendar(t *testing.T) {
	anchor := date(2027, time.January, 31, 9, 30).UnixNano()
	want := []time.Time{
		date(2026, time.December, 31, 9, 30), date(2027, time.January, 31, 9, 30), date(2027, time.February, 28, 9, 30),
		date(2027, time.March, 31, 9, 30), date(2027, time.April, 30, 9, 30), date(2027, time.May, 31, 9, 30),
	}
	for i, w := range want {
		k := int64(i - 1)
		if got := nsTime(monthStart(anchor, k)); !got.Equal(w) {
			t.Errorf("period %d of a Jan 31 anchor starts %s, want %s", k, got, w)
		}
		if got := periodIndex(anchor, w.UnixNano()); got != k {
			t.Errorf("periodIndex(%s) = %d, want %d", w, got, k)
		}
		if got := periodIndex(anchor, w.UnixNano()-1); got != k-1 {
			t.Errorf("periodIndex(just before %s) = %d, want %d", w, got, k-1)
		}
	}
	leap := date(2028, time.January, 31, 0, 0).UnixNano()
	if got := nsTime(monthStart(leap, 1)); !got.Equal(date(2028, time.February, 29, 0, 0)) {
		t.Errorf("leap February: %s", got)
	}
	if got := nsTime(monthStart(leap, 2)); !got.Equal(date(2028, time.March, 31, 0, 0)) {
		t.Errorf("no drift after a leap February: %s", got)
	}
	if got := nsTime(monthStart(leap, 13)); !got.Equal(date(2029, time.February, 28, 0, 0)) {
		t.Errorf("February 2029: %s", got)
	}
}

func TestProrate(t *testing.T) {
	for _, c := range []struct{ x, num, den, want int64 }{
		{180_000_000, 21, 31, 121_935_483}, // floor of 121,935,483.87
		{events.MaxAmountMicros, int64(30 * 24 * time.Hour), int64(31 * 24 * time.Hour), 967_741_935_483_870},
		{7, 0, 10, 0}, {7, 10, 10, 7}, {7, 11, 10, 7}, {0, 5, 10, 0},
	} {
		if got := prorate(c.x, c.num, c.den); got != c.want {
			t.Errorf("prorate(%d, %d, %d) = %d, want %d", c.x, c.num, c.den, got, c.want)
		}
	}
}

// TestRenewalsRolloverAndLeapYear: a subscription anchored on Jan 31 renews on Feb 29 (2028
// is a leap year) and Mar 31, each time granting the allocation expiring at the period's end,
// carrying up to the rollover cap of what is left and breaking the rest.
func TestRenewalsRolloverAndLeapYear(t *testing.T) {
	anchor := date(2028, time.January, 31, 9, 0)
	l := &logb{t: t}
	l.add(anchor, subscribe("a", "pro", anchor))
	spend(l, anchor.Add(time.Hour), "a", "r1", 50_000_000)
	f := newFolder(t, DefaultConfig(pricebook.Default()))
	f.fold(l.evs)
	a := f.s.Account("a")
	feb29 := date(2028, time.February, 29, 9, 0)
	if a.Tier != "pro" || a.AvailableMicros != proAlloc-50_000_000 ||
		!reflect.DeepEqual(grantsOf(a), map[string][2]int64{"plan:2028-01-31T09:00:00Z": {150_000_000, feb29.Unix()}}) {
		t.Fatalf("after subscribing: tier %q available %d grants %v", a.Tier, a.AvailableMicros, grantsOf(a))
	}
	p := f.s.Period(a)
	if p.StartNs != anchor.UnixNano() || p.EndNs != feb29.UnixNano() || p.UsedMicros != 50_000_000 || p.AllocationMicros != proAlloc ||
		len(p.ByEndpoint) != 1 || p.ByEndpoint[0] != (EndpointUse{Endpoint: ep, Requests: 1, ChargedMicros: 50_000_000}) {
		t.Fatalf("period %+v", p)
	}

	l.evs = nil
	tick(feb29.Add(time.Second), l)
	f.fold(l.evs)
	mar31 := date(2028, time.March, 31, 9, 0)
	if a.AvailableMicros != proAlloc+proCap || a.BreakageMicros != 50_000_000 || !reflect.DeepEqual(grantsOf(a), map[string][2]int64{
		"plan:2028-02-29T09:00:00Z":  {proAlloc, mar31.Unix()},
		"carry:2028-02-29T09:00:00Z": {proCap, mar31.Unix()},
	}) {
		t.Fatalf("after the Feb 29 renewal: available %d breakage %d grants %v", a.AvailableMicros, a.BreakageMicros, grantsOf(a))
	}
	if p := f.s.Period(a); p.StartNs != feb29.UnixNano() || p.EndNs != mar31.UnixNano() || p.UsedMicros != 0 || p.ByEndpoint != nil {
		t.Fatalf("period after renewal %+v", p)
	}
	// The carry burns first (it sorts before the period's plan grant).
	l.evs = nil
	spend(l, feb29.Add(time.Hour), "a", "r2", 30_000_000)
	tick(mar31.Add(time.Second), l)
	f.fold(l.evs)
	apr30 := date(2028, time.April, 30, 9, 0)
	// The Feb 29 period: carry 70 left (expires: breakage, it does not roll again), plan 200
	// left: 100 carried, 100 breakage.
	if a.AvailableMicros != proAlloc+proCap || a.BreakageMicros != 50_000_000+70_000_000+100_000_000 || !reflect.DeepEqual(grantsOf(a), map[string][2]int64{
		"plan:2028-03-31T09:00:00Z":  {proAlloc, apr30.Unix()},
		"carry:2028-03-31T09:00:00Z": {proCap, apr30.Unix()},
	}) {
		t.Fatalf("after the Mar 31 renewal: available %d breakage %d grants %v", a.AvailableMicros, a.BreakageMicros, grantsOf(a))
	}
	if a.GrantedMicros != 3*proAlloc {
		t.Fatalf("granted %d, want three allocations", a.GrantedMicros)
	}
}

// TestCatchUpAfterSilentQuarter: no event for a quarter; the next event (a tick) renews the
// three missed periods in order, each carrying into the next.
func TestCatchUpAfterSilentQuarter(t *testing.T) {
	anchor := date(2027, time.January, 15, 0, 0)
	l := &logb{t: t}
	l.add(anchor, subscribe("a", "starter", anchor))
	tick(date(2027, time.April, 20, 0, 0), l)
	f := newFolder(t, DefaultConfig(pricebook.Default()))
	f.fold(l.evs)
	a := f.s.Account("a")
	may15 := date(2027, time.May, 15, 0, 0)
	// Each period: 20 granted, 10 carried on, 10 broken, and from the second on the carry of
	// 10 it received broken too.
	if a.GrantedMicros != 4*starterAlloc || a.AvailableMicros != starterAlloc+10_000_000 || a.BreakageMicros != 10_000_000+2*20_000_000 ||
		!reflect.DeepEqual(grantsOf(a), map[string][2]int64{
			"plan:2027-04-15T00:00:00Z":  {starterAlloc, may15.Unix()},
			"carry:2027-04-15T00:00:00Z": {10_000_000, may15.Unix()},
		}) {
		t.Fatalf("granted %d available %d breakage %d grants %v", a.GrantedMicros, a.AvailableMicros, a.BreakageMicros, grantsOf(a))
	}
	// The journal dates each renewal's grant at its period's start, in order.
	var starts []string
	for _, e := range f.all.Entries {
		if e.Kind == "grant" && e.LedgerAccount == events.LedgerAvailable {
			starts = append(starts, e.At.Format("01-02"))
		}
	}
	if want := []string{"01-15", "02-15", "03-15", "04-15"}; !reflect.DeepEqual(starts, want) {
		t.Fatalf("grant lines dated %v, want %v", starts, want)
	}
}

// TestCatchUpBounded: after a year of silence only RenewalCatchUpMax periods before the
// current one are renewed.
func TestCatchUpBounded(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.RenewalCatchUpMax = 2
	anchor := date(2027, time.January, 15, 0, 0)
	l := &logb{t: t}
	l.add(anchor, subscribe("a", "starter", anchor))
	tick(date(2028, time.January, 20, 0, 0), l)
	f := newFolder(t, cfg)
	f.fold(l.evs)
	a := f.s.Account("a")
	// The first period, then periods 10, 11 and 12 (Nov, Dec, Jan): four allocations; the
	// first period's remainder has nowhere to carry and is all breakage.
	if a.GrantedMicros != 4*starterAlloc || a.AvailableMicros != starterAlloc+10_000_000 {
		t.Fatalf("granted %d available %d grants %v", a.GrantedMicros, a.AvailableMicros, grantsOf(a))
	}
	if p := f.s.Period(a); !nsTime(p.StartNs).Equal(date(2028, time.January, 15, 0, 0)) {
		t.Fatalf("current period starts %s", nsTime(p.StartNs))
	}
}

// TestUpgradeProratedDowngradeAtRenewal: an upgrade takes effect at once with the prorated
// difference for the rest of the period (floor); a downgrade waits for the renewal.
func TestUpgradeProratedDowngradeAtRenewal(t *testing.T) {
	anchor := date(2027, time.January, 1, 0, 0)
	feb1 := date(2027, time.February, 1, 0, 0)
	l := &logb{t: t}
	l.add(anchor, subscribe("a", "starter", anchor))
	l.add(date(2027, time.January, 11, 0, 0), subscribe("a", "pro", anchor.Add(time.Hour))) // the anchor is kept
	f := newFolder(t, DefaultConfig(pricebook.Default()))
	f.fold(l.evs)
	a := f.s.Account("a")
	up := int64(121_935_483) // ⌊180,000,000 × 21/31⌋
	if a.Tier != "pro" || a.Billing.Terms.PlanID != "pro" || a.AvailableMicros != starterAlloc+up || !reflect.DeepEqual(grantsOf(a), map[string][2]int64{
		"plan:2027-01-01T00:00:00Z":     {starterAlloc, feb1.Unix()},
		"plan:2027-01-01T00:00:00Z:pro": {up, feb1.Unix()},
	}) {
		t.Fatalf("after the upgrade: tier %q available %d grants %v", a.Tier, a.AvailableMicros, grantsOf(a))
	}
	if p := f.s.Period(a); p.AllocationMicros != starterAlloc+up || p.StartNs != anchor.UnixNano() {
		t.Fatalf("period %+v", p)
	}
	l.evs = nil
	l.add(date(2027, time.January, 20, 0, 0), subscribe("a", "starter", anchor))
	f.fold(l.evs)
	if a.Tier != "pro" || a.Billing.Terms.PlanID != "pro" || a.Billing.Terms.PendingPlanID != "starter" {
		t.Fatalf("a downgrade must wait for the renewal: tier %q terms %+v", a.Tier, a.Billing.Terms)
	}
	l.evs = nil
	tick(feb1.Add(time.Second), l)
	f.fold(l.evs)
	mar1 := date(2027, time.March, 1, 0, 0)
	// The closing period's plan grants (pro's cap, 100) carry into the starter period.
	if a.Tier != "plus" || a.Billing.Terms.PlanID != "starter" || a.Billing.Terms.PendingPlanID != "" || !reflect.DeepEqual(grantsOf(a), map[string][2]int64{
		"plan:2027-02-01T00:00:00Z":  {starterAlloc, mar1.Unix()},
		"carry:2027-02-01T00:00:00Z": {proCap, mar1.Unix()},
	}) || a.BreakageMicros != starterAlloc+up-proCap {
		t.Fatalf("after the renewal: tier %q terms %+v grants %v breakage %d", a.Tier, a.Billing.Terms, grantsOf(a), a.BreakageMicros)
	}
}

// TestCancelRunsToPeriodEnd: a cancel stops renewals; the period's grant expires at its end,
// all of it breakage, and the account returns to the default tier and the calendar month.
func TestCancelRunsToPeriodEnd(t *testing.T) {
	anchor := date(2027, time.March, 10, 12, 0)
	l := &logb{t: t}
	l.add(anchor, subscribe("a", "pro", anchor))
	l.add(anchor.Add(24*time.Hour), subscribe("a", "", anchor))
	f := newFolder(t, DefaultConfig(pricebook.Default()))
	f.fold(l.evs)
	a := f.s.Account("a")
	if !a.Billing.Subscribed() || !a.Billing.Terms.Cancelled || a.AvailableMicros != proAlloc {
		t.Fatalf("after the cancel: terms %+v available %d", a.Billing.Terms, a.AvailableMicros)
	}
	l.evs = nil
	tick(date(2027, time.May, 20, 0, 0), l)
	f.fold(l.evs)
	if a.Billing.Subscribed() || a.Tier != "" || a.AvailableMicros != 0 || a.BreakageMicros != proAlloc || a.GrantedMicros != proAlloc || len(a.Grants) != 0 {
		t.Fatalf("after the period end: terms %+v tier %q available %d breakage %d granted %d", a.Billing.Terms, a.Tier, a.AvailableMicros,
			a.BreakageMicros, a.GrantedMicros)
	}
	if p := f.s.Period(a); !nsTime(p.StartNs).Equal(date(2027, time.May, 1, 0, 0)) || p.AllocationMicros != 0 {
		t.Fatalf("period %+v", p)
	}
}

// TestUnknownPlanRefused: a subscription.changed naming a plan the book lacks is not applied.
func TestUnknownPlanRefused(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, subscribe("a", "gold", t0))
	s, out := run(t, l.evs)
	if k := kinds(out); !reflect.DeepEqual(k, []string{AnomalyUnknownPlan}) || s.Account("a").Billing.Subscribed() {
		t.Fatalf("anomalies %v", k)
	}
}

func noticeKeys(ns []Notice) []string {
	var k []string
	for _, n := range ns {
		switch d := n.Data.(type) {
		case events.Notification:
			k = append(k, fmt.Sprintf("%s/%d/%d@%s", d.Kind, d.ThresholdPermille, d.FloorMicros, d.PeriodStart.Format("01-02")))
			if d.NotificationID != n.ID {
				panic("notification id is not the event id")
			}
		case events.TopUpRequested:
			k = append(k, fmt.Sprintf("topup/%d/%d", d.AmountMicros, d.AvailableMicros))
		}
	}
	return k
}

// TestNotificationsOncePerPeriod: each usage threshold and the floor fire once per period,
// and again in the next period.
func TestNotificationsOncePerPeriod(t *testing.T) {
	anchor := date(2027, time.June, 1, 0, 0)
	l := &logb{t: t}
	l.add(anchor, subscribe("a", "pro", anchor))
	l.add(anchor, events.AccountUpdated{AccountID: "a", Tier: "pro", Priority: events.PriorityStandard, NotifyFloorMicros: ptr[int64](50_000_000)})
	spend(l, anchor.Add(time.Hour), "a", "r1", 99_000_000)   // 495‰: nothing
	spend(l, anchor.Add(2*time.Hour), "a", "r2", 1_000_000)  // 500‰
	spend(l, anchor.Add(3*time.Hour), "a", "r3", 70_000_000) // its hold: available 30 (floor); its charge: 850‰ (800)
	spend(l, anchor.Add(4*time.Hour), "a", "r4", 1_000_000)  // nothing new
	spend(l, anchor.Add(5*time.Hour), "a", "r5", 29_000_000) // 1000‰
	spend(l, anchor.Add(6*time.Hour), "a", "r6", 1_000_000)  // nothing new (overage now)
	tick(date(2027, time.July, 1, 0, 1), l)
	spend(l, date(2027, time.July, 2, 0, 0), "a", "r7", 100_000_000) // 500‰ of July
	f := newFolder(t, DefaultConfig(pricebook.Default()))
	f.fold(l.evs)
	want := []string{"usage_threshold/500/0@06-01", "balance_floor/0/50000000@06-01", "usage_threshold/800/0@06-01",
		"usage_threshold/1000/0@06-01", "usage_threshold/500/0@07-01"}
	if got := noticeKeys(f.all.Notices); !reflect.DeepEqual(got, want) {
		t.Fatalf("notices %v, want %v", got, want)
	}
	ids := map[string]bool{}
	for _, n := range f.all.Notices {
		if ids[n.ID] {
			t.Fatalf("notice id %s twice", n.ID)
		}
		ids[n.ID] = true
		if err := n.Data.Validate(); err != nil {
			t.Fatalf("notice %s: %v", n.ID, err)
		}
	}
	// The same log folded again gives the same ids.
	g := newFolder(t, DefaultConfig(pricebook.Default()))
	g.fold(l.evs)
	for i := range f.all.Notices {
		if f.all.Notices[i].ID != g.all.Notices[i].ID {
			t.Fatal("notice ids differ between two folds of one log")
		}
	}
}

// TestTopUpRequestedOnce: below the threshold a top-up is requested once; only after the
// balance was back at or above it is the next one requested.
func TestTopUpRequestedOnce(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 20_000_000, 0, nil))
	l.add(t0, events.AccountUpdated{AccountID: "a", Tier: "plus", Priority: events.PriorityStandard,
		AutoTopUpThresholdMicros: ptr[int64](10_000_000), AutoTopUpAmountMicros: ptr[int64](50_000_000)})
	spend(l, t0.Add(time.Minute), "a", "r1", 15_000_000) // 5 left: request
	spend(l, t0.Add(2*time.Minute), "a", "r2", 1_000_000)
	l.add(t0.Add(3*time.Minute), grant("a", "topup-1", 50_000_000, 0, nil)) // 54: re-armed
	spend(l, t0.Add(4*time.Minute), "a", "r3", 50_000_000)                  // 4: request again
	f := newFolder(t, DefaultConfig(pricebook.Default()))
	f.fold(l.evs)
	if got, want := noticeKeys(f.all.Notices), []string{"topup/50000000/5000000", "topup/50000000/4000000"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("notices %v, want %v", got, want)
	}
	if f.all.Notices[0].ID == f.all.Notices[1].ID {
		t.Fatal("two requests with one id")
	}
	// An account.updated without settings (tallyctl account's) leaves them; one with a
	// threshold of 0 turns the top-up off.
	l.evs = nil
	l.add(t0.Add(5*time.Minute), events.AccountUpdated{AccountID: "a", Tier: "pro", Priority: events.PriorityBatch})
	f.fold(l.evs)
	if tm := f.s.Account("a").Billing.Terms; tm.TopUpThreshold != 10_000_000 || tm.TopUpAmount != 50_000_000 || !tm.TopUpPending {
		t.Fatalf("settings after an update without them: %+v", tm)
	}
	l.evs = nil
	l.add(t0.Add(6*time.Minute), events.AccountUpdated{AccountID: "a", Tier: "pro", Priority: events.PriorityBatch,
		AutoTopUpThresholdMicros: ptr[int64](0), AutoTopUpAmountMicros: ptr[int64](0)})
	spend(l, t0.Add(7*time.Minute), "a", "r4", 1_000_000)
	f.fold(l.evs)
	if len(f.all.Notices) != 2 || f.s.Account("a").Billing.Terms.TopUpThreshold != 0 {
		t.Fatalf("top-up not turned off: %v", noticeKeys(f.all.Notices))
	}
	// Without a subscription the period is the calendar month, with no usage thresholds.
	if p := f.s.Period(f.s.Account("a")); !nsTime(p.StartNs).Equal(date(2026, time.November, 1, 0, 0)) || p.UsedMicros != 67_000_000 {
		t.Fatalf("period %+v", p)
	}
}

// billingLog is a log that exercises every billing path over months.
func billingLog(t *testing.T) []*events.Event {
	anchor := date(2028, time.January, 31, 9, 0)
	l := &logb{t: t}
	l.add(anchor, grant("a", "g0", 5_000_000, 0, nil))
	l.add(anchor, events.AccountUpdated{AccountID: "a", Tier: "plus", Priority: events.PriorityStandard, OrganizationID: ptr("org"),
		NotifyFloorMicros: ptr[int64](30_000_000), AutoTopUpThresholdMicros: ptr[int64](10_000_000), AutoTopUpAmountMicros: ptr[int64](25_000_000)})
	l.add(anchor, subscribe("a", "starter", anchor))
	l.add(anchor, subscribe("b", "pro", anchor.Add(-40*24*time.Hour)))
	at := anchor
	for i := range 40 {
		at = at.Add(53 * time.Hour)
		spend(l, at, "a", fmt.Sprintf("ra%d", i), int64(1_000_000+i*37_000))
		spend(l, at, "b", fmt.Sprintf("rb%d", i), int64(9_000_000+i*91_000))
		switch i {
		case 5:
			l.add(at, subscribe("a", "pro", anchor))
		case 9:
			l.add(at, subscribe("a", "starter", anchor))
		case 14:
			l.add(at, subscribe("b", "", anchor))
		case 20:
			l.add(at, grant("a", "topup", 25_000_000, 0, nil))
		case 25:
			l.add(at, subscribe("b", "scale", at))
		}
		if i%7 == 3 {
			tick(at.Add(30*24*time.Hour), l)
			at = at.Add(30 * 24 * time.Hour)
		}
	}
	return l.evs
}

func stateJSON(t *testing.T, s *State) string {
	var accts []Account
	for _, id := range []string{"a", "b"} {
		c := *s.Account(id)
		c.Dedupe = Dedupe{} // pruned at other times after a restore
		accts = append(accts, c)
	}
	b, err := json.Marshal(accts)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBillingReplayAndRestore: the billing log folded straight, and restored through the
// codec at every cut and resumed, give the same state and the same notices.
func TestBillingReplayAndRestore(t *testing.T) {
	evs := billingLog(t)
	straight := newFolder(t, DefaultConfig(pricebook.Default()))
	straight.fold(evs)
	want := stateJSON(t, straight.s)
	if len(straight.all.Notices) < 4 {
		t.Fatalf("the log produced only %d notices", len(straight.all.Notices))
	}
	for cut := 1; cut < len(evs); cut += 7 {
		f := newFolder(t, DefaultConfig(pricebook.Default()))
		f.fold(evs[:cut])
		r := New(DefaultConfig(pricebook.Default()), 0)
		var accts []*Account
		f.s.Accounts(func(a *Account) { accts = append(accts, roundTrip(t, a)) })
		restore(r, f.s.Snapshot(), accts)
		g := &folder{t: t, s: r, off: int64(cut), all: f.all}
		g.fold(evs[cut:])
		if got := stateJSON(t, g.s); got != want {
			t.Fatalf("cut %d: restored state differs:\n got %s\nwant %s", cut, got, want)
		}
		if len(g.all.Notices) != len(straight.all.Notices) {
			t.Fatalf("cut %d: %d notices, straight %d", cut, len(g.all.Notices), len(straight.all.Notices))
		}
		for i := range g.all.Notices {
			if g.all.Notices[i].ID != straight.all.Notices[i].ID {
				t.Fatalf("cut %d: notice %d differs", cut, i)
			}
		}
	}
}

// randomBillingLog is a random log of subscriptions (new, upgrades, downgrades, cancels,
// unknown plans), settings, spending, grants, duplicates and clock ticks with jumps of days to
// months (renewals, catch-up).
func randomBillingLog(t testing.TB, seed uint64, n, accounts int) []*events.Event {
	r := rand.New(rand.NewPCG(seed, seed^0xb111))
	l := &logb{t: t}
	now := date(2027, time.January, 30, 12, 0)
	plans := []string{"starter", "pro", "scale", "", "gold"}
	for len(l.evs) < n {
		switch r.IntN(30) {
		case 0:
			now = now.Add(time.Duration(1+r.IntN(100*24)) * time.Hour) // days to months of silence
		default:
			now = now.Add(time.Duration(r.IntN(4*3600)) * time.Second)
		}
		acct := fmt.Sprint("acct-", r.IntN(accounts))
		switch k := r.IntN(100); {
		case k < 8:
			anchor := now.Add(-time.Duration(r.IntN(90*24)) * time.Hour)
			l.add(now, subscribe(acct, plans[r.IntN(len(plans))], anchor))
		case k < 12:
			u := &[]int32{}
			if r.IntN(2) == 0 {
				u = nil
			} else if r.IntN(2) == 0 {
				u = &[]int32{int32(1 + r.IntN(400)), int32(500 + r.IntN(500))}
			}
			au := events.AccountUpdated{AccountID: acct, Tier: "plus", Priority: events.PriorityStandard, NotifyUsagePermille: u,
				NotifyFloorMicros: ptr(int64(r.IntN(3)) * 10_000_000), OrganizationID: ptr(fmt.Sprint("org-", r.IntN(3)))}
			if r.IntN(2) == 0 {
				au.AutoTopUpThresholdMicros, au.AutoTopUpAmountMicros = ptr(int64(1+r.IntN(50_000_000))), ptr(int64(1+r.IntN(90_000_000)))
			}
			l.add(now, au)
		case k < 20:
			var exp *time.Time
			if r.IntN(2) == 0 {
				e := now.Add(time.Duration(1+r.IntN(40*24)) * time.Hour)
				exp = &e
			}
			l.add(now, grant(acct, fmt.Sprint("g", len(l.evs)), int64(1+r.IntN(50_000_000)), int32(r.IntN(200)), exp))
		case k < 75:
			spend(l, now, acct, fmt.Sprint("r", len(l.evs)), int64(r.IntN(30_000_000)))
		case k < 90:
			l.add(now.Add(time.Duration(r.IntN(3*24))*time.Hour), events.ClockTick{Partition: 0})
		case len(l.evs) > 0:
			j := len(l.evs) - 1 - r.IntN(min(5, len(l.evs)))
			l.evs = append(l.evs, l.evs[j])
		}
	}
	return l.evs
}

func checkBillingLog(t *testing.T, evs []*events.Event, cut int) {
	t.Helper()
	cfg := DefaultConfig(pricebook.Default())
	cfg.GrantsPerAccountMax = 4
	cfg.RenewalCatchUpMax = 3
	f1 := newFolder(t, cfg)
	f1.fold(evs)
	f2 := newFolder(t, cfg)
	f2.fold(evs)
	if !reflect.DeepEqual(f1.all.Entries, f2.all.Entries) || !reflect.DeepEqual(f1.all.Notices, f2.all.Notices) {
		t.Fatal("replay differs")
	}
	f3 := newFolder(t, cfg)
	f3.fold(evs[:cut])
	r := New(cfg, 0)
	var accts []*Account
	f3.s.Accounts(func(a *Account) { accts = append(accts, roundTrip(t, a)) })
	restore(r, f3.s.Snapshot(), accts)
	f4 := &folder{t: t, s: r, off: int64(cut), all: f3.all}
	f4.fold(evs[cut:])
	f1.s.Accounts(func(a *Account) {
		b := f4.s.Account(a.ID)
		if b == nil {
			t.Fatalf("cut %d: account %s not restored", cut, a.ID)
		}
		// The dedupe memories may differ in when they were pruned (a restore reschedules the
		// prune); every other field must be equal.
		ca, cb := *a, *b
		ca.Dedupe, cb.Dedupe = Dedupe{}, Dedupe{}
		ja, _ := json.Marshal(&ca)
		jb, _ := json.Marshal(&cb)
		if string(ja) != string(jb) {
			t.Fatalf("cut %d: account %s restored\n%s\nstraight\n%s", cut, a.ID, jb, ja)
		}
	})
	for i := 0; i < max(len(f1.all.Entries), len(f4.all.Entries)); i++ {
		if i >= len(f1.all.Entries) || i >= len(f4.all.Entries) || !reflect.DeepEqual(f1.all.Entries[i], f4.all.Entries[i]) {
			t.Fatalf("cut %d: restored journal differs at line %d of %d/%d:\n%+v\n%+v", cut, i, len(f4.all.Entries), len(f1.all.Entries),
				f4.all.Entries[min(i, len(f4.all.Entries)-1)], f1.all.Entries[min(i, len(f1.all.Entries)-1)])
		}
	}
	if !reflect.DeepEqual(f1.all.Notices, f4.all.Notices) {
		t.Fatalf("cut %d: restored notices differ:\n%v\n%v", cut, noticeKeys(f4.all.Notices), noticeKeys(f1.all.Notices))
	}
}

// TestRandomBillingLogReplayRestore: random billing logs keep the invariants and the journal,
// replay identically (journal and notices), and restore at a cut through the codec to the
// same state.
func TestRandomBillingLogReplayRestore(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		evs := randomBillingLog(t, seed, 3000, 6)
		checkBillingLog(t, evs, len(evs)/3)
	}
}

func FuzzBillingLog(f *testing.F) {
	f.Add(uint64(1), uint16(400), uint8(3), uint16(100))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16, accounts uint8, cut uint16) {
		evs := randomBillingLog(t, seed, int(n%1500)+1, int(accounts%6)+1)
		checkBillingLog(t, evs, int(cut)%len(evs))
	})
}

func ptr[T any](v T) *T { return &v }

// TestOutputTimesBounded: a subscription whose anchor lies after the log time in January 1970
// has a period starting in December 1969; its journal lines and notices still carry times in
// [events.MinTime, events.MaxTime), as every consumer requires.
func TestOutputTimesBounded(t *testing.T) {
	at := date(1970, time.January, 10, 0, 0)
	l := &logb{t: t}
	l.add(at, subscribe("a", "pro", date(1970, time.January, 20, 0, 0)))
	l.add(at, events.AccountUpdated{AccountID: "a", Tier: "pro", Priority: events.PriorityStandard, NotifyFloorMicros: ptr[int64](300_000_000)})
	f := newFolder(t, DefaultConfig(pricebook.Default()))
	f.fold(l.evs)
	if p := f.s.Period(f.s.Account("a")); !nsTime(p.StartNs).Equal(date(1969, time.December, 20, 0, 0)) {
		t.Fatalf("period starts %s", nsTime(p.StartNs))
	}
	for _, e := range f.all.Entries {
		if ev := e.Event(); ev.Validate() != nil {
			t.Fatalf("journal line: %v", ev.Validate())
		}
	}
	if len(f.all.Notices) != 1 {
		t.Fatalf("notices %v", noticeKeys(f.all.Notices))
	}
	if err := f.all.Notices[0].Data.Validate(); err != nil {
		t.Fatalf("notice: %v", err)
	}
}

package fold

// Subscriptions, billing periods, period usage, notifications and auto-top-up requests. All
// of it is driven by log time: a renewal is an entry of the expiry heap at the period's end,
// swept as the watermark passes it (on an idle partition the ledger's clock ticks move it).

import (
	"math/bits"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Billing is an account's current billing period and usage, and (Terms) its subscription
// and settings. It is nil for an account never charged that has no terms. Kept small: every
// charged account has one.
type Billing struct {
	// The current period: the subscription's, or the UTC calendar month without one.
	PeriodStartNs int64         `json:"ps"`
	PeriodEndNs   int64         `json:"pe"`
	UsedMicros    int64         `json:"used,omitempty"` // charged in this period
	ByEndpoint    []EndpointUse `json:"eps,omitempty"`  // price-book endpoints only: bounded by the book
	// Fired: bit i = usage threshold i notified in this period; bit floorBit = the floor.
	Fired uint32 `json:"fired,omitempty"`
	Terms *Terms `json:"terms,omitempty"`
}

// Terms are an account's subscription, organization, and notification and auto-top-up
// settings.
type Terms struct {
	OrganizationID string `json:"org,omitempty"`
	// NotifyUsage are the usage thresholds in permille of the period's allocation;
	// NotifyUsageSet says they were given (possibly none): otherwise a subscribed account
	// uses events.DefaultNotifyUsagePermille.
	NotifyUsage       []int32 `json:"nu,omitempty"`
	NotifyUsageSet    bool    `json:"nus,omitempty"`
	NotifyFloorMicros int64   `json:"nf,omitempty"`
	TopUpThreshold    int64   `json:"tt,omitempty"`
	TopUpAmount       int64   `json:"ta,omitempty"`
	// TopUpPending: a top-up was requested and the balance has not been back at or above the
	// threshold since. TopUpSeq counts the requests (it makes each one's id).
	TopUpPending bool  `json:"tp,omitempty"`
	TopUpSeq     int64 `json:"ts,omitempty"`

	// PlanID is the subscribed plan ("" = no subscription). PendingPlanID is a downgrade
	// taking effect at the next renewal; Cancelled ends the subscription at the period's end.
	PlanID        string `json:"plan,omitempty"`
	PendingPlanID string `json:"pending,omitempty"`
	Cancelled     bool   `json:"cancelled,omitempty"`
	AnchorNs      int64  `json:"anchor,omitempty"`
	PeriodIdx     int64  `json:"idx,omitempty"` // the current period's index from the anchor (may be negative)
	// AllocationMicros is what the plan granted for the current period.
	AllocationMicros int64 `json:"alloc,omitempty"`
}

// EndpointUse is one endpoint's use in the period.
type EndpointUse struct {
	Endpoint      string `json:"ep"`
	Requests      int64  `json:"n"`
	ChargedMicros int64  `json:"charged"`
}

const floorBit = 31

// timeNsMin and timeNsMax bound the times an output may carry ([events.MinTime,
// events.MaxTime)): a period can start before 1970 (an anchor after the log time in January
// 1970) or end in 2200.
var (
	timeNsMin = events.MinTime.UnixNano()
	timeNsMax = events.MaxTime.UnixNano() - 1
)

// Notice is one notification or top-up request (Data is an events.Notification or an
// events.TopUpRequested) with its deterministic event id and its log time.
type Notice struct {
	ID   string
	At   time.Time
	Data events.Data
}

// Anomaly kinds of subscriptions.
const (
	// AnomalyUnknownPlan is a subscription.changed naming a plan the price book does not
	// have: it is not applied, and the engine dead-letters it with the reason.
	AnomalyUnknownPlan = "unknown_plan"
	// AnomalyPlanDropped is a renewal whose plan (or pending plan) the price book no longer
	// has, or whose allocation would overflow the account's totals: the subscription ends.
	AnomalyPlanDropped = "plan_dropped"
)

func (a *Account) billing() *Billing {
	if a.Billing == nil {
		a.Billing = &Billing{}
	}
	return a.Billing
}

func (a *Account) terms() *Terms {
	b := a.billing()
	if b.Terms == nil {
		b.Terms = &Terms{}
	}
	return b.Terms
}

// TermsOf returns the account's terms (nil without).
func (b *Billing) TermsOf() *Terms {
	if b == nil {
		return nil
	}
	return b.Terms
}

// Subscribed reports whether the account has a subscription (possibly cancelled at the
// period's end).
func (b *Billing) Subscribed() bool { return b != nil && b.Terms != nil && b.Terms.PlanID != "" }

// allocation is the current period's plan allocation (0 without a subscription).
func (b *Billing) allocation() int64 {
	if b == nil || b.Terms == nil {
		return 0
	}
	return b.Terms.AllocationMicros
}

// monthStart returns the start of the month k months after (or before) the month of t,
// on t's day (clamped to that month's length) at t's time of day.
func monthStart(anchorNs, k int64) int64 {
	t := time.Unix(0, anchorNs).UTC()
	y, m, d := t.Date()
	mi := int64(y)*12 + int64(m-1) + k
	ny, nm := int(floorDiv(mi, 12)), time.Month(mod(mi, 12)+1)
	if days := time.Date(ny, nm+1, 0, 0, 0, 0, 0, time.UTC).Day(); d > days {
		d = days
	}
	return time.Date(ny, nm, d, t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC).UnixNano()
}

func floorDiv(x, y int64) int64 {
	q := x / y
	if x%y != 0 && (x < 0) != (y < 0) {
		q--
	}
	return q
}

// periodIndex is the k with monthStart(anchor, k) ≤ t < monthStart(anchor, k+1).
func periodIndex(anchorNs, tNs int64) int64 {
	a, t := time.Unix(0, anchorNs).UTC(), time.Unix(0, tNs).UTC()
	k := int64(t.Year()-a.Year())*12 + int64(t.Month()-a.Month())
	for monthStart(anchorNs, k) > tNs {
		k--
	}
	for monthStart(anchorNs, k+1) <= tNs {
		k++
	}
	return k
}

// calendarMonth returns the UTC calendar month containing tNs.
func calendarMonth(tNs int64) (start, end int64) {
	t := time.Unix(0, tNs).UTC()
	s := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	return s.UnixNano(), s.AddDate(0, 1, 0).UnixNano()
}

func nsTime(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// planGrantID is the id of the allocation granted for the period starting at startNs; an
// upgrade's prorated difference is planGrantID + ":" + the new plan; a rollover is
// "carry:" + the next period's start (it sorts, and so burns, before the period's plan grant).
func planGrantID(startNs int64) string {
	return "plan:" + nsTime(startNs).Format(time.RFC3339Nano)
}

func carryGrantID(startNs int64) string {
	return "carry:" + nsTime(startNs).Format(time.RFC3339Nano)
}

// grantPlan grants amt, expiring at expNs, as a plan grant: the journal lines of a grant, its
// cause derived from the account and the grant id. It reports false when the grant was not
// made (it exists already, or it would overflow).
func (s *State) grantPlan(a *Account, grantID string, amt, expNs int64, at time.Time, out *Output) bool {
	if amt <= 0 || a.findGrant(grantID) >= 0 {
		return false
	}
	if !addOK(a.AvailableMicros, amt) || !addOK(a.GrantedMicros, amt) {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyPlanDropped, AccountID: a.ID, EventID: grantID})
		return false
	}
	cause := events.DerivedID(a.ID, grantID)
	expNs = min(expNs, timeNsMax) // a period ending in 2200 or later: its grant expires just before
	if at.UnixNano() < timeNsMin {
		at = events.MinTime
	}
	a.GrantedMicros += amt
	a.AvailableMicros += amt
	out.touch(a)
	out.Entries = append(out.Entries,
		Entry{Cause: cause, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: amt, Kind: "grant", GrantID: grantID, At: at},
		Entry{Cause: cause, AccountID: a.ID, LedgerAccount: events.LedgerGrantsIssued, AmountMicros: -amt, Kind: "grant", GrantID: grantID, At: at})
	s.addGrant(a, Grant{ID: grantID, EventID: ParseUUID(cause), Amount: amt, Remaining: amt, Priority: events.DefaultGrantPriority, ExpiresNs: expNs})
	return true
}

// addGrant inserts g (available already counts it) with its expiry, or adds it to the pool
// when the account has GrantsPerAccountMax grants.
func (s *State) addGrant(a *Account, g Grant) {
	if len(a.Grants) >= s.cfg.GrantsPerAccountMax {
		a.ExtraMicros += g.Remaining
		return
	}
	a.insertGrant(g)
	s.schedule(expiry{atNs: g.ExpiresNs, acct: a, kind: expGrant, hash: hashID(g.ID)})
}

// subscription folds a subscription.changed.
func (s *State) subscription(a *Account, ev *events.Event, p *events.SubscriptionChanged, out *Output) {
	var plan pricebook.Plan
	if p.PlanID != "" {
		var ok bool
		if plan, ok = s.cfg.Book.Plan(p.PlanID); !ok {
			out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyUnknownPlan, AccountID: a.ID, EventID: ev.ID, Offset: a.Offset})
			return
		}
	}
	if s.duplicateEvent(a, ev, out) {
		return
	}
	now := s.watermark
	if p.PlanID == "" { // cancel: no further renewals
		if a.Billing.Subscribed() {
			t := a.Billing.Terms
			t.Cancelled, t.PendingPlanID = true, ""
		}
		return
	}
	if !a.Billing.Subscribed() {
		// A new subscription: the current period is the one of the anchor's cycle that
		// contains the log time; it gets the whole allocation.
		t := a.terms()
		t.PlanID, t.PendingPlanID, t.Cancelled = p.PlanID, "", false
		t.AnchorNs = p.AnchorAt.UnixNano()
		t.PeriodIdx = periodIndex(t.AnchorNs, now)
		s.openPeriod(a, plan, ev.Time, out)
		s.schedule(expiry{atNs: a.Billing.PeriodEndNs, acct: a, kind: expRenew})
		return
	}
	b := a.Billing
	t := b.Terms
	t.Cancelled = false // a change of plan resumes a cancelled subscription
	if p.PlanID == t.PlanID {
		t.PendingPlanID = ""
		return
	}
	cur, ok := s.cfg.Book.Plan(t.PlanID)
	if ok && plan.AllocationMicros < cur.AllocationMicros {
		t.PendingPlanID = p.PlanID // a downgrade: at the next renewal
		return
	}
	// An upgrade (or a change from a plan no longer in the book): at once, with the prorated
	// difference of the allocations for the rest of the period.
	t.PlanID, t.PendingPlanID = p.PlanID, ""
	a.Tier = s.internTier(plan.Tier)
	if diff := plan.AllocationMicros - cur.AllocationMicros; ok && diff > 0 {
		amt := prorate(diff, b.PeriodEndNs-max(now, b.PeriodStartNs), b.PeriodEndNs-b.PeriodStartNs)
		if s.grantPlan(a, planGrantID(b.PeriodStartNs)+":"+p.PlanID, amt, b.PeriodEndNs, ev.Time, out) {
			t.AllocationMicros += amt
		}
	}
}

// prorate is ⌊x·num/den⌋ for 0 ≤ num ≤ den, den > 0, without overflow.
func prorate(x, num, den int64) int64 {
	if num <= 0 || den <= 0 || x <= 0 {
		return 0
	}
	num = min(num, den)
	hi, lo := bits.Mul64(uint64(x), uint64(num))
	q, _ := bits.Div64(hi, lo, uint64(den)) // hi < den: the quotient is at most x
	return int64(q)
}

// openPeriod starts period Terms.PeriodIdx of the subscription: its bounds, a fresh usage,
// the plan's tier, and its allocation granted at at, expiring at the period's end.
func (s *State) openPeriod(a *Account, plan pricebook.Plan, at time.Time, out *Output) {
	b := a.Billing
	t := b.Terms
	b.PeriodStartNs, b.PeriodEndNs = monthStart(t.AnchorNs, t.PeriodIdx), monthStart(t.AnchorNs, t.PeriodIdx+1)
	b.UsedMicros, b.ByEndpoint, b.Fired, t.AllocationMicros = 0, nil, 0, 0
	a.Tier = s.internTier(plan.Tier)
	out.touch(a)
	if s.grantPlan(a, planGrantID(b.PeriodStartNs), plan.AllocationMicros, b.PeriodEndNs, at, out) {
		t.AllocationMicros = plan.AllocationMicros
	}
}

// renew closes the period ending at e.atNs and opens the next: what is left of the closing
// period's plan grants carries, up to the plan's rollover cap, into a grant expiring at the
// next period's end (the rest is breakage when those grants expire, at the same instant,
// right after this). Periods the log skipped are caught up in order, at most
// Config.RenewalCatchUpMax of them; older ones are skipped.
func (s *State) renew(a *Account, e expiry, out *Output) {
	b := a.Billing
	t := b.Terms
	s.live--
	out.touch(a)
	cur, ok := s.cfg.Book.Plan(t.PlanID)
	if t.Cancelled || !ok {
		if !ok {
			out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyPlanDropped, AccountID: a.ID, EventID: t.PlanID})
		}
		s.endSubscription(a)
		return
	}
	next := cur
	if t.PendingPlanID != "" {
		p, ok := s.cfg.Book.Plan(t.PendingPlanID)
		if !ok {
			out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyPlanDropped, AccountID: a.ID, EventID: t.PendingPlanID})
			s.endSubscription(a)
			return
		}
		t.PlanID, t.PendingPlanID, next = t.PendingPlanID, "", p
	}
	// The carry: taken out of the closing period's plan grants (their remainders, in burn
	// order), so that their expiry right after this breaks only the rest.
	var carry int64
	capLeft := cur.RolloverCapMicros
	prefix := planGrantID(b.PeriodStartNs)
	for i := range a.Grants {
		g := &a.Grants[i]
		if capLeft == 0 {
			break
		}
		if g.ExpiresNs != e.atNs || !strings.HasPrefix(g.ID, prefix) {
			continue
		}
		take := min(g.Remaining, capLeft)
		g.Remaining -= take
		capLeft -= take
		carry += take
	}
	k := t.PeriodIdx + 1
	if last := periodIndex(t.AnchorNs, s.watermark-1); last-k > int64(s.cfg.RenewalCatchUpMax) {
		k = last - int64(s.cfg.RenewalCatchUpMax) // older periods are skipped: nothing carries into them
	}
	skipped := k != t.PeriodIdx+1
	t.PeriodIdx = k
	start := monthStart(t.AnchorNs, k)
	s.openPeriod(a, next, nsTime(start), out)
	if carry > 0 {
		id := carryGrantID(start)
		if skipped || a.findGrant(id) >= 0 {
			// Nothing to carry into: it goes back to the grants it came from, to expire.
			a.giveBack(prefix, e.atNs, carry)
		} else {
			s.addGrant(a, Grant{ID: id, EventID: ParseUUID(events.DerivedID(a.ID, id)), Amount: carry,
				Remaining: carry, Priority: events.DefaultGrantPriority, ExpiresNs: min(b.PeriodEndNs, timeNsMax)})
		}
	}
	s.schedule(expiry{atNs: b.PeriodEndNs, acct: a, kind: expRenew})
}

// giveBack returns amt to the plan grants with prefix expiring at atNs (undoing a carry).
func (a *Account) giveBack(prefix string, atNs, amt int64) {
	for i := range a.Grants {
		g := &a.Grants[i]
		if amt == 0 {
			return
		}
		if g.ExpiresNs != atNs || !strings.HasPrefix(g.ID, prefix) {
			continue
		}
		put := min(g.Amount-g.Remaining, amt)
		g.Remaining += put
		amt -= put
	}
}

// endSubscription ends the subscription at its period's end: the tier returns to the book's
// default and the period becomes the calendar month.
func (s *State) endSubscription(a *Account) {
	b := a.Billing
	t := b.Terms
	t.PlanID, t.PendingPlanID, t.Cancelled, t.AnchorNs, t.PeriodIdx, t.AllocationMicros = "", "", false, 0, 0, 0
	a.Tier = ""
	b.PeriodEndNs = 0 // the calendar month is set by rollCalendar
	s.rollCalendar(a)
}

// rollCalendar keeps the period of an account without a subscription on the UTC calendar
// month of the log time.
func (s *State) rollCalendar(a *Account) {
	b := a.Billing
	if b == nil || b.Subscribed() || (b.PeriodEndNs != 0 && s.watermark < b.PeriodEndNs) {
		return
	}
	b.PeriodStartNs, b.PeriodEndNs = calendarMonth(max(s.watermark, 0))
	b.UsedMicros, b.ByEndpoint, b.Fired = 0, nil, 0
}

// recordUse counts a settled request's charge in the account's current period.
func (s *State) recordUse(a *Account, endpoint string, cost int64) {
	b := a.billing()
	s.rollCalendar(a)
	if cost > 0 && addOK(b.UsedMicros, cost) {
		b.UsedMicros += cost
	}
	for i := range b.ByEndpoint { // a few entries at most; holds carry the interned name
		if u := &b.ByEndpoint[i]; u.Endpoint == endpoint {
			u.Requests++
			if cost > 0 && addOK(u.ChargedMicros, cost) {
				u.ChargedMicros += cost
			}
			return
		}
	}
	ep := s.endpoints[endpoint]
	if ep == nil {
		return // not a price-book endpoint: counted in used_micros only
	}
	b.ByEndpoint = append(b.ByEndpoint, EndpointUse{Endpoint: ep.name, Requests: 1, ChargedMicros: max(cost, 0)})
}

// updateSettings folds the organization, notification and auto-top-up settings an
// account.updated carries (an absent one is unchanged).
func (s *State) updateSettings(a *Account, p *events.AccountUpdated) {
	if p.OrganizationID == nil && p.NotifyUsagePermille == nil && p.NotifyFloorMicros == nil && p.AutoTopUpThresholdMicros == nil {
		return
	}
	t := a.terms()
	s.rollCalendar(a)
	if p.OrganizationID != nil {
		t.OrganizationID = *p.OrganizationID
	}
	if p.NotifyUsagePermille != nil {
		usage := *p.NotifyUsagePermille
		if !t.NotifyUsageSet || !slicesEqual(usage, t.NotifyUsage) {
			a.Billing.Fired &= 1 << floorBit // changed usage thresholds are armed afresh
		}
		t.NotifyUsage, t.NotifyUsageSet = nil, true
		if len(usage) > 0 {
			t.NotifyUsage = append([]int32(nil), usage...)
		}
	}
	if p.NotifyFloorMicros != nil && *p.NotifyFloorMicros != t.NotifyFloorMicros {
		t.NotifyFloorMicros = *p.NotifyFloorMicros
		a.Billing.Fired &^= 1 << floorBit // a changed floor is armed afresh
	}
	if p.AutoTopUpThresholdMicros != nil && p.AutoTopUpAmountMicros != nil {
		if *p.AutoTopUpThresholdMicros != t.TopUpThreshold {
			t.TopUpPending = false // a new threshold is armed afresh
		}
		t.TopUpThreshold, t.TopUpAmount = *p.AutoTopUpThresholdMicros, *p.AutoTopUpAmountMicros
	}
}

func slicesEqual(x, y []int32) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

// usageThresholds returns the account's usage thresholds.
func (b *Billing) usageThresholds() []int32 {
	if b.Terms != nil && b.Terms.NotifyUsageSet {
		return b.Terms.NotifyUsage
	}
	if b.Subscribed() {
		return events.DefaultNotifyUsagePermille
	}
	return nil
}

// notify emits what the account's state calls for: each usage threshold and the floor once
// per period, and a top-up request once until the balance is back at or above its threshold.
// Called after every change of an account's balance or period.
func (s *State) notify(a *Account, out *Output) {
	b := a.Billing
	if b == nil || b.Terms == nil {
		return
	}
	t := b.Terms
	s.rollCalendar(a)
	at := nsTime(s.watermark)
	base := events.Notification{AccountID: a.ID, PeriodStart: nsTime(max(b.PeriodStartNs, timeNsMin)), PeriodEnd: nsTime(min(b.PeriodEndNs, timeNsMax)),
		UsedMicros: max(b.UsedMicros, 0), AllocationMicros: t.AllocationMicros, AvailableMicros: max(a.AvailableMicros, 0)}
	if t.AllocationMicros > 0 {
		for i, th := range b.usageThresholds() {
			if i >= events.MaxNotifyThresholds || b.Fired&(1<<i) != 0 || !reached(b.UsedMicros, t.AllocationMicros, th) {
				continue
			}
			b.Fired |= 1 << i
			n := base
			n.Kind, n.ThresholdPermille = events.NotifyUsageThreshold, th
			n.NotificationID = events.DerivedID(a.ID, "notify/usage/"+strconv.FormatInt(b.PeriodStartNs, 10)+"/"+strconv.Itoa(int(th)))
			out.Notices = append(out.Notices, Notice{ID: n.NotificationID, At: at, Data: n})
		}
	}
	if f := t.NotifyFloorMicros; f > 0 && b.Fired&(1<<floorBit) == 0 && a.AvailableMicros < f {
		b.Fired |= 1 << floorBit
		n := base
		n.Kind, n.FloorMicros = events.NotifyBalanceFloor, f
		n.NotificationID = events.DerivedID(a.ID, "notify/floor/"+strconv.FormatInt(b.PeriodStartNs, 10))
		out.Notices = append(out.Notices, Notice{ID: n.NotificationID, At: at, Data: n})
	}
	if th := t.TopUpThreshold; th > 0 {
		switch {
		case !t.TopUpPending && a.AvailableMicros < th:
			t.TopUpPending = true
			t.TopUpSeq++
			id := events.DerivedID(a.ID, "topup/"+strconv.FormatInt(t.TopUpSeq, 10))
			out.Notices = append(out.Notices, Notice{ID: id, At: at, Data: events.TopUpRequested{TopUpID: id, AccountID: a.ID,
				AmountMicros: t.TopUpAmount, ThresholdMicros: th, AvailableMicros: max(a.AvailableMicros, 0)}})
		case t.TopUpPending && a.AvailableMicros >= th:
			t.TopUpPending = false
		}
	}
}

// reached reports used·1000 ≥ permille·allocation, without overflow.
func reached(used, alloc int64, permille int32) bool {
	if used <= 0 {
		return false
	}
	uh, ul := bits.Mul64(uint64(used), 1000)
	ah, al := bits.Mul64(uint64(alloc), uint64(permille))
	return uh > ah || uh == ah && ul >= al
}

// PeriodUsage is an account's current billing period as the view shows it.
type PeriodUsage struct {
	StartNs, EndNs   int64
	AllocationMicros int64
	UsedMicros       int64
	ByEndpoint       []EndpointUse
}

// Period returns the account's current period at the partition's log time: the
// subscription's, or the UTC calendar month (empty when the log has left the last one used).
func (s *State) Period(a *Account) PeriodUsage {
	b := a.Billing
	if b == nil || !b.Subscribed() && s.watermark >= b.PeriodEndNs {
		st, en := calendarMonth(max(s.watermark, 0))
		return PeriodUsage{StartNs: st, EndNs: en}
	}
	return PeriodUsage{StartNs: b.PeriodStartNs, EndNs: b.PeriodEndNs, AllocationMicros: b.allocation(),
		UsedMicros: b.UsedMicros, ByEndpoint: b.ByEndpoint}
}

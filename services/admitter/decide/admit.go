package decide

import (
	"errors"
	"math"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// Errors of Admit and Finish. They are input errors (4xx), never denials.
var (
	ErrUnknownEndpoint = errors.New("unknown endpoint")
	ErrUnknownRequest  = errors.New("unknown or expired request")
)

// Request is one admission question.
type Request struct {
	AccountID string
	Endpoint  string
	Model     string // "" = the endpoint's default model
	// Priority is the requested class ("" = the account's class). A request cannot claim a
	// higher class than its account's.
	Priority string
	Estimate events.Units
}

// Window is the state of one included-allowance window at decision time.
type Window struct {
	Name            string
	LimitMicros     int64
	UsedMicros      int64 // ledger's usage plus this admitter's unfolded usage
	RemainingMicros int64
	ResetsAtMs      int64
}

// Decision is the full, explainable answer. Admit fills it without allocating.
type Decision struct {
	Allowed      bool
	Reason       Reason
	RetryAfterMs int64

	Funding         Funding
	Tier            string
	Priority        Priority
	EstimateMicros  int64
	HoldMicros      int64
	AllowanceMicros int64
	// AvailableMicros is the local available balance after this decision's hold.
	AvailableMicros int64
	HoldExpiresAtMs int64
	Windows         [WindowsMax]Window
	NumWindows      int

	RatePerMinute    int64 // effective rate limit
	Burst            int64 // effective burst
	RateRemaining    int64 // requests still allowed at once after this decision
	ConcurrencyLimit int64 // effective per account per endpoint
	InFlight         int64 // this account's in-flight on the endpoint after this decision

	EndpointInFlight int64
	EndpointCapacity int64 // min(capacity_inflight, adaptive limit)

	LoadFactorPermille    int64
	HistoryFactorPermille int64 // 1000 when the account has no history factor

	// FundingAccountID is the account whose money the request takes when it is not the
	// account's own (an organization's shared balance): the windows, balance and hold above
	// are that account's.
	FundingAccountID string

	// Handle names the open request when allowed; pass it to Published, Abort and Finish.
	Handle uint32
}

// Admit decides req at nowMs (Unix ms) and, when allowed, reserves what it takes: in-flight
// slots, a rate-limit token, and the hold or allowance as an unacknowledged pending change.
// The caller must then call Published (the request.started event is durable) or Abort.
// err is non-nil only for input errors (unknown endpoint, model or resolution).
func (t *Table) Admit(req *Request, nowMs int64, d *Decision) error {
	*d = Decision{}
	ei, ok := t.epIdx[req.Endpoint]
	if !ok {
		return ErrUnknownEndpoint
	}
	ep := &t.endpoints[ei]
	est, err := ep.ep.Price(req.Model, req.Estimate)
	if err != nil {
		return err
	}
	d.EstimateMicros = est
	ai, ok := t.lookup(req.AccountID)
	if !ok {
		return t.deny(d, ReasonTableFull, t.cfg.RetryOverloadedMs)
	}
	a := &t.accounts[ai]
	tier := &t.tiers[a.tier]
	d.Tier = tier.name
	// The money side (allowance windows of the funder's tier, balance, pending changes,
	// expiring grants, the hold) is the funding account's when the account has one (one
	// level: the funder's own funding is not followed); the rest is the account's own.
	mi := ai
	var pr project
	if a.project {
		if pr = t.projects[ai]; pr.funder != none {
			mi = pr.funder
			d.FundingAccountID = t.funderIDs[mi]
		} else if pr.funderLost {
			return t.deny(d, ReasonTableFull, t.cfg.RetryOverloadedMs)
		}
	}
	m := &t.accounts[mi]
	prio, given := ParsePriority(req.Priority)
	if !given || prio < a.priority {
		prio = a.priority
	}
	d.Priority = prio
	load := ep.loadFactor[prio]
	hist := int64(a.factorPermille)
	clean := a.factorPermille == factorUnset || a.factorPermille >= 1000
	if a.factorPermille == factorUnset {
		hist = 1000
	}
	d.LoadFactorPermille, d.HistoryFactorPermille = load, hist
	t.fillWindows(m, &t.tiers[m.tier], nowMs, d)
	d.AvailableMicros = m.availableMicros + m.pendingAvail
	if m.expiring {
		if v := d.AvailableMicros - t.expiredMicros(mi, nowMs); v >= 0 || d.AvailableMicros < 0 {
			d.AvailableMicros = v
		} else {
			d.AvailableMicros = 0 // what the expired grants took was already spent locally
		}
	}

	// 1. Blocked (a suspended funding account blocks its projects).
	if a.suspended || m.suspended {
		return t.deny(d, ReasonSuspended, t.cfg.RetryBlockedMs)
	}
	if hist == 0 {
		return t.deny(d, ReasonBlocked, t.cfg.RetryBlockedMs)
	}
	// 2. Overload shedding by class, with the critical reserve.
	capacity := min(ep.ep.CapacityInflight, ep.adaptive.Limit(nowMs))
	d.EndpointCapacity, d.EndpointInFlight = capacity, ep.inflight
	if load == 0 || t.shed(ep, capacity, prio) {
		return t.deny(d, ReasonOverloaded, t.cfg.RetryOverloadedMs)
	}
	// 3. Concurrency per account per endpoint.
	var lim limits
	if hist == 1000 {
		lim = t.lims[(int(ei)*int(numPriorities)+int(prio))*len(t.tiers)+int(a.tier)]
	} else {
		bonus := int64(1000)
		if clean {
			bonus = t.cfg.CleanBurstBonusPermille
		}
		lim.conc = t.scale(tier.t.ConcurrentMax, load, hist, 1000)
		lim.rate = t.scale(tier.t.RatePerMinute, load, hist, 1000)
		lim.burst = t.scale(tier.t.Burst, load, hist, bonus)
		lim.stepUs = max(60_000_000/lim.rate, 1)
	}
	slot := t.epState(ai, ei)
	// No account may hold more than its share of the endpoint, whatever its tier allows.
	conc := min(lim.conc, max(capacity*t.cfg.AccountSharePermille/1000, 1))
	d.ConcurrencyLimit, d.InFlight = conc, int64(slot.inflight)
	if int64(slot.inflight) >= conc {
		return t.deny(d, ReasonConcurrency, t.cfg.RetryConcurrencyMs)
	}
	// 4. Rate limit: GCRA in µs, burst allowed.
	rate, burst, stepUs := lim.rate, lim.burst, lim.stepUs
	d.RatePerMinute, d.Burst = rate, burst
	nowUs := nowMs * 1000
	newTat := max(slot.tatUs, nowUs) + stepUs
	if over := newTat - nowUs - burst*stepUs; over > 0 {
		d.RateRemaining = 0
		return t.deny(d, ReasonRateLimited, min((over+999)/1000, retryMsMax))
	}
	d.RateRemaining = (burst*stepUs - (newTat - nowUs)) / stepUs
	// 5. Budget: a project's month of finished requests, its open requests' estimates and
	// this estimate stay within the budget its funding account set for it.
	if mi != ai && pr.budgetOf == mi {
		if retry, over := budgetExceeded(&pr, est, nowMs, t.cfg.RetryConcurrencyMs); over {
			return t.deny(d, ReasonBudgetExhausted, retry)
		}
	}
	// 6. Funding waterfall: the allowance covers what every window has left, a credit hold
	// the rest (split funding); denied only when both together cannot cover the estimate.
	var allow int64
	if d.NumWindows > 0 {
		allow = min(est, minRemaining(d))
	}
	if est-allow > d.AvailableMicros {
		return t.deny(d, ReasonInsufficientCredits, t.insufficientRetry(d, est, nowMs))
	}
	d.AllowanceMicros, d.HoldMicros = allow, est-allow
	d.Funding = fundingOf(allow, est-allow, d.NumWindows)
	if t.pendLive >= t.cfg.PendingMax || t.openLive >= t.cfg.OpenMax {
		d.Funding, d.AllowanceMicros, d.HoldMicros = FundingNone, 0, 0
		return t.deny(d, ReasonTableFull, t.cfg.RetryOverloadedMs)
	}
	// Allowed: reserve.
	p := t.newPending(mi, -d.HoldMicros, d.AllowanceMicros)
	oi := t.newOpen()
	if mi != ai {
		pr.reservedMicros = satAdd(pr.reservedMicros, est)
		t.projects[ai] = pr
	}
	*t.opens.at(oi) = open{account: ai, funder: mi, endpoint: ei, funding: d.Funding, priority: prio, holdMicros: d.HoldMicros,
		allowMicros: d.AllowanceMicros, startedMs: nowMs, expiresAtMs: nowMs + ep.ep.HoldTimeoutMs,
		startPending: p, stepUs: stepUs, nextFree: none, live: true}
	slot.tatUs = newTat
	slot.inflight++
	ep.inflight++
	if prio == PriorityCritical {
		ep.critInflight++
	}
	d.Allowed, d.Handle = true, oi
	d.HoldExpiresAtMs = nowMs + ep.ep.HoldTimeoutMs
	d.InFlight, d.EndpointInFlight = int64(slot.inflight), ep.inflight
	d.AvailableMicros -= d.HoldMicros
	for i := 0; i < d.NumWindows; i++ {
		d.Windows[i].UsedMicros += d.AllowanceMicros
		d.Windows[i].RemainingMicros -= d.AllowanceMicros
	}
	return nil
}

// budgetExceeded reports whether est would take project pr past its monthly budget at nowMs:
// the ledger's spent (only when its period is the current month: a month roll resets it), the
// estimates of the open requests and the costs of the finished ones the ledger's view does not
// include yet, plus est. The retry is the ms until the next UTC month starts (bounded) when
// spent and est alone exceed the budget, and retryOpenMs when it is the open and not yet
// folded requests that do: those clear as they finish and the ledger folds them.
func budgetExceeded(pr *project, est, nowMs, retryOpenMs int64) (retryMs int64, over bool) {
	start, next := monthSpan(nowMs)
	spent := pr.spentMicros
	if pr.periodStartMs < start {
		spent = 0
	}
	// Without overflow: the budget is at most events.MaxAmountMicros; spent and est are not
	// negative, and the sums of reservations saturate (satAdd).
	left := pr.budgetMicros - min(spent, pr.budgetMicros)
	if used := satAdd(pr.reservedMicros, pr.settledMicros); used <= left && est <= left-used {
		return 0, false
	}
	if est <= left {
		return max(retryOpenMs, 1), true
	}
	return min(max(next-nowMs, 1), retryMsMax), true
}

// monthSpan is the UTC calendar month of nowMs: its first instant and the next month's, Unix ms.
func monthSpan(nowMs int64) (start, next int64) {
	y, m, _ := time.UnixMilli(nowMs).UTC().Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
}

func (t *Table) deny(d *Decision, r Reason, retryMs int64) error {
	d.Allowed, d.Reason, d.RetryAfterMs = false, r, max(retryMs, 1)
	return nil
}

// shed reports whether class p is shed at the endpoint's in-flight level. Critical is shed
// only when the endpoint is full and critical requests already hold its reserve: the reserve
// is critical's own, even when others' open holds exceed a limit that has shrunk since.
func (t *Table) shed(ep *endpointInfo, capacity int64, p Priority) bool {
	if p == PriorityCritical {
		return ep.inflight >= capacity && ep.critInflight >= capacity*ep.ep.CriticalReservePermille/1000
	}
	return ep.inflight >= t.classCapacity(ep, capacity, p)
}

// classCapacity is the in-flight level at which class p is shed: critical may use the whole
// capacity, standard all but the critical reserve, batch BatchSharePermille of that.
func (t *Table) classCapacity(ep *endpointInfo, capacity int64, p Priority) int64 {
	if p == PriorityCritical {
		return capacity
	}
	shared := capacity * (1000 - ep.ep.CriticalReservePermille) / 1000
	if p == PriorityBatch {
		return shared * t.cfg.BatchSharePermille / 1000
	}
	return shared
}

// scale is base × load‰ × history‰ × bonus‰, divided between the instances, at least 1.
func (t *Table) scale(base, load, hist, bonus int64) int64 {
	v := base * load / 1000 * hist / 1000 * bonus / 1000
	v = (v + t.cfg.Instances - 1) / t.cfg.Instances
	return max(v, 1)
}

func (t *Table) fillWindows(a *account, tier *tierInfo, nowMs int64, d *Decision) {
	n := min(len(tier.t.Allowance), WindowsMax)
	d.NumWindows = n
	for i := 0; i < n; i++ {
		w := &tier.t.Allowance[i]
		start := tier.winStartMs[i]
		if nowMs < start || nowMs >= tier.winEndMs[i] {
			start = nowMs - mod(nowMs, w.LengthMs)
			tier.winStartMs[i], tier.winEndMs[i] = start, start+w.LengthMs
		}
		used := a.pendingAllow
		switch {
		case a.winStartMs[i] == start:
			used += a.winUsedMicros[i]
		case a.winStartMs[i] > start:
			// The ledger's log time has left this window (this clock runs behind): its use is
			// no longer known and the ledger counts no reservation in it. Closed: no room.
			used = max(used, w.Micros)
		}
		d.Windows[i] = Window{Name: w.Name, LimitMicros: w.Micros, UsedMicros: used,
			RemainingMicros: max(w.Micros-used, 0), ResetsAtMs: start + w.LengthMs}
	}
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

func minRemaining(d *Decision) int64 {
	m := d.Windows[0].RemainingMicros
	for i := 1; i < d.NumWindows; i++ {
		m = min(m, d.Windows[i].RemainingMicros)
	}
	return m
}

// insufficientRetry is the time until every window short of what the balance cannot cover
// has reset, when the allowance could then cover it; otherwise RetryInsufficientMs (credits
// must be bought).
func (t *Table) insufficientRetry(d *Decision, est, nowMs int64) int64 {
	if d.NumWindows == 0 {
		return t.cfg.RetryInsufficientMs
	}
	need := est - max(d.AvailableMicros, 0) // what the allowance must cover
	var wait int64
	for i := 0; i < d.NumWindows; i++ {
		w := &d.Windows[i]
		if need > w.LimitMicros {
			return t.cfg.RetryInsufficientMs
		}
		if need > w.RemainingMicros {
			wait = max(wait, w.ResetsAtMs-nowMs)
		}
	}
	return min(max(wait, 1), retryMsMax)
}

// Published records that the request.started event of an admitted request is durable at
// (partition, offset) of the events topic.
func (t *Table) Published(h uint32, partition int32, offset int64) {
	if int(h) >= t.opens.len() || !t.opens.at(h).live {
		return
	}
	// After the ack the open request no longer owns its pending change: the ledger's view
	// drops it, and Abort must not touch a slot that may have been reused.
	p := t.opens.at(h).startPending
	t.opens.at(h).startPending = none
	t.acked(p, partition, offset)
}

// Abort undoes an admission whose request.started event could not be published: the
// pending change, the in-flight slots and the rate-limit token are given back.
func (t *Table) Abort(h uint32) {
	if int(h) >= t.opens.len() || !t.opens.at(h).live {
		return
	}
	o := t.opens.at(h)
	if o.startPending != none {
		t.dropPending(o.startPending)
	}
	slot := t.epState(o.account, o.endpoint)
	slot.tatUs -= o.stepUs
	t.release(h)
}

// release frees an open request and its in-flight slots.
func (t *Table) release(h uint32) {
	o := t.opens.at(h)
	slot := t.epState(o.account, o.endpoint)
	if slot.inflight > 0 {
		slot.inflight--
	}
	ep := &t.endpoints[o.endpoint]
	if ep.inflight > 0 {
		ep.inflight--
	}
	if o.priority == PriorityCritical && ep.critInflight > 0 {
		ep.critInflight--
	}
	if o.funder != o.account {
		t.unreserve(o.account, o.holdMicros+o.allowMicros)
	}
	*o = open{live: false, nextFree: t.openFree, startPending: none}
	t.openFree = h
	t.openLive--
}

// Open describes an open request.
type Open struct {
	Endpoint        string
	Funding         Funding
	Priority        Priority
	HoldMicros      int64
	AllowanceMicros int64
	ExpiresAtMs     int64
	// FundingAccountID is the funding account fixed at admission ("" the account's own).
	FundingAccountID string
}

// OpenInfo reports an open request; ok is false when it is not open.
func (t *Table) OpenInfo(h uint32) (Open, bool) {
	if int(h) >= t.opens.len() || !t.opens.at(h).live {
		return Open{}, false
	}
	o := t.opens.at(h)
	info := Open{Endpoint: t.endpoints[o.endpoint].name, Funding: o.funding, Priority: o.priority,
		HoldMicros: o.holdMicros, AllowanceMicros: o.allowMicros, ExpiresAtMs: o.expiresAtMs}
	if o.funder != o.account {
		info.FundingAccountID = t.id(o.funder)
	}
	return info, true
}

// Settlement is how a finish is paid, by the funding waterfall the ledger applies.
type Settlement struct {
	Funding    Funding
	CostMicros int64
	// AllowanceMicros is the part of the cost the allowance pays (at most the reservation
	// plus what every window still has left), CreditsMicros the part paid from credits (the
	// hold, then the available balance), OverageMicros what could not be paid. They sum to
	// CostMicros.
	AllowanceMicros int64
	CreditsMicros   int64
	OverageMicros   int64
	ChargedMicros   int64 // AllowanceMicros + CreditsMicros
	ReleasedMicros  int64 // the parts of the hold and of the allowance reservation given back
	// availDelta and allowDelta are the local balance changes the finish makes.
	availDelta, allowDelta int64
}

// Quote prices the settlement of open request h at costMicros at nowMs without changing
// anything.
func (t *Table) Quote(h uint32, costMicros, nowMs int64) (Settlement, error) {
	if int(h) >= t.opens.len() || !t.opens.at(h).live {
		return Settlement{}, ErrUnknownRequest
	}
	o := t.opens.at(h)
	return t.settle(&t.accounts[o.funder], o.funding, o.holdMicros, o.allowMicros, o.startedMs, costMicros, nowMs), nil
}

// settle is the finish policy, the ledger's settlement rule on the local view: the allowance
// pays first, up to its reservation plus the room every window has left (nothing beyond the
// reservation when the request started in another window; nothing when it reserved none),
// then the credit hold, then (OverageFromAvailable) the available balance; what is left is
// overage.
func (t *Table) settle(a *account, funding Funding, hold, allow, startedMs, cost, nowMs int64) Settlement {
	s := Settlement{Funding: funding, CostMicros: cost}
	if allow > 0 {
		s.AllowanceMicros = min(cost, allow+t.allowanceRoom(a, startedMs, nowMs))
	}
	rest := cost - s.AllowanceMicros
	fromHold := min(rest, hold)
	extra := rest - fromHold
	var fromAvail int64
	if extra > 0 && t.cfg.OverageFromAvailable {
		fromAvail = min(extra, max(a.availableMicros+a.pendingAvail, 0))
	}
	s.CreditsMicros = fromHold + fromAvail
	s.OverageMicros = extra - fromAvail
	s.ChargedMicros = s.AllowanceMicros + s.CreditsMicros
	s.ReleasedMicros = hold - fromHold + max(allow-s.AllowanceMicros, 0)
	s.availDelta = hold - s.CreditsMicros
	s.allowDelta = s.AllowanceMicros - allow
	return s
}

// allowanceRoom is the least room (limit − used, at least 0) over the windows of a's tier at
// nowMs, used counting the ledger's usage and the unfolded local changes; 0 when the tier
// has none, startedMs lies in another window than nowMs, or the ledger's view already names
// a later window than nowMs's (its log time left that window: closed, its use no longer
// known) (the ledger's rule).
func (t *Table) allowanceRoom(a *account, startedMs, nowMs int64) int64 {
	tier := &t.tiers[a.tier].t
	room := int64(-1)
	for i := 0; i < min(len(tier.Allowance), WindowsMax); i++ {
		w := &tier.Allowance[i]
		ws := nowMs - mod(nowMs, w.LengthMs)
		if startedMs-mod(startedMs, w.LengthMs) != ws || a.winStartMs[i] > ws {
			return 0
		}
		used := a.pendingAllow
		if a.winStartMs[i] == ws {
			used += a.winUsedMicros[i]
		}
		if r := max(w.Micros-used, 0); room < 0 || r < room {
			room = r
		}
	}
	return max(room, 0)
}

// Peer is another admitter's request, seen on the events topic.
type Peer struct {
	AccountID string
	// FundingAccountID is the start's funding account ("" the account's own): the hold and
	// the settlement are its, and the estimate counts against the account's budget.
	FundingAccountID string
	Funding          Funding
	HoldMicros       int64
	AllowanceMicros  int64
	StartedMs        int64 // the request.started event's time
	// Counted is set by ApplyPeerStart when it counted the estimate against the account's
	// budget reservation: ApplyPeerFinish and ApplyPeerEnd give back exactly what it counted.
	Counted bool
}

// ApplyPeerStart records another admitter's durable request.started at (partition, offset)
// as a pending change, so that this admitter's local balance counts the peer's hold and
// allowance reservation until the ledger folds it. It returns false when the table is full.
func (t *Table) ApplyPeerStart(p *Peer, partition int32, offset int64) bool {
	ai, mi, ok := t.peerAccounts(p)
	if !ok || t.pendLive >= t.cfg.PendingMax {
		return false
	}
	t.acked(t.newPending(mi, -p.HoldMicros, p.AllowanceMicros), partition, offset)
	if mi != ai && !p.Counted {
		t.reserve(ai, p.HoldMicros+p.AllowanceMicros)
		p.Counted = true
	}
	return true
}

// ApplyPeerEnd gives back the budget reservation of a peer's request whose start
// ApplyPeerStart counted and that will not be finished through ApplyPeerFinish (its hold
// expired, or it is not kept).
func (t *Table) ApplyPeerEnd(p *Peer) {
	if !p.Counted {
		return
	}
	if ai, ok := t.known(p.AccountID); ok {
		t.unreserve(ai, p.HoldMicros+p.AllowanceMicros)
	}
	p.Counted = false
}

// peerAccounts returns the indexes of a peer request's account and of the account whose
// money it takes (its funding account, or itself), inserting them when absent.
func (t *Table) peerAccounts(p *Peer) (ai, mi uint32, ok bool) {
	if ai, ok = t.lookup(p.AccountID); !ok {
		return 0, 0, false
	}
	mi = ai
	if p.FundingAccountID != "" && p.FundingAccountID != p.AccountID {
		if mi, ok = t.lookup(p.FundingAccountID); !ok {
			return 0, 0, false
		}
	}
	return ai, mi, true
}

// ApplyPeerFinish records another admitter's durable request.finished (event time nowMs) the
// same way, with the settlement this admitter's policy computes for it.
func (t *Table) ApplyPeerFinish(p *Peer, costMicros int64, partition int32, offset int64, nowMs int64) bool {
	ai, mi, ok := t.peerAccounts(p)
	if !ok {
		return false
	}
	if mi != ai {
		t.settleBudget(ai, mi, costMicros, partition, offset)
	}
	if p.Counted {
		t.unreserve(ai, p.HoldMicros+p.AllowanceMicros)
		p.Counted = false
	}
	s := t.settle(&t.accounts[mi], p.Funding, p.HoldMicros, p.AllowanceMicros, p.StartedMs, costMicros, nowMs)
	if s.availDelta != 0 || s.allowDelta != 0 {
		t.acked(t.newPending(mi, s.availDelta, s.allowDelta), partition, offset)
	}
	return true
}

// settleBudget counts the cost of project ai's request finished at (partition, offset) on
// funding account fi's partition against its budget (when fi's view lists one for it) until
// fi's view passes that position; nothing when the view already has.
func (t *Table) settleBudget(ai, fi uint32, cost int64, partition int32, offset int64) {
	pr, ok := t.projects[ai]
	f := &t.accounts[fi]
	if !ok || pr.budgetOf != fi || cost <= 0 || (f.foldedPartition == partition && f.foldedOffset >= offset) {
		return
	}
	if list := t.settling[ai]; len(list) >= settlingMax {
		last := &list[len(list)-1] // merged: counted until the view passes the later position
		last.partition, last.offset, last.micros = partition, max(last.offset, offset), satAdd(last.micros, cost)
	} else {
		t.settling[ai] = append(list, settledCost{partition: partition, offset: offset, micros: cost})
	}
	pr.settledMicros = satAdd(pr.settledMicros, cost)
	t.projects[ai] = pr
}

// foldSettled drops project pi's settled costs that funding account's view at (partition,
// offset) includes (all of them when all).
func (t *Table) foldSettled(pi uint32, pr *project, partition int32, offset int64, all bool) {
	list, ok := t.settling[pi]
	if !ok {
		return
	}
	kept := list[:0]
	for _, c := range list {
		if all || (c.partition == partition && c.offset <= offset) {
			pr.settledMicros -= c.micros
			continue
		}
		kept = append(kept, c)
	}
	if len(kept) == 0 {
		delete(t.settling, pi)
		return
	}
	t.settling[pi] = kept
}

// reserve counts micros against project ai's budget (an open funded request's estimate).
func (t *Table) reserve(ai uint32, micros int64) {
	pr, ok := t.projects[ai]
	if !ok {
		pr = project{funder: none, budgetOf: none}
		t.accounts[ai].project = true
	}
	pr.reservedMicros = satAdd(pr.reservedMicros, micros)
	t.projects[ai] = pr
}

// satAdd is a + b for non-negative amounts, saturating at the int64 maximum instead of
// wrapping to a negative sum (which would read as budget left). A saturated sum only
// overstates what is counted: it denies more, never less.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// unreserve gives back what reserve counted, dropping the project state when nothing is left.
func (t *Table) unreserve(ai uint32, micros int64) {
	pr, ok := t.projects[ai]
	if !ok {
		return
	}
	pr.reservedMicros = max(pr.reservedMicros-micros, 0)
	t.setProject(ai, pr)
}

// setProject stores account ai's project state, or drops it when it holds nothing.
func (t *Table) setProject(ai uint32, pr project) {
	if pr.funder == none && !pr.funderLost && pr.budgetOf == none && pr.reservedMicros == 0 && pr.settledMicros == 0 {
		delete(t.projects, ai)
		t.accounts[ai].project = false
		return
	}
	t.projects[ai] = pr
	t.accounts[ai].project = true
}

// Finish settles open request h once its request.finished event is durable at (partition,
// offset): frees its in-flight slots, feeds the adaptive limit (the latency sample is this
// admitter's own: from the admission to nowMs, when the finish arrived; out says whether it
// is a sample and whether it failed), and records the settlement as a pending change until
// the ledger folds it.
func (t *Table) Finish(h uint32, s Settlement, nowMs int64, out Outcome, partition int32, offset int64) error {
	if int(h) >= t.opens.len() || !t.opens.at(h).live {
		return ErrUnknownRequest
	}
	o := t.opens.at(h)
	ai := o.funder // the settlement is the funding account's
	if out != OutcomeNone {
		t.endpoints[o.endpoint].adaptive.Observe(o.startedMs, nowMs, out == OutcomeFailed)
	}
	if o.funder != o.account {
		t.settleBudget(o.account, o.funder, s.CostMicros, partition, offset)
	}
	t.release(h)
	if s.availDelta == 0 && s.allowDelta == 0 {
		return nil
	}
	// Never forget a change: PendingMax is enforced at admission only, so a finish is always
	// recorded even when the table is saturated.
	p := t.newPending(ai, s.availDelta, s.allowDelta)
	t.acked(p, partition, offset)
	return nil
}

// Expire frees at most budget open requests whose hold expired by nowMs, scanning from a
// cursor so that each call is bounded; it returns the handles' count freed. The ledger
// releases the hold itself (request.expired); the local pending change stays until folded.
func (t *Table) Expire(nowMs int64, budget int, freed func(h uint32)) int {
	n := 0
	for i := 0; i < budget && t.opens.len() > 0; i++ {
		if t.sweep >= uint32(t.opens.len()) {
			t.sweep = 0
		}
		h := t.sweep
		t.sweep++
		if o := t.opens.at(h); o.live && o.expiresAtMs <= nowMs {
			t.release(h)
			if freed != nil {
				freed(h)
			}
			n++
		}
	}
	return n
}

func (t *Table) newOpen() uint32 {
	t.openLive++
	if t.openFree != none {
		h := t.openFree
		t.openFree = t.opens.at(h).nextFree
		return h
	}
	return t.opens.add(open{})
}

func (t *Table) newPending(ai uint32, availDelta, allowDelta int64) uint32 {
	a := &t.accounts[ai]
	var p uint32
	if t.pendFree != none {
		p = t.pendFree
		t.pendFree = t.pend.at(p).next
	} else {
		p = t.pend.add(pending{})
	}
	*t.pend.at(p) = pending{account: ai, next: a.pendingHead, partition: -1, offset: -1,
		availMicros: availDelta, allowMicros: allowDelta}
	a.pendingHead = p
	a.pendingAvail += availDelta
	a.pendingAllow += allowDelta
	t.pendLive++
	return p
}

// acked stamps a pending change with its event's position, dropping it at once when the
// ledger's view already passed it (the balance.updated can arrive before the ack).
func (t *Table) acked(p uint32, partition int32, offset int64) {
	if p == none {
		return
	}
	pc := t.pend.at(p)
	pc.partition, pc.offset = partition, offset
	a := &t.accounts[pc.account]
	if a.foldedPartition == partition && a.foldedOffset >= offset {
		t.dropPending(p)
	}
}

// dropPending unlinks a pending change from its account and undoes its sums.
func (t *Table) dropPending(p uint32) {
	pc := t.pend.at(p)
	a := &t.accounts[pc.account]
	for prev, cur := none, a.pendingHead; cur != none; prev, cur = cur, t.pend.at(cur).next {
		if cur != p {
			continue
		}
		if prev == none {
			a.pendingHead = pc.next
		} else {
			t.pend.at(prev).next = pc.next
		}
		a.pendingAvail -= pc.availMicros
		a.pendingAllow -= pc.allowMicros
		*pc = pending{next: t.pendFree, partition: -1}
		t.pendFree = p
		t.pendLive--
		return
	}
}

// ApplyBalance folds the ledger's balance.updated into the account and drops the pending
// changes it covers (same partition, offset at or below the view's). It returns false when
// the table is full. An older view than the one held is ignored.
func (t *Table) ApplyBalance(b *events.BalanceUpdated) bool {
	ai, ok := t.lookup(b.AccountID)
	if !ok {
		return false
	}
	if a := &t.accounts[ai]; a.foldedPartition == b.Partition && b.Offset < a.foldedOffset {
		return true
	}
	fi, lost := none, false
	if b.FundingAccountID != "" && b.FundingAccountID != b.AccountID {
		// An unknown funding account gets a record like any account (lookup may move the
		// records: a is taken after it). When the table is full the account's own fields are
		// still applied (a suspension must take effect), and it is denied until a funder fits.
		if fi, ok = t.lookup(b.FundingAccountID); !ok {
			fi, lost = none, true
		} else if _, ok := t.funderIDs[fi]; !ok {
			t.funderIDs[fi] = b.FundingAccountID
		}
	}
	t.applyBudgets(ai, b.Projects, b.Partition, b.Offset) // may insert accounts too
	pr := project{funder: none, budgetOf: none}
	if t.accounts[ai].project {
		pr = t.projects[ai]
	}
	pr.funder, pr.funderLost = fi, lost
	t.setProject(ai, pr)
	a := &t.accounts[ai]
	a.availableMicros, a.heldMicros = b.AvailableMicros, b.HeldMicros
	a.suspended = b.Suspended
	if len(b.Expiring) > 0 {
		var x expiringGrants
		for i, g := range b.Expiring {
			j := min(i, expiringSlots-1) // later entries merge into the last slot, at its expiry
			if j == i {
				x.atSec[j] = uint32(min(max(g.ExpiresAt.Unix(), 0), 1<<32-1))
			}
			x.micros[j] += g.RemainingMicros // the ledger's sum: within int64
		}
		t.expiring[ai], a.expiring = x, true
	} else if a.expiring {
		delete(t.expiring, ai)
		a.expiring = false
	}
	oldTier := a.tier
	a.tier = t.defTier
	if ti, ok := t.tierIdx[b.Tier]; ok {
		a.tier = ti
	}
	if a.tier != oldTier {
		// A tier change starts the rate limit afresh: GCRA keeps its debt as time, and
		// the old tier's spacing (6 s a request on free) would otherwise throttle an
		// account that was just upgraded for minutes. In-flight counts are kept.
		for ei := range t.endpoints {
			t.epState(ai, uint8(ei)).tatUs = 0
		}
	}
	a.priority = PriorityStandard
	if p, ok := ParsePriority(b.Priority); ok {
		a.priority = p
	}
	tier := &t.tiers[a.tier].t
	for i := range a.winStartMs {
		a.winStartMs[i], a.winUsedMicros[i] = -1, 0
		if i >= len(tier.Allowance) {
			continue
		}
		for _, w := range b.Allowance {
			if w.Window == tier.Allowance[i].Name {
				a.winStartMs[i], a.winUsedMicros[i] = w.Start.UnixMilli(), w.UsedMicros
			}
		}
	}
	a.foldedPartition, a.foldedOffset = b.Partition, b.Offset
	for cur := a.pendingHead; cur != none; {
		next := t.pend.at(cur).next
		if pc := t.pend.at(cur); pc.partition == b.Partition && pc.offset >= 0 && pc.offset <= b.Offset {
			t.dropPending(cur)
		}
		cur = next
	}
	return !lost
}

// applyBudgets records the project budgets funding account fi's balance.updated lists
// (projects), replacing those its previous one listed. A project the table cannot hold (full)
// is left out: it then has no budget here.
func (t *Table) applyBudgets(fi uint32, projects []events.ProjectSpend, partition int32, offset int64) {
	old := t.budgetsOf[fi]
	if len(old) == 0 && len(projects) == 0 {
		return
	}
	for _, pi := range old {
		if pr := t.projects[pi]; pr.budgetOf == fi {
			// The view's spent includes the finishes up to its position; a budget it no
			// longer lists takes its unfolded costs with it.
			t.foldSettled(pi, &pr, partition, offset, !t.listed(projects, pi))
			pr.budgetOf, pr.budgetMicros, pr.spentMicros, pr.periodStartMs = none, 0, 0, 0
			t.setProject(pi, pr)
		}
	}
	list := old[:0]
	for i := range projects {
		e := &projects[i]
		pi, ok := t.lookup(e.ProjectID)
		if !ok || pi == fi {
			continue
		}
		pr := project{funder: none, budgetOf: none}
		if t.accounts[pi].project {
			pr = t.projects[pi]
		}
		if pr.budgetOf != none && pr.budgetOf != fi {
			if pr.budgetOf == pr.funder {
				// The project's current funder lists its budget: another account's list (a
				// former funder's, or any account's) does not take it over.
				continue
			}
			// Listed by another funding account before: its costs would only be folded by
			// that account's views, which no longer apply to it.
			t.foldSettled(pi, &pr, 0, 0, true)
		}
		pr.budgetOf, pr.budgetMicros, pr.spentMicros, pr.periodStartMs = fi, e.BudgetMicros, e.SpentMicros, e.PeriodStart.UnixMilli()
		t.setProject(pi, pr)
		list = append(list, pi)
	}
	if len(list) == 0 {
		delete(t.budgetsOf, fi)
		return
	}
	t.budgetsOf[fi] = list
}

// ApplyLimits folds a limits.adjusted factor. Unknown endpoints are ignored (another price
// book version may know them). It returns false when the table is full.
func (t *Table) ApplyLimits(l *events.LimitsAdjusted) bool {
	switch l.Scope {
	case events.ScopeEndpoint:
		ei, ok := t.epIdx[l.Endpoint]
		p, okp := ParsePriority(l.Priority)
		if ok && okp {
			t.endpoints[ei].loadFactor[p] = int64(l.FactorPermille)
			t.computeLimits(ei, p)
		}
	case events.ScopeAccount:
		ai, ok := t.lookup(l.AccountID)
		if !ok {
			return false
		}
		t.accounts[ai].factorPermille = uint16(min(max(l.FactorPermille, 0), events.MaxFactorPermille))
	}
	return true
}

// Snapshot is an account's local view, for tests and diagnostics.
type Snapshot struct {
	AvailableMicros, HeldMicros, PendingAvailMicros, PendingAllowMicros int64
	Pending                                                             int
	Tier                                                                string
	Suspended                                                           bool
	// FundingAccountID is the account's funding account ("" its own); BudgetReservedMicros
	// the estimates of its open funded requests counted against its budget,
	// BudgetSettledMicros the costs of its finished ones the funder's view does not include.
	FundingAccountID     string
	BudgetReservedMicros int64
	BudgetSettledMicros  int64
}

// Account reports an account's local view; ok is false when it is not cached.
func (t *Table) Account(id string) (Snapshot, bool) {
	ai, ok := t.known(id)
	if !ok {
		return Snapshot{}, false
	}
	a := &t.accounts[ai]
	n := 0
	for cur := a.pendingHead; cur != none; cur = t.pend.at(cur).next {
		n++
	}
	snap := Snapshot{AvailableMicros: a.availableMicros, HeldMicros: a.heldMicros, PendingAvailMicros: a.pendingAvail,
		PendingAllowMicros: a.pendingAllow, Pending: n, Tier: t.tiers[a.tier].name, Suspended: a.suspended}
	if pr, ok := t.projects[ai]; ok {
		if pr.funder != none {
			snap.FundingAccountID = t.id(pr.funder)
		}
		snap.BudgetReservedMicros, snap.BudgetSettledMicros = pr.reservedMicros, pr.settledMicros
	}
	return snap, true
}

// Price prices units on an endpoint with the table's book (used at finish).
func (t *Table) Price(endpoint, model string, u events.Units) (int64, error) {
	ei, ok := t.epIdx[endpoint]
	if !ok {
		return 0, ErrUnknownEndpoint
	}
	return t.endpoints[ei].ep.Price(model, u)
}

// FundedInLogOrder reports whether a request admitted by this admitter, whose event is at
// (partition, offset), is covered when only what precedes it in the events log is counted:
// the ledger's view plus the pending changes (this admitter's and its peers') at lower
// offsets of the same partition, and its own not yet acknowledged ones. Every admitter applies the same rule to its own requests,
// so two admitters racing for the last credits cannot both keep their holds: the later one in
// the log is not covered. If the ledger has already folded the event, the ledger decided and
// the answer is true.
func (t *Table) FundedInLogOrder(accountID string, holdMicros, allowMicros int64, partition int32, offset int64, nowMs int64) bool {
	ai, ok := t.known(accountID)
	if !ok {
		return true
	}
	a := &t.accounts[ai]
	if a.foldedPartition == partition && a.foldedOffset >= offset {
		return true
	}
	var avail, allow int64
	for cur := a.pendingHead; cur != none; cur = t.pend.at(cur).next {
		// This admitter's own admissions whose ack has not come back yet (offset -1) may
		// precede this one in the log: they are counted, which can only err on the safe side.
		if p := t.pend.at(cur); p.offset < 0 || (p.partition == partition && p.offset < offset) {
			avail += p.availMicros
			allow += p.allowMicros
		}
	}
	if a.expiring {
		avail -= t.expiredMicros(ai, nowMs)
	}
	// A split request needs both parts covered.
	if holdMicros > 0 && a.availableMicros+avail < holdMicros {
		return false
	}
	if allowMicros <= 0 {
		return true
	}
	tier := &t.tiers[a.tier].t
	for i := 0; i < min(len(tier.Allowance), WindowsMax); i++ {
		w := &tier.Allowance[i]
		used := allow
		if a.winStartMs[i] == nowMs-mod(nowMs, w.LengthMs) {
			used += a.winUsedMicros[i]
		}
		if w.Micros-used < allowMicros {
			return false
		}
	}
	return true
}

// expiredMicros is the part of account ai's ledger balance that is in grants expired by
// nowMs (wall clock): the admitter stops counting a grant's remainder at its expiry, without
// waiting for the ledger's log time to pass it. It errs on the safe side: the remainder is
// the one the ledger last published, and a local hold may already have spent part of it.
func (t *Table) expiredMicros(ai uint32, nowMs int64) int64 {
	x := t.expiring[ai]
	var sum int64
	for i := range x.micros {
		if int64(x.atSec[i])*1000 <= nowMs {
			sum += x.micros[i]
		}
	}
	return sum
}

// listed reports whether projects (a balance.updated's) lists project pi.
func (t *Table) listed(projects []events.ProjectSpend, pi uint32) bool {
	for i := range projects {
		if t.keyIs(pi, projects[i].ProjectID) {
			return true
		}
	}
	return false
}

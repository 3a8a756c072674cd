package fold

import (
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// State is the folded state of one events-topic partition. It is not safe for concurrent
// use: one goroutine folds, readers synchronise outside.
type State struct {
	cfg       Config
	partition int32
	accounts  map[string]*Account
	// Watermark is the largest event time seen in the partition (ns): the fold's clock.
	watermark int64
	offset    int64
	heap      expiryHeap
	live      int // heap entries that still name an open hold, live grant or parked finish
	endpoints map[string]*endpointLoad
	epOrder   []string
	scratch   []byte
	dedupeN   int                                            // dedupe entries over all accounts
	expiring  [events.MaxExpiringGrants]events.ExpiringGrant // BalanceInto's Expiring, reused
	legacy    []*Account                                     // restored from version-1 records, their dedupe times not yet set
}

// Snapshot is the partition-level part of the persisted state.
type Snapshot struct {
	Partition   int32 `json:"partition"`
	WatermarkNs int64 `json:"watermark_ns"`
	Offset      int64 `json:"offset"`
}

// New returns an empty state for partition. cfg must be valid.
func New(cfg Config, partition int32) *State {
	s := &State{cfg: cfg, partition: partition, accounts: make(map[string]*Account), offset: -1,
		endpoints: make(map[string]*endpointLoad)}
	for _, name := range sortedKeys(cfg.Book.Endpoints) {
		ep := cfg.Book.Endpoints[name]
		s.endpoints[name] = newEndpointLoad(name, ep, &cfg)
		s.epOrder = append(s.epOrder, name)
	}
	return s
}

// Partition returns the partition this state folds.
func (s *State) Partition() int32 { return s.partition }

// Watermark returns the partition's log time.
func (s *State) Watermark() time.Time {
	if s.watermark == 0 {
		return time.Time{}
	}
	return time.Unix(0, s.watermark).UTC()
}

// Offset returns the offset of the last event folded (-1 none).
func (s *State) Offset() int64 { return s.offset }

// Snapshot returns the partition-level record.
func (s *State) Snapshot() Snapshot {
	return Snapshot{Partition: s.partition, WatermarkNs: s.watermark, Offset: s.offset}
}

// Account returns the account or nil.
func (s *State) Account(id string) *Account { return s.accounts[id] }

// Len is the number of accounts.
func (s *State) Len() int { return len(s.accounts) }

// Accounts calls fn for every account, in no particular order.
func (s *State) Accounts(fn func(*Account)) {
	for _, a := range s.accounts {
		fn(a)
	}
}

// EndpointFactor returns the current load factor of endpoint and priority (1000 if unknown).
func (s *State) EndpointFactor(endpoint, priority string) int32 {
	ep := s.endpoints[endpoint]
	if ep == nil {
		return 1000
	}
	return ep.factor[prioIndex(priority)]
}

// Restore installs persisted records: the partition snapshot and the accounts. Call it on
// an empty state before folding. Derived indexes (expiry heap, endpoint load) are rebuilt.
func (s *State) Restore(snap Snapshot, accounts []*Account) {
	s.watermark, s.offset = snap.WatermarkNs, snap.Offset
	for _, a := range accounts {
		s.accounts[a.ID] = a
		s.index(a)
	}
	s.recomputeLoad()
}

// RestoreAccount installs one persisted account (see Restore).
func (s *State) RestoreAccount(a *Account) {
	if old := s.accounts[a.ID]; old != nil {
		s.unindex(old)
	}
	s.accounts[a.ID] = a
	s.index(a)
}

// RestoreSnapshot installs the partition-level record and recomputes the load factors.
func (s *State) RestoreSnapshot(snap Snapshot) {
	s.watermark, s.offset = snap.WatermarkNs, snap.Offset
	s.recomputeLoad()
}

// recomputeLoad sets the load factors from the restored holds. The snapshot carries no
// in-flight count: index counts the restored holds by the current rule (AccountSharePermille,
// PartitionsTotal), whatever version or settings wrote them. What was published before is
// not known, so each endpoint publishes its factors again at its next in-flight change.
func (s *State) recomputeLoad() {
	for _, name := range s.epOrder {
		s.endpoints[name].recompute(s.cfg.PartitionsTotal)
	}
}

func (s *State) index(a *Account) {
	for i := range a.Holds {
		h := &a.Holds[i]
		s.schedule(expiry{atNs: h.ExpiresNs, acct: a, kind: expHold, hash: hashID(h.RequestID)})
	}
	s.indexLoad(a, 1)
	for i := range a.Grants {
		if g := &a.Grants[i]; g.ExpiresNs != 0 {
			s.schedule(expiry{atNs: g.ExpiresNs, acct: a, kind: expGrant, hash: hashID(g.ID)})
		}
	}
	for i := range a.Parked {
		p := &a.Parked[i]
		s.schedule(expiry{atNs: p.AtNs + s.cfg.ParkTimeoutNs, acct: a, kind: expParked, hash: hashID(p.RequestID)})
	}
	s.dedupeN += a.Dedupe.Len()
	a.pruneNs = 0
	if a.legacy {
		s.legacy = append(s.legacy, a) // its dedupe times are set to the watermark at the next fold
	} else {
		s.schedulePrune(a)
	}
}

func (s *State) unindex(a *Account) {
	a.replaced = true
	s.live -= len(a.Holds) + len(a.Parked)
	if a.pruneNs != 0 {
		s.live--
	}
	s.dedupeN -= a.Dedupe.Len()
	for i := range a.Grants {
		if a.Grants[i].ExpiresNs != 0 {
			s.live--
		}
	}
	s.indexLoad(a, -1)
	// Heap entries of the old object are dropped lazily: they no longer match the map.
}

// Apply folds one event. It never fails: every valid event has a defined effect, and
// oddities are recorded as anomalies. Events at or below the partition's offset (folded
// before a restore) are skipped; events at or below the account's stored offset (a replay
// after restore) only advance the clock.
func (s *State) Apply(in Input, out *Output) {
	if in.Offset <= s.offset {
		// Folded before a restore whose committed offset was older than its partition record
		// (a crash between the record and the commit): its effects, and its time, are in the
		// state. It must not sweep either: what became due at the restored clock is swept at
		// the next new event, as in the straight fold (a sweep here would remember an expiry at
		// an earlier time, and the dedupe memory would forget it sooner).
		return
	}
	ev := in.Event
	t := ev.Time.UnixNano()
	if in.RecordTimeNs > 0 && ev.Time.Sub(time.Unix(0, in.RecordTimeNs)) > time.Duration(s.cfg.FutureSkewMaxNs) {
		if in.Offset > s.offset {
			s.offset = in.Offset
		}
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyFutureTime, AccountID: ev.Subject, EventID: ev.ID,
			RequestID: requestID(ev), Offset: in.Offset, HorizonNs: in.RecordTimeNs + s.cfg.FutureSkewMaxNs})
		return
	}
	if t > s.watermark {
		s.watermark = t
	}
	if in.Offset > s.offset {
		s.offset = in.Offset
	}
	if s.legacy != nil {
		s.stampLegacy()
	}
	s.sweep(out)
	if _, tick := ev.Payload.(events.ClockTick); tick {
		return // a tick only moves the clock: the sweep above did its work
	}
	acctID := ev.Subject
	if acctID == "" {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyUnexpectedType, EventID: ev.ID})
		return
	}
	switch ev.Payload.(type) {
	case events.RequestStarted, events.RequestRejected, events.RequestFinished, events.CreditsGranted,
		events.CreditsAdjusted, events.AccountUpdated, events.AbuseFlagged:
	default:
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyUnexpectedType, AccountID: acctID, EventID: ev.ID})
		return
	}
	a := s.accounts[acctID]
	if a != nil && in.Offset <= a.Offset {
		return // already folded before a restart: state and offsets were persisted together
	}
	// An event older than the horizon may have been applied and forgotten: refuse it.
	horizon := s.cutoff()
	if a != nil && a.Dedupe.FloorNs >= horizon {
		horizon = a.Dedupe.FloorNs + 1
	}
	if t < horizon {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyTooLate, AccountID: acctID, EventID: ev.ID,
			RequestID: requestID(ev), Offset: in.Offset, HorizonNs: horizon})
		return
	}
	if a == nil {
		a = &Account{ID: acctID, Offset: -1}
		s.accounts[acctID] = a
	}
	a.Offset = in.Offset
	out.touch(a)
	switch p := ev.Payload.(type) {
	case events.RequestStarted:
		s.start(a, ev, &p, out)
	case events.RequestFinished:
		s.finish(a, ev, &p, out)
	case events.RequestRejected:
		if s.duplicateEvent(a, ev, out) {
			return
		}
		s.rollHistory(a, t)
		a.ReqsCur++
		a.RejsCur++
	case events.CreditsGranted:
		s.grant(a, ev, &p, out)
	case events.CreditsAdjusted:
		s.adjust(a, ev, &p, out)
	case events.AccountUpdated:
		if s.duplicateEvent(a, ev, out) {
			return
		}
		a.Tier, a.Priority, a.Suspended = s.internTier(p.Tier), internPriority(p.Priority), p.Suspended
	case events.AbuseFlagged:
		if s.duplicateEvent(a, ev, out) {
			return
		}
		s.flag(a, t, &p)
	}
	s.history(a, out)
}

func requestID(ev *events.Event) string {
	switch p := ev.Payload.(type) {
	case events.RequestStarted:
		return p.RequestID
	case events.RequestFinished:
		return p.RequestID
	case events.RequestRejected:
		return p.RequestID
	}
	return ""
}

// duplicateEvent checks and remembers the event id of an event that has no business id
// the fold tracks (request.rejected, account.updated, abuse.flagged).
func (s *State) duplicateEvent(a *Account, ev *events.Event, out *Output) bool {
	k := hashID(ev.ID) ^ saltEvent
	if s.seen(a, k, ev.Time.UnixNano(), out) {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID})
		return true
	}
	s.remember(a, k, out)
	return false
}

func (s *State) internTier(name string) string {
	for k := range s.cfg.Book.Tiers {
		if k == name {
			return k
		}
	}
	return name
}

func (s *State) internEndpoint(name string) string {
	if ep := s.endpoints[name]; ep != nil {
		return ep.name
	}
	return name
}

func internPriority(p string) string {
	switch p {
	case events.PriorityCritical:
		return events.PriorityCritical
	case events.PriorityStandard:
		return events.PriorityStandard
	case events.PriorityBatch:
		return events.PriorityBatch
	}
	return p
}

func (s *State) start(a *Account, ev *events.Event, p *events.RequestStarted, out *Output) {
	rh := hashID(p.RequestID)
	if a.findHold(p.RequestID) >= 0 || s.seenRequest(a, rh, ev.Time.UnixNano(), out) {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID})
		return
	}
	s.rollHistory(a, ev.Time.UnixNano())
	a.ReqsCur++
	if len(a.Holds) >= s.cfg.MaxHoldsPerAccount {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyTooManyHolds, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID})
		s.remember(a, rh^saltNoHold, out) // a copy of this start is a duplicate; a finish is parked as before
		return
	}
	hold := Hold{RequestID: p.RequestID, EventID: ParseUUID(ev.ID), Endpoint: s.internEndpoint(p.Endpoint), Priority: uint8(prioIndex(p.Priority)),
		StartNs: ev.Time.UnixNano(), ExpiresNs: p.HoldExpiresAt.UnixNano(), AllowanceMicros: p.AllowanceMicros}
	// Both sources at once (split funding): the allowance reservation, then the credit hold.
	switch {
	case p.AllowanceMicros > 0 && p.HoldMicros > 0:
		hold.Funding = fundSplit
	case p.AllowanceMicros > 0:
		hold.Funding = fundAllowance
	default:
		hold.Funding = fundCredits
	}
	if p.AllowanceMicros > 0 {
		s.useAllowance(a, hold.StartNs, hold.StartNs, p.AllowanceMicros)
	}
	amt := p.HoldMicros
	if amt > a.AvailableMicros {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyHoldShort, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID})
		amt = a.AvailableMicros
	}
	if amt > 0 {
		a.burn(amt, &hold)
		a.HeldMicros += amt
		hold.HoldMicros = amt
		out.Entries = append(out.Entries,
			Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: -amt, Kind: "hold", RequestID: p.RequestID, At: ev.Time},
			Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerHeld, AmountMicros: amt, Kind: "hold", RequestID: p.RequestID, At: ev.Time})
	}
	a.Holds = append(a.Holds, hold)
	s.schedule(expiry{atNs: hold.ExpiresNs, acct: a, kind: expHold, hash: rh})
	s.inflight(a, &a.Holds[len(a.Holds)-1], 1, out)
	// A finish that came first is settled now.
	if i := a.findParked(p.RequestID); i >= 0 {
		pk := a.Parked[i]
		a.removeParked(i)
		s.live--
		s.settle(a, len(a.Holds)-1, pk.EventID, pk.Status, pk.CostMicros, time.Unix(0, pk.AtNs).UTC(), out)
	}
}

func (s *State) finish(a *Account, ev *events.Event, p *events.RequestFinished, out *Output) {
	if i := a.findHold(p.RequestID); i >= 0 {
		s.settle(a, i, ev.ID, p.Status, p.CostMicros, ev.Time, out)
		return
	}
	rh := hashID(p.RequestID)
	switch {
	case s.seen(a, rh, ev.Time.UnixNano(), out):
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID})
	case a.Dedupe.has(rh | 1):
		// The hold expired before the finish: charge late from the available balance. The
		// request is remembered as settled from now on (a copy of this finish is a duplicate).
		s.remember(a, rh, out)
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyLateFinish, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID})
		s.charge(a, ev.ID, "late_charge", p.RequestID, nil, p.CostMicros, ev.Time, out)
		s.settledOK(a, p.Status)
	case a.findParked(p.RequestID) >= 0:
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID})
	case len(a.Parked) < s.cfg.MaxParkedPerAccount:
		t := ev.Time.UnixNano()
		a.Parked = append(a.Parked, Parked{RequestID: p.RequestID, EventID: ev.ID, Endpoint: p.Endpoint, Status: p.Status, CostMicros: p.CostMicros, AtNs: t})
		s.schedule(expiry{atNs: t + s.cfg.ParkTimeoutNs, acct: a, kind: expParked, hash: rh})
	default:
		s.unknownFinish(a, ev.ID, p.RequestID, p.CostMicros, ev.Time, out)
	}
}

func (s *State) unknownFinish(a *Account, eventID, requestID string, cost int64, at time.Time, out *Output) {
	s.remember(a, hashID(requestID), out)
	out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyUnknownFinish, AccountID: a.ID, EventID: eventID, RequestID: requestID})
	s.charge(a, eventID, "unknown_finish_charge", requestID, nil, cost, at, out)
}

// settle posts the charge of hold i and releases the rest, by the funding waterfall: the
// allowance covers what it can (its reservation plus what every window still has left at
// settlement), then the credit hold, then (price book policy) the available balance, and
// what is left is overage. One transaction, caused by the finish event.
func (s *State) settle(a *Account, i int, causeID, status string, cost int64, at time.Time, out *Output) {
	h := a.Holds[i]
	a.removeHold(i)
	s.live--
	s.remember(a, hashID(h.RequestID), out)
	s.inflight(a, &h, -1, out)
	s.settledOK(a, status)
	fromAllow := s.allowanceShare(a, &h, cost, at.UnixNano())
	if fromAllow != h.AllowanceMicros {
		// The windows are corrected to what the allowance actually paid.
		s.useAllowance(a, h.StartNs, at.UnixNano(), fromAllow-h.AllowanceMicros)
	}
	s.charge(a, causeID, "charge", h.RequestID, &h, cost-fromAllow, at, out)
}

// allowanceShare is the part of cost the allowance pays at settlement time nowNs: at most
// the hold's reservation plus the room every window of the account's tier has left (the
// reservation is already counted in the windows). A request whose start and finish fall in
// different windows of any length gets no more than its reservation: its window closed. A
// request funded by credits alone reserved no allowance (the windows had no room when it
// was admitted) and gets none at settlement either.
func (s *State) allowanceShare(a *Account, h *Hold, cost, nowNs int64) int64 {
	if h.AllowanceMicros <= 0 {
		return 0
	}
	return min(cost, h.AllowanceMicros+s.allowanceRoom(a, h.StartNs, nowNs))
}

// allowanceRoom is the least room (limit − used, at least 0) over the tier's windows at
// nowNs, or 0 when the tier has none, startNs lies in another window than nowNs, or log time
// (the watermark) has already left the window at nowNs (a finish stamped by a clock behind
// the others): a closed window's use is no longer known, and it must not read as unused.
func (s *State) allowanceRoom(a *Account, startNs, nowNs int64) int64 {
	tier, _ := s.cfg.Book.Tier(a.Tier)
	room := int64(-1)
	for i, w := range tier.Allowance {
		if i >= windowsMax {
			break
		}
		startMs, nowMs, wmMs := startNs/1e6, nowNs/1e6, s.watermark/1e6
		ws := nowMs - mod(nowMs, w.LengthMs)
		if startMs-mod(startMs, w.LengthMs) != ws || wmMs-mod(wmMs, w.LengthMs) != ws {
			return 0
		}
		used := int64(0)
		if win := a.window(i); win.StartMs == ws {
			used = win.UsedMicros
		}
		r := max(w.Micros-used, 0)
		if room < 0 || r < room {
			room = r
		}
	}
	return max(room, 0)
}

// charge posts cost (the part the allowance did not pay) against hold h (nil for late and
// unknown finishes, which have none): the hold's parts are consumed in burn order, the rest
// of them released to the grants they came from (a part whose grant is gone is breakage),
// and a cost above the hold is paid from the available balance (price book policy), the
// rest being overage. Lines: held −hold, available +released−paid, breakage +gone,
// overage −unpaid, revenue +cost.
func (s *State) charge(a *Account, causeID, kind, requestID string, h *Hold, cost int64, at time.Time, out *Output) {
	var held int64
	if h != nil {
		held = h.HoldMicros
	}
	if held == 0 && cost == 0 {
		return
	}
	var availDelta, unpaid, gone int64
	if cost <= held {
		var back int64
		back, gone = a.release(h, cost)
		availDelta = back
	} else {
		extra := cost - held
		pay := min(extra, a.AvailableMicros)
		if !s.cfg.Book.ChargesExcessFromAvailable() {
			pay = 0 // price book policy hold_only: all of the excess is overage
		}
		a.burn(pay, nil)
		availDelta, unpaid = -pay, extra-pay
	}
	a.HeldMicros -= held
	a.ChargedMicros += cost - unpaid
	a.OverageMicros += unpaid
	a.BreakageMicros += gone
	if held != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerHeld, AmountMicros: -held, Kind: kind, RequestID: requestID, At: at})
	}
	if availDelta != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: availDelta, Kind: kind, RequestID: requestID, At: at})
	}
	if gone != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerBreakage, AmountMicros: gone, Kind: kind, RequestID: requestID, At: at})
	}
	if unpaid != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerOverageReceivable, AmountMicros: -unpaid, Kind: kind, RequestID: requestID, At: at})
	}
	if cost != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerRevenue, AmountMicros: cost, Kind: kind, RequestID: requestID, At: at})
	}
}

func (s *State) settledOK(a *Account, status string) {
	if status == events.StatusSucceeded {
		a.SettledOK++
	}
}

func (s *State) grant(a *Account, ev *events.Event, p *events.CreditsGranted, out *Output) {
	gh := hashID(p.GrantID)
	if a.findGrant(p.GrantID) >= 0 || s.seen(a, gh^saltGrant, ev.Time.UnixNano(), out) {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID})
		return
	}
	var expNs int64
	if p.ExpiresAt != nil {
		expNs = p.ExpiresAt.UnixNano() // events.Validate bounds it below 2200: no wrap-around
	}
	if !addOK(a.AvailableMicros, p.AmountMicros) || !addOK(a.GrantedMicros, p.AmountMicros) {
		s.overflow(a, ev, a.Offset, out)
		return
	}
	a.GrantedMicros += p.AmountMicros
	a.AvailableMicros += p.AmountMicros
	out.Entries = append(out.Entries,
		Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: p.AmountMicros, Kind: "grant", GrantID: p.GrantID, At: ev.Time},
		Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerGrantsIssued, AmountMicros: -p.AmountMicros, Kind: "grant", GrantID: p.GrantID, At: ev.Time})
	if expNs != 0 && expNs <= s.watermark {
		// Already expired in log time: all of it is breakage at once, dated no earlier than
		// the grant itself (a breakage before its grant would make a statement close negative).
		s.remember(a, gh^saltGrant, out)
		s.breakage(a, events.DerivedID(ev.ID, "breakage"), p.GrantID, p.AmountMicros, time.Unix(0, max(expNs, ev.Time.UnixNano())).UTC(), out)
		return
	}
	if len(a.Grants) >= s.cfg.MaxGrantsPerAccount {
		s.remember(a, gh^saltGrant, out)
		a.ExtraMicros += p.AmountMicros
		return
	}
	a.insertGrant(Grant{ID: p.GrantID, EventID: ParseUUID(ev.ID), Amount: p.AmountMicros, Remaining: p.AmountMicros, Priority: p.Priority, ExpiresNs: expNs})
	if expNs != 0 {
		s.schedule(expiry{atNs: expNs, acct: a, kind: expGrant, hash: gh})
	}
}

// addOK reports whether x + y fits int64, for y ≥ 0 (every amount the fold adds is).
func addOK(x, y int64) bool { return x <= 1<<63-1-y }

// overflow records a grant or adjustment refused because applying it would overflow one of
// the account's balances or running totals. It is not applied (its id is not remembered, so
// a corrected copy can still count); the engine dead-letters it with the reason. The check
// reads only the folded state, so a replay refuses exactly the same events.
func (s *State) overflow(a *Account, ev *events.Event, off int64, out *Output) {
	out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyOverflow, AccountID: a.ID, EventID: ev.ID, Offset: off})
}

func (s *State) breakage(a *Account, cause, grantID string, amt int64, at time.Time, out *Output) {
	if amt == 0 {
		return
	}
	a.AvailableMicros -= amt
	a.BreakageMicros += amt
	out.touch(a)
	out.Entries = append(out.Entries,
		Entry{Cause: cause, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: -amt, Kind: "breakage", GrantID: grantID, At: at},
		Entry{Cause: cause, AccountID: a.ID, LedgerAccount: events.LedgerBreakage, AmountMicros: amt, Kind: "breakage", GrantID: grantID, At: at})
}

func (s *State) adjust(a *Account, ev *events.Event, p *events.CreditsAdjusted, out *Output) {
	ah := hashID(p.AdjustmentID) ^ saltAdjust
	if s.seen(a, ah, ev.Time.UnixNano(), out) {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID})
		return
	}
	amt := p.AmountMicros
	if amt > 0 && (!addOK(a.AvailableMicros, amt) || !addOK(a.ExtraMicros, amt) || !addOK(a.AdjustedMicros, amt)) ||
		amt < 0 && (!addOK(a.OverageMicros, -amt) || !addOK(-a.AdjustedMicros, -amt)) {
		s.overflow(a, ev, a.Offset, out)
		return
	}
	s.remember(a, ah, out)
	if amt > 0 {
		a.ExtraMicros += amt
		a.AvailableMicros += amt
		a.AdjustedMicros += amt
		out.Entries = append(out.Entries,
			Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: amt, Kind: "adjustment", At: ev.Time},
			Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerAdjustments, AmountMicros: -amt, Kind: "adjustment", At: ev.Time})
		return
	}
	// A debit takes what is available; the rest becomes overage receivable.
	pay := min(-amt, a.AvailableMicros)
	a.burn(pay, nil)
	a.AdjustedMicros -= pay
	unpaid := -amt - pay
	a.OverageMicros += unpaid
	if pay != 0 {
		out.Entries = append(out.Entries, Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: -pay, Kind: "adjustment", At: ev.Time})
	}
	if unpaid != 0 {
		out.Entries = append(out.Entries, Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerOverageReceivable, AmountMicros: -unpaid, Kind: "adjustment", At: ev.Time})
	}
	out.Entries = append(out.Entries, Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerAdjustments, AmountMicros: -amt, Kind: "adjustment", At: ev.Time})
}

// useAllowance adds delta to every allowance window of the account's tier that contains
// both the request's start (startNs) and now (nowNs); windows are aligned to the epoch.
func (s *State) useAllowance(a *Account, startNs, nowNs, delta int64) {
	tier, _ := s.cfg.Book.Tier(a.Tier)
	for i, w := range tier.Allowance {
		if i >= windowsMax {
			break
		}
		startMs := startNs / 1e6
		ws := startMs - mod(startMs, w.LengthMs)
		nowMs := nowNs / 1e6
		if nowMs-mod(nowMs, w.LengthMs) != ws {
			continue // the request straddles windows: its window is closed, leave it
		}
		if a.Windows == nil {
			a.Windows = new([windowsMax]Window) // once per account that uses an allowance
		}
		win := &a.Windows[i]
		if win.StartMs != ws {
			if ws < win.StartMs {
				continue // an older window than the one tracked
			}
			win.StartMs, win.UsedMicros = ws, 0
		}
		win.UsedMicros = max(0, win.UsedMicros+delta)
	}
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

// AllowanceWindows returns the account's current allowance usage per tier window at log
// time nowNs (windows that rolled over report zero use).
func (s *State) AllowanceWindows(a *Account, nowNs int64, dst []events.AllowanceWindow) []events.AllowanceWindow {
	tier, _ := s.cfg.Book.Tier(a.Tier)
	nowMs := nowNs / 1e6
	for i, w := range tier.Allowance {
		if i >= windowsMax {
			break
		}
		ws := nowMs - mod(nowMs, w.LengthMs)
		used := int64(0)
		if win := a.window(i); win.StartMs == ws {
			used = win.UsedMicros
		}
		dst = append(dst, events.AllowanceWindow{Window: w.Name, Start: time.UnixMilli(ws).UTC(), UsedMicros: used})
	}
	return dst
}

// Balance returns the balance.updated view of a.
func (s *State) Balance(a *Account) events.BalanceUpdated {
	bu := s.BalanceInto(a, nil)
	bu.Expiring = append([]events.ExpiringGrant(nil), bu.Expiring...)
	return bu
}

// BalanceInto is Balance with the allowance windows appended to win, so that a caller that
// reuses win does not allocate. Its Expiring is the State's own buffer: valid until the next
// call.
func (s *State) BalanceInto(a *Account, win []events.AllowanceWindow) events.BalanceUpdated {
	tier := a.Tier
	if tier == "" {
		tier = s.cfg.Book.DefaultTier
	}
	return events.BalanceUpdated{
		AccountID: a.ID, Tier: tier, Priority: a.Priority, Suspended: a.Suspended,
		AvailableMicros: a.AvailableMicros, HeldMicros: a.HeldMicros, OverageMicros: a.OverageMicros,
		Allowance: s.AllowanceWindows(a, s.watermark, win), Expiring: s.expiringGrants(a),
		Partition: s.partition, Offset: a.Offset,
	}
}

// expiringGrants lists a's earliest-expiring grants with a remainder, in expiry order, at
// most events.MaxExpiringGrants; when there are more, the last entry also carries the
// remainder of every later-expiring one, at its own (earlier) expiry. An admitter stops
// counting an entry once its wall clock passes the expiry: it never counts a grant past its
// expiry, and at worst stops counting a later grant early.
func (s *State) expiringGrants(a *Account) []events.ExpiringGrant {
	const k = events.MaxExpiringGrants
	var at [k + 1]int64
	var rem [k + 1]int64
	n := 0
	var rest int64 // remainders pushed out of the k earliest
	for i := range a.Grants {
		g := &a.Grants[i]
		if g.ExpiresNs == 0 || g.Remaining == 0 {
			continue
		}
		j := n
		for j > 0 && at[j-1] > g.ExpiresNs {
			at[j], rem[j] = at[j-1], rem[j-1]
			j--
		}
		at[j], rem[j] = g.ExpiresNs, g.Remaining
		if n < k {
			n++
		} else {
			rest += rem[k]
		}
	}
	if n == k {
		rem[k-1] += rest
	}
	for i := range n {
		s.expiring[i] = events.ExpiringGrant{ExpiresAt: time.Unix(0, at[i]).UTC(), RemainingMicros: rem[i]}
	}
	return s.expiring[:n:n]
}

// schedule adds a live expiry. When stale entries (of settled holds) outnumber half the live
// ones the heap is rebuilt, so its length stays below heapMax(live): every account with
// remembered ids has a live entry (its prune), so the stale slack is memory per account.
func (s *State) schedule(e expiry) {
	s.live++
	if len(s.heap) >= heapMax(s.live) {
		q := s.heap[:0]
		for _, x := range s.heap {
			if s.isLive(&x) {
				q = append(q, x)
			}
		}
		clear(s.heap[len(q):])
		s.heap = q
		s.heap.init()
	}
	s.heap.push(e)
}

// heapMax is the length at which the expiry heap is rebuilt: 1.5 × live + 1024.
func heapMax(live int) int { return live + live/2 + 1024 }

func (s *State) isLive(e *expiry) bool {
	a := e.acct
	if a.replaced {
		return false
	}
	switch e.kind {
	case expHold:
		for j := range a.Holds {
			if a.Holds[j].ExpiresNs == e.atNs && hashID(a.Holds[j].RequestID) == e.hash {
				return true
			}
		}
	case expGrant:
		for j := range a.Grants {
			if a.Grants[j].ExpiresNs == e.atNs && hashID(a.Grants[j].ID) == e.hash {
				return true
			}
		}
	case expParked:
		for j := range a.Parked {
			if a.Parked[j].AtNs+s.cfg.ParkTimeoutNs == e.atNs && hashID(a.Parked[j].RequestID) == e.hash {
				return true
			}
		}
	case expDedupe:
		return a.pruneNs == e.atNs
	}
	return false
}

// sweep expires everything due at the watermark, in (time, kind, hash) order.
func (s *State) sweep(out *Output) {
	for len(s.heap) > 0 && s.heap[0].atNs < s.watermark {
		e := s.heap.pop()
		a := e.acct
		if a.replaced {
			continue // replaced by a restore
		}
		switch e.kind {
		case expHold:
			s.expireHold(a, e, out)
		case expGrant:
			s.expireGrant(a, e, out)
		case expParked:
			s.expireParked(a, e, out)
		case expDedupe:
			if a.pruneNs == e.atNs {
				a.pruneNs = 0
				s.live--
				s.prune(a)
				s.schedulePrune(a)
			}
		}
	}
}

func (s *State) expireHold(a *Account, e expiry, out *Output) {
	i := -1
	for j := range a.Holds {
		if a.Holds[j].ExpiresNs == e.atNs && hashID(a.Holds[j].RequestID) == e.hash {
			i = j
			break
		}
	}
	if i < 0 {
		return // settled already
	}
	h := a.Holds[i]
	a.removeHold(i)
	s.live--
	s.remember(a, hashID(h.RequestID)|1, out)
	s.inflight(a, &h, -1, out)
	out.touch(a)
	at := time.Unix(0, h.ExpiresNs).UTC()
	startID := h.EventID.String()
	id := events.DerivedID(startID, "expired")
	x := events.RequestExpired{RequestID: h.RequestID, AccountID: a.ID, Endpoint: h.Endpoint, StartedEventID: startID, ExpiredAt: at,
		Funding: fundingName(h.Funding), HoldMicros: h.HoldMicros, AllowanceMicros: h.AllowanceMicros,
		ReleasedMicros: h.HoldMicros + h.AllowanceMicros}
	if h.AllowanceMicros != 0 {
		s.useAllowance(a, h.StartNs, h.StartNs, -h.AllowanceMicros)
	}
	if h.HoldMicros != 0 {
		back, gone := a.release(&h, 0)
		a.HeldMicros -= h.HoldMicros
		a.BreakageMicros += gone
		out.Entries = append(out.Entries,
			Entry{Cause: id, AccountID: a.ID, LedgerAccount: events.LedgerHeld, AmountMicros: -h.HoldMicros, Kind: "expiry", RequestID: h.RequestID, At: at})
		if back != 0 {
			out.Entries = append(out.Entries, Entry{Cause: id, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: back, Kind: "expiry", RequestID: h.RequestID, At: at})
		}
		if gone != 0 {
			out.Entries = append(out.Entries, Entry{Cause: id, AccountID: a.ID, LedgerAccount: events.LedgerBreakage, AmountMicros: gone, Kind: "expiry", RequestID: h.RequestID, At: at})
		}
	}
	out.Expired = append(out.Expired, Expired{ID: id, Data: x})
}

func fundingName(f uint8) string {
	switch f {
	case fundAllowance:
		return events.FundingAllowance
	case fundSplit:
		return events.FundingSplit
	}
	return events.FundingCredits
}

func (s *State) expireGrant(a *Account, e expiry, out *Output) {
	i := -1
	for j := range a.Grants {
		if a.Grants[j].ExpiresNs == e.atNs && hashID(a.Grants[j].ID) == e.hash {
			i = j
			break
		}
	}
	if i < 0 {
		return
	}
	g := a.Grants[i]
	a.Grants = append(a.Grants[:i], a.Grants[i+1:]...)
	s.live--
	s.remember(a, e.hash^saltGrant, out)
	out.touch(a)
	s.breakage(a, events.DerivedID(g.EventID.String(), "breakage"), g.ID, g.Remaining, time.Unix(0, g.ExpiresNs).UTC(), out)
}

func (s *State) expireParked(a *Account, e expiry, out *Output) {
	for j := range a.Parked {
		p := a.Parked[j]
		if p.AtNs+s.cfg.ParkTimeoutNs == e.atNs && hashID(p.RequestID) == e.hash {
			a.removeParked(j)
			s.live--
			out.touch(a)
			s.unknownFinish(a, p.EventID, p.RequestID, p.CostMicros, time.Unix(0, p.AtNs).UTC(), out)
			return
		}
	}
}

// burn takes amt (≤ available) from the grants in burn order, then from the pool (Extra).
// With h it records in h where each part came from.
func (a *Account) burn(amt int64, h *Hold) {
	a.AvailableMicros -= amt
	for i := range a.Grants {
		if amt == 0 {
			return
		}
		g := &a.Grants[i]
		take := min(amt, g.Remaining)
		if take == 0 {
			continue
		}
		g.Remaining -= take
		amt -= take
		if h != nil {
			h.addPart(g.EventID, take)
		}
	}
	if amt != 0 {
		a.ExtraMicros -= amt
		if h != nil {
			h.addPart(UUID{}, amt)
		}
	}
}

// release consumes the first spent micros of hold h's parts (in burn order) and gives the
// rest back, each part to the grant it came from. back is what returned to available;
// gone is what belonged to grants that expired (or were removed) while held: breakage, not
// available. A part of the pool returns to the pool, and so does the whole release of a hold
// that recorded no parts (restored from a version-2 record).
func (a *Account) release(h *Hold, spent int64) (back, gone int64) {
	if h.NumParts() == 0 {
		back = h.HoldMicros - spent
		a.ExtraMicros += back
		a.AvailableMicros += back
		return back, 0
	}
	for i := 0; i < h.NumParts(); i++ {
		p := h.Part(i)
		use := min(spent, p.Micros)
		spent -= use
		rest := p.Micros - use
		if rest == 0 {
			continue
		}
		if p.Grant == (UUID{}) {
			a.ExtraMicros += rest
			back += rest
			continue
		}
		j := a.findGrantByEvent(p.Grant)
		if j < 0 {
			gone += rest
			continue
		}
		a.Grants[j].Remaining += rest
		back += rest
	}
	a.AvailableMicros += back
	return back, gone
}

func (a *Account) findGrantByEvent(id UUID) int {
	for i := range a.Grants {
		if a.Grants[i].EventID == id {
			return i
		}
	}
	return -1
}

// grantLess is the burn order: priority (lower first), then earliest expiry (never last),
// then grant id.
func grantLess(x, y *Grant) bool {
	if x.Priority != y.Priority {
		return x.Priority < y.Priority
	}
	xe, ye := x.ExpiresNs, y.ExpiresNs
	if xe == 0 {
		xe = 1<<63 - 1
	}
	if ye == 0 {
		ye = 1<<63 - 1
	}
	if xe != ye {
		return xe < ye
	}
	return x.ID < y.ID
}

func (a *Account) insertGrant(g Grant) {
	i := len(a.Grants)
	for i > 0 && grantLess(&g, &a.Grants[i-1]) {
		i--
	}
	a.Grants = append(a.Grants, Grant{})
	copy(a.Grants[i+1:], a.Grants[i:])
	a.Grants[i] = g
}

func (a *Account) findGrant(id string) int {
	for i := range a.Grants {
		if a.Grants[i].ID == id {
			return i
		}
	}
	return -1
}

func (a *Account) findHold(id string) int {
	for i := range a.Holds {
		if a.Holds[i].RequestID == id {
			return i
		}
	}
	return -1
}

func (a *Account) removeHold(i int) {
	last := len(a.Holds) - 1
	a.Holds[i] = a.Holds[last]
	a.Holds[last] = Hold{}
	a.Holds = a.Holds[:last]
	if len(a.Holds) == 0 && cap(a.Holds) > 16 {
		a.Holds = nil // give back a burst's memory
	}
}

func (a *Account) findParked(id string) int {
	for i := range a.Parked {
		if a.Parked[i].RequestID == id {
			return i
		}
	}
	return -1
}

func (a *Account) removeParked(i int) {
	a.Parked = append(a.Parked[:i], a.Parked[i+1:]...)
	if len(a.Parked) == 0 {
		a.Parked = nil
	}
}

// hashID is FNV-1a 64 with the low bit cleared (the rings use it as a flag).
func hashID(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h &^ 1
}

// cutoff is the dedupe horizon of the partition: ids remembered before it are forgotten.
func (s *State) cutoff() int64 {
	c := s.watermark - s.cfg.DedupeWindowNs
	if c > s.watermark {
		return -1 << 63
	}
	return c
}

// prune forgets a's ids remembered before the horizon.
func (s *State) prune(a *Account) {
	if d := &a.Dedupe; d.n > 0 && d.headAt() < s.cutoff() {
		s.dedupeN -= d.prune(s.cutoff())
	}
}

// seen reports whether key is remembered by a. A copy found with an event time (t) later
// than the time its id was remembered at renews the id at the watermark: an id must be
// remembered at least as long as every event it stopped (a re-send with a new event id and a
// later time would otherwise outlive the id that stopped it).
func (s *State) seen(a *Account, key uint64, t int64, out *Output) bool {
	s.prune(a)
	at, ok := a.Dedupe.lookup(key)
	if ok && at < t {
		s.remember(a, key, out)
	}
	return ok
}

// seenRequest reports whether the request hashed rh was settled, expired or refused a hold
// (renewed as seen does).
func (s *State) seenRequest(a *Account, rh uint64, t int64, out *Output) bool {
	s.prune(a)
	k, at, ok := a.Dedupe.lookupRequest(rh)
	if ok && at < t {
		s.remember(a, k, out)
	}
	return ok
}

// remember adds key to a's memory at the watermark. Beyond the per-account bound the oldest
// ids are evicted: counted, and the account's dedupe floor rises to their time.
func (s *State) remember(a *Account, key uint64, out *Output) {
	d := &a.Dedupe
	s.prune(a)
	for d.n > 0 && d.n >= uint32(s.cfg.MaxDedupePerAccount) {
		d.popHead()
		s.dedupeN--
		out.Evicted++
	}
	at := s.watermark
	if d.n > 0 {
		// A restore can rewind the clock below ids persisted by a batch whose partition record
		// was not written; keep the memory in time order.
		_, tail := d.At(d.Len() - 1)
		at = max(at, tail)
	}
	d.appendCapped(key, at, s.cfg.MaxDedupePerAccount)
	s.dedupeN++
	if a.pruneNs == 0 {
		s.schedulePrune(a)
	}
}

// schedulePrune schedules the pruning of a's memory one window after its oldest id is
// forgotten. Accounts in use are pruned as they are folded; this bounds the memory of idle
// ones, whose rings are released when empty.
func (s *State) schedulePrune(a *Account) {
	if a.Dedupe.n == 0 {
		return
	}
	at := a.Dedupe.headAt() + 2*s.cfg.DedupeWindowNs
	if at < a.Dedupe.headAt() {
		at = 1<<63 - 1
	}
	if at == 0 {
		at = 1
	}
	a.pruneNs = at
	s.schedule(expiry{atNs: at, acct: a, kind: expDedupe})
}

// stampLegacy sets the dedupe times of accounts restored from version-1 records (which
// carried no times) to the watermark: from now on they are kept for a full window.
func (s *State) stampLegacy() {
	for _, a := range s.legacy {
		if a.replaced || !a.legacy {
			continue
		}
		a.legacy = false
		d := &a.Dedupe
		first, second := d.segments()
		for _, seg := range [2][]dedupeEntry{first, second} {
			for i := range seg {
				seg[i].atNs = s.watermark
			}
		}
		s.schedulePrune(a)
	}
	s.legacy = nil
}

// DedupeEntries is the number of ids remembered over all accounts of the partition.
func (s *State) DedupeEntries() int { return s.dedupeN }

var _ = pricebook.KindVideo

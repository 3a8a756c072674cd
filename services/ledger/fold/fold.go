package fold

import (
	"time"

	"github.com/tallyhq/tally/shared/events"
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

// RestoreAccount installs one persisted account, replacing any earlier record of it, and
// rebuilds its derived indexes (expiry heap, endpoint load). A restore installs every
// account, then RestoreSnapshot, on a new state before folding.
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
		s.schedule(expiry{atNs: h.ExpiresNs, acct: a, kind: expHold, hash: requestKey(h.ProjectID, h.RequestID)})
	}
	s.indexLoad(a, 1)
	for i := range a.Grants {
		if g := &a.Grants[i]; g.ExpiresNs != 0 {
			s.schedule(expiry{atNs: g.ExpiresNs, acct: a, kind: expGrant, hash: hashID(g.ID)})
		}
	}
	for i := range a.Parked {
		p := &a.Parked[i]
		s.schedule(expiry{atNs: p.AtNs + s.cfg.ParkTimeoutNs, acct: a, kind: expParked, hash: requestKey(p.ProjectID, p.RequestID)})
	}
	if a.Billing.Subscribed() {
		s.schedule(expiry{atNs: a.Billing.PeriodEndNs, acct: a, kind: expRenew})
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
	if a.Billing.Subscribed() {
		s.live--
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
	if in.RecordTimeNs > 0 && ev.Time.Sub(time.Unix(0, in.RecordTimeNs)) > time.Duration(s.cfg.FutureSkewNsMax) {
		if in.Offset > s.offset {
			s.offset = in.Offset
		}
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyFutureTime, AccountID: ev.Subject, EventID: ev.ID,
			RequestID: requestID(ev), Offset: in.Offset, HorizonNs: in.RecordTimeNs + s.cfg.FutureSkewNsMax})
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
		events.CreditsAdjusted, events.AccountUpdated, events.AbuseFlagged, events.SubscriptionChanged, events.BudgetChanged:
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
	n0 := len(out.Anomalies)
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
		if a.FundingAccountID == "" {
			// A funded account's admitted requests are folded on its funding account's
			// partition, not here: a ratio of its rejections alone would read 100%.
			a.ReqsCur++
			a.RejsCur++
		}
	case events.CreditsGranted:
		s.grant(a, ev, &p, out)
	case events.CreditsAdjusted:
		s.adjust(a, ev, &p, out)
	case events.AccountUpdated:
		if s.duplicateEvent(a, ev, out) {
			return
		}
		a.Tier, a.Priority, a.Suspended = s.internTier(p.Tier), internPriority(p.Priority), p.Suspended
		if p.FundingAccountID != nil {
			a.FundingAccountID = *p.FundingAccountID
		}
		s.updateSettings(a, &p)
	case events.BudgetChanged:
		if budgetRefused(a, &p) {
			out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyTooManyBudgets, AccountID: a.ID, EventID: ev.ID,
				ProjectID: p.ProjectID, Offset: in.Offset})
			break // not applied, nor remembered (as a refused grant: see overflow)
		}
		if s.duplicateEvent(a, ev, out) {
			return
		}
		s.setBudget(a, t, &p)
	case events.SubscriptionChanged:
		s.subscription(a, ev, &p, out)
	case events.AbuseFlagged:
		if s.duplicateEvent(a, ev, out) {
			return
		}
		s.flag(a, t, &p)
	}
	s.history(a, out)
	// Notifications are checked after an event that was applied: not after a duplicate, which
	// a restored state (its dedupe memory pruned at other times) may instead refuse as too
	// late, so that their timing is the same in a replay and after a restore.
	for _, an := range out.Anomalies[n0:] {
		if an.Kind == AnomalyDuplicate && an.EventID == ev.ID {
			return
		}
	}
	s.notify(a, out)
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
// the fold tracks (request.rejected, account.updated, budget.changed, abuse.flagged).
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

package fold

import (
	"sort"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Limit-factor reasons (LimitsAdjusted.Reason).
const (
	ReasonLoad       = "load"
	ReasonBlock      = "abuse_block"
	ReasonFlag       = "abuse_flag"
	ReasonRejections = "rejection_ratio"
	ReasonClean      = "clean_history"
	ReasonNeutral    = "neutral"
)

var priorities = [3]string{events.PriorityCritical, events.PriorityStandard, events.PriorityBatch}

func prioIndex(p string) int {
	switch p {
	case events.PriorityCritical:
		return 0
	case events.PriorityBatch:
		return 2
	}
	return 1
}

// endpointLoad tracks one endpoint's in-flight holds per priority class.
//
// The system's in-flight count is estimated from this partition's: accounts hash uniformly
// over partitions, so the typical account's holds count × partitions. But all of one account's
// holds sit on one partition, and scaling them would let one account (at its admitter share,
// 10 % of capacity) read as 80 % on 8 partitions and shed standard for everyone. So per
// account, endpoint and priority, with c open holds, the estimate counts
//
//	min(c, capLocal) × partitions + max(0, c − capSystem)
//
// capLocal = max(1, AccountSharePermille × capacity / (1000 × partitions)) and capSystem =
// capLocal × partitions: up to its share an account counts like any other (scaled); beyond
// it, only what it really holds counts, one for one (an account holds at least its own
// holds system-wide). One account thus moves the estimate by at most its share, unless it
// really holds more (several admitters, each granting a share). With one partition this is
// exactly c.
type endpointLoad struct {
	name      string
	capacity  int64
	reserve   int64 // critical reserve, permille of capacity
	capLocal  int64
	capSystem int64
	scaled    [3]int64 // Σ min(c, capLocal) over this partition's accounts, per priority
	excess    [3]int64 // Σ max(0, c − capSystem), per priority
	factor    [3]int32
	// republish is set by a restore: the factors published before (perhaps by another rule
	// or setting) are unknown, so the next in-flight change publishes all three.
	republish bool
}

func newEndpointLoad(name string, ep pricebook.Endpoint, cfg *Config) *endpointLoad {
	capLocal := max(1, cfg.AccountSharePermille*ep.CapacityInflight/(1000*cfg.PartitionsTotal))
	return &endpointLoad{name: name, capacity: ep.CapacityInflight, reserve: ep.CriticalReservePermille,
		capLocal: capLocal, capSystem: capLocal * cfg.PartitionsTotal, factor: [3]int32{1000, 1000, 1000}}
}

// step counts one hold of an account that has k other open holds on the endpoint at prio
// in (sign 1) or out (sign −1).
func (e *endpointLoad) step(prio uint8, k, sign int64) {
	if k < e.capLocal {
		e.scaled[prio%3] += sign
	}
	if k >= e.capSystem {
		e.excess[prio%3] += sign
	}
}

// accountHolds counts the holds on endpoint at prio, stopping at limit.
func accountHolds(holds []Hold, endpoint string, prio uint8, limit int64) int64 {
	var n int64
	for i := range holds {
		if h := &holds[i]; h.Priority == prio && h.Endpoint == endpoint {
			if n++; n >= limit {
				break
			}
		}
	}
	return n
}

// estimate is the estimated in-flight count of the whole system.
func (e *endpointLoad) estimate(partitions int64) int64 {
	return (e.scaled[0]+e.scaled[1]+e.scaled[2])*partitions + e.excess[0] + e.excess[1] + e.excess[2]
}

// compute is the load factor of priority class i. Utilisation u (permille of capacity) is
// the estimate above / capacity. Batch sheds first (from half of the non-reserved capacity
// to 80 % of it), standard next (80 % to 100 % of it); critical keeps the reserve and only
// drops, to at least 100, once the whole capacity is used. Factors are quantised to steps of
// 100 so that they change rarely.
func (e *endpointLoad) compute(i int, partitions int64) int32 {
	u := e.estimate(partitions) * 1000 / e.capacity
	open := 1000 - e.reserve
	var lo, hi, floor int64
	switch i {
	case 2:
		lo, hi = open/2, open*8/10
	case 1:
		lo, hi = open*8/10, open
	default:
		lo, hi, floor = 1000, 1500, 100
	}
	if u <= lo {
		return 1000
	}
	if u >= hi || hi <= lo {
		return int32(max(floor, 0))
	}
	f := 1000 - (u-lo)*1000/(hi-lo)
	f = f / 100 * 100
	return int32(max(f, floor))
}

// recompute sets the factors from the counts without publishing (after a restore).
func (e *endpointLoad) recompute(partitions int64) {
	for i := range e.factor {
		e.factor[i] = e.compute(i, partitions)
	}
	e.republish = true
}

// inflight counts hold h of account a in (sign 1: a.Holds already holds it) or out (sign −1:
// a.Holds no longer does) and publishes the factors that changed. The scan of a's holds stops
// at capSystem and is skipped when a has fewer holds than capLocal (most accounts).
func (s *State) inflight(a *Account, h *Hold, sign int64, out *Output) {
	ep := s.endpoints[h.Endpoint]
	if ep == nil {
		return
	}
	others := int64(len(a.Holds)) // an upper bound of k
	if sign > 0 {
		others--
	}
	k := others
	if others >= ep.capLocal {
		k = accountHolds(a.Holds, h.Endpoint, h.Priority, ep.capSystem+1)
		if sign > 0 {
			k--
		}
	}
	ep.step(h.Priority, k, sign)
	for i := range ep.factor {
		f := ep.compute(i, s.cfg.PartitionsTotal)
		if f != ep.factor[i] || ep.republish {
			ep.factor[i] = f
			out.Limits = append(out.Limits, events.LimitsAdjusted{Scope: events.ScopeEndpoint, Endpoint: ep.name,
				Priority: priorities[i], FactorPermille: f, Reason: ReasonLoad})
		}
	}
	ep.republish = false
}

// indexLoad counts every open hold of a in (sign 1) or out (sign −1), as if they had been
// placed one by one: the counts depend only on the holds, never on their history, so a
// restored state counts exactly as the state that was persisted.
func (s *State) indexLoad(a *Account, sign int64) {
	for j := range a.Holds {
		h := &a.Holds[j]
		if ep := s.endpoints[h.Endpoint]; ep != nil {
			ep.step(h.Priority, accountHolds(a.Holds[:j], h.Endpoint, h.Priority, ep.capSystem), sign)
		}
	}
}

func (s *State) rollHistory(a *Account, t int64) {
	w := t - mod(t, s.cfg.HistoryWindowNs)
	switch {
	case w == a.HistWindowNs:
	case w == a.HistWindowNs+s.cfg.HistoryWindowNs:
		a.ReqsPrev, a.RejsPrev, a.ReqsCur, a.RejsCur, a.HistWindowNs = a.ReqsCur, a.RejsCur, 0, 0, w
	case w > a.HistWindowNs:
		a.ReqsPrev, a.RejsPrev, a.ReqsCur, a.RejsCur, a.HistWindowNs = 0, 0, 0, 0, w
	}
}

func (s *State) flag(a *Account, t int64, p *events.AbuseFlagged) {
	if p.Action == events.ActionBlock {
		a.BlockedUntilNs = max(a.BlockedUntilNs, t+s.cfg.BlockNs)
	}
	a.PenaltyPermille = min(900, s.penalty(a, t)+s.cfg.FlagPenaltyPermille)
	a.FlagNs = t
}

// penalty is the flag penalty decayed linearly over log time.
func (s *State) penalty(a *Account, t int64) int32 {
	if a.PenaltyPermille == 0 {
		return 0
	}
	el := t - a.FlagNs
	if el >= s.cfg.FlagDecayNs {
		return 0
	}
	if el < 0 {
		el = 0
	}
	return int32(int64(a.PenaltyPermille) * (s.cfg.FlagDecayNs - el) / s.cfg.FlagDecayNs)
}

// historyFactor is the account's history factor at log time t, with its reason.
func (s *State) historyFactor(a *Account, t int64) (int32, string) {
	if t < a.BlockedUntilNs {
		return 0, ReasonBlock
	}
	if p := s.penalty(a, t); p > 0 {
		return 1000 - (p+99)/100*100, ReasonFlag
	}
	s.rollHistory(a, t)
	if reqs := a.ReqsCur + a.ReqsPrev; reqs >= s.cfg.RejectRequestsMin {
		if (a.RejsCur+a.RejsPrev)*1000/reqs > s.cfg.RejectRatioPermille {
			return s.cfg.RejectFactorPermille, ReasonRejections
		}
	}
	if a.SettledOK >= s.cfg.CleanRequestsMin && a.OverageMicros == 0 && a.FlagNs == 0 {
		return s.cfg.CleanBonusPermille, ReasonClean
	}
	return 1000, ReasonNeutral
}

func (s *State) history(a *Account, out *Output) {
	f, reason := s.historyFactor(a, s.watermark)
	if f == a.HistoryFactor() {
		return
	}
	a.Factor, a.FactorSet = f, true
	out.Limits = append(out.Limits, events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: a.ID, FactorPermille: f, Reason: reason})
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Expiry kinds, in the order they fire at the same instant.
const (
	// A renewal fires before the expiry of the grants of the period it closes (at the same
	// instant), so that it can carry what they have left.
	expRenew  uint8 = 1
	expGrant  uint8 = 2
	expHold   uint8 = 3
	expParked uint8 = 4
	expDedupe uint8 = 5 // prune an account's dedupe memory (no output)
)

type expiry struct {
	atNs int64
	hash uint64
	acct *Account
	kind uint8
}

func (x *expiry) less(y *expiry) bool {
	if x.atNs != y.atNs {
		return x.atNs < y.atNs
	}
	if x.kind != y.kind {
		return x.kind < y.kind
	}
	if x.hash != y.hash {
		return x.hash < y.hash
	}
	return x.acct.ID < y.acct.ID
}

// expiryHeap is a binary min-heap; entries of settled holds are dropped lazily when popped.
type expiryHeap []expiry

func (h *expiryHeap) push(e expiry) {
	*h = append(*h, e)
	q := *h
	i := len(q) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !q[i].less(&q[p]) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *expiryHeap) init() {
	for i := len(*h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *expiryHeap) down(i int) {
	q := *h
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(q) && q[l].less(&q[m]) {
			m = l
		}
		if r < len(q) && q[r].less(&q[m]) {
			m = r
		}
		if m == i {
			return
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
}

func (h *expiryHeap) pop() expiry {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q[last] = expiry{}
	*h = q[:last]
	h.down(0)
	return top
}

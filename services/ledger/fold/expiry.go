package fold

// Expiry in log time: the heap of holds, grants, parked finishes and dedupe prunes, swept
// as the watermark passes them.

import (
	"math"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

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
			if h := &a.Holds[j]; h.ExpiresNs == e.atNs && requestKey(h.ProjectID, h.RequestID) == e.hash {
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
			if p := &a.Parked[j]; p.AtNs+s.cfg.ParkTimeoutNs == e.atNs && requestKey(p.ProjectID, p.RequestID) == e.hash {
				return true
			}
		}
	case expDedupe:
		return a.pruneNs == e.atNs
	case expRenew:
		return a.Billing.Subscribed() && a.Billing.PeriodEndNs == e.atNs
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
		case expRenew:
			if a.Billing.Subscribed() && a.Billing.PeriodEndNs == e.atNs {
				s.renew(a, e, out)
				s.notify(a, out)
			}
		// Notifications are checked only after an expiry that changed the account: a stale
		// entry (of a settled hold, say) is in the heap of a straight fold but not in one
		// rebuilt by a restore, and must not make their timing differ.
		case expHold:
			if s.expireHold(a, e, out) {
				s.notify(a, out)
			}
		case expGrant:
			if s.expireGrant(a, e, out) {
				s.notify(a, out)
			}
		case expParked:
			if s.expireParked(a, e, out) {
				s.notify(a, out)
			}
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

func (s *State) expireHold(a *Account, e expiry, out *Output) bool {
	i := -1
	for j := range a.Holds {
		if h := &a.Holds[j]; h.ExpiresNs == e.atNs && requestKey(h.ProjectID, h.RequestID) == e.hash {
			i = j
			break
		}
	}
	if i < 0 {
		return false // settled already
	}
	h := a.Holds[i]
	a.removeHold(i)
	s.live--
	s.remember(a, e.hash|1, out)
	s.inflight(a, &h, -1, out)
	out.touch(a)
	at := time.Unix(0, h.ExpiresNs).UTC()
	startID := h.EventID.String()
	id := events.DerivedID(startID, "expired")
	x := events.RequestExpired{RequestID: h.RequestID, AccountID: a.ID, Endpoint: h.Endpoint, StartedEventID: startID, ExpiredAt: at,
		Funding: fundingName(h.Funding), HoldMicros: h.HoldMicros, AllowanceMicros: h.AllowanceMicros,
		ReleasedMicros: h.HoldMicros + h.AllowanceMicros}
	if h.ProjectID != "" { // a project's request: a's balance funded it
		x.AccountID, x.FundingAccountID = h.ProjectID, a.ID
	}
	if h.AllowanceMicros != 0 {
		s.useAllowance(a, h.StartNs, h.StartNs, -h.AllowanceMicros)
	}
	if h.HoldMicros != 0 {
		back, gone := a.release(&h, 0)
		a.HeldMicros -= h.HoldMicros
		a.BreakageMicros += gone
		out.Entries = append(out.Entries,
			Entry{Cause: id, AccountID: a.ID, LedgerAccount: events.LedgerHeld, AmountMicros: -h.HoldMicros, Kind: "expiry", RequestID: h.RequestID, ProjectID: h.ProjectID, At: at})
		if back != 0 {
			out.Entries = append(out.Entries, Entry{Cause: id, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: back, Kind: "expiry", RequestID: h.RequestID, ProjectID: h.ProjectID, At: at})
		}
		if gone != 0 {
			out.Entries = append(out.Entries, Entry{Cause: id, AccountID: a.ID, LedgerAccount: events.LedgerBreakage, AmountMicros: gone, Kind: "expiry", RequestID: h.RequestID, ProjectID: h.ProjectID, At: at})
		}
	}
	out.Expired = append(out.Expired, Expired{ID: id, Data: x})
	return true
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

func (s *State) expireGrant(a *Account, e expiry, out *Output) bool {
	i := -1
	for j := range a.Grants {
		if a.Grants[j].ExpiresNs == e.atNs && hashID(a.Grants[j].ID) == e.hash {
			i = j
			break
		}
	}
	if i < 0 {
		return false
	}
	g := a.Grants[i]
	a.Grants = append(a.Grants[:i], a.Grants[i+1:]...)
	s.live--
	s.remember(a, e.hash^saltGrant, out)
	out.touch(a)
	s.breakage(a, events.DerivedID(g.EventID.String(), "breakage"), g.ID, g.Remaining, time.Unix(0, g.ExpiresNs).UTC(), out)
	return true
}

func (s *State) expireParked(a *Account, e expiry, out *Output) bool {
	for j := range a.Parked {
		p := a.Parked[j]
		if p.AtNs+s.cfg.ParkTimeoutNs == e.atNs && requestKey(p.ProjectID, p.RequestID) == e.hash {
			a.removeParked(j)
			s.live--
			out.touch(a)
			s.unknownFinish(a, p.EventID, p.ProjectID, p.RequestID, p.Endpoint, p.CostMicros, time.Unix(0, p.AtNs).UTC(), out)
			return true
		}
	}
	return false
}

// NextDueNs is the earliest log time at which the passing of time alone changes a's money
// (available, held, overage): a hold's or a grant's expiry, a parked finish's timeout, or the
// subscription's renewal; math.MaxInt64 when none is scheduled. The sweep applies what is due
// before the watermark, so a clock that moves on to w changes a only if NextDueNs(a) < w.
// Reconcile uses it to compare an account whose partition clock moved on (ticks) but which
// nothing has come due for.
func (s *State) NextDueNs(a *Account) int64 {
	next := int64(math.MaxInt64)
	for i := range a.Holds {
		next = min(next, a.Holds[i].ExpiresNs)
	}
	for i := range a.Grants {
		if g := &a.Grants[i]; g.ExpiresNs != 0 { // 0: never expires
			next = min(next, g.ExpiresNs)
		}
	}
	for i := range a.Parked {
		next = min(next, a.Parked[i].AtNs+s.cfg.ParkTimeoutNs)
	}
	if a.Billing.Subscribed() {
		next = min(next, a.Billing.PeriodEndNs)
	}
	return next
}

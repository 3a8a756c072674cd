package fold

// Grants and adjustments: credits in, burn order, breakage, overflow refusal.

import (
	"time"

	"github.com/tallyhq/tally/shared/events"
)

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
	if len(a.Grants) >= s.cfg.GrantsPerAccountMax {
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

// overflow records a grant, adjustment or finish refused because applying it would overflow one of
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

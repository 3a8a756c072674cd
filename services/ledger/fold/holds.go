package fold

// Holds: a request's start places a hold (allowance reservation and credit parts), its
// finish settles it by the funding waterfall.

import (
	"time"

	"github.com/tallyhq/tally/shared/events"
)

func (s *State) start(a *Account, ev *events.Event, p *events.RequestStarted, out *Output) {
	proj := projectOf(a, p.AccountID)
	rh := requestKey(proj, p.RequestID)
	if a.findHold(proj, p.RequestID) >= 0 || s.seenRequest(a, rh, ev.Time.UnixNano(), out) {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID, ProjectID: proj})
		return
	}
	s.rollHistory(a, ev.Time.UnixNano())
	if proj == "" {
		// A project's request counts in no rejection ratio: its rejections are folded on the
		// project's partition (see the rejections in Apply).
		a.ReqsCur++
	}
	if len(a.Holds) >= s.cfg.HoldsPerAccountMax {
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyTooManyHolds, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID, ProjectID: proj})
		s.remember(a, rh^saltNoHold, out) // a copy of this start is a duplicate; a finish is parked as before
		return
	}
	hold := Hold{RequestID: p.RequestID, ProjectID: proj, EventID: ParseUUID(ev.ID), Endpoint: s.internEndpoint(p.Endpoint), Priority: uint8(prioIndex(p.Priority)),
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
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyHoldShort, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID, ProjectID: proj})
		amt = a.AvailableMicros
	}
	if amt > 0 {
		a.burn(amt, &hold)
		a.HeldMicros += amt
		hold.HoldMicros = amt
		out.Entries = append(out.Entries,
			Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: -amt, Kind: "hold", RequestID: p.RequestID, ProjectID: proj, At: ev.Time},
			Entry{Cause: ev.ID, AccountID: a.ID, LedgerAccount: events.LedgerHeld, AmountMicros: amt, Kind: "hold", RequestID: p.RequestID, ProjectID: proj, At: ev.Time})
	}
	a.Holds = append(a.Holds, hold)
	s.schedule(expiry{atNs: hold.ExpiresNs, acct: a, kind: expHold, hash: rh})
	s.inflight(a, &a.Holds[len(a.Holds)-1], 1, out)
	// A finish that came first is settled now.
	if i := a.findParked(proj, p.RequestID); i >= 0 {
		pk := a.Parked[i]
		a.removeParked(i)
		s.live--
		s.settle(a, len(a.Holds)-1, pk.EventID, pk.Status, pk.CostMicros, time.Unix(0, pk.AtNs).UTC(), out)
	}
}

func (s *State) finish(a *Account, ev *events.Event, p *events.RequestFinished, out *Output) {
	// What a finish charges is at most its cost, split between paid charges and overage:
	// one that could overflow either running total is refused (dead-lettered), like a grant.
	if cost := max(p.CostMicros, 0); !addOK(a.OverageMicros, cost) || !addOK(a.ChargedMicros, cost) {
		s.overflow(a, ev, a.Offset, out)
		return
	}
	proj := projectOf(a, p.AccountID)
	if i := a.findHold(proj, p.RequestID); i >= 0 {
		s.settle(a, i, ev.ID, p.Status, p.CostMicros, ev.Time, out)
		return
	}
	rh := requestKey(proj, p.RequestID)
	switch {
	case s.seen(a, rh, ev.Time.UnixNano(), out):
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID, ProjectID: proj})
	case a.Dedupe.has(rh | 1):
		// The hold expired before the finish: charge late from the available balance. The
		// request is remembered as settled from now on (a copy of this finish is a duplicate).
		s.remember(a, rh, out)
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyLateFinish, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID, ProjectID: proj})
		s.charge(a, ev.ID, "late_charge", proj, p.RequestID, p.Endpoint, nil, p.CostMicros, ev.Time, out)
		s.spend(a, proj, p.CostMicros, ev.Time)
		s.settledOK(a, p.Status)
	case a.findParked(proj, p.RequestID) >= 0:
		out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyDuplicate, AccountID: a.ID, EventID: ev.ID, RequestID: p.RequestID, ProjectID: proj})
	case len(a.Parked) < s.cfg.ParkedPerAccountMax:
		t := ev.Time.UnixNano()
		a.Parked = append(a.Parked, Parked{RequestID: p.RequestID, ProjectID: proj, EventID: ev.ID, Endpoint: p.Endpoint, Status: p.Status, CostMicros: p.CostMicros, AtNs: t})
		s.schedule(expiry{atNs: t + s.cfg.ParkTimeoutNs, acct: a, kind: expParked, hash: rh})
	default:
		s.unknownFinish(a, ev.ID, proj, p.RequestID, p.Endpoint, p.CostMicros, ev.Time, out)
	}
}

func (s *State) unknownFinish(a *Account, eventID, project, requestID, endpoint string, cost int64, at time.Time, out *Output) {
	s.remember(a, requestKey(project, requestID), out)
	out.Anomalies = append(out.Anomalies, Anomaly{Kind: AnomalyUnknownFinish, AccountID: a.ID, EventID: eventID, RequestID: requestID, ProjectID: project})
	s.charge(a, eventID, "unknown_finish_charge", project, requestID, endpoint, nil, cost, at, out)
	s.spend(a, project, cost, at)
}

// settle posts the charge of hold i and releases the rest, by the funding waterfall: the
// allowance covers what it can (its reservation plus what every window still has left at
// settlement), then the credit hold, then (price book policy) the available balance, and
// what is left is overage. One transaction, caused by the finish event.
func (s *State) settle(a *Account, i int, causeID, status string, cost int64, at time.Time, out *Output) {
	h := a.Holds[i]
	a.removeHold(i)
	s.live--
	s.remember(a, requestKey(h.ProjectID, h.RequestID), out)
	s.inflight(a, &h, -1, out)
	s.settledOK(a, status)
	s.spend(a, h.ProjectID, cost, at)
	fromAllow := s.allowanceShare(a, &h, cost, at.UnixNano())
	if fromAllow != h.AllowanceMicros {
		// The windows are corrected to what the allowance actually paid.
		s.useAllowance(a, h.StartNs, at.UnixNano(), fromAllow-h.AllowanceMicros)
	}
	s.charge(a, causeID, "charge", h.ProjectID, h.RequestID, h.Endpoint, &h, cost-fromAllow, at, out)
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
// overage −unpaid, revenue +cost, each naming project (the funded request's project, or "").
// The request and its cost count in the account's period usage (on endpoint).
func (s *State) charge(a *Account, causeID, kind, project, requestID, endpoint string, h *Hold, cost int64, at time.Time, out *Output) {
	s.recordUse(a, endpoint, cost)
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
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerHeld, AmountMicros: -held, Kind: kind, RequestID: requestID, ProjectID: project, At: at})
	}
	if availDelta != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerAvailable, AmountMicros: availDelta, Kind: kind, RequestID: requestID, ProjectID: project, At: at})
	}
	if gone != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerBreakage, AmountMicros: gone, Kind: kind, RequestID: requestID, ProjectID: project, At: at})
	}
	if unpaid != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerOverageReceivable, AmountMicros: -unpaid, Kind: kind, RequestID: requestID, ProjectID: project, At: at})
	}
	if cost != 0 {
		out.Entries = append(out.Entries, Entry{Cause: causeID, AccountID: a.ID, LedgerAccount: events.LedgerRevenue, AmountMicros: cost, Kind: kind, RequestID: requestID, ProjectID: project, At: at})
	}
}

func (s *State) settledOK(a *Account, status string) {
	if status == events.StatusSucceeded {
		a.SettledOK++
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

func (a *Account) findHold(project, id string) int {
	for i := range a.Holds {
		if a.Holds[i].RequestID == id && a.Holds[i].ProjectID == project {
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

func (a *Account) findParked(project, id string) int {
	for i := range a.Parked {
		if a.Parked[i].RequestID == id && a.Parked[i].ProjectID == project {
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

package fold

import (
	"errors"
	"fmt"
	"sort"

	"github.com/tallyhq/tally/shared/events"
)

// CheckAccount reports every broken invariant of one account:
//   - available = Σ grant remaining + extra;
//   - available = granted − charged − held − breakage + adjusted;
//   - held = Σ credit holds;
//   - available, held, overage and every grant remainder are never negative
//     (what could not be paid is overage);
//   - a grant's remainder never exceeds its amount, nor does its remainder plus what open
//     holds took from it;
//   - a hold's parts (when it recorded them) are each above 0 and sum to the hold, and a
//     hold of 0 records none;
//   - the dedupe memory is in time order and every entry is found by a lookup.
func CheckAccount(a *Account) error {
	var errs []error
	var grants, holds int64
	for _, g := range a.Grants {
		grants += g.Remaining
		if g.Remaining < 0 || g.Remaining > g.Amount {
			errs = append(errs, fmt.Errorf("grant %s: remaining %d outside [0, %d]", g.ID, g.Remaining, g.Amount))
		}
	}
	for i := range a.Holds {
		h := &a.Holds[i]
		holds += h.HoldMicros
		if h.NumParts() == 0 {
			continue
		}
		if h.HoldMicros == 0 {
			errs = append(errs, fmt.Errorf("hold %s: parts of a zero hold", h.RequestID))
		}
		// The first part is what the others leave of the hold: the parts sum to the hold when
		// each is above 0.
		for j := 0; j < h.NumParts(); j++ {
			if p := h.Part(j); p.Micros <= 0 {
				errs = append(errs, fmt.Errorf("hold %s: part %d of %d", h.RequestID, j, p.Micros))
			}
		}
	}
	for _, g := range a.Grants {
		held := int64(0)
		for i := range a.Holds {
			h := &a.Holds[i]
			for j := 0; j < h.NumParts(); j++ {
				if p := h.Part(j); p.Grant == g.EventID {
					held += p.Micros
				}
			}
		}
		if g.Remaining+held > g.Amount {
			errs = append(errs, fmt.Errorf("grant %s: remaining %d + held %d > amount %d", g.ID, g.Remaining, held, g.Amount))
		}
	}
	if a.AvailableMicros != grants+a.ExtraMicros {
		errs = append(errs, fmt.Errorf("available %d != grants %d + extra %d", a.AvailableMicros, grants, a.ExtraMicros))
	}
	if want := a.GrantedMicros - a.ChargedMicros - a.HeldMicros - a.BreakageMicros + a.AdjustedMicros; a.AvailableMicros != want {
		errs = append(errs, fmt.Errorf("available %d != granted %d - charged %d - held %d - breakage %d + adjusted %d = %d",
			a.AvailableMicros, a.GrantedMicros, a.ChargedMicros, a.HeldMicros, a.BreakageMicros, a.AdjustedMicros, want))
	}
	if a.HeldMicros != holds {
		errs = append(errs, fmt.Errorf("held %d != sum of holds %d", a.HeldMicros, holds))
	}
	if a.AvailableMicros < 0 || a.HeldMicros < 0 || a.OverageMicros < 0 || a.ExtraMicros < 0 {
		errs = append(errs, fmt.Errorf("negative: available %d held %d overage %d extra %d", a.AvailableMicros, a.HeldMicros, a.OverageMicros, a.ExtraMicros))
	}
	if err := a.Dedupe.check(); err != nil {
		errs = append(errs, err)
	}
	if len(a.Budgets) > events.MaxProjectBudgets {
		errs = append(errs, fmt.Errorf("%d project budgets, bound %d", len(a.Budgets), events.MaxProjectBudgets))
	}
	for i, b := range a.Budgets {
		if i > 0 && b.ProjectID <= a.Budgets[i-1].ProjectID || b.SpentMicros < 0 || b.PeriodStartNs != monthOf(b.PeriodStartNs) {
			errs = append(errs, fmt.Errorf("budget %d (%s): out of order, negative spending or not a month's start", i, b.ProjectID))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("account %s: %w", a.ID, err)
	}
	return nil
}

// Check runs CheckAccount on every account, in id order, and checks the partition-level
// indexes (expiry, dedupe and endpoint in-flight counts) against a recount.
func (s *State) Check() error {
	ids := make([]string, 0, len(s.accounts))
	for id := range s.accounts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var errs []error
	live, dedupe := 0, 0
	for _, id := range ids {
		a := s.accounts[id]
		if err := CheckAccount(a); err != nil {
			errs = append(errs, err)
		}
		live += len(a.Holds) + len(a.Parked)
		dedupe += a.Dedupe.Len()
		if a.pruneNs != 0 {
			live++
		} else if a.Dedupe.Len() > 0 && !a.legacy {
			errs = append(errs, fmt.Errorf("account %s: %d dedupe entries and no prune scheduled", id, a.Dedupe.Len()))
		}
		for i := range a.Holds {
			if n := a.Holds[i].NumParts(); n > s.cfg.GrantsPerAccountMax+1 {
				errs = append(errs, fmt.Errorf("account %s: hold %s has %d parts, bound %d", id, a.Holds[i].RequestID, n, s.cfg.GrantsPerAccountMax+1))
			}
		}
		if n := a.Dedupe.Len(); n > s.cfg.DedupePerAccountMax {
			errs = append(errs, fmt.Errorf("account %s: %d dedupe entries, bound %d", id, n, s.cfg.DedupePerAccountMax))
		}
		for _, g := range a.Grants {
			if g.ExpiresNs != 0 {
				live++
			}
		}
		if b := a.Billing; b.Subscribed() {
			live++ // the renewal
			if b.PeriodEndNs <= b.PeriodStartNs || b.PeriodStartNs != monthStart(b.Terms.AnchorNs, b.Terms.PeriodIdx) {
				errs = append(errs, fmt.Errorf("account %s: period [%d, %d) is not period %d of anchor %d", id, b.PeriodStartNs, b.PeriodEndNs,
					b.Terms.PeriodIdx, b.Terms.AnchorNs))
			}
		}
	}
	if live != s.live {
		errs = append(errs, fmt.Errorf("expiry index: %d live entries counted, %d tracked", live, s.live))
	}
	if dedupe != s.dedupeN {
		errs = append(errs, fmt.Errorf("dedupe: %d entries counted, %d tracked", dedupe, s.dedupeN))
	}
	if len(s.heap) > heapMax(s.live) {
		errs = append(errs, fmt.Errorf("expiry index: %d entries for %d live", len(s.heap), s.live))
	}
	errs = append(errs, s.checkLoad(ids))
	return errors.Join(errs...)
}

// checkLoad recounts each endpoint's in-flight counts from the open holds, by the closed
// form (per account, endpoint and priority with c holds: min(c, capLocal) scaled, max(0,
// c − capSystem) one for one), and compares them with the counts the fold keeps.
func (s *State) checkLoad(ids []string) error {
	type key struct {
		endpoint string
		prio     uint8
	}
	type counts struct{ scaled, excess [3]int64 }
	want := map[string]*counts{}
	for _, id := range ids {
		c := map[key]int64{}
		for _, h := range s.accounts[id].Holds {
			c[key{h.Endpoint, h.Priority}]++ // as the fold groups them (a decoded priority may be ≥ 3)
		}
		for k, n := range c {
			ep := s.endpoints[k.endpoint]
			if ep == nil {
				continue
			}
			w := want[k.endpoint]
			if w == nil {
				w = &counts{}
				want[k.endpoint] = w
			}
			w.scaled[k.prio%3] += min(n, ep.capLocal)
			w.excess[k.prio%3] += max(0, n-ep.capSystem)
		}
	}
	var errs []error
	for _, name := range s.epOrder {
		ep, w := s.endpoints[name], want[name]
		if w == nil {
			w = &counts{}
		}
		if ep.scaled != w.scaled || ep.excess != w.excess {
			errs = append(errs, fmt.Errorf("endpoint %s: in-flight scaled %v excess %v tracked, %v %v counted from the holds",
				name, ep.scaled, ep.excess, w.scaled, w.excess))
		}
	}
	return errors.Join(errs...)
}

package fold

// Allowance windows and the balance view published to the admitters.

import (
	"time"

	"github.com/tallyhq/tally/shared/events"
)

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
		FundingAccountID: a.FundingAccountID, Projects: projects(a),
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

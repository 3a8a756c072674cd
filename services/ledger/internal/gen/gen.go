// Package gen generates randomized but valid event logs for tests and benchmarks: grants
// (some expiring), starts (some allowance-funded), finishes (some before their start, some
// never), adjustments, account updates, flags, rejections and re-sent duplicates.
package gen

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// Endpoint is the endpoint the generated requests use.
const Endpoint = "codex.responses"

// RandomLog returns n events over the given number of accounts, starting at t0 and moving
// forward by up to stepMsMax per event. The same seed gives the same log (ids included).
func RandomLog(seed uint64, n, accounts int, t0 time.Time, stepMsMax int) []events.Event {
	r := rand.New(rand.NewPCG(seed, seed^0x9e37))
	out := make([]events.Event, 0, n)
	seq := 0
	add := func(at time.Time, d events.Data) {
		seq++
		e, err := events.NewWithID(events.DerivedID(fmt.Sprint("gen-", seed), fmt.Sprint(seq)), "gen", at, d)
		if err != nil {
			panic(err)
		}
		out = append(out, e)
	}
	type open struct{ acct, req string }
	var opens []open
	now := t0
	for len(out) < n {
		now = now.Add(time.Duration(r.IntN(stepMsMax+1)) * time.Millisecond)
		acct := fmt.Sprint("acct-", r.IntN(accounts))
		switch k := r.IntN(100); {
		case k < 10:
			g := events.CreditsGranted{GrantID: fmt.Sprint("g", seq), AccountID: acct, AmountMicros: int64(1 + r.IntN(5_000_000)),
				Source: events.GrantPurchase, Priority: int32(r.IntN(3))}
			if r.IntN(2) == 0 {
				e := now.Add(time.Duration(r.IntN(3600)) * time.Second)
				g.ExpiresAt = &e
			}
			add(now, g)
		case k < 45:
			req := fmt.Sprint("r", seq)
			st := events.RequestStarted{RequestID: req, AccountID: acct, Endpoint: Endpoint, Tier: "plus", Priority: events.PriorityStandard,
				Funding: events.FundingCredits, HoldMicros: int64(r.IntN(400_000)), HoldExpiresAt: now.Add(5 * time.Minute), PriceBookVersion: "v1"}
			st.EstimateMicros = st.HoldMicros
			if r.IntN(5) == 0 {
				st.Funding, st.HoldMicros, st.AllowanceMicros = events.FundingAllowance, 0, int64(r.IntN(100_000))
			}
			if r.IntN(10) == 0 {
				add(now, finish(acct, req, int64(r.IntN(500_000))))
			} else {
				opens = append(opens, open{acct, req})
			}
			add(now, st)
		case k < 80 && len(opens) > 0:
			i := r.IntN(len(opens))
			o := opens[i]
			opens = append(opens[:i], opens[i+1:]...)
			if r.IntN(20) != 0 { // some holds never finish and expire
				add(now, finish(o.acct, o.req, int64(r.IntN(500_000))))
			}
		case k < 85:
			add(now, events.CreditsAdjusted{AdjustmentID: fmt.Sprint("adj", seq), AccountID: acct, AmountMicros: int64(r.IntN(200_000) - 100_000 + 1), Reason: "gen"})
		case k < 87:
			tiers := []string{"free", "plus", "pro", "enterprise"}
			add(now, events.AccountUpdated{AccountID: acct, Tier: tiers[r.IntN(4)], Priority: events.PriorityBatch})
		case k < 88:
			add(now, events.AbuseFlagged{FlagID: fmt.Sprint("f", seq), AccountID: acct, Rule: "r", Score: 1, Action: events.ActionThrottle,
				WindowStart: now.Add(-time.Minute), WindowEnd: now})
		case k < 92:
			add(now, events.RequestRejected{RequestID: fmt.Sprint("x", seq), AccountID: acct, Endpoint: Endpoint, Tier: "free",
				Priority: events.PriorityBatch, Reason: "rate", PriceBookVersion: "v1"})
		case len(out) > 0:
			// A producer retry: the same event again, shortly after.
			out = append(out, out[len(out)-1-r.IntN(min(5, len(out)))])
		}
	}
	return out[:n]
}

func finish(acct, req string, cost int64) events.RequestFinished {
	return events.RequestFinished{RequestID: req, AccountID: acct, Endpoint: Endpoint, Status: events.StatusSucceeded, CostMicros: cost, PriceBookVersion: "v1"}
}

package mirror

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/fold/foldtest"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// rig drives one admitter table and one ledger fold with the same events.
type rig struct {
	t      *testing.T
	tb     *decide.Table
	st     *fold.State
	out    fold.Output
	offset int64
}

func newRig(t *testing.T, book *pricebook.Book) *rig {
	cfg := decide.DefaultConfig
	cfg.AccountsMax, cfg.OpenMax, cfg.PendingMax, cfg.HugePages = 1000, 1000, 10_000, false
	cfg.OverageFromAvailable = book.ChargesExcessFromAvailable()
	tb, err := decide.NewTable(book, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, tb: tb, st: fold.New(fold.DefaultConfig(book), 0)}
}

// fold applies d at time at and returns its offset.
func (r *rig) fold(at time.Time, d events.Data) int64 {
	r.t.Helper()
	ev, err := events.New("mirror", at, d)
	if err != nil {
		r.t.Fatal(err)
	}
	r.offset++
	r.st.Apply(fold.Input{Offset: r.offset, Event: &ev}, &r.out)
	if len(r.out.Anomalies) != 0 {
		r.t.Fatalf("anomaly %+v", r.out.Anomalies[0])
	}
	return r.offset
}

type openReq struct {
	id, acct string
	d        decide.Decision
	at       time.Time
}

// run plays a random sequence of admissions and finishes over accounts (the first half on
// the free tier, the rest on plus) from at. With views, each fold's balance.updated is given
// to the admitter (as the ledger publishes it); without, the admitter sees only its pending
// changes. After every settlement it checks that the admitter's split is the ledger's and,
// without views, that the local view equals the fold.
func (r *rig) run(seed uint64, n, accounts int, at time.Time, step time.Duration, views bool) {
	r.runSkew(seed, n, accounts, at, step, views, 0)
}

// runSkew is run with each finish stamped up to skew before the latest event time (another
// admitter's clock runs behind), never before its start.
func (r *rig) runSkew(seed uint64, n, accounts int, at time.Time, step time.Duration, views bool, skew time.Duration) {
	t := r.t
	rnd := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < accounts; i++ {
		acct := fmt.Sprint("acct-", i)
		tier := "free"
		if i >= accounts/2 {
			tier = "plus"
		}
		grant := int64(rnd.IntN(30_000_000))
		r.fold(at, events.AccountUpdated{AccountID: acct, Tier: tier, Priority: events.PriorityStandard})
		if grant > 0 {
			r.fold(at, events.CreditsGranted{GrantID: "g-" + acct, AccountID: acct, AmountMicros: grant, Source: events.GrantPurchase})
		}
		b := r.st.Balance(r.st.Account(acct))
		r.tb.ApplyBalance(&b)
	}
	var opens []openReq
	var splitAdmits, spills int
	for k := 0; k < n; k++ {
		at = at.Add(time.Duration(rnd.Int64N(int64(step))))
		nowMs := at.UnixMilli()
		if len(opens) == 0 || rnd.IntN(2) == 0 {
			acct := fmt.Sprint("acct-", rnd.IntN(accounts))
			req := &decide.Request{AccountID: acct, Endpoint: "sora.video",
				Estimate: events.Units{VideoSeconds: int64(1 + rnd.IntN(60)), Resolution: "720p"}}
			var d decide.Decision
			if err := r.tb.Admit(req, nowMs, &d); err != nil {
				t.Fatal(err)
			}
			if !d.Allowed {
				continue
			}
			id := fmt.Sprint("r", k)
			off := r.fold(at, events.RequestStarted{RequestID: id, AccountID: acct, Endpoint: "sora.video", Tier: d.Tier,
				Priority: d.Priority.String(), Funding: d.Funding.String(), Estimate: req.Estimate, EstimateMicros: d.EstimateMicros,
				HoldMicros: d.HoldMicros, AllowanceMicros: d.AllowanceMicros, HoldExpiresAt: at.Add(24 * time.Hour), PriceBookVersion: "v"})
			r.tb.Published(d.Handle, 0, off)
			opens = append(opens, openReq{id, acct, d, at})
			if d.Funding == decide.FundingSplit {
				splitAdmits++
			}
			r.view(acct, views)
			continue
		}
		j := rnd.IntN(len(opens))
		o := opens[j]
		opens = append(opens[:j], opens[j+1:]...)
		fin := at
		if skew > 0 {
			fin = at.Add(-time.Duration(rnd.Int64N(int64(skew))))
			if fin.Before(o.at) {
				fin = o.at
			}
			nowMs = fin.UnixMilli()
		}
		cost := int64(rnd.IntN(4)) * o.d.EstimateMicros / 2 // 0, half, the estimate, 1.5 times
		if rnd.IntN(8) == 0 {
			cost = 20 * o.d.EstimateMicros // far beyond
		}
		q, err := r.tb.Quote(o.d.Handle, cost, nowMs)
		if err != nil {
			t.Fatal(err)
		}
		a := r.st.Account(o.acct)
		charged0, overage0 := a.ChargedMicros, a.OverageMicros
		n0 := len(r.out.Entries)
		off := r.fold(fin, events.RequestFinished{RequestID: o.id, AccountID: o.acct, Endpoint: "sora.video", Status: events.StatusSucceeded,
			CostMicros: cost, AllowanceMicros: q.AllowanceMicros, CreditsMicros: q.CreditsMicros, OverageMicros: q.OverageMicros, PriceBookVersion: "v"})
		if err := r.tb.Finish(o.d.Handle, q, nowMs, decide.OutcomeSucceeded, 0, off); err != nil {
			t.Fatal(err)
		}
		var revenue int64
		for _, e := range r.out.Entries[n0:] {
			if e.LedgerAccount == events.LedgerRevenue {
				revenue += e.AmountMicros
			}
		}
		if got := [3]int64{cost - revenue, a.ChargedMicros - charged0, a.OverageMicros - overage0}; got != [3]int64{q.AllowanceMicros, q.CreditsMicros, q.OverageMicros} {
			t.Fatalf("step %d %s (%s, hold %d, allowance %d, cost %d): ledger split (allowance, credits, overage) %v, admitter %+v",
				k, o.id, o.d.Funding, o.d.HoldMicros, o.d.AllowanceMicros, cost, got, q)
		}
		if o.d.AllowanceMicros > 0 && q.AllowanceMicros > 0 && q.CreditsMicros+q.OverageMicros > 0 {
			spills++
		}
		r.view(o.acct, views)
	}
	if splitAdmits == 0 || spills == 0 {
		t.Fatalf("seed %d: %d split admissions, %d allowance settlements that spilled to credits: the run exercised too little", seed, splitAdmits, spills)
	}
	if err := r.st.Check(); err != nil {
		t.Fatal(err)
	}
	lines := make([]events.LedgerEntry, len(r.out.Entries))
	for i := range r.out.Entries {
		lines[i] = r.out.Entries[i].Event()
	}
	tot, err := foldtest.CheckJournal(lines)
	if err != nil {
		t.Fatal(err)
	}
	splits := 0
	for _, e := range r.out.Entries {
		if e.Kind == "charge" && e.LedgerAccount == events.LedgerOverageReceivable {
			splits++
		}
	}
	t.Logf("seed %d: %d accounts in the journal, %d split admissions, %d allowance settlements spilled to credits, %d with overage",
		seed, len(tot), splitAdmits, spills, splits)
}

// view gives the admitter the ledger's balance.updated (views) or checks that its local view,
// the last balance plus its pending changes, equals the fold.
func (r *rig) view(acct string, views bool) {
	a := r.st.Account(acct)
	if views {
		b := r.st.Balance(a)
		b.Offset = r.offset
		r.tb.ApplyBalance(&b)
		return
	}
	snap, _ := r.tb.Account(acct)
	if got := snap.AvailableMicros + snap.PendingAvailMicros; got != a.AvailableMicros {
		r.t.Fatalf("%s: admitter's view of available %d, ledger's %d", acct, got, a.AvailableMicros)
	}
	for _, w := range r.st.AllowanceWindows(a, r.st.Watermark().UnixNano(), nil) {
		if w.UsedMicros != snap.PendingAllowMicros {
			r.t.Fatalf("%s: admitter's view of window %s used %d, ledger's %d", acct, w.Window, snap.PendingAllowMicros, w.UsedMicros)
		}
	}
}

// TestAdmitterPendingViewEqualsLedgerFold: within one allowance window, with the ledger's
// views held back, the admitter's pending view equals the ledger's fold after every admission
// and settlement, and each settlement's split is the ledger's, on both overage policies.
func TestAdmitterPendingViewEqualsLedgerFold(t *testing.T) {
	for _, policy := range []string{pricebook.OverageFromAvailable, pricebook.OverageHoldOnly} {
		t.Run(policy, func(t *testing.T) {
			for seed := uint64(1); seed <= 5; seed++ {
				book := pricebook.Default()
				book.OveragePolicy = policy
				start := time.UnixMilli(1_800_000_000_000 - 1_800_000_000_000%18_000_000).UTC() // a 5h window starts
				newRig(t, book).run(seed, 3000, 6, start, 2*time.Second, false)
			}
		})
	}
}

// TestAdmitterSettlementEqualsLedgerAcrossWindows: with the ledger's balance views followed,
// across 5-hour window boundaries (requests that straddle one get no more than their
// reservation from the allowance), every settlement's split is the ledger's.
func TestAdmitterSettlementEqualsLedgerAcrossWindows(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		start := time.UnixMilli(1_800_000_000_000 - 1_800_000_000_000%18_000_000).UTC()
		newRig(t, pricebook.Default()).run(seed, 3000, 6, start, 40*time.Second, true)
	}
}

// TestAdmitterSettlementEqualsLedgerWithClockSkew: finishes stamped up to 10 minutes behind
// the latest event (admitters' clocks differ), some in a 5-hour window the log time already
// left: every settlement's split is the ledger's.
func TestAdmitterSettlementEqualsLedgerWithClockSkew(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		start := time.UnixMilli(1_800_000_000_000 - 1_800_000_000_000%18_000_000).UTC()
		newRig(t, pricebook.Default()).runSkew(seed, 3000, 6, start, 40*time.Second, true, 10*time.Minute)
	}
}

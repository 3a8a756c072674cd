package decide

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// FuzzTable drives a table with an arbitrary sequence of admits, acks, aborts, finishes,
// ledger views, limit changes and expiries, and checks after every step what must never
// happen: a pending sum that differs from its changes, a negative in-flight count, an open
// count that drifts, a hold kept after the ledger folded it, a project's budget reservation
// that differs from its open funded requests' (and peers') estimates, a panic. Accounts may
// be funded by one another and carry budgets.
func FuzzTable(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{0, 0, 0, 1, 1, 3, 3, 4, 4, 5, 200, 7, 9, 0, 0, 2})
	f.Fuzz(func(t *testing.T, ops []byte) {
		tb := newTable(t, func(c *Config) { c.AccountsMax = 8; c.OpenMax = 16; c.PendingMax = 32 })
		accts := []string{"a", "b", "c"}
		eps := []string{"sora.video", "codex.responses", "nope"}
		var handles []uint32
		var peers []*Peer
		peerReserved := map[string]int64{}
		offset := int64(0)
		now := t0
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]%12, int(ops[i+1])
			acct := accts[arg%len(accts)]
			switch op {
			case 0, 1:
				r := &Request{AccountID: acct, Endpoint: eps[arg%len(eps)], Priority: []string{"", "batch", "critical", "x"}[arg%4],
					Estimate: events.Units{VideoSeconds: int64(arg), Resolution: "480p", TokensIn: int64(arg) * 100}}
				var d Decision
				if err := tb.Admit(r, now, &d); err == nil && d.Allowed {
					handles = append(handles, d.Handle)
				} else if err == nil && (d.Reason == ReasonNone || d.RetryAfterMs <= 0) {
					t.Fatalf("denial without reason or retry: %+v", d)
				}
			case 2:
				if len(handles) > 0 {
					offset++
					tb.Published(handles[arg%len(handles)], int32(arg%2), offset)
				}
			case 3:
				if len(handles) > 0 {
					k := arg % len(handles)
					tb.Abort(handles[k])
					handles = append(handles[:k], handles[k+1:]...)
				}
			case 4:
				if len(handles) > 0 {
					k := arg % len(handles)
					if s, err := tb.Quote(handles[k], int64(arg)*50_000, now); err == nil {
						if s.AllowanceMicros < 0 || s.CreditsMicros < 0 || s.OverageMicros < 0 || s.ReleasedMicros < 0 ||
							s.AllowanceMicros+s.CreditsMicros+s.OverageMicros != s.CostMicros || s.ChargedMicros != s.AllowanceMicros+s.CreditsMicros {
							t.Fatalf("settlement does not add up: %+v", s)
						}
						offset++
						_ = tb.Finish(handles[k], s, now+int64(arg), Outcome(arg%3), int32(arg%2), offset)
					}
					handles = append(handles[:k], handles[k+1:]...)
				}
			case 5:
				tb.ApplyBalance(&events.BalanceUpdated{AccountID: acct, Tier: []string{"free", "pro", "bogus"}[arg%3],
					AvailableMicros: int64(arg) * 100_000, Partition: int32(arg % 2), Offset: int64(arg)})
			case 6:
				tb.ApplyLimits(&events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: acct, FactorPermille: int32(arg * 40), Reason: "f"})
			case 7:
				now += int64(arg) * 10_000
				tb.Expire(now, arg, nil)
			case 8:
				offset++
				p := &Peer{AccountID: acct, Funding: Funding(1 + arg%3), HoldMicros: int64(arg) * 1000,
					AllowanceMicros: int64(arg) * 7, StartedMs: now}
				if arg%3 == 1 {
					p.FundingAccountID = accts[(arg/3+1)%len(accts)]
					if p.FundingAccountID == acct {
						p.FundingAccountID = ""
					}
				}
				if tb.ApplyPeerStart(p, int32(arg%2), offset) {
					peers = append(peers, p)
					if p.FundingAccountID != "" {
						peerReserved[acct] += p.HoldMicros + p.AllowanceMicros
					}
				}
			case 9, 11:
				if len(peers) == 0 {
					break
				}
				k := arg % len(peers)
				p := peers[k]
				peers = append(peers[:k], peers[k+1:]...)
				if p.FundingAccountID != "" {
					peerReserved[p.AccountID] -= p.HoldMicros + p.AllowanceMicros
				}
				if op == 11 {
					tb.ApplyPeerEnd(p)
					break
				}
				offset++
				tb.ApplyPeerFinish(p, int64(arg)*1500, int32(arg%2), offset, now)
			case 10:
				// A view that funds acct by another account (or by nobody) and lists budgets.
				b := &events.BalanceUpdated{AccountID: acct, Tier: []string{"free", "enterprise"}[arg%2],
					AvailableMicros: int64(arg) * 100_000, Partition: int32(arg % 2), Offset: int64(arg)}
				if f := accts[(arg/2)%len(accts)]; f != acct && arg%5 != 0 {
					b.FundingAccountID = f
				}
				for j, p := range accts {
					if p != acct && (arg>>(3+j))&1 == 1 {
						b.Projects = append(b.Projects, events.ProjectSpend{ProjectID: p, BudgetMicros: int64(arg%7) * 1_000_000,
							SpentMicros: int64(arg%3) * 500_000, PeriodStart: time.UnixMilli(now - int64(arg%2)*40*24*3600*1000).UTC()})
					}
				}
				tb.ApplyBalance(b)
			}
			checkInvariants(t, tb)
			checkReservations(t, tb, peerReserved)
		}
	})
}

func checkInvariants(t *testing.T, tb *Table) {
	t.Helper()
	live := 0
	for ai := range tb.accounts {
		a := &tb.accounts[ai]
		var sa, sl int64
		for cur := a.pendingHead; cur != none; cur = tb.pend.at(cur).next {
			p := tb.pend.at(cur)
			if p.account != uint32(ai) {
				t.Fatalf("pending %d linked to the wrong account", cur)
			}
			if p.partition == a.foldedPartition && p.offset >= 0 && p.offset <= a.foldedOffset {
				t.Fatalf("pending change at offset %d kept after the ledger folded %d", p.offset, a.foldedOffset)
			}
			sa += p.availMicros
			sl += p.allowMicros
			live++
		}
		if sa != a.pendingAvail || sl != a.pendingAllow {
			t.Fatalf("account %d: pending sums %d/%d, changes sum %d/%d", ai, a.pendingAvail, a.pendingAllow, sa, sl)
		}
	}
	if live != tb.pendLive {
		t.Fatalf("pendLive %d, linked %d", tb.pendLive, live)
	}
	opens := 0
	type key struct {
		a uint32
		e uint8
	}
	perSlot := map[key]int32{}
	perEp := make([]int64, len(tb.endpoints))
	critEp := make([]int64, len(tb.endpoints))
	for i := 0; i < tb.opens.len(); i++ {
		if o := tb.opens.at(uint32(i)); o.live {
			opens++
			perSlot[key{o.account, o.endpoint}]++
			perEp[o.endpoint]++
			if o.priority == PriorityCritical {
				critEp[o.endpoint]++
			}
		}
	}
	if opens != tb.openLive {
		t.Fatalf("openLive %d, live %d", tb.openLive, opens)
	}
	for ai := range tb.accounts {
		for ei := range tb.endpoints {
			if v, want := tb.epState(uint32(ai), uint8(ei)).inflight, perSlot[key{uint32(ai), uint8(ei)}]; v != want {
				t.Fatalf("inflight account %d endpoint %d = %d, open requests %d", ai, ei, v, want)
			}
		}
	}
	for i := range tb.endpoints {
		if tb.endpoints[i].inflight != perEp[i] || tb.endpoints[i].critInflight != critEp[i] {
			t.Fatalf("endpoint %d inflight %d (critical %d), open %d (critical %d)", i, tb.endpoints[i].inflight,
				tb.endpoints[i].critInflight, perEp[i], critEp[i])
		}
		if a := &tb.endpoints[i].adaptive; a.cfg.Enabled && (a.limit < a.floor || a.limit > a.capacity) {
			t.Fatalf("endpoint %d adaptive limit %d outside [%d, %d]", i, a.limit, a.floor, a.capacity)
		}
	}
}

// checkReservations checks each account's budget reservation against its open funded
// requests' estimates plus the funded peer starts counted and not yet finished or ended
// (peer), and that the project state exists exactly for the accounts flagged so.
func checkReservations(t *testing.T, tb *Table, peer map[string]int64) {
	t.Helper()
	want := map[uint32]int64{}
	for id, v := range peer {
		if ai, ok := tb.known(id); ok {
			want[ai] += v
		}
	}
	for i := 0; i < tb.opens.len(); i++ {
		if o := tb.opens.at(uint32(i)); o.live && o.funder != o.account {
			want[o.account] += o.holdMicros + o.allowMicros
		}
	}
	for ai := range tb.accounts {
		pr, ok := tb.projects[uint32(ai)]
		if ok != tb.accounts[ai].project {
			t.Fatalf("account %d: project state %v, flag %v", ai, ok, tb.accounts[ai].project)
		}
		if pr.reservedMicros != want[uint32(ai)] {
			t.Fatalf("account %d: reserved %d, open funded estimates %d", ai, pr.reservedMicros, want[uint32(ai)])
		}
		if ok && pr.funder == none && pr.budgetOf == none && pr.reservedMicros == 0 && pr.settledMicros == 0 {
			t.Fatalf("account %d: empty project state kept", ai)
		}
		var settled int64
		for _, c := range tb.settling[uint32(ai)] {
			settled += c.micros
			if pr.budgetOf == none {
				t.Fatalf("account %d: settled cost kept without a budget", ai)
			}
			if f := &tb.accounts[pr.budgetOf]; f.foldedPartition == c.partition && f.foldedOffset >= c.offset {
				t.Fatalf("account %d: settled cost at %d kept after its funder's view folded %d", ai, c.offset, f.foldedOffset)
			}
		}
		if settled != pr.settledMicros || (!ok && len(tb.settling[uint32(ai)]) > 0) {
			t.Fatalf("account %d: settled %d, entries sum %d", ai, pr.settledMicros, settled)
		}
	}
}

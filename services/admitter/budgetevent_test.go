package admitter

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestPeerFollowerSkipsBudgetChanged: budget.changed (a funding account's project budget,
// for the ledger to fold) on the events topic is read past by the peer follower: it changes
// nothing here (the admitter takes budgets from the ledger's balance.updated only, so p1's
// 10,000 µ budget still holds after a budget.changed removing it), and another admitter's
// request.started written after it on the same partition (both keyed by the organization)
// is applied: its 5,000 µ reservation leaves no room for a 7,500 µ request of p1.
func TestPeerFollowerSkipsBudgetChanged(t *testing.T) {
	c := kafkatest.Start(t)
	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	org := bal("org", "enterprise", 1_000_000_000)
	org.Projects = []events.ProjectSpend{{ProjectID: "p1", BudgetMicros: 10_000, PeriodStart: month}}
	seed(t, c, org, fundedBal("p1", "enterprise", "org"))
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 2 })

	seed(t, c, events.BudgetChanged{AccountID: "org", ProjectID: "p1", Remove: true, AdminKeyID: "ops"},
		events.RequestStarted{RequestID: "peer-1", AccountID: "p1", FundingAccountID: "org", Endpoint: "codex.responses",
			Tier: "enterprise", Priority: events.PriorityStandard, Funding: events.FundingCredits,
			Estimate: events.Units{TokensIn: 500, TokensOut: 500}, EstimateMicros: 5_000, HoldMicros: 5_000,
			HoldExpiresAt: now.Add(10 * time.Minute), PriceBookVersion: "v1"})
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.mu.Lock()
		_, seen := s.peers["peer-1"]
		s.mu.Unlock()
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the peer's request.started after a budget.changed was never applied")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r1", "p1"))
	if a.status != 429 || answerField(t, a, "reason") != "budget_exhausted" {
		t.Fatalf("p1 with 5,000 of its 10,000 reserved by a peer: %d %s, want 429 budget_exhausted", a.status, a.body)
	}
	if a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r2", "org")); a.status != 200 {
		t.Fatalf("org's own request: %d %s", a.status, a.body)
	}
}

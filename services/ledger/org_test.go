package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// fundedSettle is project proj's request req of cost funded by org: start and finish, keyed
// (their subject) by org.
func fundedSettle(t *testing.T, org, proj, req string, cost int64, at time.Time) []events.Event {
	evs := settle(t, proj, req, cost, at)
	for i := range evs {
		switch p := evs[i].Payload.(type) {
		case events.RequestStarted:
			p.FundingAccountID = org
			evs[i] = ev(t, evs[i].Time, p)
		case events.RequestFinished:
			p.FundingAccountID = org
			evs[i] = ev(t, evs[i].Time, p)
		}
	}
	return evs
}

// TestOrganizationOnKafka: an organization funds two projects that use the same request id;
// the money is the organization's, a budget counts its project's spending, the views and
// balance.updated carry the routing and the budgets, and the replay, the reconciliation and
// the statements agree with the live ledger.
func TestOrganizationOnKafka(t *testing.T) {
	c := kafkatest.Start(t)
	r := start(t, testConfig(c))
	for _, w := range []struct {
		method, path string
		body         any
	}{
		{"PUT", "/v1/accounts/org", map[string]any{"tier": "free", "priority": "standard"}},
		{"PUT", "/v1/accounts/p1", map[string]any{"tier": "pro", "priority": "standard", "funding_account_id": "org"}},
		{"POST", "/v1/accounts/org/grants", map[string]any{"grant_id": "g1", "amount_micros": 5_000_000}},
	} {
		if code, b := call(t, w.method, r.base+w.path, adminToken, w.body); code != 202 {
			t.Fatalf("%s %s: %d %s", w.method, w.path, code, b)
		}
	}
	// The budget route refuses an account no ledger instance knows yet (404): wait for it.
	waitAccount(t, r.base, "org", func(v view.Account) bool { return v.AvailableMicros == 5_000_000 })
	if code, b := call(t, "PUT", r.base+"/v1/accounts/org/budgets/p1", adminToken, map[string]any{"budget_micros": 2_000_000}); code != 202 {
		t.Fatalf("budget: %d %s", code, b)
	}
	waitAccount(t, r.base, "org", func(v view.Account) bool { return len(v.Projects) == 1 })
	now := time.Now().UTC().Truncate(time.Second)
	produce(t, c, append(fundedSettle(t, "org", "p1", "r1", 700_000, now), fundedSettle(t, "org", "p2", "r1", 300_000, now)...)...)
	v := waitAccount(t, r.base, "org", func(v view.Account) bool { return v.AvailableMicros == 4_000_000 && v.HeldMicros == 0 })
	if v.Tier != "free" || len(v.Projects) != 1 || v.Projects[0].ProjectID != "p1" || v.Projects[0].SpentMicros != 700_000 ||
		v.Projects[0].RemainingMicros != 1_300_000 || v.Projects[0].BudgetMicros != 2_000_000 {
		t.Fatalf("org view %+v", v)
	}
	p1 := waitAccount(t, r.base, "p1", func(v view.Account) bool { return v.FundingAccountID == "org" })
	if p1.AvailableMicros != 0 || p1.Tier != "pro" {
		t.Fatalf("p1 view %+v", p1)
	}
	// balance.updated: the organization's with its projects, the project's with its funding.
	deadline := time.Now().Add(30 * time.Second)
	var orgBU, p1BU *events.BalanceUpdated
	for time.Now().Before(deadline) && (orgBU == nil || p1BU == nil) {
		_ = readTopic(t, c.Brokers, c.Topics.Balances, func(e events.Event) {
			x, ok := e.Payload.(events.BalanceUpdated)
			switch {
			case ok && x.AccountID == "org" && x.AvailableMicros == 4_000_000 && x.HeldMicros == 0:
				orgBU = &x
			case ok && x.AccountID == "p1" && x.FundingAccountID == "org":
				p1BU = &x
			}
		})
	}
	if orgBU == nil || p1BU == nil || len(orgBU.Projects) != 1 || orgBU.Projects[0].SpentMicros != 700_000 {
		t.Fatalf("balance.updated org %+v p1 %+v", orgBU, p1BU)
	}
	// The replay and the live ledger agree; so do the journal's statements and balances.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep := replayBalances(t, c)
	report, err := finance.ReconcileLive(ctx, rep, finance.HTTPLive(http.DefaultClient, r.base, adminToken), nil, 5, 200*time.Millisecond)
	if err != nil || !report.OK() || report.Accounts < 2 {
		t.Fatalf("reconcile: %+v %v", report, err)
	}
	var journal []events.LedgerEntry
	for time.Now().Before(deadline) {
		if journal, err = finance.ReadJournal(ctx, c.Brokers, c.Topics); err != nil {
			t.Fatal(err)
		}
		if len(journal) >= 2+2*4 { // grant, two holds, two charges
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, le := range journal {
		if le.AccountID != "org" {
			t.Fatalf("journal line of %s: %+v", le.AccountID, le)
		}
	}
	// The two projects' r1 are two requests in the journal, on the topic and in the entries
	// API (the cache): each line of a request names its project, and each request's lines
	// add up on their own (its hold placed and posted once; revenue its cost).
	byProject := func(les []events.LedgerEntry) string {
		type sums struct{ held, revenue int64 }
		m := map[string]sums{}
		for _, le := range les {
			if le.RequestID != "" {
				s := m[le.ProjectID+"/"+le.RequestID]
				switch le.LedgerAccount {
				case events.LedgerHeld:
					s.held += le.AmountMicros
				case events.LedgerRevenue:
					s.revenue += le.AmountMicros
				}
				m[le.ProjectID+"/"+le.RequestID] = s
			}
		}
		return fmt.Sprint(m)
	}
	const wantByProject = "map[p1/r1:{0 700000} p2/r1:{0 300000}]"
	if got := byProject(journal); got != wantByProject {
		t.Fatalf("journal topic by project and request: %s, want %s", got, wantByProject)
	}
	code, b := call(t, "GET", r.base+"/v1/accounts/org/entries?limit=100", adminToken, nil)
	var page view.Entries
	if code != 200 || json.Unmarshal(b, &page) != nil {
		t.Fatalf("entries: %d %s", code, b)
	}
	cached := make([]events.LedgerEntry, len(page.Entries))
	for i, e := range page.Entries {
		cached[i] = e.LedgerEntry
	}
	if got := byProject(cached); got != wantByProject {
		t.Fatalf("entries API by project and request: %s, want %s", got, wantByProject)
	}
	st, err := finance.NewStatement(journal, "org", now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil || st.Check() != nil || st.ClosingMicros != 4_000_000 {
		t.Fatalf("statement closing %d: %v %v", st.ClosingMicros, err, st.Check())
	}
	// A funded hold that expires: request.expired names the project and is keyed by the
	// organization, as the request's start was.
	open := fundedSettle(t, "org", "p1", "r2", 100_000, now)[0]
	sp := open.Payload.(events.RequestStarted)
	sp.HoldExpiresAt = now.Add(time.Second)
	produce(t, c, ev(t, now, sp), ev(t, now.Add(10*time.Second), events.CreditsGranted{GrantID: "g2", AccountID: "org", AmountMicros: 1, Source: events.GrantPurchase}))
	var key string
	var x events.RequestExpired
	for time.Now().Before(deadline) && key == "" {
		_ = engineReadAll(ctx, c.Brokers, c.Topics.Journal, func(m kafka.Message) error {
			if e, err := events.Decode(m.Value); err == nil {
				if p, ok := e.Payload.(events.RequestExpired); ok {
					key, x = string(m.Key), p
				}
			}
			return nil
		})
	}
	if key != "org" || x.AccountID != "p1" || x.FundingAccountID != "org" || x.RequestID != "r2" {
		t.Fatalf("request.expired keyed %q: %+v", key, x)
	}
	st, err = finance.NewStatement(journal, "org", now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil || st.Check() != nil || st.ClosingMicros != 4_000_000 {
		t.Fatalf("statement closing %d: %v %v", st.ClosingMicros, err, st.Check())
	}
}

// TestTooManyBudgetsDeadLettered: a budget.changed that would give an organization a 65th
// budget (the API refuses it; another producer, or two PUTs racing, may not) is not applied
// but dead-lettered with the reason.
func TestTooManyBudgetsDeadLettered(t *testing.T) {
	c := kafkatest.Start(t)
	start(t, testConfig(c))
	now := time.Now().UTC()
	var evs []events.Event
	for i := range events.MaxProjectBudgets + 1 {
		evs = append(evs, ev(t, now, events.BudgetChanged{AccountID: "org", ProjectID: fmt.Sprintf("p%02d", i), BudgetMicros: 1}))
	}
	produce(t, c, evs...)
	bad := evs[len(evs)-1]
	reason := deadLetterReason(t, c, bad.ID)
	if !strings.HasPrefix(reason, fold.AnomalyTooManyBudgets+": event "+bad.ID) || !strings.Contains(reason, "p64") {
		t.Fatalf("dead-letter reason %q", reason)
	}
}

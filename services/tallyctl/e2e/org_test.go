package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/services/sink/sqlcli"
	"github.com/tallyhq/tally/services/tallyctl/internal/journal"
	"github.com/tallyhq/tally/services/tallyctl/internal/waitfor"
	"github.com/tallyhq/tally/shared/events"
)

// TestOrganizationSharedBalance drives issue 15's organizations through the whole pipeline:
// two projects funded by one organization draw on its single balance through the admitter,
// the organization's monthly budget for one project stops that project (budget_exhausted)
// while the other goes on, a request larger than what the organization has left is denied
// insufficient_credits, the ledger's views show the organization's balance and the budget's
// spend, ClickHouse files the requests under their projects with the organization as payer,
// and reconcile (replay, live ledger, ClickHouse journal) agrees to the micro-credit.
func TestOrganizationSharedBalance(t *testing.T) {
	st, conn := startStack(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const org, projA, projB = "org_e2e", "proj_a", "proj_b"

	// Every account is on the enterprise tier (no included allowance), so that every
	// micro-credit is the organization's credits and a project's own balance (0) denies until
	// the admitter has its routing. The organization gets 10 credits; both projects are funded
	// by it; project B may spend 3 credits a month.
	for _, a := range []string{org, projA, projB} {
		body := map[string]any{"tier": "enterprise", "priority": "standard", "organization_id": org}
		if a != org {
			body["funding_account_id"] = org
		}
		if code := admin(t, st, "PUT", "/v1/accounts/"+a, body, nil); code != 202 {
			t.Fatalf("PUT %s: status %d", a, code)
		}
	}
	if code := admin(t, st, "POST", "/v1/accounts/"+org+"/grants",
		map[string]any{"grant_id": "g-org-1", "amount_micros": 10_000_000, "source": "purchase", "priority": 100}, nil); code != 202 {
		t.Fatalf("grant: status %d", code)
	}
	waitfor.Eventually(t, "the ledger folded the organization's grant", 30*time.Second, func() error {
		var v view.Account
		if code := admin(t, st, "GET", "/v1/accounts/"+org, nil, &v); code != 200 || v.AvailableMicros != 10_000_000 {
			return fmt.Errorf("status %d, %+v", code, v)
		}
		return nil
	})
	if code := admin(t, st, "PUT", "/v1/accounts/"+org+"/budgets/"+projB, map[string]any{"budget_micros": 3_000_000}, nil); code != 202 {
		t.Fatalf("PUT budget: status %d", code)
	}
	waitfor.Eventually(t, "the ledger folded the budget", 30*time.Second, func() error {
		var v view.Account
		admin(t, st, "GET", "/v1/accounts/"+org, nil, &v)
		if len(v.Projects) != 1 || v.Projects[0].ProjectID != projB || v.Projects[0].BudgetMicros != 3_000_000 {
			return fmt.Errorf("projects %+v", v.Projects)
		}
		return nil
	})

	cl, err := client.New(client.Config{BaseURL: st.AdmitterURL, APIKey: st.APIKey})
	if err != nil {
		t.Fatal(err)
	}
	video := func(seconds int64) events.Units { return events.Units{VideoSeconds: seconds, Resolution: "1080p"} } // 0.4 credit a second
	// admit retries (new request ids: a denial is an answer too) until the admitter has the
	// routing and the budget, then returns the allowed answer.
	n := 0
	admit := func(what, acct string, seconds int64, ready func(*api.AdmitResponse, error) error) (string, *api.AdmitResponse) {
		t.Helper()
		var rid string
		var adm *api.AdmitResponse
		waitfor.Eventually(t, what, 30*time.Second, func() error {
			n++
			rid = fmt.Sprintf("req-org-%d", n)
			adm, err = cl.Admit(ctx, api.AdmitRequest{RequestID: rid, AccountID: acct, Endpoint: "sora.video", Estimate: video(seconds)})
			return ready(adm, err)
		})
		return rid, adm
	}
	// funded: allowed on the organization's balance; a project's own balance (0) denies
	// insufficient_credits until the admitter has the project's routing.
	funded := func(adm *api.AdmitResponse, err error) error {
		var denied *client.DeniedError
		if errors.As(err, &denied) && denied.Reason == client.ReasonInsufficientCredits {
			return err
		}
		if err != nil {
			t.Fatalf("admit: %v", err)
		}
		if adm.FundingAccountID != org {
			t.Fatalf("admitted with funding account %q: %+v", adm.FundingAccountID, adm)
		}
		return nil
	}
	finish := func(acct, rid string, seconds int64) *api.FinishResponse {
		t.Helper()
		fin, err := cl.Finish(ctx, api.FinishRequest{RequestID: rid, Status: events.StatusSucceeded, Usage: video(seconds), DurationMs: 1000})
		if err != nil {
			t.Fatalf("finish %s %s: %v", acct, rid, err)
		}
		return fin
	}

	// 1. Project B: 5 s = 2 credits, held on the organization's credits.
	ridB1, admB1 := admit("project B admitted on the organization's balance", projB, 5, funded)
	if admB1.EstimateMicros != 2_000_000 || admB1.HoldMicros != 2_000_000 {
		t.Fatalf("project B admit: %+v", admB1)
	}
	if fin := finish(projB, ridB1, 5); fin.CostMicros != 2_000_000 || fin.CreditsMicros != 2_000_000 {
		t.Fatalf("project B finish: %+v", fin)
	}
	// 2. Project B again: 2 credits more would pass its 3-credit budget: budget_exhausted, with
	// a retry-after (the next month).
	_, err = cl.Admit(ctx, api.AdmitRequest{RequestID: "req-org-b2", AccountID: projB, Endpoint: "sora.video", Estimate: video(5)})
	var denied *client.DeniedError
	if !errors.As(err, &denied) || denied.Reason != client.ReasonBudgetExhausted || denied.RetryAfter <= 0 {
		t.Fatalf("project B over its budget: want budget_exhausted with a retry-after, got %v", err)
	}
	// 3. Project A has no budget: it goes on, on the organization's credits.
	ridA1, admA1 := admit("project A admitted", projA, 5, funded)
	if admA1.HoldMicros != 2_000_000 || admA1.AllowanceMicros != 0 {
		t.Fatalf("project A admit: want a 2-credit hold on the organization's credits, got %+v", admA1)
	}
	if fin := finish(projA, ridA1, 4); fin.CostMicros != 1_600_000 || fin.CreditsMicros != 1_600_000 {
		t.Fatalf("project A finish: %+v", fin)
	}
	// 4. A request larger than what the organization has left (6.4 credits) is denied.
	_, err = cl.Admit(ctx, api.AdmitRequest{RequestID: "req-org-a-big", AccountID: projA, Endpoint: "sora.video", Estimate: video(25)})
	if !errors.As(err, &denied) || denied.Reason != client.ReasonInsufficientCredits {
		t.Fatalf("project A beyond the organization's balance: want insufficient_credits, got %v", err)
	}
	// 5. The ledger: the organization paid 3.6 credits; the projects hold no money of their
	// own; B's budget shows 2 credits spent.
	want := int64(10_000_000 - 3_600_000)
	waitfor.Eventually(t, "the organization's balance and budget spend in the ledger", 30*time.Second, func() error {
		var o, a, b view.Account
		admin(t, st, "GET", "/v1/accounts/"+org, nil, &o)
		admin(t, st, "GET", "/v1/accounts/"+projA, nil, &a)
		admin(t, st, "GET", "/v1/accounts/"+projB, nil, &b)
		if o.AvailableMicros != want || o.HeldMicros != 0 || len(o.Projects) != 1 || o.Projects[0].SpentMicros != 2_000_000 {
			return fmt.Errorf("organization %+v, want available %d, held 0, project B spent 2000000", o, want)
		}
		if a.AvailableMicros != 0 || a.HeldMicros != 0 || b.AvailableMicros != 0 || b.HeldMicros != 0 ||
			a.FundingAccountID != org || b.FundingAccountID != org {
			return fmt.Errorf("projects A %+v, B %+v: want no money of their own, funded by %s", a, b, org)
		}
		return nil
	})

	// 6. ClickHouse: the requests are the projects', paid by the organization.
	q, err := sqlcli.Named("usage_by_organization_and_project")
	if err != nil {
		t.Fatal(err)
	}
	waitfor.Eventually(t, "the organization's usage in ClickHouse", 60*time.Second, func() error {
		rows, err := conn.Query(ctx, "SELECT paying_account_id, account_id, toInt64(cost_micros) FROM (\n"+q+"\n)",
			clickhouse.Named("month", time.Now().UTC().Format("2006-01-02")))
		if err != nil {
			return err
		}
		defer rows.Close()
		got := map[string]int64{}
		for rows.Next() {
			var payer, acct string
			var cost int64
			if err := rows.Scan(&payer, &acct, &cost); err != nil {
				return err
			}
			got[payer+"/"+acct] = cost
		}
		wantRows := map[string]int64{org + "/": 3_600_000, org + "/" + projA: 1_600_000, org + "/" + projB: 2_000_000}
		for k, v := range wantRows {
			if got[k] != v {
				return fmt.Errorf("rows %v, want %v", got, wantRows)
			}
		}
		return nil
	})

	// The budget.changed the budget route published is stored by the sink (not dead-lettered).
	waitfor.Eventually(t, "the budget.changed row in ClickHouse", 60*time.Second, func() error {
		var budget string
		if err := conn.QueryRow(ctx, `SELECT concat(attrs['project_id'], '=', attrs['budget_micros']) FROM usage_events
WHERE type = 'tally.budget.changed.v1' AND account_id = {org:String}`, clickhouse.Named("org", org)).Scan(&budget); err != nil {
			return err
		}
		if budget != projB+"=3000000" {
			return fmt.Errorf("budget.changed attrs %q, want %s=3000000", budget, projB)
		}
		return nil
	})

	// 7. Reconcile: replay of the log, the live ledger and the ClickHouse journal agree.
	rep, err := finance.Replay(ctx, st.Brokers, st.Topics, st.FoldConfig, false, nil)
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	report, err := finance.ReconcileLive(ctx, rep, finance.HTTPLive(http.DefaultClient, st.LedgerURL, st.AdminToken),
		func(ctx context.Context) (map[string]finance.Balance, error) { return journal.Sums(ctx, conn) }, 10, 500*time.Millisecond)
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if !report.OK() {
		t.Fatalf("reconcile differences: %+v", report.Differences)
	}
	for _, b := range rep.Balances() {
		if b.AccountID == org && b.AvailableMicros != want {
			t.Fatalf("replayed organization available %d, want %d", b.AvailableMicros, want)
		}
	}
	// 8. The organization's journal in ClickHouse names the project of each funded request's
	// line: its revenue by project is what each project's requests cost, and no request is
	// charged twice.
	waitfor.Eventually(t, "the organization's journal by project in ClickHouse", 60*time.Second, func() error {
		rows, err := conn.Query(ctx, `SELECT project_id, sum(amount_micros) FROM ledger_entries FINAL
			WHERE account_id = {org:String} AND ledger_account = 'system.revenue' GROUP BY project_id`, clickhouse.Named("org", org))
		if err != nil {
			return err
		}
		defer rows.Close()
		got := map[string]int64{}
		for rows.Next() {
			var p string
			var sum int64
			if err := rows.Scan(&p, &sum); err != nil {
				return err
			}
			got[p] = sum
		}
		if wantRev := map[string]int64{projA: 1_600_000, projB: 2_000_000}; fmt.Sprint(got) != fmt.Sprint(wantRev) {
			return fmt.Errorf("revenue by project %v, want %v", got, wantRev)
		}
		return rows.Err()
	})
	if double, err := journal.DoubleCharges(ctx, conn); err != nil || len(double) != 0 {
		t.Fatalf("double charges %v: %v", double, err)
	}
}

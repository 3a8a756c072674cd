package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

func init() {
	for _, c := range []string{api.CodeSelfFunding, api.CodeSelfBudget, api.CodeBadBudget, api.CodeTooManyBudgets} {
		knownCodes[c] = true
	}
}

// budgetFixture serves org (tier pro, priority batch, suspended, budgets of the given
// projects) and fresh (never given a priority).
func budgetFixture(t testing.TB, projects ...string) (http.Handler, *recordingPublisher) {
	t.Helper()
	keys, err := httpx.ParseKeyring("ops:" + httpx.HashSecret(hostileToken))
	if err != nil {
		t.Fatal(err)
	}
	org := view.Account{AccountID: "org", Tier: "pro", Priority: "batch", Suspended: true}
	for _, p := range projects {
		org.Projects = append(org.Projects, view.ProjectBudget{ProjectID: p, BudgetMicros: 5})
	}
	rd := &fakeReader{accounts: map[string]view.Account{"org": org, "fresh": {AccountID: "fresh", Tier: "free"}}}
	pub := &recordingPublisher{}
	h := api.Handler(api.Config{Admin: keys, Book: pricebook.Default(), BodyBytesMax: 4096, PageMax: 100, PublishTimeout: time.Second}, rd, pub)
	return h, pub
}

func adminDo(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+hostileToken)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestBudgetRoutes: PUT and DELETE /v1/accounts/{id}/budgets/{project} publish
// budget.changed with the budget alone (none of the account's folded settings: an account
// that never had a priority is not given one); bad input is a 4xx with a stable code and
// publishes nothing.
func TestBudgetRoutes(t *testing.T) {
	h, pub := budgetFixture(t, "p1")
	for _, c := range []struct {
		method, path, body string
		want               events.BudgetChanged
	}{
		{http.MethodPut, "/v1/accounts/org/budgets/p2", `{"budget_micros":2500000}`,
			events.BudgetChanged{AccountID: "org", ProjectID: "p2", BudgetMicros: 2_500_000, AdminKeyID: "ops"}},
		{http.MethodPut, "/v1/accounts/org/budgets/p1", `{"budget_micros":0}`, events.BudgetChanged{AccountID: "org", ProjectID: "p1", AdminKeyID: "ops"}},
		{http.MethodDelete, "/v1/accounts/org/budgets/p1", ``, events.BudgetChanged{AccountID: "org", ProjectID: "p1", Remove: true, AdminKeyID: "ops"}},
		{http.MethodPut, "/v1/accounts/fresh/budgets/p1", `{"budget_micros":1}`, events.BudgetChanged{AccountID: "fresh", ProjectID: "p1", BudgetMicros: 1, AdminKeyID: "ops"}},
	} {
		rec := adminDo(h, c.method, c.path, c.body)
		evs := pub.take()
		if rec.Code != http.StatusAccepted || len(evs) != 1 {
			t.Fatalf("%s %s: %d %s, %d events", c.method, c.path, rec.Code, rec.Body, len(evs))
		}
		if got, ok := evs[0].Payload.(events.BudgetChanged); !ok || !reflect.DeepEqual(got, c.want) || evs[0].Subject != c.want.AccountID {
			t.Fatalf("%s %s: published %+v, want %+v", c.method, c.path, got, c.want)
		}
	}
	for _, c := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{http.MethodPut, "/v1/accounts/org/budgets/org", `{"budget_micros":1}`, 400, api.CodeSelfBudget},
		{http.MethodDelete, "/v1/accounts/org/budgets/org", ``, 400, api.CodeSelfBudget},
		{http.MethodPut, "/v1/accounts/org/budgets/p%20q", `{"budget_micros":1}`, 400, httpx.CodeValidation},
		{http.MethodPut, "/v1/accounts/o%20g/budgets/p1", `{"budget_micros":1}`, 400, httpx.CodeValidation},
		{http.MethodPut, "/v1/accounts/org/budgets/p1", `{}`, 400, api.CodeBadBudget},
		{http.MethodPut, "/v1/accounts/org/budgets/p1", `{"budget_micros":-1}`, 400, api.CodeBadBudget},
		{http.MethodPut, "/v1/accounts/org/budgets/p1", `{"budget_micros":1000000000000001}`, 400, api.CodeBadBudget},
		{http.MethodPut, "/v1/accounts/org/budgets/p1", `{"budget_micros":1.5}`, 400, httpx.CodeInvalidJSON},
		{http.MethodPut, "/v1/accounts/org/budgets/p1", `{"budget_micros":1,"remove":true}`, 400, httpx.CodeInvalidJSON},
		{http.MethodPut, "/v1/accounts/ghost/budgets/p1", `{"budget_micros":1}`, 404, httpx.CodeNotFound},
		{http.MethodDelete, "/v1/accounts/ghost/budgets/p1", ``, 404, httpx.CodeNotFound},
	} {
		rec := adminDo(h, c.method, c.path, c.body)
		if rec.Code != c.status || errCode(t, rec) != c.code || len(pub.take()) != 0 {
			t.Errorf("%s %s %s: %d %s, want %d %s and nothing published", c.method, c.path, c.body, rec.Code, rec.Body, c.status, c.code)
		}
	}
}

// TestTooManyBudgetsRefused: with 64 other budgets a new one is 409 too_many_budgets; a
// change of one of them, or a removal, is accepted.
func TestTooManyBudgetsRefused(t *testing.T) {
	var ps []string
	for i := range events.MaxProjectBudgets {
		ps = append(ps, fmt.Sprintf("p%02d", i))
	}
	h, pub := budgetFixture(t, ps...)
	if rec := adminDo(h, http.MethodPut, "/v1/accounts/org/budgets/new", `{"budget_micros":1}`); rec.Code != http.StatusConflict ||
		errCode(t, rec) != api.CodeTooManyBudgets || len(pub.take()) != 0 {
		t.Fatalf("65th budget: %d %s", rec.Code, rec.Body)
	}
	if rec := adminDo(h, http.MethodPut, "/v1/accounts/org/budgets/p07", `{"budget_micros":1}`); rec.Code != http.StatusAccepted || len(pub.take()) != 1 {
		t.Fatalf("change at the bound: %d %s", rec.Code, rec.Body)
	}
	if rec := adminDo(h, http.MethodDelete, "/v1/accounts/org/budgets/p07", ``); rec.Code != http.StatusAccepted || len(pub.take()) != 1 {
		t.Fatalf("removal at the bound: %d %s", rec.Code, rec.Body)
	}
	h, pub = budgetFixture(t, ps[:events.MaxProjectBudgets-1]...)
	if rec := adminDo(h, http.MethodPut, "/v1/accounts/org/budgets/new", `{"budget_micros":1}`); rec.Code != http.StatusAccepted || len(pub.take()) != 1 {
		t.Fatalf("64th budget: %d %s", rec.Code, rec.Body)
	}
}

// TestFundingAccountSetting: PUT /v1/accounts/{id} carries funding_account_id ("" = own,
// absent = unchanged); the account itself is 400 self_funding.
func TestFundingAccountSetting(t *testing.T) {
	h, pub := hostileHandler(t)
	for _, c := range []struct {
		body string
		want *string
	}{
		{`{"tier":"pro","priority":"standard","funding_account_id":"org"}`, ptrS("org")},
		{`{"tier":"pro","priority":"standard","funding_account_id":""}`, ptrS("")},
		{`{"tier":"pro","priority":"standard"}`, nil},
	} {
		rec := adminDo(h, http.MethodPut, "/v1/accounts/acme", c.body)
		evs := pub.take()
		if rec.Code != http.StatusAccepted || len(evs) != 1 {
			t.Fatalf("%s: %d %s", c.body, rec.Code, rec.Body)
		}
		want := events.AccountUpdated{AccountID: "acme", Tier: "pro", Priority: "standard", AdminKeyID: "ops", FundingAccountID: c.want}
		if got := evs[0].Payload.(events.AccountUpdated); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: published %+v, want %+v", c.body, got, want)
		}
	}
	for body, code := range map[string]string{
		`{"tier":"pro","priority":"standard","funding_account_id":"acme"}`:  api.CodeSelfFunding,
		`{"tier":"pro","priority":"standard","funding_account_id":"o r g"}`: httpx.CodeValidation,
		`{"tier":"pro","priority":"standard","funding_account_id":5}`:       httpx.CodeInvalidJSON,
	} {
		if rec := adminDo(h, http.MethodPut, "/v1/accounts/acme", body); rec.Code != http.StatusBadRequest || errCode(t, rec) != code || len(pub.take()) != 0 {
			t.Errorf("%s: %d %s, want 400 %s", body, rec.Code, rec.Body, code)
		}
	}
}

func ptrS(s string) *string { return &s }

// TestViewsShowOrganization: the admin and customer account views carry funding_account_id
// and the projects' budgets.
func TestViewsShowOrganization(t *testing.T) {
	h, _, rd := customerFixture(t)
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	a := rd.accounts["acme"]
	a.FundingAccountID = "org9"
	a.Projects = []view.ProjectBudget{{ProjectID: "p1", BudgetMicros: 10, PeriodStart: start, SpentMicros: 4, RemainingMicros: 6}}
	rd.accounts["acme"] = a
	for _, c := range []struct{ path, token string }{{"/v1/accounts/acme", custAdmin}, {"/v1/customer/accounts/acme", custAcct}} {
		rec := do(h, http.MethodGet, c.path, c.token, "")
		var got struct {
			FundingAccountID string               `json:"funding_account_id"`
			Projects         []view.ProjectBudget `json:"projects"`
		}
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &got) != nil || got.FundingAccountID != "org9" ||
			!reflect.DeepEqual(got.Projects, a.Projects) {
			t.Fatalf("%s: %d %s", c.path, rec.Code, rec.Body)
		}
	}
}

// FuzzBudgetHandler throws arbitrary account and project ids, content types and bodies at
// PUT /v1/accounts/{id}/budgets/{project}: no panic, no 5xx, every error the documented JSON
// shape, and a 202 only with one valid budget.changed published.
func FuzzBudgetHandler(f *testing.F) {
	for _, s := range []string{`{"budget_micros":5}`, `{"budget_micros":0}`, `{"budget_micros":-1}`, `{"budget_micros":1e400}`,
		`{"budget_micros":"5"}`, `{}`, `null`, `[]`, `{"budget_micros":5}{}`, `{"budget_micros":1000000000000000}`} {
		f.Add("org", "p1", "application/json", s)
	}
	f.Add("org", "org", "application/json", `{"budget_micros":5}`)
	f.Add("o é", "p1", "application/json", `{"budget_micros":5}`)
	f.Add("org", "p1", "text/plain", `{"budget_micros":5}`)
	h, pub := budgetFixture(f, "p0")
	f.Fuzz(func(t *testing.T, account, project, contentType, body string) {
		if strings.ContainsAny(contentType, "\r\n\x00") {
			return // not a header value net/http would deliver
		}
		req := hostileRequest("budgets/"+escape(project), account, contentType, body)
		req.Method = http.MethodPut
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec, pub, account, events.TypeBudgetChanged)
	})
}

func escape(s string) string { return url.PathEscape(s) }

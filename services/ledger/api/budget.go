package api

import (
	"encoding/json"
	"net/http"

	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
)

// Organizations: PUT /v1/accounts/{id} sets funding_account_id (the account whose balance
// funds this one's requests); the budget routes set and remove the monthly budget of a
// project the account funds. They publish budget.changed, which carries the budget alone:
// nothing read from the folded view goes into the event (account.updated carries the tier,
// priority and suspension whole, so a budget carried by it re-sent them as last folded, and a
// PUT /v1/accounts/{id} not folded yet was silently undone). The view is read only to refuse
// early what the fold would refuse (an unknown account, a 65th budget).

// BudgetRequest is PUT /v1/accounts/{id}/budgets/{project}.
type BudgetRequest struct {
	BudgetMicros *int64 `json:"budget_micros"`
}

// Error codes of the organization routes.
const (
	CodeSelfFunding    = "self_funding"     // funding_account_id is the account itself
	CodeSelfBudget     = "self_budget"      // a budget for the account itself
	CodeBadBudget      = "bad_budget"       // budget_micros absent or outside [0, events.MaxAmountMicros]
	CodeTooManyBudgets = "too_many_budgets" // the account holds events.MaxProjectBudgets other budgets
)

func (s *server) putBudget(w http.ResponseWriter, r *http.Request, id string) {
	project, ok := s.budgetProject(w, r, id)
	if !ok {
		return
	}
	var req BudgetRequest
	if err := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); err != nil {
		httpx.WriteError(w, err)
		return
	}
	if req.BudgetMicros == nil || *req.BudgetMicros < 0 || *req.BudgetMicros > events.MaxAmountMicros {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, CodeBadBudget,
			"budget_micros: required, from 0 (stops the project) to %d micro-credits per UTC calendar month", int64(events.MaxAmountMicros)))
		return
	}
	v, ok := s.accountOf(w, r, id)
	if !ok {
		return
	}
	// Advisory: a budget folded meanwhile may still make this one the 65th; the fold then
	// dead-letters it (too_many_budgets).
	others := 0
	for _, p := range v.Projects {
		if p.ProjectID != project {
			others++
		}
	}
	if others >= events.MaxProjectBudgets {
		httpx.WriteError(w, httpx.Errorf(http.StatusConflict, CodeTooManyBudgets,
			"account %q already holds %d project budgets, the most it may: remove one first", id, others))
		return
	}
	s.publish(w, r, events.BudgetChanged{AccountID: id, ProjectID: project, BudgetMicros: *req.BudgetMicros, AdminKeyID: adminKeyID(r)})
}

func (s *server) deleteBudget(w http.ResponseWriter, r *http.Request, id string) {
	project, ok := s.budgetProject(w, r, id)
	if !ok {
		return
	}
	if _, ok := s.accountOf(w, r, id); !ok {
		return
	}
	s.publish(w, r, events.BudgetChanged{AccountID: id, ProjectID: project, Remove: true, AdminKeyID: adminKeyID(r)})
}

// budgetProject is the request's {project}, checked: an id, not the account's own.
func (s *server) budgetProject(w http.ResponseWriter, r *http.Request, id string) (string, bool) {
	project := r.PathValue("project")
	if err := events.CheckID("project", project); err != nil {
		httpx.WriteError(w, httpx.Validation(err))
		return "", false
	}
	if project == id {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, CodeSelfBudget,
			"project: %q is the account itself; a budget caps a project the account funds", project))
		return "", false
	}
	return project, true
}

// accountOf returns the folded view of account id, from this instance or its peers; it
// answers 404 when no instance knows the account (set its tier first: PUT
// /v1/accounts/{id}) and 503 when a peer that might could not be asked.
func (s *server) accountOf(w http.ResponseWriter, r *http.Request, id string) (view.Account, bool) {
	if v, ok := s.r.Account(id); ok {
		return v, true
	}
	body, failed := s.peerAnswer(r, "/v1/accounts/"+id, id, func(code int) bool { return code == http.StatusNotFound })
	if body != nil {
		var v view.Account
		if err := json.Unmarshal(body, &v); err == nil {
			return v, true
		}
		failed++
	}
	if failed > 0 {
		writePeersFailed(w, id, failed)
		return view.Account{}, false
	}
	httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, httpx.CodeNotFound,
		"account %q not known to the ledger: set its tier first (PUT /v1/accounts/%s)", id, id))
	return view.Account{}, false
}

package fold

// Organizations: an account (the funding account, an organization) whose balance funds the
// requests of other accounts (its projects), and the monthly budgets it sets for them.
//
// A funded request's events carry account_id P (the project) and funding_account_id O; their
// subject is O, so they are folded here in O's state: O's allowance windows, credits, holds
// and overage pay for them. Inside O's state a request is known by (project, request id), so
// two projects may use the same request id. The project's own account (on its own partition)
// only records which account funds it. One level: O's own funding is not followed.

import (
	"sort"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// Budget is the monthly budget of one project a funding account funds: what the project's
// finished requests may cost in a UTC calendar month (enforced by the admitter), and what
// they cost in the month starting at PeriodStartNs.
type Budget struct {
	ProjectID     string `json:"project_id"`
	BudgetMicros  int64  `json:"budget_micros"`
	PeriodStartNs int64  `json:"period_start_ns"` // the first instant of a UTC calendar month
	SpentMicros   int64  `json:"spent_micros"`
}

// projectOf is the project of a request event folded on account a: its account_id when
// another account (a) funds it, "" when it is a's own request.
func projectOf(a *Account, accountID string) string {
	if accountID == a.ID {
		return ""
	}
	return accountID
}

// requestKey is the hash a request is known by in its account's state (holds, parked
// finishes, the dedupe memory, the expiry index): its id's hash for the account's own
// request, else the hash of the project, a NUL and the id (no id holds a NUL, so a pair never
// hashes as a plain id does, and an unfunded request keeps the key it always had).
func requestKey(project, id string) uint64 {
	if project == "" {
		return hashID(id)
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(project); i++ {
		h ^= uint64(project[i])
		h *= 1099511628211
	}
	h *= 1099511628211 // the NUL: h ^= 0
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return h &^ 1
}

// findBudget returns the index of project's budget in a.Budgets, or where it would go and
// false.
func (a *Account) findBudget(project string) (int, bool) {
	i := sort.Search(len(a.Budgets), func(i int) bool { return a.Budgets[i].ProjectID >= project })
	return i, i < len(a.Budgets) && a.Budgets[i].ProjectID == project
}

// budgetRefused reports whether b would give a more than events.MaxProjectBudgets budgets.
func budgetRefused(a *Account, b *events.BudgetChanged) bool {
	if b.Remove || len(a.Budgets) < events.MaxProjectBudgets {
		return false
	}
	_, ok := a.findBudget(b.ProjectID)
	return !ok
}

// setBudget folds a budget.changed (checked by budgetRefused): a new budget starts counting
// at the month of the event time t with nothing spent (a project without a budget has no
// spending tracked); a changed one keeps its month and spending; remove drops it. Nothing
// else of the account changes (its tier, priority and suspension are account.updated's).
func (s *State) setBudget(a *Account, t int64, b *events.BudgetChanged) {
	i, ok := a.findBudget(b.ProjectID)
	switch {
	case b.Remove && ok:
		a.Budgets = append(a.Budgets[:i], a.Budgets[i+1:]...)
		if len(a.Budgets) == 0 {
			a.Budgets = nil
		}
	case b.Remove:
	case ok:
		a.Budgets[i].BudgetMicros = b.BudgetMicros
	default:
		start, _ := calendarMonth(max(t, 0))
		a.Budgets = append(a.Budgets, Budget{})
		copy(a.Budgets[i+1:], a.Budgets[i:])
		a.Budgets[i] = Budget{ProjectID: b.ProjectID, BudgetMicros: b.BudgetMicros, PeriodStartNs: start}
	}
}

// spend counts the cost of a funded request of project that finished at at in its budget,
// if it has one: in the UTC calendar month of at (a later month starts again from 0; a
// finish stamped in a month before the budget's counts in none).
func (s *State) spend(a *Account, project string, cost int64, at time.Time) {
	if project == "" || len(a.Budgets) == 0 || cost <= 0 {
		return
	}
	i, ok := a.findBudget(project)
	if !ok {
		return
	}
	b := &a.Budgets[i]
	start, _ := calendarMonth(max(at.UnixNano(), 0))
	switch {
	case start < b.PeriodStartNs:
		return
	case start > b.PeriodStartNs:
		b.PeriodStartNs, b.SpentMicros = start, 0
	}
	if addOK(b.SpentMicros, cost) {
		b.SpentMicros += cost
	} else {
		b.SpentMicros = 1<<63 - 1
	}
}

// projects returns a's budgets as balance.updated lists them (nil without).
func projects(a *Account) []events.ProjectSpend {
	if len(a.Budgets) == 0 {
		return nil
	}
	ps := make([]events.ProjectSpend, len(a.Budgets))
	for i, b := range a.Budgets {
		ps[i] = events.ProjectSpend{ProjectID: b.ProjectID, BudgetMicros: b.BudgetMicros, PeriodStart: nsTime(b.PeriodStartNs), SpentMicros: b.SpentMicros}
	}
	return ps
}

// monthOf is the start of the UTC calendar month of tNs.
func monthOf(tNs int64) int64 {
	start, _ := calendarMonth(max(tNs, 0))
	return start
}

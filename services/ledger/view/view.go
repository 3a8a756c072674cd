// Package view holds the read models the ledger serves over HTTP, shared by the engine
// (which builds them) and the API (which serves them) so that neither imports the other.
package view

import (
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// Grant is a live grant.
type Grant struct {
	GrantID         string     `json:"grant_id"`
	AmountMicros    int64      `json:"amount_micros"`
	RemainingMicros int64      `json:"remaining_micros"`
	Priority        int32      `json:"priority"`
	ExpiresAt       *time.Time `json:"expires_at,omitempty"`
}

// Allowance is one allowance window's use.
type Allowance struct {
	Window          string    `json:"window"`
	Start           time.Time `json:"start"`
	LimitMicros     int64     `json:"limit_micros"`
	UsedMicros      int64     `json:"used_micros"`
	RemainingMicros int64     `json:"remaining_micros"`
}

// Limits are the effective limit factors in permille (1000 = ×1.0).
type Limits struct {
	HistoryFactorPermille int32                       `json:"history_factor_permille"`
	Endpoints             map[string]map[string]int32 `json:"endpoints"` // endpoint -> priority -> factor
}

// Position is the log position the view reflects.
type Position struct {
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Watermark time.Time `json:"watermark"`
}

// Account is GET /v1/accounts/{id}.
type Account struct {
	AccountID       string        `json:"account_id"`
	Tier            string        `json:"tier"`
	Priority        string        `json:"priority,omitempty"`
	OrganizationID  string        `json:"organization_id,omitempty"`
	Suspended       bool          `json:"suspended"`
	AvailableMicros int64         `json:"available_micros"`
	HeldMicros      int64         `json:"held_micros"`
	OverageMicros   int64         `json:"overage_micros"`
	OpenHolds       int           `json:"open_holds"`
	Grants          []Grant       `json:"grants"`
	Allowance       []Allowance   `json:"allowance"`
	Subscription    *Subscription `json:"subscription,omitempty"`
	Period          *Period       `json:"period,omitempty"`
	// FundingAccountID is the account whose balance funds this account's requests (absent:
	// its own); the balances above are then not what its requests spend.
	FundingAccountID string `json:"funding_account_id,omitempty"`
	// Projects are the budgets this account (a funding account) set for the projects it funds,
	// in project id order.
	Projects []ProjectBudget `json:"projects,omitempty"`
	Limits   Limits          `json:"limits"`
	Position Position        `json:"position"`
}

// ProjectBudget is the monthly budget of one project a funding account funds, and what the
// project's finished requests cost in the current UTC calendar month (as of the ledger's log
// time: a month the ledger has not seen a finish in yet shows 0 spent).
type ProjectBudget struct {
	ProjectID       string    `json:"project_id"`
	BudgetMicros    int64     `json:"budget_micros"`
	PeriodStart     time.Time `json:"period_start"`
	SpentMicros     int64     `json:"spent_micros"`
	RemainingMicros int64     `json:"remaining_micros"`
}

// EntriesQuery selects journal lines.
type EntriesQuery struct {
	From, To time.Time // inclusive From, exclusive To; zero = open
	Cursor   uint64
	Limit    int
}

// Entry is one journal line with its paging sequence.
type Entry struct {
	Seq uint64 `json:"seq"`
	events.LedgerEntry
}

// Entries is GET /v1/accounts/{id}/entries.
type Entries struct {
	AccountID  string  `json:"account_id"`
	Entries    []Entry `json:"entries"`
	NextCursor string  `json:"next_cursor,omitempty"`
}

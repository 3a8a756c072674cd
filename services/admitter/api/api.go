// Package api is the admitter's HTTP contract: the JSON bodies of POST /v1/admit and
// POST /v1/finish, their validation, and the stable reason and error codes. The server and the
// Go client share it, and openapi.yaml describes the same shapes (checked by a test).
package api

import (
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// Paths of the API.
const (
	PathAdmit  = "/v1/admit"
	PathFinish = "/v1/finish"
)

// Denial reasons (AdmitResponse.Reason), in decision order.
const (
	ReasonSuspended           = "account_suspended"
	ReasonBlocked             = "account_blocked"
	ReasonOverloaded          = "overloaded"
	ReasonConcurrencyLimited  = "concurrency_limited"
	ReasonRateLimited         = "rate_limited"
	ReasonBudgetExhausted     = "budget_exhausted"
	ReasonInsufficientCredits = "insufficient_credits"
)

// Error codes specific to the admitter (beside httpx's).
const (
	// CodeUnknownRequest: /v1/finish for a request_id with no request.started in the events
	// log (no admitter admitted it), or whose hold already expired.
	CodeUnknownRequest = "unknown_request"
	// CodeRequestIDReused: a request_id repeated with different parameters.
	CodeRequestIDReused = "request_id_reused"
)

// AdmitRequest is the body of POST /v1/admit.
type AdmitRequest struct {
	// RequestID makes the call idempotent; the admitter generates one when it is empty.
	RequestID string `json:"request_id,omitempty"`
	AccountID string `json:"account_id"`
	Endpoint  string `json:"endpoint"`
	Model     string `json:"model,omitempty"`
	// Priority is critical, standard or batch; empty = the account's class. A request cannot
	// rise above its account's class.
	Priority string       `json:"priority,omitempty"`
	Estimate events.Units `json:"estimate"`
}

// Validate reports every problem, joined.
func (r AdmitRequest) Validate() error {
	errs := []error{events.CheckID("account_id", r.AccountID), events.CheckID("endpoint", r.Endpoint)}
	if r.RequestID != "" {
		errs = append(errs, events.CheckID("request_id", r.RequestID))
	}
	if r.Model != "" {
		errs = append(errs, events.CheckID("model", r.Model))
	}
	switch r.Priority {
	case "", events.PriorityCritical, events.PriorityStandard, events.PriorityBatch:
	default:
		errs = append(errs, fmt.Errorf("priority: want critical, standard or batch, got %q", r.Priority))
	}
	if err := r.Estimate.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("estimate.%w", err))
	}
	return errors.Join(errs...)
}

// Window is one included-allowance window as seen at decision time.
type Window struct {
	Name            string    `json:"name"`
	LimitMicros     int64     `json:"limit_micros"`
	UsedMicros      int64     `json:"used_micros"`
	RemainingMicros int64     `json:"remaining_micros"`
	ResetsAt        time.Time `json:"resets_at"`
}

// Remaining is what is left after the decision: balance, allowance and limits.
type Remaining struct {
	AvailableMicros       int64    `json:"available_micros"`
	Allowance             []Window `json:"allowance"`
	RatePerMinute         int64    `json:"rate_per_minute"`
	Burst                 int64    `json:"burst"`
	RateRemaining         int64    `json:"rate_remaining"`
	ConcurrencyLimit      int64    `json:"concurrency_limit"`
	InFlight              int64    `json:"in_flight"`
	EndpointInFlight      int64    `json:"endpoint_in_flight"`
	EndpointCapacity      int64    `json:"endpoint_capacity"`
	LoadFactorPermille    int64    `json:"load_factor_permille"`
	HistoryFactorPermille int64    `json:"history_factor_permille"`
}

// AdmitResponse is the body of a 200 (allowed) or 429 (denied) answer to POST /v1/admit.
type AdmitResponse struct {
	RequestID string `json:"request_id"`
	Allowed   bool   `json:"allowed"`
	// Reason and RetryAfterMs are set on a denial.
	Reason       string `json:"reason,omitempty"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
	// Funding is allowance, credits or split (both) when allowed.
	Funding string `json:"funding,omitempty"`
	// FundingAccountID is the account whose balance funds the request (an organization's
	// shared balance) when it is not the account's own: the allowance, balance and hold of
	// this answer are that account's.
	FundingAccountID string `json:"funding_account_id,omitempty"`
	Tier             string `json:"tier"`
	Priority         string `json:"priority"`
	// EstimateMicros is the priced estimate; ReservedMicros what is reserved for it: the
	// allowance, AllowanceMicros (what every window has left, at most the estimate), plus the
	// credit hold, HoldMicros (the rest).
	EstimateMicros   int64      `json:"estimate_micros"`
	ReservedMicros   int64      `json:"reserved_micros"`
	HoldMicros       int64      `json:"hold_micros"`
	AllowanceMicros  int64      `json:"allowance_micros"`
	HoldExpiresAt    *time.Time `json:"hold_expires_at,omitempty"`
	Remaining        Remaining  `json:"remaining"`
	PriceBookVersion string     `json:"price_book_version"`
}

// FinishRequest is the body of POST /v1/finish.
type FinishRequest struct {
	RequestID  string       `json:"request_id"`
	Status     string       `json:"status"`
	Usage      events.Units `json:"usage"`
	DurationMs int64        `json:"duration_ms,omitempty"`
}

// DurationMsMax bounds FinishRequest.DurationMs (7 days).
const DurationMsMax = 7 * 24 * 3600 * 1000

// Validate reports every problem, joined.
func (r FinishRequest) Validate() error {
	errs := []error{events.CheckID("request_id", r.RequestID)}
	switch r.Status {
	case events.StatusSucceeded, events.StatusFailed, events.StatusCancelled:
	default:
		errs = append(errs, fmt.Errorf("status: want succeeded, failed or cancelled, got %q", r.Status))
	}
	if err := r.Usage.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("usage.%w", err))
	}
	if r.DurationMs < 0 || r.DurationMs > DurationMsMax {
		errs = append(errs, fmt.Errorf("duration_ms: %d out of range [0, %d]", r.DurationMs, DurationMsMax))
	}
	return errors.Join(errs...)
}

// FinishResponse is the body of a 200 answer to POST /v1/finish.
type FinishResponse struct {
	RequestID      string `json:"request_id"`
	Funding        string `json:"funding"`
	CostMicros     int64  `json:"cost_micros"`
	ChargedMicros  int64  `json:"charged_micros"`
	ReleasedMicros int64  `json:"released_micros"`
	OverageMicros  int64  `json:"overage_micros"`
	// AllowanceMicros is the part of the cost the included allowance paid, CreditsMicros the
	// part paid from credits (hold, then available balance); with OverageMicros they sum to
	// CostMicros, and ChargedMicros is AllowanceMicros + CreditsMicros.
	AllowanceMicros  int64  `json:"allowance_micros"`
	CreditsMicros    int64  `json:"credits_micros"`
	PriceBookVersion string `json:"price_book_version"`
}

// ErrorBody is the JSON of every error answer (4xx, 503).
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// OpenAPI is the OpenAPI 3 document of the admitter's HTTP API (served on /openapi.json).
//
//go:embed openapi.json
var OpenAPI []byte

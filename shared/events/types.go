package events

// The payload types are the one definition of the event contract: the JSON Schemas
// (schemas/events, internal/schemagen), the hot types' codec (codec_gen.go: the Decoder's
// parsers, the Append functions; internal/codecgen, steered by the //codec: directives and
// codec:"..." tags) and the per-field part of every Validate (validateTags, from the schema
// tags, in codec_gen.go too) are generated from them; Validate adds the rules across fields. After changing a type, run go generate ./... here
// (make generate); TestSchemasAreGenerated and TestCodecIsGenerated fail while either is stale.
//
//go:generate go run ./internal/codecgen/cmd/codecgen -dir .
//go:generate go run ./internal/schemagen/cmd/schemagen -dir ../../schemas/events

import (
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxIDChars bounds every identifier (account, request, key, grant, endpoint ids), in
// characters (Unicode code points), as JSON Schema's and OpenAPI's maxLength count.
const MaxIDChars = 128

// MaxReasonChars bounds an adjustment's reason, in characters as JSON Schema counts them.
const MaxReasonChars = 1024

// MaxIDBytes is the most bytes an identifier takes: MaxIDChars characters of up to 4 bytes.
const MaxIDBytes = 4 * MaxIDChars

// MaxAmountMicros bounds every amount: one billion credits (10^15 micro-credits), far below
// int64's limit so that sums of many amounts cannot overflow.
const MaxAmountMicros int64 = 1_000_000_000_000_000

// Priority classes, highest first. Overload sheds batch before standard before critical.
const (
	PriorityCritical = "critical"
	PriorityStandard = "standard"
	PriorityBatch    = "batch"
)

// Funding sources of an admitted request: the tier's included allowance alone, credits
// alone, or both at once (split: the allowance covers what its windows have left, a credit
// hold the rest).
const (
	FundingAllowance = "allowance"
	FundingCredits   = "credits"
	FundingSplit     = "split"
)

// Request statuses at finish.
const (
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// Units are the measured (or, for a hold, estimated) quantities of a request. The price book
// turns them into micro-credits.
//
//codec:append
type Units struct {
	VideoSeconds int64  `json:"video_seconds,omitempty" schema:"min=0,max=MaxUnit"`
	Resolution   string `json:"resolution,omitempty" schema:"maxLength=32" codec:"intern"`
	TokensIn     int64  `json:"tokens_in,omitempty" schema:"min=0,max=MaxUnit"`
	TokensOut    int64  `json:"tokens_out,omitempty" schema:"min=0,max=MaxUnit"`
	ComputeMs    int64  `json:"compute_ms,omitempty" schema:"min=0,max=MaxUnit"`
}

// MaxUnit bounds each unit count.
const MaxUnit int64 = 1 << 40

// Validate checks the ranges of every unit (validateTags: the schema tags).
func (u Units) Validate() error {
	return u.validateTags()
}

// RequestStarted records an admitted request and what funds it: AllowanceMicros of the tier's
// included allowance and a credit hold of HoldMicros. Funding names the sources: "allowance"
// (HoldMicros is 0), "credits" (AllowanceMicros is 0) or "split" (both are above 0).
//
//codec:decode
//codec:append
type RequestStarted struct {
	RequestID        string    `json:"request_id" schema:"id"`
	AccountID        string    `json:"account_id" schema:"id" codec:"subject"`
	FundingAccountID string    `json:"funding_account_id,omitempty" schema:"id" codec:"subject" doc:"The account whose balance funds this request (an organization's shared balance) and the event's subject (its Kafka key); absent: account_id funds it."`
	Endpoint         string    `json:"endpoint" schema:"id" codec:"intern"`
	Model            string    `json:"model,omitempty" schema:"id" codec:"intern"`
	Tier             string    `json:"tier" schema:"id" codec:"intern"`
	Priority         string    `json:"priority" schema:"enum=critical|standard|batch" codec:"intern"`
	Funding          string    `json:"funding" schema:"enum=allowance|credits|split" codec:"intern"`
	Estimate         Units     `json:"estimate"`
	EstimateMicros   int64     `json:"estimate_micros" schema:"amount" doc:"micro-credits (1 credit = 1,000,000)"`
	HoldMicros       int64     `json:"hold_micros" schema:"amount" doc:"micro-credits (1 credit = 1,000,000)"`
	AllowanceMicros  int64     `json:"allowance_micros" schema:"amount" doc:"micro-credits (1 credit = 1,000,000)"`
	HoldExpiresAt    time.Time `json:"hold_expires_at"`
	PriceBookVersion string    `json:"price_book_version" schema:"id" codec:"intern"`
	KeyID            string    `json:"key_id,omitempty" schema:"id"`
	ClientAddr       string    `json:"client_addr,omitempty" schema:"id"`
}

func (RequestStarted) EventType() string { return TypeRequestStarted }
func (e RequestStarted) Subject() string { return fundingSubject(e.AccountID, e.FundingAccountID) }
func (e RequestStarted) Validate() error {
	errs := []error{e.validateTags(), checkFundingAccount(e.AccountID, e.FundingAccountID)}
	switch e.Funding { // its values: validateTags
	case FundingCredits:
		if e.AllowanceMicros != 0 {
			errs = append(errs, errors.New("allowance_micros: must be 0 when funding is credits"))
		}
	case FundingAllowance:
		if e.HoldMicros != 0 {
			errs = append(errs, errors.New("hold_micros: must be 0 when funding is allowance"))
		}
	case FundingSplit:
		if e.HoldMicros <= 0 || e.AllowanceMicros <= 0 {
			errs = append(errs, errors.New("hold_micros, allowance_micros: both must be above 0 when funding is split"))
		}
	}
	return errors.Join(errs...)
}

// RequestRejected records a denied request and why.
//
//codec:decode
//codec:append
type RequestRejected struct {
	RequestID        string `json:"request_id" schema:"id"`
	AccountID        string `json:"account_id" schema:"id" codec:"subject"`
	Endpoint         string `json:"endpoint" schema:"id" codec:"intern"`
	Model            string `json:"model,omitempty" schema:"id" codec:"intern"`
	Tier             string `json:"tier" schema:"id" codec:"intern"`
	Priority         string `json:"priority" schema:"enum=critical|standard|batch" codec:"intern"`
	Reason           string `json:"reason" schema:"id" codec:"intern"`
	RetryAfterMs     int64  `json:"retry_after_ms" schema:"min=0,max=604800000"`
	EstimateMicros   int64  `json:"estimate_micros" schema:"amount" doc:"micro-credits (1 credit = 1,000,000)"`
	PriceBookVersion string `json:"price_book_version" schema:"id" codec:"intern"`
	KeyID            string `json:"key_id,omitempty" schema:"id"`
	ClientAddr       string `json:"client_addr,omitempty" schema:"id"`
}

func (RequestRejected) EventType() string { return TypeRequestRejected }
func (e RequestRejected) Subject() string { return e.AccountID }
func (e RequestRejected) Validate() error {
	return e.validateTags()
}

// RequestFinished records the actual usage of a request and its price, CostMicros, computed
// by the price book version named in the event. AllowanceMicros, CreditsMicros and
// OverageMicros are the split of the cost the admitter answered (allowance first, then
// credits: the hold, then the available balance, then overage); they sum to CostMicros, or
// are all 0 when the producer did not say (older events). The ledger settles by the same
// rule on its own state, and its journal is the authority.
//
//codec:decode
type RequestFinished struct {
	RequestID        string `json:"request_id" schema:"id"`
	AccountID        string `json:"account_id" schema:"id" codec:"subject"`
	FundingAccountID string `json:"funding_account_id,omitempty" schema:"id" codec:"subject" doc:"The account whose balance funds this request (an organization's shared balance) and the event's subject (its Kafka key); absent: account_id funds it."`
	Endpoint         string `json:"endpoint" schema:"id" codec:"intern"`
	Model            string `json:"model,omitempty" schema:"id" codec:"intern"`
	Status           string `json:"status" schema:"enum=succeeded|failed|cancelled" codec:"intern"`
	Usage            Units  `json:"usage"`
	CostMicros       int64  `json:"cost_micros" schema:"amount" doc:"micro-credits (1 credit = 1,000,000)"`
	AllowanceMicros  int64  `json:"allowance_micros,omitempty" schema:"amount" doc:"the part of cost_micros charged to the included allowance (as the admitter answered)"`
	CreditsMicros    int64  `json:"credits_micros,omitempty" schema:"amount" doc:"the part of cost_micros charged to credits: the hold, then the available balance"`
	OverageMicros    int64  `json:"overage_micros,omitempty" schema:"amount" doc:"the part of cost_micros that could not be paid (overage receivable)"`
	DurationMs       int64  `json:"duration_ms" schema:"min=0,max=604800000"`
	PriceBookVersion string `json:"price_book_version" schema:"id" codec:"intern"`
	KeyID            string `json:"key_id,omitempty" schema:"id"`
	ClientAddr       string `json:"client_addr,omitempty" schema:"id"`
}

func (RequestFinished) EventType() string { return TypeRequestFinished }
func (e RequestFinished) Subject() string { return fundingSubject(e.AccountID, e.FundingAccountID) }
func (e RequestFinished) Validate() error {
	errs := []error{e.validateTags(), checkFundingAccount(e.AccountID, e.FundingAccountID)}
	if sum := e.AllowanceMicros + e.CreditsMicros + e.OverageMicros; sum != 0 && sum != e.CostMicros {
		errs = append(errs, fmt.Errorf("allowance_micros + credits_micros + overage_micros: %d, want 0 or cost_micros %d", sum, e.CostMicros))
	}
	return errors.Join(errs...)
}

// RequestExpired is published by the ledger when a hold's finish did not arrive before
// HoldExpiresAt (in log time); the hold is released. HoldMicros is the credit hold released,
// AllowanceMicros the allowance reservation given back to the windows, ReleasedMicros their
// sum.
type RequestExpired struct {
	RequestID        string    `json:"request_id" schema:"id"`
	AccountID        string    `json:"account_id" schema:"id"`
	FundingAccountID string    `json:"funding_account_id,omitempty" schema:"id" doc:"The account whose balance funds this request (an organization's shared balance) and the event's subject (its Kafka key); absent: account_id funds it."`
	Endpoint         string    `json:"endpoint" schema:"id"`
	Funding          string    `json:"funding" schema:"enum=allowance|credits|split"`
	HoldMicros       int64     `json:"hold_micros" schema:"amount" doc:"micro-credits (1 credit = 1,000,000)"`
	AllowanceMicros  int64     `json:"allowance_micros,omitempty" schema:"amount" doc:"the allowance reservation given back to the windows, micro-credits"`
	ReleasedMicros   int64     `json:"released_micros" schema:"amount" doc:"micro-credits (1 credit = 1,000,000)"`
	StartedEventID   string    `json:"started_event_id" schema:"id"`
	ExpiredAt        time.Time `json:"expired_at"`
}

func (RequestExpired) EventType() string { return TypeRequestExpired }
func (e RequestExpired) Subject() string { return fundingSubject(e.AccountID, e.FundingAccountID) }
func (e RequestExpired) Validate() error {
	return errors.Join(e.validateTags(), checkFundingAccount(e.AccountID, e.FundingAccountID))
}

// Grant sources.
const (
	GrantPurchase     = "purchase"
	GrantSubscription = "subscription"
	GrantPromotion    = "promotion"
)

// MaxGrantPriority bounds CreditsGranted.Priority.
const MaxGrantPriority = 1000

// DefaultGrantPriority is the priority of a grant given none, in the ledger's API and in
// tallyctl grant alike: in the middle of the range, so that a grant meant to burn first
// (e.g. an expiring promotion) or last can be given a lower or higher one.
const DefaultGrantPriority = 100

// CreditsGranted adds credits to an account. Spending burns grants in order of Priority
// (lower first), then earliest expiry (never-expiring last), then grant id.
type CreditsGranted struct {
	GrantID      string     `json:"grant_id" schema:"id"`
	AccountID    string     `json:"account_id" schema:"id"`
	AmountMicros int64      `json:"amount_micros" schema:"amount,min=1" doc:"micro-credits (1 credit = 1,000,000)"`
	Source       string     `json:"source" schema:"enum=purchase|subscription|promotion"`
	Priority     int32      `json:"priority" schema:"min=0,max=MaxGrantPriority" doc:"lower burns first"`
	ExpiresAt    *time.Time `json:"expires_at,omitempty" doc:"years 1970-2199: before 2200-01-01T00:00:00Z (int64 nanoseconds end in 2262)"`
	// AdminKeyID is the id of the admin key that made the grant (the audit trail); "" for
	// events from before it was recorded.
	AdminKeyID string `json:"admin_key_id,omitempty" schema:"id" doc:"The id of the admin key that made this change (the audit trail); absent in events from before it was recorded."`
	// PaymentRef is the payment provider's reference of a purchase (a charge or payment
	// intent id), recorded for reconciliation with the provider; "" when the grant is not a
	// purchase made through POST /v1/accounts/{id}/purchases. Same grammar as an id.
	PaymentRef string `json:"payment_ref,omitempty" schema:"id" doc:"The payment provider's reference of a purchase (POST /v1/accounts/{id}/purchases), for reconciliation with the provider; absent on other grants."`
}

func (CreditsGranted) EventType() string { return TypeCreditsGranted }
func (e CreditsGranted) Subject() string { return e.AccountID }
func (e CreditsGranted) Validate() error {
	// ExpiresAt is not checked against any clock (a replay must decide alike): an expires_at
	// already passed in log time is all breakage at once. The ledger API refuses one in the past.
	return e.validateTags()
}

// CreditsAdjusted is a signed finance correction with a reason.
type CreditsAdjusted struct {
	AdjustmentID string `json:"adjustment_id" schema:"id"`
	AccountID    string `json:"account_id" schema:"id"`
	AmountMicros int64  `json:"amount_micros" schema:"signed,nonzero" doc:"signed micro-credits"`
	Reason       string `json:"reason" schema:"minLength=1,maxLength=MaxReasonChars"`
	// AdminKeyID is the id of the admin key that made the adjustment (the audit trail).
	AdminKeyID string `json:"admin_key_id,omitempty" schema:"id" doc:"The id of the admin key that made this change (the audit trail); absent in events from before it was recorded."`
}

func (CreditsAdjusted) EventType() string { return TypeCreditsAdjusted }
func (e CreditsAdjusted) Subject() string { return e.AccountID }
func (e CreditsAdjusted) Validate() error {
	if !utf8.ValidString(e.Reason) {
		return errors.Join(e.validateTags(), errors.New("reason: not valid UTF-8"))
	}
	return e.validateTags()
}

// AccountUpdated sets an account's tier, default priority class and suspension (all three, as
// given), and those of its organization, notification, auto-top-up and funding settings that
// it carries: a settings field that is absent leaves the setting unchanged. The budgets of
// the projects an account funds are BudgetChanged's, which carries nothing else: a budget
// change must not re-send (and so undo) the tier, priority and suspension.
type AccountUpdated struct {
	AccountID string `json:"account_id" schema:"id"`
	Tier      string `json:"tier" schema:"id"`
	Priority  string `json:"priority" schema:"enum=critical|standard|batch"`
	Suspended bool   `json:"suspended"`
	// AdminKeyID is the id of the admin key that made the change (the audit trail).
	AdminKeyID string `json:"admin_key_id,omitempty" schema:"id" doc:"The id of the admin key that made this change (the audit trail); absent in events from before it was recorded."`
	// OrganizationID is the organization the account belongs to ("" none; absent: unchanged).
	OrganizationID *string `json:"organization_id,omitempty" schema:"id" doc:"The organization the account belongs to; \"\" none; absent: unchanged."`
	// NotifyUsagePermille are the usage thresholds (used against the period's allocation, in
	// permille, strictly increasing, at most MaxNotifyThresholds); [] = none. An account that
	// never set them uses DefaultNotifyUsagePermille while it has a subscription.
	NotifyUsagePermille *[]int32 `json:"notify_usage_permille,omitempty" schema:"maxItems=MaxNotifyThresholds,items.min=1,items.max=MaxNotifyPermille" doc:"Usage thresholds in permille of the period's allocation, strictly increasing; [] none; absent: unchanged (an account that never set them uses 500, 800, 1000 while it has a subscription)."`
	// NotifyFloorMicros notifies once per period when the available balance falls below it (0 = off).
	NotifyFloorMicros *int64 `json:"notify_floor_micros,omitempty" schema:"amount" doc:"Notify once per period when the available balance falls below this; 0 off; absent: unchanged."`
	// AutoTopUpThresholdMicros and AutoTopUpAmountMicros: when the available balance falls
	// below the threshold the ledger requests a top-up of the amount, once until the balance is
	// back at or above the threshold (threshold 0 = off). Both or neither are given.
	AutoTopUpThresholdMicros *int64 `json:"auto_top_up_threshold_micros,omitempty" schema:"amount" doc:"Request a top-up when the available balance falls below this (once until it is back at or above); 0 off; absent: unchanged. Given with auto_top_up_amount_micros."`
	AutoTopUpAmountMicros    *int64 `json:"auto_top_up_amount_micros,omitempty" schema:"amount" doc:"The amount of a requested top-up (above 0 when the threshold is); absent: unchanged."`
	// FundingAccountID is the account whose balance funds this account's requests: an
	// organization's shared balance ("" the account's own; absent: unchanged). The funded
	// account keeps its own tier, rate limits and concurrency; the money (allowance, holds,
	// credits, overage) is the funding account's, and its request events are keyed by it.
	// One level: the funding account's own funding setting is not followed.
	FundingAccountID *string `json:"funding_account_id,omitempty" schema:"optid" doc:"The account whose balance funds this account's requests (an organization's shared balance); \"\" the account's own; absent: unchanged. One level: the funding account's own funding is not followed."`
}

// MaxProjectBudgets bounds the project budgets (budget.changed) one funding account holds.
const MaxProjectBudgets = 64

// BudgetChanged sets, changes or removes the monthly budget (UTC calendar month, in log time)
// of one project, an account whose requests AccountID funds: what that project's finished
// requests may cost in a month, enforced at admission. It is the funding account's event
// (its subject and Kafka key), so that the budget and the project's spending are folded on one
// partition; it carries nothing else, so a budget change never touches the funding account's
// tier, priority or suspension (account.updated sets those, whole). BudgetMicros of 0 stops
// the project; Remove drops the budget (BudgetMicros is then 0). At most MaxProjectBudgets
// budgets per funding account.
type BudgetChanged struct {
	AccountID    string `json:"account_id" schema:"id" doc:"The funding account (an organization) whose budget this is: the event's subject (its Kafka key)."`
	ProjectID    string `json:"project_id" schema:"id" doc:"The funded account (project) the budget caps; not account_id."`
	BudgetMicros int64  `json:"budget_micros" schema:"amount" doc:"What the project's finished requests may cost in a UTC calendar month, micro-credits; 0 stops it."`
	Remove       bool   `json:"remove,omitempty" doc:"Drop the budget (budget_micros is then 0)."`
	// AdminKeyID is the id of the admin key that made the change (the audit trail).
	AdminKeyID string `json:"admin_key_id,omitempty" schema:"id" doc:"The id of the admin key that made this change (the audit trail)."`
}

func (BudgetChanged) EventType() string { return TypeBudgetChanged }
func (e BudgetChanged) Subject() string { return e.AccountID }
func (e BudgetChanged) Validate() error {
	errs := []error{e.validateTags()}
	if e.ProjectID != "" && e.ProjectID == e.AccountID {
		errs = append(errs, errors.New("project_id: must differ from account_id (a budget caps a project the account funds)"))
	}
	if e.Remove && e.BudgetMicros != 0 {
		errs = append(errs, errors.New("budget_micros: must be 0 when remove is true"))
	}
	return errors.Join(errs...)
}

// ProjectSpend is one project budget of a funding account as the ledger folded it: the
// budget, the month it counts (PeriodStart, the first instant of a UTC calendar month) and
// what the project's finished requests cost in it.
type ProjectSpend struct {
	ProjectID    string    `json:"project_id" schema:"id"`
	BudgetMicros int64     `json:"budget_micros" schema:"amount" doc:"micro-credits per UTC calendar month"`
	PeriodStart  time.Time `json:"period_start" doc:"the first instant of the UTC calendar month spent_micros counts"`
	SpentMicros  int64     `json:"spent_micros" schema:"balance" doc:"the cost of the project's requests finished in that month, micro-credits"`
}

// fundingSubject is a request event's subject: the funding account when one is named.
func fundingSubject(account, funding string) string {
	if funding != "" {
		return funding
	}
	return account
}

// checkFundingAccount checks an optional funding account against the account: another one
// (its id is checked with the other fields, validateTags).
func checkFundingAccount(account, funding string) error {
	if funding != "" && funding == account {
		return errors.New("funding_account_id: must differ from account_id (absent when the account funds itself)")
	}
	return nil
}

// MaxNotifyThresholds bounds AccountUpdated.NotifyUsagePermille.
const MaxNotifyThresholds = 8

// MaxNotifyPermille bounds one usage threshold (10× the allocation).
const MaxNotifyPermille = 10_000

// DefaultNotifyUsagePermille are the usage thresholds of a subscribed account that set none.
var DefaultNotifyUsagePermille = []int32{500, 800, 1000}

func (AccountUpdated) EventType() string { return TypeAccountUpdated }
func (e AccountUpdated) Subject() string { return e.AccountID }
func (e AccountUpdated) Validate() error {
	errs := []error{e.validateTags()}
	if e.FundingAccountID != nil {
		errs = append(errs, checkFundingAccount(e.AccountID, *e.FundingAccountID))
	}
	if (e.AutoTopUpThresholdMicros == nil) != (e.AutoTopUpAmountMicros == nil) {
		errs = append(errs, errors.New("auto_top_up_threshold_micros and auto_top_up_amount_micros: give both or neither"))
	} else if e.AutoTopUpThresholdMicros != nil && *e.AutoTopUpThresholdMicros > 0 && *e.AutoTopUpAmountMicros == 0 {
		errs = append(errs, errors.New("auto_top_up_amount_micros: must be above 0 when auto_top_up_threshold_micros is"))
	}
	if e.NotifyUsagePermille != nil {
		l := *e.NotifyUsagePermille
		for i := 1; i < len(l); i++ {
			if l[i] <= l[i-1] {
				errs = append(errs, fmt.Errorf("notify_usage_permille: want strictly increasing values, got %v", l))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// SubscriptionChanged subscribes an account to a plan of the price book, changes its plan, or
// (PlanID "") cancels it. AnchorAt is the billing anchor of a new subscription: periods start
// monthly on its day and time of day (the day clamped to shorter months). A change of plan
// keeps the existing anchor (see the ledger README for upgrades, downgrades and cancels).
type SubscriptionChanged struct {
	AccountID string    `json:"account_id" schema:"id"`
	PlanID    string    `json:"plan_id" schema:"optid" doc:"A plan of the price book; \"\" cancels the subscription."`
	AnchorAt  time.Time `json:"anchor_at" doc:"The billing anchor of a new subscription (periods start monthly on its day and time of day, the day clamped to shorter months); a change of plan keeps the existing anchor."`
	// AdminKeyID is the id of the admin key that made the change (the audit trail).
	AdminKeyID string `json:"admin_key_id,omitempty" schema:"id" doc:"The id of the admin key that made this change (the audit trail)."`
}

func (SubscriptionChanged) EventType() string { return TypeSubscriptionChanged }
func (e SubscriptionChanged) Subject() string { return e.AccountID }
func (e SubscriptionChanged) Validate() error {
	return e.validateTags()
}

// Notification kinds.
const (
	NotifyUsageThreshold = "usage_threshold"
	NotifyBalanceFloor   = "balance_floor"
)

// Notification tells a customer that an account crossed a usage threshold of its period's
// allocation or that its available balance fell below its floor: at most once per period per
// threshold. The ledger publishes it on the notifications topic with a deterministic event id
// (a receiver dedupes on it).
type Notification struct {
	NotificationID    string    `json:"notification_id" schema:"id"`
	AccountID         string    `json:"account_id" schema:"id"`
	Kind              string    `json:"kind" schema:"enum=usage_threshold|balance_floor"`
	ThresholdPermille int32     `json:"threshold_permille,omitempty" schema:"min=1,max=MaxNotifyPermille" doc:"usage_threshold only"`
	FloorMicros       int64     `json:"floor_micros,omitempty" schema:"amount,min=1" doc:"balance_floor only"`
	PeriodStart       time.Time `json:"period_start" doc:"start of the billing period"`
	PeriodEnd         time.Time `json:"period_end" doc:"end of the billing period (exclusive)"`
	UsedMicros        int64     `json:"used_micros" schema:"balance"`
	AllocationMicros  int64     `json:"allocation_micros" schema:"balance"`
	AvailableMicros   int64     `json:"available_micros" schema:"balance"`
}

func (Notification) EventType() string { return TypeNotification }
func (e Notification) Subject() string { return e.AccountID }
func (e Notification) Validate() error {
	errs := []error{e.validateTags()}
	switch e.Kind { // its values: validateTags
	case NotifyUsageThreshold:
		if e.ThresholdPermille == 0 || e.FloorMicros != 0 {
			errs = append(errs, fmt.Errorf("threshold_permille: want [1, %d] (and no floor_micros) for %s", MaxNotifyPermille, e.Kind))
		}
	case NotifyBalanceFloor:
		if e.FloorMicros == 0 || e.ThresholdPermille != 0 {
			errs = append(errs, fmt.Errorf("floor_micros: want [1, %d] (and no threshold_permille) for %s", MaxAmountMicros, e.Kind))
		}
	}
	if !e.PeriodEnd.After(e.PeriodStart) {
		errs = append(errs, errors.New("period_end: must be after period_start"))
	}
	return errors.Join(errs...)
}

// TopUpRequested asks the billing system to top an account up by AmountMicros: its available
// balance fell below its auto-top-up threshold. The ledger requests once, and again only after
// the balance was back at or above the threshold; TopUpID is deterministic.
type TopUpRequested struct {
	TopUpID         string `json:"topup_id" schema:"id"`
	AccountID       string `json:"account_id" schema:"id"`
	AmountMicros    int64  `json:"amount_micros" schema:"amount,min=1"`
	ThresholdMicros int64  `json:"threshold_micros" schema:"amount,min=1"`
	AvailableMicros int64  `json:"available_micros" schema:"balance"`
}

func (TopUpRequested) EventType() string { return TypeTopUpRequested }
func (e TopUpRequested) Subject() string { return e.AccountID }
func (e TopUpRequested) Validate() error {
	return e.validateTags()
}

// AllowanceWindow is the usage of one included-allowance window, aligned to the Unix epoch.
type AllowanceWindow struct {
	Window     string    `json:"window" schema:"id"`
	Start      time.Time `json:"start"`
	UsedMicros int64     `json:"used_micros" schema:"balance" doc:"micro-credits (1 credit = 1,000,000)"`
}

// MaxExpiringGrants bounds BalanceUpdated.Expiring.
const MaxExpiringGrants = 4

// ExpiringGrant is the part of an available balance that stops counting at ExpiresAt: the
// remainder of one expiring grant or, for the last entry of a full BalanceUpdated.Expiring,
// of all the expiring grants from that one on.
type ExpiringGrant struct {
	ExpiresAt       time.Time `json:"expires_at"`
	RemainingMicros int64     `json:"remaining_micros" schema:"balance" doc:"micro-credits that stop counting at expires_at"`
}

// BalanceUpdated is the ledger's view of one account, published on the compacted balances
// topic keyed by account id. Partition and Offset are the position in the events topic of
// the last event folded into this view: an admitter drops a local hold once the view has
// passed the hold's own position.
//
// The balances are sums of amounts, so they are bounded by int64 (and never negative), not
// by MaxAmountMicros, which bounds each amount.
//
// Expiring lists the earliest-expiring grants with a remainder, in expiry order, at most
// MaxExpiringGrants. When the account has more, the last entry carries the remainder of
// all the rest, at the earliest of their expiries (it errs on the early side). An admitter
// stops counting an entry's remainder once its wall clock reaches ExpiresAt, without
// waiting for the ledger's next view.
//
//codec:append
type BalanceUpdated struct {
	AccountID        string            `json:"account_id" schema:"id"`
	Tier             string            `json:"tier" schema:"optid"`
	Priority         string            `json:"priority" schema:"enum=critical|standard|batch|"`
	Suspended        bool              `json:"suspended"`
	AvailableMicros  int64             `json:"available_micros" schema:"balance" doc:"micro-credits (1 credit = 1,000,000); a sum of amounts, bounded by int64 only"`
	HeldMicros       int64             `json:"held_micros" schema:"balance" doc:"micro-credits (1 credit = 1,000,000); a sum of amounts, bounded by int64 only"`
	OverageMicros    int64             `json:"overage_micros" schema:"balance" doc:"micro-credits (1 credit = 1,000,000); a sum of amounts, bounded by int64 only"`
	Allowance        []AllowanceWindow `json:"allowance,omitempty" schema:"maxItems=8"`
	Expiring         []ExpiringGrant   `json:"expiring,omitempty" schema:"maxItems=MaxExpiringGrants" doc:"the earliest-expiring grants with a remainder, in expiry order; when there are more than 4, the last entry carries the remainder of all the rest at the earliest of their expiries"`
	FundingAccountID string            `json:"funding_account_id,omitempty" schema:"id" doc:"the account whose balance funds this account's requests (absent: its own)"`
	Projects         []ProjectSpend    `json:"projects,omitempty" schema:"maxItems=MaxProjectBudgets" doc:"the budgets of the projects this account funds, in project id order, with what each spent in the month"`
	Partition        int32             `json:"partition" schema:"min=0"`
	Offset           int64             `json:"offset" schema:"min=-1"`
}

func (BalanceUpdated) EventType() string { return TypeBalanceUpdated }
func (e BalanceUpdated) Subject() string { return e.AccountID }
func (e BalanceUpdated) Validate() error {
	errs := []error{e.validateTags(), checkFundingAccount(e.AccountID, e.FundingAccountID)}
	for i := 1; i < len(e.Expiring); i++ {
		if e.Expiring[i].ExpiresAt.Before(e.Expiring[i-1].ExpiresAt) {
			errs = append(errs, fmt.Errorf("expiring[%d]: expires_at: before the previous entry's", i))
		}
	}
	for i := 1; i < len(e.Projects); i++ {
		if e.Projects[i].ProjectID <= e.Projects[i-1].ProjectID {
			errs = append(errs, fmt.Errorf("projects[%d]: project_id: not after the previous entry's", i))
		}
	}
	return errors.Join(errs...)
}

// Limit scopes.
const (
	ScopeEndpoint = "endpoint" // a load factor for one endpoint and priority class
	ScopeAccount  = "account"  // a history factor for one account
)

// MaxFactorPermille bounds a limit factor: 10x.
const MaxFactorPermille = 10_000

// LimitsAdjusted carries one dynamic limit factor in permille (1000 = ×1.0), published on the
// compacted limits topic keyed by Key().
type LimitsAdjusted struct {
	Scope          string `json:"scope" schema:"enum=endpoint|account"`
	Endpoint       string `json:"endpoint,omitempty" schema:"id"`
	Priority       string `json:"priority,omitempty" schema:"enum=critical|standard|batch"`
	AccountID      string `json:"account_id,omitempty" schema:"id"`
	FactorPermille int32  `json:"factor_permille" schema:"min=0,max=MaxFactorPermille"`
	Reason         string `json:"reason" schema:"id"`
}

func (LimitsAdjusted) EventType() string { return TypeLimitsAdjusted }

// Subject is the account id for account scope and "" for endpoint scope.
func (e LimitsAdjusted) Subject() string { return e.AccountID }

// Key is the compaction key: "endpoint/<endpoint>/<priority>" or "account/<id>".
func (e LimitsAdjusted) Key() string {
	if e.Scope == ScopeAccount {
		return "account/" + e.AccountID
	}
	return "endpoint/" + e.Endpoint + "/" + e.Priority
}
func (e LimitsAdjusted) Validate() error {
	errs := []error{e.validateTags()}
	switch e.Scope { // its values: validateTags
	case ScopeEndpoint:
		if e.Endpoint == "" || e.Priority == "" {
			errs = append(errs, errors.New("endpoint, priority: required for endpoint scope"))
		}
		if e.AccountID != "" {
			errs = append(errs, errors.New("account_id: must be empty for endpoint scope"))
		}
	case ScopeAccount:
		if e.AccountID == "" {
			errs = append(errs, errors.New("account_id: required for account scope"))
		}
		if e.Endpoint != "" || e.Priority != "" {
			errs = append(errs, errors.New("endpoint/priority: must be empty for account scope"))
		}
	}
	return errors.Join(errs...)
}

// Ledger accounts of the double-entry journal. Customer accounts are per account id; system
// accounts have an empty AccountID.
const (
	LedgerAvailable         = "customer.available"
	LedgerHeld              = "customer.held"
	LedgerRevenue           = "system.revenue"
	LedgerGrantsIssued      = "system.grants_issued"
	LedgerBreakage          = "system.breakage"
	LedgerOverageReceivable = "system.overage_receivable"
	LedgerAdjustments       = "system.adjustments"
)

// LedgerEntry is one line of a balanced double-entry transaction. AmountMicros is signed:
// positive increases the ledger account's balance. The lines of one TransactionID sum to zero.
// EntryID is DerivedID(CauseEventID, leg), so a replay reproduces it. ProjectID is the funded
// account (project) whose request caused the line, on the lines of the funding account (the
// organization): two projects may use the same request id, so a request's lines are those of
// one (AccountID, ProjectID, RequestID). It is absent on the lines of the account's own
// requests and on lines that are not a request's.
//
//codec:decode
//codec:append
//codec:fields
type LedgerEntry struct {
	EntryID       string    `json:"entry_id" schema:"id" codec:"bytes"`
	TransactionID string    `json:"transaction_id" schema:"id" codec:"bytes"`
	AccountID     string    `json:"account_id" schema:"id" codec:"subject"`
	LedgerAccount string    `json:"ledger_account" schema:"enum=customer.available|customer.held|system.revenue|system.grants_issued|system.breakage|system.overage_receivable|system.adjustments" codec:"intern"`
	AmountMicros  int64     `json:"amount_micros" schema:"signed" doc:"signed micro-credits"`
	Kind          string    `json:"kind" schema:"id" codec:"intern"`
	CauseEventID  string    `json:"cause_event_id" schema:"id"`
	RequestID     string    `json:"request_id,omitempty" schema:"id"`
	ProjectID     string    `json:"project_id,omitempty" schema:"id" doc:"The funded account (project) whose request caused the line; absent when the request was the account's own or the line is not a request's."`
	GrantID       string    `json:"grant_id,omitempty" schema:"id"`
	EffectiveAt   time.Time `json:"effective_at"`
}

func (LedgerEntry) EventType() string { return TypeLedgerEntry }
func (e LedgerEntry) Subject() string { return e.AccountID }
func (e LedgerEntry) Validate() error {
	return e.validateTags()
}

// Abuse actions.
const (
	ActionThrottle = "throttle"
	ActionBlock    = "block"
)

// AbuseFlagged is a detector's finding. FlagID is deterministic per rule, account and window,
// so a detector that runs twice over the same window flags once.
type AbuseFlagged struct {
	FlagID      string            `json:"flag_id" schema:"id"`
	AccountID   string            `json:"account_id" schema:"id"`
	KeyID       string            `json:"key_id,omitempty" schema:"id"`
	Rule        string            `json:"rule" schema:"id"`
	Score       float64           `json:"score" schema:"min=0,max=1e12"`
	Action      string            `json:"action" schema:"enum=throttle|block"`
	WindowStart time.Time         `json:"window_start"`
	WindowEnd   time.Time         `json:"window_end"`
	Evidence    map[string]string `json:"evidence,omitempty" schema:"maxProperties=32,keyMaxLength=MaxIDChars,valueMaxLength=1024"`
}

func (AbuseFlagged) EventType() string { return TypeAbuseFlagged }
func (e AbuseFlagged) Subject() string { return e.AccountID }
func (e AbuseFlagged) Validate() error {
	err := e.validateTags()
	if CheckTime("window_start", e.WindowStart) == nil && CheckTime("window_end", e.WindowEnd) == nil && !e.WindowEnd.After(e.WindowStart) {
		err = errors.Join(err, errors.New("window_start/window_end: required, end after start"))
	}
	return err
}

// CheckID reports whether s is a valid identifier. The grammar, the same everywhere (events,
// both HTTP APIs and their OpenAPI documents, the JSON Schemas in schemas/events, which spell
// it as a pattern that a test holds to this function for every code point):
//
//   - 1..MaxIDChars characters of valid UTF-8 (so at most MaxIDBytes bytes);
//   - no space, control character, invisible character or character that stands for a
//     decoding error (see invisible): two ids that print alike are the same id;
//   - not starting with '.', so that "." and ".." (which a URL path cannot carry as a
//     segment) and hidden-file lookalikes are not ids.
func CheckID(name, s string) error { return checkID(name, s) }

func checkID(name, s string) error {
	if s == "" {
		return fmt.Errorf("%s: required", name)
	}
	return checkOptID(name, s)
}

func checkOptID(name, s string) error {
	if len(s) > MaxIDBytes {
		return fmt.Errorf("%s: longer than %d characters", name, MaxIDChars)
	}
	if s != "" && s[0] == '.' {
		return fmt.Errorf("%s: starts with '.'", name)
	}
	for i := 0; i < len(s); i++ { // the common case, plain ASCII, without decoding runes
		c := s[i]
		if c >= utf8.RuneSelf {
			return checkIDRunes(name, s)
		}
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("%s: contains a space or control character", name)
		}
	}
	if len(s) > MaxIDChars {
		return fmt.Errorf("%s: longer than %d characters", name, MaxIDChars)
	}
	return nil
}

func checkIDRunes(name, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: not valid UTF-8", name)
	}
	if utf8.RuneCountInString(s) > MaxIDChars {
		return fmt.Errorf("%s: longer than %d characters", name, MaxIDChars)
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == 0x00A0 || r == 0x2007 || r == 0x202F {
			return fmt.Errorf("%s: contains a space or control character", name)
		}
		if invisible(r) {
			return fmt.Errorf("%s: contains an invisible or replacement character (U+%04X)", name, r)
		}
	}
	return nil
}

// invisible reports the characters an id may not hold although they are neither spaces nor
// controls: every Default_Ignorable_Code_Point of Unicode 16 (soft hyphen, combining grapheme
// joiner, Hangul fillers, Mongolian and other variation selectors, the bidirectional marks,
// embeddings, overrides and isolates, zero-width characters, invisible operators, the
// byte-order mark, tag characters, ...), the interlinear annotation controls, U+FFFD (what a
// decoder makes of invalid UTF-8 and of a lone surrogate in JSON), private-use characters
// and noncharacters. An id holding one can look like another id in a dashboard, a statement
// or a log ("acct-1\u202e", "acct-1\ufe0f" and "acct-1" print alike).
func invisible(r rune) bool {
	for _, rg := range invisibleRanges {
		if r >= rg[0] && r <= rg[1] {
			return true
		}
	}
	return r&0xFFFE == 0xFFFE // U+xxFFFE and U+xxFFFF of every plane are noncharacters
}

// invisibleRanges are the ranges invisible refuses (with the per-plane noncharacters). The
// JSON Schemas and OpenAPI documents list the same ranges in their id pattern.
var invisibleRanges = [][2]rune{
	{0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x061C, 0x061C}, {0x115F, 0x1160}, {0x17B4, 0x17B5},
	{0x180B, 0x180F}, {0x200B, 0x200F}, {0x202A, 0x202E}, {0x2060, 0x206F}, {0x3164, 0x3164},
	{0xE000, 0xF8FF}, {0xFDD0, 0xFDEF}, {0xFE00, 0xFE0F}, {0xFEFF, 0xFEFF}, {0xFFA0, 0xFFA0},
	{0xFFF0, 0xFFFD}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0000, 0xE0FFF},
	{0xF0000, 0x10FFFF},
}

// checkBalance checks a sum of amounts: never negative; int64 is its only upper bound.
func checkBalance(name string, v int64) error {
	if v < 0 {
		return fmt.Errorf("%s: %d is negative", name, v)
	}
	return nil
}

// appendErr appends err to errs unless it is nil (so that a valid payload allocates nothing).
func appendErr(errs []error, err error) []error {
	if err != nil {
		return append(errs, err)
	}
	return errs
}

// checkRange checks lo <= v <= hi.
func checkRange(name string, v, lo, hi int64) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s: %d out of range [%d, %d]", name, v, lo, hi)
	}
	return nil
}

func prefix(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s.%w", name, err)
}

// ClockTick advances the log time of one events-topic partition while it carries no customer
// traffic. The ledger publishes one into each partition it owns that has been idle for
// LEDGER_TICK_INTERVAL_MS, stamped with its wall clock: folding it moves the partition's
// watermark to the event time, so grants and holds that expired meanwhile are swept without
// waiting for new traffic. A tick is about no account (its subject is empty); every other
// consumer skips it. Partition is the partition it was written to (informational).
type ClockTick struct {
	Partition int32 `json:"partition" schema:"min=0" doc:"the events-topic partition the tick was written to"`
}

func (ClockTick) EventType() string { return TypeClockTick }
func (ClockTick) Subject() string   { return "" }
func (e ClockTick) Validate() error {
	return e.validateTags()
}

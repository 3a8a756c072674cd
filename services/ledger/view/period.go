package view

import "time"

// Subscription is the account's plan and billing anchor.
type Subscription struct {
	PlanID   string    `json:"plan_id"`
	AnchorAt time.Time `json:"anchor_at"`
	// PendingPlanID is a downgrade that takes effect at the next renewal.
	PendingPlanID string `json:"pending_plan_id,omitempty"`
}

// EndpointUsage is one endpoint's use in the period.
type EndpointUsage struct {
	Requests      int64 `json:"requests"`
	ChargedMicros int64 `json:"charged_micros"`
}

// Period is the account's current billing period (the subscription's, or the UTC calendar month).
type Period struct {
	Start            time.Time                `json:"start"`
	End              time.Time                `json:"end"`
	AllocationMicros int64                    `json:"allocation_micros"`
	UsedMicros       int64                    `json:"used_micros"`
	ByEndpoint       map[string]EndpointUsage `json:"by_endpoint"`
}

package events_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

func TestValidateRejects(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)
	started := func(mut func(*events.RequestStarted)) events.Data {
		e := events.RequestStarted{RequestID: "r1", AccountID: "a1", Endpoint: "sora.video", Tier: "plus",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, HoldMicros: 5, EstimateMicros: 5,
			HoldExpiresAt: t0, PriceBookVersion: "v1"}
		mut(&e)
		return e
	}
	for _, tc := range []struct {
		name string
		d    events.Data
		want string
	}{
		{"empty request id", started(func(e *events.RequestStarted) { e.RequestID = "" }), "request_id: required"},
		{"unicode space in id", started(func(e *events.RequestStarted) { e.AccountID = "a\u00a0b" }), "account_id: contains a space"},
		{"control char", started(func(e *events.RequestStarted) { e.AccountID = "a\x00" }), "account_id"},
		{"long id", started(func(e *events.RequestStarted) { e.Endpoint = strings.Repeat("x", 129) }), "endpoint: longer than 128"},
		{"invalid utf8", started(func(e *events.RequestStarted) { e.Tier = "\xff" }), "tier: not valid UTF-8"},
		{"negative hold", started(func(e *events.RequestStarted) { e.HoldMicros = -1 }), "hold_micros: -1 out of range"},
		{"huge hold", started(func(e *events.RequestStarted) { e.HoldMicros = events.MaxAmountMicros + 1 }), "hold_micros"},
		{"bad priority", started(func(e *events.RequestStarted) { e.Priority = "vip" }), "priority: want"},
		{"bad funding", started(func(e *events.RequestStarted) { e.Funding = "" }), "funding: want"},
		{"allowance with hold", started(func(e *events.RequestStarted) { e.Funding = events.FundingAllowance }), "hold_micros: must be 0"},
		{"split without hold", started(func(e *events.RequestStarted) { e.Funding, e.HoldMicros, e.AllowanceMicros = events.FundingSplit, 0, 5 }), "both must be above 0"},
		{"split without allowance", started(func(e *events.RequestStarted) { e.Funding = events.FundingSplit }), "both must be above 0"},
		{"finish split not summing to cost", events.RequestFinished{RequestID: "r", AccountID: "a", Endpoint: "e", Status: "failed", PriceBookVersion: "v",
			CostMicros: 10, AllowanceMicros: 4, CreditsMicros: 4}, "want 0 or cost_micros 10"},
		{"finish negative overage", events.RequestFinished{RequestID: "r", AccountID: "a", Endpoint: "e", Status: "failed", PriceBookVersion: "v",
			CostMicros: 10, CreditsMicros: 11, OverageMicros: -1}, "overage_micros: -1"},
		{"negative units", started(func(e *events.RequestStarted) { e.Estimate.TokensIn = -3 }), "estimate.tokens_in"},
		{"no expiry", started(func(e *events.RequestStarted) { e.HoldExpiresAt = time.Time{} }), "hold_expires_at: required"},
		{"finish bad status", events.RequestFinished{RequestID: "r", AccountID: "a", Endpoint: "e", Status: "ok", PriceBookVersion: "v"}, "status: want"},
		{"finish negative duration", events.RequestFinished{RequestID: "r", AccountID: "a", Endpoint: "e", Status: "failed", PriceBookVersion: "v", DurationMs: -1}, "duration_ms"},
		{"zero grant", events.CreditsGranted{GrantID: "g", AccountID: "a", Source: events.GrantPurchase}, "amount_micros: 0 out of range"},
		{"grant bad source", events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 1, Source: "gift"}, "source: want"},
		{"grant bad priority", events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 1, Source: events.GrantPurchase, Priority: 1001}, "priority: 1001"},
		{"grant payment_ref with a space", events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 1, Source: events.GrantPurchase, PaymentRef: "pi 1"}, "payment_ref"},
		{"zero adjustment", events.CreditsAdjusted{AdjustmentID: "x", AccountID: "a", Reason: "r"}, "must be non-zero"},
		{"adjustment no reason", events.CreditsAdjusted{AdjustmentID: "x", AccountID: "a", AmountMicros: 1}, "reason: required"},
		{"limits bad scope", events.LimitsAdjusted{Scope: "global", FactorPermille: 1, Reason: "r"}, "scope: want"},
		{"limits endpoint with account", events.LimitsAdjusted{Scope: events.ScopeEndpoint, Endpoint: "e", Priority: "batch", AccountID: "a", Reason: "r"}, "account_id: must be empty"},
		{"limits factor too big", events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: "a", FactorPermille: 10_001, Reason: "r"}, "factor_permille"},
		{"entry unknown ledger account", events.LedgerEntry{EntryID: "e", TransactionID: "t", AccountID: "a", LedgerAccount: "cash", Kind: "k", CauseEventID: "c", EffectiveAt: t0}, "ledger_account: unknown"},
		{"flag window backwards", events.AbuseFlagged{FlagID: "f", AccountID: "a", Rule: "burst", Action: events.ActionBlock, WindowStart: t0, WindowEnd: t0}, "end after start"},
		{"flag bad action", events.AbuseFlagged{FlagID: "f", AccountID: "a", Rule: "burst", Action: "ban", WindowStart: t0, WindowEnd: t0.Add(1)}, "action: want"},
		{"balance negative", events.BalanceUpdated{AccountID: "a", AvailableMicros: -1}, "available_micros"},
		{"funding is the account", started(func(e *events.RequestStarted) { e.FundingAccountID = "a1" }), "funding_account_id: must differ"},
		{"funding with a space", events.RequestFinished{RequestID: "r", AccountID: "a", FundingAccountID: "o 1", Endpoint: "e", Status: "failed", PriceBookVersion: "v"}, "funding_account_id: contains a space"},
		{"account funds itself", events.AccountUpdated{AccountID: "a", Tier: "free", Priority: "standard", FundingAccountID: ptr("a")}, "funding_account_id: must differ"},
		{"budget change of itself", events.BudgetChanged{AccountID: "a", ProjectID: "a", BudgetMicros: 1}, "project_id: must differ from account_id"},
		{"budget change removed with an amount", events.BudgetChanged{AccountID: "o", ProjectID: "p", BudgetMicros: 1, Remove: true}, "budget_micros: must be 0 when remove"},
		{"budget change negative", events.BudgetChanged{AccountID: "o", ProjectID: "p", BudgetMicros: -1}, "budget_micros: -1 out of range"},
		{"budget change too large", events.BudgetChanged{AccountID: "o", ProjectID: "p", BudgetMicros: events.MaxAmountMicros + 1}, "budget_micros"},
		{"budget change without project", events.BudgetChanged{AccountID: "o", BudgetMicros: 1}, "project_id: required"},
		{"budget change without account", events.BudgetChanged{ProjectID: "p", BudgetMicros: 1}, "account_id: required"},
		{"projects out of order", events.BalanceUpdated{AccountID: "o", Projects: []events.ProjectSpend{{ProjectID: "p2", PeriodStart: t0}, {ProjectID: "p1", PeriodStart: t0}}}, "projects[1]: project_id: not after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.d.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestEnvelopeChecks(t *testing.T) {
	d := events.AccountUpdated{AccountID: "a1", Tier: "pro", Priority: events.PriorityBatch}
	ev, err := events.New("src", time.Now(), d)
	if err != nil {
		t.Fatal(err)
	}
	bad := ev
	bad.Subject = "someone-else"
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "subject") {
		t.Fatalf("subject mismatch not caught: %v", err)
	}
	bad = ev
	bad.ID = "0f8fad5b-d9cb-469f-a165-70867728950e" // v4
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("v4 id not caught: %v", err)
	}
	if _, err := events.Decode([]byte(strings.Repeat(" ", events.MaxEventBytes+1))); err == nil {
		t.Fatal("oversize message accepted")
	}
	for _, in := range []string{"", "null", "{}", "[]", `{"specversion":"1.0"} trailing`, "\xff\xfe"} {
		if _, err := events.Decode([]byte(in)); err == nil {
			t.Errorf("Decode(%q) accepted", in)
		}
	}
}

func TestDerivedIDIsDeterministic(t *testing.T) {
	a, b := events.DerivedID("cause", "hold"), events.DerivedID("cause", "hold")
	if a != b || a == events.DerivedID("cause", "release") || a == events.DerivedID("cause2", "hold") {
		t.Fatalf("DerivedID not a deterministic function of (cause, leg): %s %s", a, b)
	}
}

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes to an event it accepts
// again with the same payload.
func FuzzDecode(f *testing.F) {
	for _, d := range samples() {
		ev, _ := events.New("fuzz", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), d)
		b, _ := ev.Encode()
		f.Add(b)
	}
	f.Add([]byte(`{"specversion":"1.0","id":"x","type":"tally.request.started.v1","data":{"hold_micros":1e400}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := events.Decode(b)
		if err != nil {
			return
		}
		again, err := ev.Encode()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := events.Decode(again); err != nil {
			t.Fatalf("accepted event does not survive a round trip: %v\n%s", err, again)
		}
	})
}

// TestTimesOutOfRangeRejected: every time an event carries is bounded to [1970, 2200), so that
// none wraps around when the ledger or ClickHouse turns it into int64 nanoseconds (which end
// in 2262). A grant expiring in 2300 used to be accepted, wrap to 1730 in the fold and burn
// at once with a journal line dated before 1970 that no consumer could read.
func TestTimesOutOfRangeRejected(t *testing.T) {
	far := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
	old := time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC)
	t0 := time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		d    events.Data
		want string
	}{
		{"grant expires 2300", events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 1, Source: events.GrantPromotion, ExpiresAt: &far}, "expires_at"},
		{"grant expires at the bound", events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 1, Source: events.GrantPromotion, ExpiresAt: &events.MaxTime}, "expires_at"},
		{"grant expires 1969", events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 1, Source: events.GrantPromotion, ExpiresAt: &old}, "expires_at"},
		{"hold expires 2300", events.RequestStarted{RequestID: "r", AccountID: "a", Endpoint: "e", Tier: "t", Priority: events.PriorityBatch,
			Funding: events.FundingCredits, HoldExpiresAt: far, PriceBookVersion: "v"}, "hold_expires_at"},
		{"expired 2300", events.RequestExpired{RequestID: "r", AccountID: "a", Endpoint: "e", Funding: events.FundingCredits, StartedEventID: "s", ExpiredAt: far}, "expired_at"},
		{"entry 1730", events.LedgerEntry{EntryID: "e", TransactionID: "t", AccountID: "a", LedgerAccount: events.LedgerBreakage, Kind: "breakage",
			CauseEventID: "c", EffectiveAt: time.Date(1730, 1, 1, 0, 0, 0, 0, time.UTC)}, "effective_at"},
		{"flag 2300", events.AbuseFlagged{FlagID: "f", AccountID: "a", Rule: "burst", Action: events.ActionBlock, WindowStart: t0, WindowEnd: far}, "window_end"},
		{"expiring unordered", events.BalanceUpdated{AccountID: "a", Expiring: []events.ExpiringGrant{{ExpiresAt: t0.Add(1), RemainingMicros: 1}, {ExpiresAt: t0, RemainingMicros: 1}}}, "before the previous"},
		{"expiring too many", events.BalanceUpdated{AccountID: "a", Expiring: make([]events.ExpiringGrant, events.MaxExpiringGrants+1)}, "at most"},
		{"expiring 2300", events.BalanceUpdated{AccountID: "a", Expiring: []events.ExpiringGrant{{ExpiresAt: far, RemainingMicros: 1}}}, "expires_at"},
		{"tick negative partition", events.ClockTick{Partition: -1}, "partition"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.d.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
	last := events.MaxTime.Add(-time.Nanosecond)
	if err := (events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 1, Source: events.GrantPromotion, ExpiresAt: &last}).Validate(); err != nil {
		t.Fatalf("a grant expiring just before the bound: %v", err)
	}
}

// TestBalanceAboveMaxAmountIsValid: a balance is a sum of amounts (9,300 grants of 10^15 are
// legal one by one), so MaxAmountMicros bounds amounts, not balances. A balance.updated above
// it used to fail Validate, so every admitter dead-lettered it and kept a stale balance.
func TestBalanceAboveMaxAmountIsValid(t *testing.T) {
	bu := events.BalanceUpdated{AccountID: "a", AvailableMicros: 2 * events.MaxAmountMicros, HeldMicros: 1<<63 - 1,
		OverageMicros: events.MaxAmountMicros + 1, Offset: 3}
	ev, err := events.New("ledger", time.Now(), bu)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b, _ := ev.Encode()
	if _, err := events.Decode(b); err != nil {
		t.Fatalf("Decode: %v", err)
	}
}

// TestBillingPayloadsValidated: subscription changes, account settings, notifications and
// top-up requests are checked field by field.
func TestBillingPayloadsValidated(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)
	far := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
	au := func(f func(*events.AccountUpdated)) events.AccountUpdated {
		a := events.AccountUpdated{AccountID: "a", Tier: "pro", Priority: events.PriorityStandard}
		f(&a)
		return a
	}
	n := events.Notification{NotificationID: "n", AccountID: "a", Kind: events.NotifyUsageThreshold, ThresholdPermille: 500,
		PeriodStart: t0, PeriodEnd: t0.Add(time.Hour)}
	for _, tc := range []struct {
		name string
		d    events.Data
		want string
	}{
		{"anchor 2300", events.SubscriptionChanged{AccountID: "a", PlanID: "pro", AnchorAt: far}, "anchor_at"},
		{"anchor zero", events.SubscriptionChanged{AccountID: "a", PlanID: "pro"}, "anchor_at"},
		{"plan id", events.SubscriptionChanged{AccountID: "a", PlanID: "a\u200bb", AnchorAt: t0}, "plan_id"},
		{"top-up half given", au(func(a *events.AccountUpdated) { a.AutoTopUpThresholdMicros = ptr[int64](5) }), "both or neither"},
		{"top-up of 0", au(func(a *events.AccountUpdated) {
			a.AutoTopUpThresholdMicros, a.AutoTopUpAmountMicros = ptr[int64](5), ptr[int64](0)
		}), "above 0"},
		{"thresholds unordered", au(func(a *events.AccountUpdated) { a.NotifyUsagePermille = &[]int32{800, 500} }), "notify_usage_permille"},
		{"threshold 0", au(func(a *events.AccountUpdated) { a.NotifyUsagePermille = &[]int32{0} }), "notify_usage_permille"},
		{"too many thresholds", au(func(a *events.AccountUpdated) { a.NotifyUsagePermille = &[]int32{1, 2, 3, 4, 5, 6, 7, 8, 9} }), "at most"},
		{"floor negative", au(func(a *events.AccountUpdated) { a.NotifyFloorMicros = ptr[int64](-1) }), "notify_floor_micros"},
		{"organization", au(func(a *events.AccountUpdated) { a.OrganizationID = ptr(".") }), "organization_id"},
		{"notification kind", func() events.Data { m := n; m.Kind = "x"; return m }(), "kind"},
		{"usage without threshold", func() events.Data { m := n; m.ThresholdPermille = 0; return m }(), "threshold_permille"},
		{"floor with threshold", func() events.Data { m := n; m.Kind = events.NotifyBalanceFloor; m.FloorMicros = 5; return m }(), "floor_micros"},
		{"period backwards", func() events.Data { m := n; m.PeriodEnd = t0; return m }(), "period_end"},
		{"top-up amount", events.TopUpRequested{TopUpID: "t", AccountID: "a", ThresholdMicros: 1}, "amount_micros"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.d.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// TestFundedEventsKeyedByFundingAccount: a request event funded by another account (an
// organization's shared balance) has that account as its subject, so that its Kafka key and
// the ledger's fold put it on the funding account's partition; unfunded, the account's own.
func TestFundedEventsKeyedByFundingAccount(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)
	for _, d := range []events.Data{
		events.RequestStarted{RequestID: "r", AccountID: "proj", FundingAccountID: "org", Endpoint: "e", Tier: "plus",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, HoldExpiresAt: t0, PriceBookVersion: "v"},
		events.RequestFinished{RequestID: "r", AccountID: "proj", FundingAccountID: "org", Endpoint: "e", Status: "failed", PriceBookVersion: "v"},
		events.RequestExpired{RequestID: "r", AccountID: "proj", FundingAccountID: "org", Endpoint: "e", Funding: events.FundingCredits,
			StartedEventID: "s", ExpiredAt: t0},
	} {
		if d.Subject() != "org" {
			t.Fatalf("%s: subject %q, want the funding account", d.EventType(), d.Subject())
		}
		ev, err := events.New("test", t0, d)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		back, err := events.Decode(b)
		if err != nil || back.Subject != "org" {
			t.Fatalf("%s: decoded subject %q, %v", d.EventType(), back.Subject, err)
		}
	}
	if s := (events.RequestFinished{AccountID: "proj"}).Subject(); s != "proj" {
		t.Fatalf("unfunded subject %q", s)
	}
}

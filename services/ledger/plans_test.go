package ledger_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

// testClock is a settable clock for ledger.Config.Now: the admin API stamps its events (and
// their Kafka records) with it, so a test moves log time through months.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() time.Time       { return time.Unix(0, c.ns.Load()).UTC() }
func (c *testClock) Set(t time.Time)      { c.ns.Store(t.UnixNano()) }
func newTestClock(t time.Time) *testClock { c := &testClock{}; c.Set(t); return c }

// produceAt produces events with each Kafka record's timestamp set to its event's time (the
// fold refuses an event more than LEDGER_FUTURE_SKEW_MAX_MS ahead of its record): this is how
// a test drives the ledger's log time (renewals, period ends) through months. Events of one
// account land on its partition (the key), whose log time they move.
//
// The months are in the past: a real Kafka 4 broker refuses a record stamped more than an
// hour ahead of its clock (log.message.timestamp.after.max.ms), but takes any past one on the
// kept events topic. The ledger then runs with LEDGER_TICK_INTERVAL_MS at its maximum (1 h),
// so that no tick stamped with the wall clock moves log time to today (which would make the
// rest of the scenario too late).
func produceAt(t *testing.T, c *kafkatest.Cluster, evs ...events.Event) {
	t.Helper()
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.DefaultWriterConfig)
	defer w.Close()
	for _, e := range evs {
		v, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(e.Subject), Value: v, Time: e.Time}); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
}

// settle is a request's start and finish of cost on account acct at at.
func settle(t *testing.T, acct, req string, cost int64, at time.Time) []events.Event {
	return []events.Event{
		ev(t, at, events.RequestStarted{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Tier: "pro", Priority: events.PriorityStandard,
			Funding: events.FundingCredits, EstimateMicros: cost, HoldMicros: cost, HoldExpiresAt: at.Add(5 * time.Minute), PriceBookVersion: "v1"}),
		ev(t, at.Add(time.Second), events.RequestFinished{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Status: events.StatusSucceeded,
			CostMicros: cost, PriceBookVersion: "v1"}),
	}
}

// TestSubscriptionRenewalsOnKafka: an account subscribes through the admin API, uses credits,
// and log time moves through two renewals (records stamped months ahead): each renewal grants
// the allocation and carries the rest up to the cap; the period usage, subscription and
// organization are in the view; the usage thresholds, the floor and a top-up request are
// published on the notifications topic once each; a restart restores the same view and a
// replay of the log gives the same balance.
func TestSubscriptionRenewalsOnKafka(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	cfg.TickIntervalMs = 3_600_000 // see produceAt
	t0 := time.Date(2026, 1, 31, 9, 0, 0, 0, time.UTC)
	clock := newTestClock(t0)
	cfg.Now = clock.Now
	r := start(t, cfg)
	if code, b := call(t, "PUT", r.base+"/v1/accounts/acme/subscription", adminToken, map[string]any{"plan_id": "pro"}); code != 202 {
		t.Fatalf("subscribe: %d %s", code, b)
	}
	if code, b := call(t, "PUT", r.base+"/v1/accounts/acme", adminToken, map[string]any{"tier": "pro", "priority": "standard",
		"organization_id": "org-7", "notify_floor_micros": 50_000_000, "auto_top_up_threshold_micros": 20_000_000,
		"auto_top_up_amount_micros": 100_000_000}); code != 202 {
		t.Fatalf("settings: %d %s", code, b)
	}
	produceAt(t, c, settle(t, "acme", "r1", 120_000_000, t0.Add(time.Hour))...) // 600‰: 500
	feb28 := time.Date(2026, 2, 28, 9, 0, 0, 0, time.UTC)
	v := waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.Period != nil && v.Period.UsedMicros == 120_000_000 })
	if v.Subscription == nil || *v.Subscription != (view.Subscription{PlanID: "pro", AnchorAt: t0}) || v.OrganizationID != "org-7" || v.Tier != "pro" ||
		!v.Period.Start.Equal(t0) || !v.Period.End.Equal(feb28) || v.Period.AllocationMicros != 200_000_000 ||
		v.Period.ByEndpoint["codex.responses"] != (view.EndpointUsage{Requests: 1, ChargedMicros: 120_000_000}) || v.AvailableMicros != 80_000_000 {
		t.Fatalf("first period: %+v %+v %+v", v, v.Subscription, v.Period)
	}

	// Log time passes Feb 28 09:00 (2026 is no leap year): renewal, 80 carried.
	produceAt(t, c, settle(t, "acme", "r2", 10_000_000, feb28.Add(time.Hour))...)
	v = waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.Period.Start.Equal(feb28) && v.Period.UsedMicros == 10_000_000 })
	if v.AvailableMicros != 270_000_000 || len(v.Grants) != 2 {
		t.Fatalf("after the first renewal: %+v", v)
	}
	var evs []events.Event
	evs = append(evs, settle(t, "acme", "r3", 175_000_000, feb28.Add(24*time.Hour))...) // 925‰: 500, 800
	evs = append(evs, settle(t, "acme", "r4", 60_000_000, feb28.Add(48*time.Hour))...)  // available 35: floor
	evs = append(evs, settle(t, "acme", "r5", 20_000_000, feb28.Add(72*time.Hour))...)  // 15 < 20: top-up; 1325‰: 1000
	produceAt(t, c, evs...)
	waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.Period.UsedMicros == 265_000_000 })

	// The second renewal, Mar 31: moved by the API's clock (an account update without
	// settings, as tallyctl account sends it: they stay).
	mar31 := time.Date(2026, 3, 31, 9, 0, 0, 0, time.UTC)
	clock.Set(mar31.Add(time.Hour))
	if code, b := call(t, "PUT", r.base+"/v1/accounts/acme", adminToken, map[string]any{"tier": "pro", "priority": "standard"}); code != 202 {
		t.Fatalf("settings: %d %s", code, b)
	}
	v = waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.Period.Start.Equal(mar31) })
	// Feb's plan grant had 15 left (the carry burned first): all 15 carried, 200 granted.
	if v.AvailableMicros != 215_000_000 || v.Period.UsedMicros != 0 || len(v.Period.ByEndpoint) != 0 || v.OrganizationID != "org-7" {
		t.Fatalf("after the second renewal: %+v %+v", v, v.Period)
	}

	// Notifications: each once (receivers dedupe on the envelope id; count distinct ids).
	want := []string{"usage_threshold/500@01-31", "usage_threshold/500@02-28", "usage_threshold/800@02-28",
		"balance_floor/0@02-28", "usage_threshold/1000@02-28", "topup"}
	sort.Strings(want)
	var got []string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		seen := map[string]string{}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := engine.ReadAll(ctx, c.Brokers, c.Topics.Notifications, func(m kafka.Message) error {
			e, err := events.Decode(m.Value)
			if err != nil {
				t.Errorf("notification %d/%d: %v", m.Partition, m.Offset, err)
				return nil
			}
			if string(m.Key) != "acme" {
				t.Errorf("notification keyed %q", m.Key)
			}
			switch d := e.Payload.(type) {
			case events.Notification:
				seen[e.ID] = fmt.Sprintf("%s/%d@%s", d.Kind, d.ThresholdPermille, d.PeriodStart.Format("01-02"))
			case events.TopUpRequested:
				if d.AmountMicros != 100_000_000 || d.AvailableMicros != 15_000_000 || d.TopUpID != e.ID {
					t.Errorf("top-up %+v", d)
				}
				seen[e.ID] = "topup"
			}
			return nil
		})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, k := range seen {
			got = append(got, k)
		}
		sort.Strings(got)
		if fmt.Sprint(got) == fmt.Sprint(want) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("notifications (distinct ids) %v, want %v", got, want)
	}

	// A restart restores the same view from the state topic.
	r.stop(t)
	r2 := start(t, cfg)
	v2 := waitAccount(t, r2.base, "acme", func(view.Account) bool { return true })
	if v2.AvailableMicros != v.AvailableMicros || *v2.Subscription != *v.Subscription || !v2.Period.Start.Equal(v.Period.Start) ||
		v2.OrganizationID != "org-7" {
		t.Fatalf("after restart %+v, before %+v", v2, v)
	}
	// A replay of the events topic gives the same balance.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := finance.Replay(ctx, c.Brokers, c.Topics, cfg.FoldConfig(pricebook.Default()), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, b := range rep.Balances() {
		if b.AccountID == "acme" {
			found = true
			if b.AvailableMicros != v.AvailableMicros {
				t.Fatalf("replay available %d, ledger %d", b.AvailableMicros, v.AvailableMicros)
			}
		}
	}
	if !found {
		t.Fatal("the replay does not know acme")
	}
}

// TestUnknownPlanDeadLettered: a subscription.changed naming a plan the ledger's price book
// lacks (the API refuses it; another producer may not) is not applied but dead-lettered with
// the reason.
func TestUnknownPlanDeadLettered(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	start(t, cfg)
	now := time.Now().UTC()
	bad := ev(t, now, events.SubscriptionChanged{AccountID: "acme", PlanID: "gold", AnchorAt: now})
	produceAt(t, c, bad)
	if reason := deadLetterReason(t, c, bad.ID); !strings.HasPrefix(reason, fold.AnomalyUnknownPlan+": event "+bad.ID) {
		t.Fatalf("dead-letter reason %q", reason)
	}
}

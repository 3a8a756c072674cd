package ledger_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestIdlePartitionTicks: with no customer traffic after a grant and a hold, the ledger's
// clock ticks move log time on the idle partitions, so the abandoned hold is released and
// the expired promotion posted to breakage, within a bounded time. Without ticks, log time
// stood still until the account (or its partition) saw new traffic.
func TestIdlePartitionTicks(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	cfg.TickIntervalMs = 100
	r := start(t, cfg)
	now := time.Now().UTC()
	exp := now.Add(2 * time.Second)
	produce(t, c,
		ev(t, now, events.CreditsGranted{GrantID: "promo", AccountID: "idle-promo", AmountMicros: 3_000_000, Source: events.GrantPromotion, ExpiresAt: &exp}),
		ev(t, now, events.CreditsGranted{GrantID: "paid", AccountID: "idle-hold", AmountMicros: 1_000_000, Source: events.GrantPurchase}),
		ev(t, now, events.RequestStarted{RequestID: "abandoned", AccountID: "idle-hold", Endpoint: "codex.responses", Tier: "plus",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, EstimateMicros: 400_000, HoldMicros: 400_000,
			HoldExpiresAt: now.Add(time.Second), PriceBookVersion: "v1"}))
	waitAccount(t, r.base, "idle-hold", func(v view.Account) bool { return v.HeldMicros == 400_000 })
	// Nothing else is produced: only ticks can move the clock now.
	v := waitAccount(t, r.base, "idle-hold", func(v view.Account) bool { return v.HeldMicros == 0 })
	if v.AvailableMicros != 1_000_000 || v.OpenHolds != 0 {
		t.Fatalf("hold not released: %+v", v)
	}
	v = waitAccount(t, r.base, "idle-promo", func(v view.Account) bool { return v.AvailableMicros == 0 })
	if len(v.Grants) != 0 || v.Position.Watermark.Before(exp) {
		t.Fatalf("promotion not expired: %+v", v)
	}
	// The ticks are on the events topic, one partition each, and decode as ticks.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ticks := map[int]int{}
	if err := engine.ReadAll(ctx, c.Brokers, c.Topics.Events, func(m kafka.Message) error {
		e, err := events.Decode(m.Value)
		if err != nil {
			t.Errorf("offset %d/%d: %v", m.Partition, m.Offset, err)
			return nil
		}
		if tk, ok := e.Payload.(events.ClockTick); ok {
			if int(tk.Partition) != m.Partition {
				t.Errorf("tick for partition %d landed on %d", tk.Partition, m.Partition)
			}
			ticks[m.Partition]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(ticks) != kafkatest.Partitions {
		t.Fatalf("ticks per partition %v, want all %d partitions ticked", ticks, kafkatest.Partitions)
	}
}

// TestOverflowDeadLettered: grants of the largest amount, one after another, fill an int64
// balance; the one that would overflow it is not applied but dead-lettered with the reason,
// and a replay of the log with the same settings refuses the same one.
func TestOverflowDeadLettered(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	cfg.DedupePerAccountMax = 1 << 20 // every grant id stays remembered: none is too late
	r := start(t, cfg)
	fit := (1<<63 - 1) / events.MaxAmountMicros // 9223 grants fit
	now := time.Now().UTC()
	evs := make([]events.Event, 0, fit+1)
	for i := range fit + 1 {
		evs = append(evs, ev(t, now, events.CreditsGranted{GrantID: fmt.Sprint("g", i), AccountID: "whale",
			AmountMicros: events.MaxAmountMicros, Source: events.GrantPurchase}))
	}
	produce(t, c, evs...)
	over := evs[len(evs)-1]
	reason := deadLetterReason(t, c, over.ID)
	if !strings.HasPrefix(reason, fold.AnomalyOverflow+": event "+over.ID) {
		t.Fatalf("the overflowing grant was not dead-lettered with its reason: %q", reason)
	}
	v := waitAccount(t, r.base, "whale", func(v view.Account) bool { return v.AvailableMicros == fit*events.MaxAmountMicros })
	if v.AvailableMicros < 0 {
		t.Fatalf("available %d", v.AvailableMicros)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	rep, err := finance.Replay(ctx, c.Brokers, c.Topics, cfg.FoldConfig(pricebook.Default()), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Balances(); len(got) != 1 || got[0].AvailableMicros != fit*events.MaxAmountMicros {
		t.Fatalf("replay: %+v", got)
	}
}

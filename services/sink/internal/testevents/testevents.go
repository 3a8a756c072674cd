// Package testevents builds realistic event streams for the sink's tests and benchmarks.
package testevents

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Request returns the started and finished events of one credit-funded request, and the
// ledger entry of its charge (for the journal).
func Request(tb testing.TB, account, request string, at time.Time, costMicros, durationMs int64) (started, finished, entry events.Event) {
	tb.Helper()
	must := func(ev events.Event, err error) events.Event { return Must(tb, ev, err) }
	started = must(events.New("test", at, events.RequestStarted{RequestID: request, AccountID: account, Endpoint: "video.generate",
		Model: "m1", Tier: "pro", Priority: events.PriorityStandard, Funding: events.FundingCredits, EstimateMicros: costMicros,
		HoldMicros: costMicros, HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "2026-01", KeyID: "key-" + account,
		ClientAddr: "10.0.0.1", Estimate: events.Units{VideoSeconds: 4}}))
	finished = must(events.New("test", at.Add(time.Duration(durationMs)*time.Millisecond), events.RequestFinished{RequestID: request,
		AccountID: account, Endpoint: "video.generate", Model: "m1", Status: events.StatusSucceeded, CostMicros: costMicros,
		DurationMs: durationMs, PriceBookVersion: "2026-01", KeyID: "key-" + account, ClientAddr: "10.0.0.1",
		Usage: events.Units{VideoSeconds: 4}}))
	entry = must(events.New("test", finished.Time, events.LedgerEntry{EntryID: events.DerivedID(finished.ID, "revenue"),
		TransactionID: finished.ID, AccountID: account, LedgerAccount: events.LedgerRevenue, AmountMicros: costMicros,
		Kind: "charge", CauseEventID: finished.ID, RequestID: request, EffectiveAt: finished.Time}))
	return started, finished, entry
}

// Must fails tb on err.
func Must(tb testing.TB, ev events.Event, err error) events.Event {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
	return ev
}

// Message encodes ev for topic, keyed by its account.
func Message(tb testing.TB, topic string, ev events.Event) kafka.Message {
	tb.Helper()
	b, err := ev.Encode()
	if err != nil {
		tb.Fatal(err)
	}
	return kafka.Message{Topic: topic, Key: []byte(ev.Subject), Value: b}
}

// Produce writes msgs with acks=all in chunks.
func Produce(tb testing.TB, brokers []string, msgs []kafka.Message) {
	tb.Helper()
	w := kafkax.NewWriter(brokers, "", kafkax.WriterConfig{BatchTimeout: 2 * time.Millisecond, BatchSize: 5000, WriteTimeout: 30 * time.Second, AttemptsMax: 5})
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; i < len(msgs); i += 5000 {
		if err := w.WriteMessages(ctx, msgs[i:min(i+5000, len(msgs))]...); err != nil {
			tb.Fatalf("produce: %v", err)
		}
	}
}

// Stream returns n requests' messages: started and finished on topics.Events, the charge on
// topics.Journal, spread over accounts.
func Stream(tb testing.TB, t kafkax.Topics, n, accounts int, at time.Time) []kafka.Message {
	tb.Helper()
	out := make([]kafka.Message, 0, 3*n)
	for i := 0; i < n; i++ {
		acct := fmt.Sprintf("acct-%d", i%accounts)
		s, f, e := Request(tb, acct, fmt.Sprintf("req-%d", i), at.Add(time.Duration(i)*time.Millisecond), int64(1000+i%7), int64(100+i%50))
		out = append(out, Message(tb, t.Events, s), Message(tb, t.Events, f), Message(tb, t.Journal, e))
	}
	return out
}

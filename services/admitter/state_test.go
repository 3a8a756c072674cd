package admitter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestReadyMeansLoaded: when Ready() fires, every balance and limit already in the compacted
// topics is applied; an unreadable state message goes to the dead-letter topic with the
// reason and does not stop the loading.
func TestReadyMeansLoaded(t *testing.T) {
	c := kafkatest.Start(t)
	var seeds []events.Data
	for i := 0; i < 500; i++ {
		seeds = append(seeds, bal(fmt.Sprintf("acct-%03d", i), "pro", int64(i)))
	}
	seeds = append(seeds, events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: "acct-007", FactorPermille: 0, Reason: "block"})
	seed(t, c, seeds...)
	w := kafkax.NewWriter(c.Brokers, c.Topics.Balances, kafkax.DefaultWriterConfig)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("junk"), Value: []byte(`{"not":"an event"}`)}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	s := start(t, testConfig(t, c))
	s.mu.Lock()
	n := s.table.Accounts()
	snap, _ := s.table.Account("acct-499")
	s.mu.Unlock()
	if n != 500 || snap.AvailableMicros != 499 || snap.Tier != "pro" {
		t.Fatalf("at ready: %d accounts, acct-499 %+v", n, snap)
	}
	if a := post(t, s.url+"/v1/admit", testSecret, codeReq("b1", "acct-007")); a.status != 429 {
		t.Fatalf("limit not applied at ready: %s", a.body)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, Topic: c.Topics.DeadLetter, GroupID: c.Group("dlq"),
		MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 50 * time.Millisecond, StartOffset: kafka.FirstOffset})
	defer r.Close()
	m, err := r.FetchMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reason := ""
	for _, h := range m.Headers {
		if h.Key == kafkax.HeaderDLQReason {
			reason = string(h.Value)
		}
	}
	if string(m.Value) != `{"not":"an event"}` || reason == "" {
		t.Fatalf("dead letter %q reason %q", m.Value, reason)
	}
}

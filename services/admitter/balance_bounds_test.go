package admitter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestBalanceAboveMaxAmountApplied: the ledger can legally publish a balance above
// events.MaxAmountMicros (a balance is a sum of grants of up to 10^15 each). The admitter
// used to refuse such a balance.updated as invalid, dead-letter it and keep the account's
// previous, stale balance; it must apply it.
func TestBalanceAboveMaxAmountApplied(t *testing.T) {
	c := kafkatest.Start(t)
	s := start(t, testConfig(t, c))
	w := kafkax.NewWriter(c.Brokers, c.Topics.Balances, kafkax.DefaultWriterConfig)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, avail := range []int64{5_000_000, 3_000_000_000_000_000} { // 5 credits, then 3×10^15
		id, _ := uuid.NewV7()
		v := fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"urn:tally:ledger","type":"tally.balance.updated.v1","time":%q,`+
			`"subject":"rich","datacontenttype":"application/json","data":{"account_id":"rich","tier":"pro","priority":"standard",`+
			`"suspended":false,"available_micros":%d,"held_micros":0,"overage_micros":0,"partition":0,"offset":%d}}`,
			id.String(), time.Now().UTC().Format(time.RFC3339Nano), avail, i)
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("rich"), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, s, "the large balance applied", func(tb *decide.Table) bool {
		snap, ok := tb.Account("rich")
		return ok && snap.AvailableMicros == 3_000_000_000_000_000
	})
}

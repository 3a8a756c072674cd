package kafkax_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestRoundTrip writes with acks=all and reads every message back through a consumer group,
// on kfake by default and on real Kafka when KAFKA_BROKERS is set.
func TestRoundTrip(t *testing.T) {
	c := kafkatest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.DefaultWriterConfig)
	defer w.Close()
	const n = 500
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte(fmt.Sprintf("acct-%d", i%7)), Value: []byte(fmt.Sprint(i))}
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("write: %v", err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: c.Brokers, GroupID: c.Group("rt"), Topic: c.Topics.Events,
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond, CommitInterval: 0,
	})
	defer r.Close()
	seen := map[string]int{}
	perKey := map[string]int{}
	for len(seen) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("fetch after %d: %v", len(seen), err)
		}
		seen[string(m.Value)]++
		// Messages with the same key keep their order within a partition.
		var v int
		fmt.Sscan(string(m.Value), &v)
		if last, ok := perKey[string(m.Key)]; ok && v < last {
			t.Fatalf("key %s: %d after %d", m.Key, v, last)
		}
		perKey[string(m.Key)] = v
	}
	for v, k := range seen {
		if k != 1 {
			t.Fatalf("message %s seen %d times", v, k)
		}
	}
}

func TestParseBrokers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		want int
	}{
		{"127.0.0.1:9092", true, 1}, {"a:1, b:2", true, 2}, {"", false, 0}, {"nohost", false, 0},
		{":9092", false, 0}, {"h:0", false, 0}, {"h:99999", false, 0},
	} {
		got, err := kafkax.ParseBrokers(tc.in)
		if (err == nil) != tc.ok || len(got) != tc.want {
			t.Errorf("ParseBrokers(%q) = %v, %v", tc.in, got, err)
		}
	}
}

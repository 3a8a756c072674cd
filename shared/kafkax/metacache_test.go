package kafkax_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// countingTransport counts the metadata requests that reach the broker.
type countingTransport struct {
	next     kafka.RoundTripper
	metadata atomic.Int64
}

func (c *countingTransport) RoundTrip(ctx context.Context, addr net.Addr, req kafka.Request) (kafka.Response, error) {
	if _, ok := req.(*metadata.Request); ok {
		c.metadata.Add(1)
	}
	return c.next.RoundTrip(ctx, addr, req)
}

// TestWriterMetadataCache: a writer that writes one message at a time asks for its topic's
// partitions on every message; behind the cache, those questions reach the broker at most
// once per MetadataCacheTTL, while a topic the broker does not know is asked again each time.
func TestWriterMetadataCache(t *testing.T) {
	c := kafkatest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	counter := &countingTransport{next: &kafka.Transport{}}
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.WriterConfig{BatchTimeout: time.Millisecond, BatchSize: 1, WriteTimeout: 10 * time.Second, AttemptsMax: 3})
	w.Transport = kafkax.NewMetadataCache(counter)
	defer w.Close()
	const n = 50
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("acct"), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	ttls := int64(time.Since(start)/kafkax.MetadataCacheTTL) + 1
	if got := counter.metadata.Load(); got > ttls+1 {
		t.Fatalf("%d metadata requests reached the broker for %d single-message writes in %s, want at most %d", got, n, time.Since(start), ttls+1)
	}

	// An unknown topic's answer is an error: it is not cached.
	cache := kafkax.NewMetadataCache(counter)
	before := counter.metadata.Load()
	addr := kafka.TCP(c.Brokers...)
	for i := 0; i < 2; i++ {
		_, _ = cache.RoundTrip(ctx, addr, &metadata.Request{TopicNames: []string{c.Prefix + "no-such-topic"}})
	}
	if got := counter.metadata.Load() - before; got != 2 {
		t.Fatalf("unknown topic: %d metadata requests reached the broker, want 2 (errors are not cached)", got)
	}
}

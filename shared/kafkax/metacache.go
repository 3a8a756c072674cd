package kafkax

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/metadata"
)

// MetadataCacheTTL is how long a writer reuses a topic's partition count. kafka-go's
// Writer asks its transport for the topic's metadata once per message (Writer.partitions);
// the transport answers from its own cache (kafka.Transport.MetadataTTL, 6 s by default) but
// copies the answer each time, which cost the ledger about 1.4 µs per folded event. Every
// writer from NewWriter has this cache in front of its transport. A partition count
// seen up to this much later than the transport would see it is harmless: the writer sees
// new partitions at most a second later.
const MetadataCacheTTL = time.Second

// metadataCacheTopicsMax bounds the topics a metadataCache remembers (a writer writes a
// handful); beyond it, requests pass through uncached.
const metadataCacheTopicsMax = 64

// metadataCache is a kafka.RoundTripper in front of a writer's transport: it answers the
// writer's one-topic metadata requests from the last successful answer for up to
// MetadataCacheTTL, and passes everything else (produce requests) through unchanged.
type metadataCache struct {
	next kafka.RoundTripper
	mu   sync.RWMutex
	m    map[string]cachedMetadata
}

type cachedMetadata struct {
	res *metadata.Response // shared read-only: Writer.partitions only reads it
	at  time.Time
}

var _ kafka.RoundTripper = (*metadataCache)(nil)

func newMetadataCache(next kafka.RoundTripper) *metadataCache {
	if next == nil {
		next = kafka.DefaultTransport
	}
	return &metadataCache{next: next, m: map[string]cachedMetadata{}}
}

func (c *metadataCache) RoundTrip(ctx context.Context, addr net.Addr, req kafka.Request) (kafka.Response, error) {
	mr, ok := req.(*metadata.Request)
	if !ok || len(mr.TopicNames) != 1 || mr.AllowAutoTopicCreation {
		return c.next.RoundTrip(ctx, addr, req)
	}
	topic := mr.TopicNames[0]
	c.mu.RLock()
	e, hit := c.m[topic]
	c.mu.RUnlock()
	if hit && time.Since(e.at) < MetadataCacheTTL {
		return e.res, nil
	}
	res, err := c.next.RoundTrip(ctx, addr, req)
	if err != nil {
		return res, err
	}
	if r, ok := res.(*metadata.Response); ok && cacheable(r, topic) {
		c.mu.Lock()
		if _, known := c.m[topic]; known || len(c.m) < metadataCacheTopicsMax {
			c.m[topic] = cachedMetadata{res: r, at: time.Now()}
		}
		c.mu.Unlock()
	}
	return res, nil
}

// cacheable reports whether r is a clean answer for topic: errors are never cached.
func cacheable(r *metadata.Response, topic string) bool {
	if len(r.Topics) != 1 {
		return false
	}
	t := r.Topics[0]
	return t.Name == topic && t.ErrorCode == 0 && len(t.Partitions) > 0
}

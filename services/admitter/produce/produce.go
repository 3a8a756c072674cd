// Package produce is the admitter's one path to the events topic: a Publisher makes one
// event durable with acks=all and reports its position (partition, offset), which the
// admitter needs to confirm admissions in log order and to wait for its peer follower.
// Admits, rejections and finishes all go through the Producer that New builds: the eager
// producer on kafka-go's Transport (Eager, the default) or kafka-go Writers (Writer).
package produce

import (
	"context"
	"crypto/tls"
	"errors"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/kafkax"
)

// Publisher makes one event durable on the events topic (acks=all) and reports where.
type Publisher interface {
	Publish(ctx context.Context, key string, value []byte) (partition int32, offset int64, err error)
}

// HeaderSource carries the producing admitter's CloudEvents source on every message, so that
// the peer follower skips its own events without decoding them.
const HeaderSource = "tally-source"

// Producer kinds (ADMITTER_PRODUCER).
const (
	// Eager is eagerProducer, on kafka-go's Transport: no batch timer; one sender per
	// partition leader sends a produce request as soon as one of its ADMITTER_INFLIGHT_MAX
	// request slots is free, and the events that arrive while requests are in flight go out
	// together in the next one. Batches thus grow with the load instead of waiting for a
	// timer. ADMITTER_LINGER_MS (default 1) lets the oldest waiting event wait that long for
	// company.
	Eager = "eager"
	// Writer is kafka-go's Writer (ADMITTER_WRITERS, ADMITTER_BATCH_MAX,
	// ADMITTER_BATCH_TIMEOUT_MS): a batch per partition leaves when full or after the batch
	// timeout, one request in flight per partition and writer.
	Writer = "writer"
)

// Config is what New needs; the admitter fills it from its ADMITTER_* settings, which
// validate the bounds.
type Config struct {
	Kind    string // Eager or Writer (ADMITTER_PRODUCER)
	Brokers []string
	Topic   string
	Source  string      // stamped on every message as HeaderSource
	TLS     *tls.Config // KAFKA_TLS_*, nil = plaintext
	// PublishTimeout (ADMITTER_PUBLISH_TIMEOUT_MS) is how long the broker may wait for the
	// in-sync replicas (the eager producer's request timeout).
	PublishTimeout time.Duration
	Linger         time.Duration // eager: ADMITTER_LINGER_MS
	InflightMax    int           // eager: ADMITTER_INFLIGHT_MAX, requests in flight per broker
	BufferMax      int           // eager: ADMITTER_PRODUCE_BUFFER_MAX, records held
	Writers        int           // writer: ADMITTER_WRITERS
	// Writer is the kafka-go Writers' configuration (writer kind: batch size and timeout,
	// write timeout, TLS).
	Writer kafkax.WriterConfig
}

// Producer is the events-topic producer New built: a Publisher that Close stops.
type Producer struct {
	Publisher
	close func(context.Context)
	// reusable: once Publish returned, the producer holds no reference to the value.
	reusable bool
}

// New builds the producer of cfg.Kind; it connects lazily.
func New(cfg Config) *Producer {
	if cfg.Kind == Eager {
		p := newEagerProducer(cfg)
		return &Producer{Publisher: p, close: p.close, reusable: true}
	}
	wp := &writerPublisher{source: []byte(cfg.Source)}
	for i := 0; i < cfg.Writers; i++ {
		w := kafkax.NewWriter(cfg.Brokers, cfg.Topic, cfg.Writer)
		w.Completion = completion
		wp.ws = append(wp.ws, w)
	}
	return &Producer{Publisher: wp, close: func(context.Context) {
		for _, w := range wp.ws {
			_ = w.Close()
		}
	}}
}

// ValueReusable reports whether the caller may reuse a value's buffer once Publish returned
// without error (the eager producer keeps no reference to it; a kafka-go Writer is not
// documented to let go of it).
func (p *Producer) ValueReusable() bool { return p.reusable }

// Close waits, bounded by ctx, for the records held, then stops the producer.
func (p *Producer) Close(ctx context.Context) { p.close(ctx) }

// writerPublisher is the Publisher over kafka-go writers with acks=all. It spreads events
// over ADMITTER_WRITERS writers: a kafka-go writer sends one produce request at a time per
// partition, so several writers keep several in flight. Ordering between two events of one
// account is not needed (an admit is answered before its finish can be sent, and log-order
// confirmation compares offsets).
type writerPublisher struct {
	ws     []*kafka.Writer
	next   atomic.Uint32
	source []byte
}

type ackPos struct {
	partition int32
	offset    int64
}

// completion copies each message's position into its ackPos: kafka-go sets Partition and
// Offset on the messages it passes to Completion, not on the caller's slice. It runs before
// WriteMessages returns.
func completion(msgs []kafka.Message, err error) {
	if err != nil {
		return
	}
	for i := range msgs {
		if a, ok := msgs[i].WriterData.(*ackPos); ok {
			a.partition, a.offset = int32(msgs[i].Partition), msgs[i].Offset
		}
	}
}

var _ Publisher = (*writerPublisher)(nil)

func (p *writerPublisher) Publish(ctx context.Context, key string, value []byte) (int32, int64, error) {
	a := &ackPos{partition: -1, offset: -1}
	w := p.ws[int(p.next.Add(1))%len(p.ws)]
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(key), Value: value, WriterData: a,
		Headers: []kafka.Header{{Key: HeaderSource, Value: p.source}}}); err != nil {
		return -1, -1, err
	}
	if a.offset < 0 {
		return -1, -1, errors.New("admitter: write acknowledged without a position")
	}
	return a.partition, a.offset, nil
}
